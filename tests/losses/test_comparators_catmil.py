"""Component-adaptive Tversky + MIL (CATMIL, arXiv 2604.08015) on examples worked out on paper."""

from __future__ import annotations

import math

import pytest
import torch
from comparator_cases import line, random_case

from vadice.losses import CATMILLoss, VolumeAwareDiceCELoss

L2, L43 = math.log(2), math.log(4 / 3)
DELTA = 1e-12


def _cat(tp, fp, fn, a=0.3, b=0.7):
    return 1 - (tp + DELTA) / (tp + a * fp + b * fn + DELTA)


def test_cat_and_mil_by_hand_with_case_sizes():
    # Voxels 0..4, labels [1, 1, 0, 1, 0], ids [1, 1, 0, 2, 0]; whole-case sizes: lesion 1 = 5 voxels,
    # lesion 2 = 1 voxel. Weights: lesion 1 1/(5+5) = 1/10, lesion 2 1/(1+5) = 1/6, background 1/100.
    # p(label 1) = [1/2, 1/4, 1/2, 3/4, 1/4].
    #   TP = 1/10·1/2 + 1/10·1/4 + 1/6·3/4 = 1/20 + 1/40 + 1/8 = 1/5
    #   FP = 1/100·1/2 + 1/100·1/4 = 3/400
    #   FN = 1/10·1/2 + 1/10·3/4 + 1/6·1/4 = 1/20 + 3/40 + 1/24 = 1/6
    #   CAT = 1 − (1/5) / (1/5 + 0.3·3/400 + 0.7·1/6) = 1 − 2400/3827 = 1427/3827   (δ ≈ 0)
    #   MIL = −(log max_{lesion 1} p + log max_{lesion 2} p)/2 = −(log 1/2 + log 3/4)/2 = (log 2 + log 4/3)/2
    y, inst, logits = line([1, 1, 0, 1, 0], [1, 1, 0, 2, 0], [1 / 2, 1 / 4, 1 / 2, 3 / 4, 1 / 4])
    sizes = torch.tensor([[0.0, 5.0, 1.0]])
    loss = CATMILLoss(warmup_epochs=0, smooth=DELTA)
    cat, mil = loss.terms(logits, y, inst.flatten(1), sizes)
    assert cat.item() == pytest.approx(1427 / 3827, rel=1e-9)
    assert mil.item() == pytest.approx((L2 + L43) / 2, rel=1e-12)
    main = VolumeAwareDiceCELoss(va_labels=())(logits, y).item()
    assert loss(logits, y, inst, sizes).item() == pytest.approx(main + 0.1 * 1427 / 3827 + 0.2 * (L2 + L43) / 2,
                                                                rel=1e-9)


def test_patch_sizes_when_no_table_is_given():
    # Same line, sizes counted in the patch: lesion 1 = 2 voxels -> 1/7, lesion 2 = 1 voxel -> 1/6.
    #   TP = 1/7·1/2 + 1/7·1/4 + 1/6·3/4 = 3/28 + 1/8 = 13/56
    #   FP = 3/400;  FN = 1/7·1/2 + 1/7·3/4 + 1/6·1/4 = 5/28 + 1/24 = 37/168
    y, inst, logits = line([1, 1, 0, 1, 0], [1, 1, 0, 2, 0], [1 / 2, 1 / 4, 1 / 2, 3 / 4, 1 / 4])
    cat, _ = CATMILLoss(smooth=DELTA).terms(logits, y, inst.flatten(1))
    assert cat.item() == pytest.approx(_cat(13 / 56, 3 / 400, 37 / 168), rel=1e-9)


