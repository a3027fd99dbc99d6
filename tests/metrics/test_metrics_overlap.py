"""Dice against nnU-Net, DSCagg against the HNTS-MRG formula, properties and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metrics_cases import label_pair
from vadice.metrics.evaluate import evaluate_case
from vadice.metrics.overlap import dice, dscagg, overlap


@pytest.mark.parametrize("seed", range(10))
def test_dice_against_nnunet(seed):
    ev = pytest.importorskip("nnunetv2.evaluation.evaluate_predictions")
    gt, pred, spacing = label_pair(seed)
    for label in (1, 2):
        a, b = gt == label, pred == label
        tp, fp, fn, _ = ev.compute_tp_fp_fn_tn(a, b)
        ref = np.nan if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        ov = overlap(a, b, spacing)
        assert (ov.intersection_voxels, ov.pred_voxels - ov.intersection_voxels,
                ov.gt_voxels - ov.intersection_voxels) == (tp, fp, fn)
        np.testing.assert_allclose(ov.dsc, ref, rtol=1e-12, equal_nan=True)


def test_dscagg_against_hntsmrg_formula():
    cases = [label_pair(s) for s in range(8)]
    # Add a case without any GTVn in truth but a false positive, and one empty everywhere.
    g, p, sp = label_pair(20)
    g[g == 2] = 0
    cases.append((g, p, sp))
    z = np.zeros_like(g)
    cases.append((z, z.copy(), sp))
    for label in (1, 2):
        inter = [float(np.sum((g == label) & (p == label)) * np.prod(sp)) for g, p, sp in cases]
        gv = [float(np.sum(g == label) * np.prod(sp)) for g, p, sp in cases]
        pv = [float(np.sum(p == label) * np.prod(sp)) for g, p, sp in cases]
        # HNTS-MRG notebook: 2 * sum(intersection volumes) / sum(gt volume + pred volume), in mm^3.
        ref = 2 * sum(inter) / (sum(gv) + sum(pv))
        results = [evaluate_case(g, p, sp) for g, p, sp in cases]
        name = "GTVp" if label == 1 else "GTVn"
        ours = dscagg([r.labels[name].overlap.intersection_mm3 for r in results],
                      [r.labels[name].overlap.gt_mm3 for r in results],
                      [r.labels[name].overlap.pred_mm3 for r in results])
        assert ours == pytest.approx(ref, rel=1e-12)


def test_dscagg_edge_cases():
    assert np.isnan(dscagg([0, 0], [0, 0], [0, 0]))
    assert dscagg([0, 0], [0, 0], [5.0, 0]) == 0.0  # FP only: enters the denominator
    assert dscagg([2.0, 0], [2.0, 0], [2.0, 0]) == 1.0
    with pytest.raises(ValueError, match="length"):
        dscagg([1], [1, 2], [1])
    with pytest.raises(ValueError, match=">= 0"):
        dscagg([-1], [1], [1])


def test_empty_conventions():
    z = np.zeros((3, 4, 5), bool)
    one = z.copy()
    one[1, 1, 1] = True
    assert np.isnan(dice(z, z))
    assert dice(z, one) == 0.0 and dice(one, z) == 0.0
    assert dice(one, one) == 1.0
    ov = overlap(one, one, (2.0, 0.5, 0.5))
    assert ov.gt_mm3 == 0.5 and ov.intersection_mm3 == 0.5


def test_input_checks():
    a = np.zeros((3, 4, 5), bool)
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, np.zeros((3, 4, 6), bool))
    with pytest.raises(TypeError, match="bool"):
        dice(a.astype(int), a)
    with pytest.raises(ValueError, match="spacing"):
        overlap(a, a, (1, 1, -1))


masks = arrays(bool, (4, 5, 6), elements=st.booleans())


@settings(max_examples=50, deadline=None)
@given(a=masks, b=masks)
def test_dice_properties(a, b):
    d = dice(a, b)
    np.testing.assert_equal(d, dice(b, a))
    if a.any() or b.any():
        assert 0 <= d <= 1
        assert (d == 1) == np.array_equal(a, b)
        assert (d == 0) == (not (a & b).any())
    else:
        assert np.isnan(d)
