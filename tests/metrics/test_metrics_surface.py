"""Surface metrics against DeepMind surface-distance and MONAI, properties, and input checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metrics_cases import label_pair
from vadice.metrics.surface import (
    hausdorff_distance,
    mean_surface_distance,
    neighbour_code_area_table,
    surface_dice,
    surface_distances,
    surface_metrics,
)

TOLS = (1.0, 2.0, 3.25)  # 3.3 = 3 x 1.1 mm would make float ties between implementations
CASES = [(s, lab) for s in range(12) for lab in (1, 2)]


@pytest.fixture
def deepmind(monkeypatch):
    sd = pytest.importorskip("surface_distance")
    # surface-distance 0.1 uses np.Inf, removed in NumPy 2.
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    return sd


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("seed,label", CASES)
def test_against_deepmind(deepmind, seed, label):
    gt, pred, spacing = label_pair(seed)
    a, b = gt == label, pred == label
    if not a.any() or not b.any():
        pytest.skip("empty side: DeepMind does not handle it")
    ref = deepmind.compute_surface_distances(a, b, spacing)
    sd = surface_distances(a, b, spacing)
    for t in TOLS:
        assert _rel(surface_dice(sd, t), deepmind.compute_surface_dice_at_tolerance(ref, t)) < 1e-6
    for pct in (95, 100, 50):
        assert _rel(hausdorff_distance(sd, pct), deepmind.compute_robust_hausdorff(ref, pct)) < 1e-6
    num = (ref["distances_gt_to_pred"] @ ref["surfel_areas_gt"]
           + ref["distances_pred_to_gt"] @ ref["surfel_areas_pred"])
    den = ref["surfel_areas_gt"].sum() + ref["surfel_areas_pred"].sum()
    assert _rel(mean_surface_distance(sd), num / den) < 1e-6
    # Total surface areas too (same surfels, same areas).
    assert _rel(sd.areas_gt.sum(), ref["surfel_areas_gt"].sum()) < 1e-9


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.5, 0.7), (0.985, 0.985, 1.2)])
def test_area_table_matches_deepmind(deepmind, spacing):
    from surface_distance import lookup_tables

    ref = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_allclose(neighbour_code_area_table(spacing), ref, rtol=1e-12, atol=0)


def _onehot(mask):
    import torch

    return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))


@pytest.mark.parametrize("seed", range(6))
def test_surface_dice_against_monai(seed):
    monai_metrics = pytest.importorskip("monai.metrics")
    gt, pred, spacing = label_pair(seed)
    a, b = gt == 2, pred == 2
    if not a.any() or not b.any():
        pytest.skip("empty side")
    sd = surface_distances(a, b, spacing)
    for t in TOLS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = monai_metrics.compute_surface_dice(_onehot(b), _onehot(a), [t], spacing=spacing,
                                                     use_subvoxels=True).item()
        assert _rel(surface_dice(sd, t), ref) < 1e-6  # MONAI works in float32


def test_hd95_against_monai_where_definitions_coincide():
    """MONAI's HD95 uses voxel-centre boundaries and an unweighted, interpolated quantile.

    On one-voxel-thick slabs separated along the coarse axis both definitions give the
    same distances for every surface element, so the values must agree exactly.
    """
    monai_metrics = pytest.importorskip("monai.metrics")
    spacing = (2.0, 0.5, 0.7)
    for gap in (2, 3, 5):
        a = np.zeros((12, 14, 15), bool)
        b = np.zeros_like(a)
        a[2, 3:11, 4:12] = True
        b[2 + gap, 3:11, 4:12] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = monai_metrics.compute_hausdorff_distance(_onehot(b), _onehot(a), percentile=95,
                                                           spacing=spacing).item()
        assert ref == pytest.approx(gap * 2.0, rel=1e-6)
        assert hausdorff_distance(surface_distances(a, b, spacing), 95) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_hausdorff_close_to_monai(seed):
    """Point sets differ by less than a voxel diagonal, so the maxima differ by < 2 diagonals."""
    monai_metrics = pytest.importorskip("monai.metrics")
    gt, pred, spacing = label_pair(seed)
    a, b = gt == 1, pred == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = monai_metrics.compute_hausdorff_distance(_onehot(b), _onehot(a), spacing=spacing).item()
    ours = hausdorff_distance(surface_distances(a, b, spacing), 100)
    assert abs(ours - ref) <= 2 * float(np.linalg.norm(spacing))


def test_distant_false_positive_directed_vs_pooled():
    spacing = (2.0, 0.5, 0.5)
    gt = np.zeros((30, 120, 120), bool)
    gt[10:20, 20:70, 20:70] = True
    pred = gt.copy()
    pred[12:14, 110:113, 110:113] = True  # small, far away
    sd = surface_distances(gt, pred, spacing)
    directed, pooled = hausdorff_distance(sd, 95, "directed"), hausdorff_distance(sd, 95, "pooled")
    assert pooled == 0.0
    assert directed == 0.0  # FP area < 5 % of the predicted surface: 95th percentile still 0
    pred[5:25, 95:118, 95:118] = True  # a bigger distant FP shows in directed only
    sd = surface_distances(gt, pred, spacing)
    assert hausdorff_distance(sd, 95, "directed") > 10
    assert hausdorff_distance(sd, 95, "pooled") < hausdorff_distance(sd, 95, "directed")


def test_empty_conventions():
    a = np.zeros((5, 6, 7), bool)
    b = a.copy()
    b[2, 3, 3] = True
    m = surface_metrics(a, a, (1, 1, 1))
    assert m["flag"] == "both_empty" and np.isnan(m["sds"][2.0]) and np.isnan(m["msd"]) and np.isnan(m["hd95"])
    m = surface_metrics(a, b, (1, 1, 1))
    assert m["flag"] == "gt_empty" and m["sds"][2.0] == 0.0 and np.isnan(m["msd"]) and np.isnan(m["hd95"])
    m = surface_metrics(b, a, (1, 1, 1))
    assert m["flag"] == "pred_empty" and m["sds"][2.0] == 0.0 and np.isnan(m["hd95"])


def test_single_voxel_and_border():
    spacing = (2.0, 0.5, 0.7)
    a = np.zeros((4, 5, 6), bool)
    a[0, 0, 0] = True  # corner of the volume: the code grid pads, so the surface is closed
    sd = surface_distances(a, a, spacing)
    area_one_voxel = sd.areas_gt.sum()
    b = np.zeros((40, 50, 60), bool)
    b[20, 25, 30] = True
    assert surface_distances(b, b, spacing).areas_gt.sum() == pytest.approx(area_one_voxel, rel=1e-12)
    assert hausdorff_distance(sd) == 0.0 and mean_surface_distance(sd) == 0.0


def test_input_checks():
    a = np.zeros((4, 5, 6), bool)
    with pytest.raises(ValueError, match="shapes differ"):
        surface_distances(a, np.zeros((4, 5, 7), bool), (1, 1, 1))
    with pytest.raises(TypeError, match="dtype bool"):
        surface_distances(a.astype(np.uint8), a, (1, 1, 1))
    with pytest.raises(TypeError, match="NumPy array"):
        surface_distances(a.tolist(), a, (1, 1, 1))
    with pytest.raises(ValueError, match="3-D"):
        surface_distances(a[0], a[0], (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(a, a, (1, 0, 1))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(a, a, (1, 1))
    sd = surface_distances(a, a, (1, 1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        surface_dice(sd, -1)
    with pytest.raises(ValueError, match="percentile"):
        hausdorff_distance(sd, 0)
    with pytest.raises(ValueError, match="mode"):
        hausdorff_distance(sd, 95, "average")


masks = arrays(bool, (6, 7, 8), elements=st.booleans())
spacings = st.tuples(*[st.sampled_from([0.5, 0.7, 1.0, 2.0, 3.0])] * 3)


@settings(max_examples=40, deadline=None)
@given(a=masks, b=masks, spacing=spacings, tol=st.sampled_from([0.0, 1.0, 2.5]))
def test_symmetry(a, b, spacing, tol):
    m1 = surface_metrics(a, b, spacing, (tol,))
    m2 = surface_metrics(b, a, spacing, (tol,))
    np.testing.assert_allclose([m1["sds"][tol], m1["msd"], m1["hd95"]], [m2["sds"][tol], m2["msd"], m2["hd95"]],
                               rtol=1e-12, equal_nan=True)
    assert np.isnan(m1["sds"][tol]) or 0 <= m1["sds"][tol] <= 1


@settings(max_examples=30, deadline=None)
@given(a=masks, spacing=spacings)
def test_identity(a, spacing):
    m = surface_metrics(a, a.copy(), spacing, (0.0,))
    if a.any():
        assert m["sds"][0.0] == 1.0 and m["msd"] == 0.0 and m["hd95"] == 0.0
    else:
        assert m["flag"] == "both_empty"


@settings(max_examples=30, deadline=None)
@given(a=masks, b=masks, spacing=spacings, shift=st.tuples(*[st.integers(0, 3)] * 3))
def test_translation_invariance(a, b, spacing, shift):
    big_a = np.zeros((12, 13, 14), bool)
    big_b = np.zeros_like(big_a)
    sl = tuple(slice(s, s + n) for s, n in zip(shift, a.shape))
    big_a[sl], big_b[sl] = a, b
    m1 = surface_metrics(a, b, spacing, (1.0,))
    m2 = surface_metrics(big_a, big_b, spacing, (1.0,))
    np.testing.assert_allclose([m1["sds"][1.0], m1["msd"], m1["hd95"]], [m2["sds"][1.0], m2["msd"], m2["hd95"]],
                               rtol=1e-9, equal_nan=True)


def test_separated_groups_against_deepmind(deepmind):
    # Groups one empty plane apart (split into their own boxes), a group touching another only at a corner
    # (not separable: same box), and a distant false positive: the surfaces must equal DeepMind's on the
    # whole volume.
    from vadice.metrics.surface import separated_boxes

    gt = np.zeros((20, 40, 40), bool)
    pred = np.zeros_like(gt)
    gt[2:6, 2:8, 2:8] = True
    gt[2:6, 9:12, 2:8] = True  # one empty plane (y = 8) from the first block
    gt[6:8, 12:14, 8:10] = True  # touches the second block at a corner only
    pred[2:6, 3:8, 2:8] = True
    pred[2:5, 9:12, 2:7] = True
    pred[15:18, 33:37, 30:36] = True  # far false positive
    boxes = separated_boxes(gt)
    assert len(boxes) == 2 and sorted(int(np.count_nonzero(gt[b])) for b in boxes) == [72 + 8, 144]
    assert len(separated_boxes(pred)) == 3 and separated_boxes(np.zeros_like(gt)) == []
    spacing = (2.0, 0.5, 0.7)
    ref = deepmind.compute_surface_distances(gt, pred, spacing)
    sd = surface_distances(gt, pred, spacing)
    assert _rel(sd.areas_gt.sum(), ref["surfel_areas_gt"].sum()) < 1e-12
    assert _rel(sd.areas_pred.sum(), ref["surfel_areas_pred"].sum()) < 1e-12
    np.testing.assert_allclose(sd.distances_gt_to_pred, np.sort(ref["distances_gt_to_pred"]), rtol=1e-12)
    np.testing.assert_allclose(sd.distances_pred_to_gt, np.sort(ref["distances_pred_to_gt"]), rtol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_label_distances_on_shared_boxes_equal_mask_distances(seed):
    # evaluate_case computes the groups of all labels of both maps once and every label's surfaces on them
    # (shared corners get 0 without a search): the distances must be those of the label's own masks.
    from vadice.metrics.surface import label_surface_distances, separated_boxes

    gt, pred, spacing = label_pair(seed, shape=(16, 26, 24))
    gt[gt.shape[0] - 2:, :3, :3] = 3  # another label far away: part of the groups, not of the surfaces
    boxes = separated_boxes(gt, pred)
    assert separated_boxes(gt, pred) == separated_boxes((gt != 0) | (pred != 0))
    for label in (1, 2):
        ref = surface_distances(gt == label, pred == label, spacing)
        for got in (label_surface_distances(gt, pred, label, spacing, boxes),
                    label_surface_distances(gt, pred, label, spacing)):
            for name in ("distances_gt_to_pred", "distances_pred_to_gt"):
                np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
            for name in ("areas_gt", "areas_pred"):
                np.testing.assert_allclose(np.sort(getattr(got, name)), np.sort(getattr(ref, name)), rtol=0, atol=0)


def test_separated_boxes_of_several_masks():
    from vadice.metrics.surface import bounding_box, separated_boxes

    a = np.zeros((12, 20, 20), np.uint8)
    b = np.zeros_like(a)
    a[1:3, 1:4, 1:4] = 2
    b[1:3, 5:8, 1:4] = 1  # one empty plane (y = 4) from a's block: two groups
    b[9:11, 15:18, 15:19] = 1
    boxes = sorted(separated_boxes(a, b), key=lambda bx: [s.start for s in bx])
    assert boxes == [(slice(1, 3), slice(1, 4), slice(1, 4)), (slice(1, 3), slice(5, 8), slice(1, 4)),
                     (slice(9, 11), slice(15, 18), slice(15, 19))]
    b[1:3, 4, 1] = 1  # bridges the gap
    assert len(separated_boxes(a, b)) == 2
    assert separated_boxes(np.zeros_like(a), np.zeros_like(a)) == [] and bounding_box(np.zeros_like(a)) is None
    assert bounding_box(a, margin=1) == (slice(0, 4), slice(0, 5), slice(0, 5))
