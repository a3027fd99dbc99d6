"""Lesion-wise matching against a brute-force matcher, connectivity and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from metrics_cases import blobs, label_pair
from vadice.metrics.lesionwise import match_lesions, parse_match, size_stratified_sensitivity

STRUCT = {6: ndimage.generate_binary_structure(3, 1), 18: ndimage.generate_binary_structure(3, 2),
          26: ndimage.generate_binary_structure(3, 3)}


def brute_force(gt, pred, label, connectivity, rule, threshold):
    """Loop over every lesion pair; components from scipy.ndimage (independent of cc3d)."""
    g, ng = ndimage.label(gt == label, STRUCT[connectivity])
    p, np_ = ndimage.label(pred == label, STRUCT[connectivity])
    gl = [g == i for i in range(1, ng + 1)]
    pl = [p == j for j in range(1, np_ + 1)]

    def ok(x, y):
        inter = np.sum(x & y)
        if rule == "overlap":
            return inter > 0
        return inter / np.sum(x | y) >= threshold

    det = [any(ok(x, y) for y in pl) for x in gl]
    mat = [any(ok(x, y) for x in gl) for y in pl]

    def lesion_dsc(x, others):
        union = np.zeros_like(x)
        for y in others:
            if np.any(x & y):
                union |= y
        return 2 * np.sum(x & union) / (np.sum(x) + np.sum(union))

    # ndimage numbers components in raster order of first voxel, as cc3d does.
    return (sorted((int(x.sum()), d, lesion_dsc(x, pl)) for x, d in zip(gl, det)),
            sorted((int(y.sum()), m, lesion_dsc(y, gl)) for y, m in zip(pl, mat)))


def _ours(res):
    return (sorted(zip(res.gt_voxels.tolist(), res.gt_detected.tolist(), res.gt_dsc.tolist())),
            sorted(zip(res.pred_voxels.tolist(), res.pred_matched.tolist(), res.pred_dsc.tolist())))


@pytest.mark.parametrize("match", ["overlap", "iou:0.5", "iou:0.2"])
@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force(seed, connectivity, match):
    gt, pred, spacing = label_pair(seed)
    rule, t = parse_match(match)
    res = match_lesions(gt, pred, spacing, (1, 2), connectivity, match)
    for label in (1, 2):
        ref_g, ref_p = brute_force(gt, pred, label, connectivity, rule, t)
        got_g, got_p = _ours(res[label])
        assert [x[:2] for x in got_g] == [x[:2] for x in ref_g]
        assert [x[:2] for x in got_p] == [x[:2] for x in ref_p]
        np.testing.assert_allclose([x[2] for x in got_g], [x[2] for x in ref_g], rtol=1e-12)
        np.testing.assert_allclose([x[2] for x in got_p], [x[2] for x in ref_p], rtol=1e-12)
        assert res[label].voxel_mm3 == pytest.approx(np.prod(spacing))


def test_corner_touching_lesions_26_vs_6():
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[1, 1, 1] = 2
    gt[2, 2, 2] = 2  # touches the first only at a corner
    pred = np.zeros_like(gt)
    pred[1, 1, 1] = 2
    r26 = match_lesions(gt, pred, (1, 1, 1), (2,), 26)[2]
    r6 = match_lesions(gt, pred, (1, 1, 1), (2,), 6)[2]
    assert (r26.n_gt, r26.n_gt_detected, r26.sensitivity) == (1, 1, 1.0)
    assert (r6.n_gt, r6.n_gt_detected, r6.sensitivity) == (2, 1, 0.5)
    r18 = match_lesions(gt, pred, (1, 1, 1), (2,), 18)[2]
    assert r18.n_gt == 2


def test_single_voxel_border_lesions_and_label_only_in_prediction():
    gt = np.zeros((5, 6, 7), np.uint8)
    gt[0, 0, 0] = 2  # single voxel in the volume corner
    gt[4, 5, 3:7] = 2  # touches two borders
    pred = np.zeros_like(gt)
    pred[4, 5, 6] = 2
    pred[2, 3, 3] = 1  # GTVp only in prediction
    res = match_lesions(gt, pred, (2.0, 0.5, 0.5), (1, 2), 26)
    assert (res[2].n_gt, res[2].n_gt_detected, res[2].n_pred, res[2].n_pred_matched) == (2, 1, 1, 1)
    assert res[2].gt_volume_ml.tolist() == [0.0005, 0.002]
    np.testing.assert_allclose(res[2].gt_dsc, [0.0, 2 * 1 / 5])
    assert (res[1].n_gt, res[1].n_pred, res[1].n_pred_matched) == (0, 1, 0)
    assert np.isnan(res[1].sensitivity) and res[1].precision == 0.0


def test_labels_do_not_match_across_structures():
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[1:3, 1:3, 1:3] = 1
    pred = np.zeros_like(gt)
    pred[1:3, 1:3, 1:3] = 2
    res = match_lesions(gt, pred, (1, 1, 1), (1, 2), 26)
    assert res[1].n_gt_detected == 0 and res[2].n_pred_matched == 0


def test_all_empty():
    z = np.zeros((3, 3, 3), np.uint8)
    res = match_lesions(z, z, (1, 1, 1), (1, 2))
    assert res[1].n_gt == res[2].n_pred == 0 and np.isnan(res[2].precision)


def test_size_bins():
    vols = [0.1, 0.49, 0.5, 0.99, 1.0, 4.9, 5.0, 9.99, 10.0, 30.0]
    det = [False, True, True, True, False, True, True, False, True, True]
    out = size_stratified_sensitivity(vols, det)
    assert [b["bin"] for b in out] == ["<0.5 ml", "0.5-1 ml", "1-5 ml", "5-10 ml", ">=10 ml"]
    assert [b["n_gt"] for b in out] == [2, 2, 2, 2, 2]
    assert [b["n_detected"] for b in out] == [1, 2, 1, 1, 2]
    out = size_stratified_sensitivity([], [], (1.0,))
    assert [b["n_gt"] for b in out] == [0, 0] and np.isnan(out[0]["sensitivity"])
    with pytest.raises(ValueError, match="increasing"):
        size_stratified_sensitivity(vols, det, (1.0, 0.5))


def test_input_checks():
    a = np.zeros((3, 3, 3), np.uint8)
    with pytest.raises(ValueError, match="match rule"):
        parse_match("dice")
    with pytest.raises(ValueError, match="IoU threshold"):
        parse_match("iou:1.5")
    with pytest.raises(ValueError, match="connectivity"):
        match_lesions(a, a, (1, 1, 1), connectivity=8)
    with pytest.raises(ValueError, match="shapes differ"):
        match_lesions(a, np.zeros((3, 3, 4), np.uint8), (1, 1, 1))
    with pytest.raises(TypeError, match="integer"):
        match_lesions(a.astype(float), a, (1, 1, 1))


def _edge_case():
    """IoU exactly 0.5 (a match at the threshold) and a node of two cubes touching at a corner only."""
    gt = np.zeros((12, 16, 16), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:5, 1:5, 1:5] = 1
    pred[1:3, 1:5, 1:5] = 1  # 32 of 64 voxels: IoU 0.5
    gt[6:8, 6:8, 6:8] = 2
    gt[8:10, 8:10, 8:10] = 2  # joined only diagonally: one lesion at 26-connectivity, two at 6
    pred[8:10, 8:10, 8:10] = 2
    return gt, pred, (2.0, 1.0, 1.0)


@pytest.mark.parametrize("case", list(range(8)) + ["edge"])
def test_lesion_counts_match_panoptica(case):
    # An independent implementation: panoptica's connected components + one-to-one IoU >= 0.5 matching.
    import warnings

    from panoptica import (ConnectedComponentsInstanceApproximator, InputType, Metric, NaiveThresholdMatching,
                           Panoptica_Evaluator, disable_citation_reminder)
    from panoptica.utils.segmentation_class import LabelGroup, SegmentationClassGroups

    disable_citation_reminder()
    labels = {"GTVp": 1, "GTVn": 2}
    evaluator = Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC, instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=NaiveThresholdMatching(),
        segmentation_class_groups=SegmentationClassGroups({n: LabelGroup(v) for n, v in labels.items()}),
        instance_metrics=[Metric.IOU], global_metrics=[Metric.DSC], decision_metric=Metric.IOU,
        decision_threshold=0.5)
    # Predictions with every outcome: kept (IoU >= 0.5), shifted by a voxel (IoU < 0.5), thinned (some
    # components split), and false-positive nodes.
    if case == "edge":
        gt, pred, spacing = _edge_case()
    else:
        gt, _, spacing = label_pair(case, shape=(16, 28, 28))
        rng = np.random.default_rng(case)
        pred = np.roll(gt, case % 2, axis=2)
        pred[rng.random(gt.shape) < 0.3] = 0
        pred[blobs(rng, gt.shape, 2, 1) & (pred == 0)] = 2
    ours = match_lesions(gt, pred, spacing, labels.values(), connectivity=26, match="iou:0.5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = evaluator.evaluate(pred, gt, voxelspacing=spacing, verbose=False)
    for name, value in labels.items():
        les, pan = ours[value], theirs[name.lower()]  # panoptica lower-cases group names
        assert (les.n_gt, les.n_pred, les.n_gt_detected, les.n_pred - les.n_pred_matched,
                les.n_gt - les.n_gt_detected) == (pan.n_ref_instances, pan.n_pred_instances, pan.tp, pan.fp, pan.fn)


def test_lesions_in_raster_order_across_separated_groups():
    # Groups lie side by side along x, so splitting the volume visits them in x order; lesions must still come
    # in raster (z, y, x) order of their first voxel, as scipy.ndimage numbers them.
    gt = np.zeros((10, 12, 40), np.uint8)
    gt[3:9, 2:5, 0:3] = 2  # first voxel z=3, leftmost
    gt[0:2, 6:8, 30:34] = 2  # first voxel z=0, rightmost
    gt[1:4, 0:2, 15:16] = 2  # first voxel z=1, middle
    pred = np.zeros_like(gt)
    pred[0:2, 6:8, 31:35] = 2
    pred[5:9, 2:5, 1:3] = 2
    res = match_lesions(gt, pred, (1.0, 1.0, 1.0), labels=(2,))[2]
    ref, n = ndimage.label(gt == 2, STRUCT[26])
    assert res.gt_voxels.tolist() == [int(np.sum(ref == k)) for k in range(1, n + 1)] == [16, 6, 54]
    assert res.gt_detected.tolist() == [True, False, True]
    pref, m = ndimage.label(pred == 2, STRUCT[26])
    assert res.pred_voxels.tolist() == [int(np.sum(pref == k)) for k in range(1, m + 1)] == [16, 24]