def test_multiclass_other_label_is_background_weight():
    # Channels (bg, GTVp, GTVn); v0 GTVp id 1 p=(1/4,1/2,1/4); v1 GTVn id 2 p=(1/4,1/4,1/2). catmil_labels=(2,):
    # channel 2 weights: v0 (GTVp) 1/100, v1 1/(1+5) = 1/6.
    #   TP = 1/6·1/2 = 1/12, FP = 1/100·1/4 = 1/400, FN = 1/6·1/2 = 1/12;  MIL = −log 1/2 (GTVn lesion only)
    y, inst, logits = line([1, 2], [1, 2], [[1 / 4, 1 / 2, 1 / 4], [1 / 4, 1 / 4, 1 / 2]])
    cat, mil = CATMILLoss(catmil_labels=(2,), smooth=DELTA).terms(logits, y, inst.flatten(1))
    assert cat.item() == pytest.approx(_cat(1 / 12, 1 / 400, 1 / 12), rel=1e-9)
    assert mil.item() == pytest.approx(L2, rel=1e-12)
    # both labels: CAT averaged over the two channels; channel 1: TP = 1/6·1/2, FP = 1/100·1/4, FN = 1/6·1/2
    cat, mil = CATMILLoss(smooth=DELTA).terms(logits, y, inst.flatten(1))
    assert cat.item() == pytest.approx(_cat(1 / 12, 1 / 400, 1 / 12), rel=1e-9)
    assert mil.item() == pytest.approx(L2, rel=1e-12)  # −(log 1/2 + log 1/2)/2


def test_warm_up_schedule():
    loss = CATMILLoss()  # λ_CAT 0.1 reached after 50 epochs, linearly from 0
    assert loss.cat_weight == 0.0
    loss.set_epoch(25)
    assert loss.cat_weight == pytest.approx(0.05)
    loss.set_epoch(50)
    assert loss.cat_weight == pytest.approx(0.1)
    loss.set_epoch(400)
    assert loss.cat_weight == pytest.approx(0.1)
    assert CATMILLoss(warmup_epochs=0).cat_weight == pytest.approx(0.1)
    y, inst, logits = line([1, 1, 0, 1, 0], [1, 1, 0, 2, 0], [1 / 2, 1 / 4, 1 / 2, 3 / 4, 1 / 4])
    loss.set_epoch(25)
    cat, mil = loss.terms(logits, y, inst.flatten(1))
    main = VolumeAwareDiceCELoss(va_labels=())(logits, y).item()
    assert loss(logits, y, inst).item() == pytest.approx(main + 0.05 * cat.item() + 0.2 * mil.item(), rel=1e-12)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        loss.set_epoch(-1)


def test_finite_on_empty_target_and_empty_prediction():
    logits, y, ids = random_case()
    loss = CATMILLoss(warmup_epochs=0)
    zero = torch.zeros_like(y)
    empty = loss(logits, zero, zero)
    assert torch.isfinite(empty)
    sure_bg = torch.zeros_like(logits)
    sure_bg[:, 0] = 50.0  # p(lesion) ~ e^-50: the MIL log is floored at eps
    sure_bg.requires_grad_(True)
    value = loss(sure_bg, y, ids)
    (grad,) = torch.autograd.grad(value, sure_bg)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert loss.terms(sure_bg, y, ids.flatten(1))[1].item() == pytest.approx(-math.log(1e-6))


def test_gradcheck_float64():
    logits, y, ids = random_case(seed=1)
    loss = CATMILLoss(warmup_epochs=0)
    sizes = torch.tensor([[0.0, 40.0, 4.0, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, y, ids, sizes), (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"lambda_cat": -1}, "lambda_cat must be >= 0"),
    ({"warmup_epochs": 2.5}, "warmup_epochs must be an integer"),
    ({"fp_weight": float("inf")}, "fp_weight must be a finite number"),
    ({"size_offset": 0}, "size_offset must be > 0"),
    ({"eps": 1.0}, "eps must be < 1"),
    ({"catmil_labels": (1, 1)}, "must not repeat"),
])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CATMILLoss(**kwargs)


def test_sizes_table_too_short_is_an_error():
    logits, y, ids = random_case()
    with pytest.raises(ValueError, match=r"sizes must be \(B, K\+1\)"):
        CATMILLoss()(logits, y, ids, torch.ones(2, 2))
