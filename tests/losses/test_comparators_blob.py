"""blob loss (Kofler et al. 2022) on examples worked out on paper; the arithmetic is in the comments."""

from __future__ import annotations

import math

import pytest
import torch
from comparator_cases import line, random_case

from vadice.losses import BlobDiceCELoss, VolumeAwareDiceCELoss

L2, L43 = math.log(2), math.log(4 / 3)


def test_binary_two_lesions_by_hand():
    # Voxels 0..4, labels [1, 0, 1, 1, 0], ids [1, 0, 2, 2, 0], p(label 1) = [1/2, 1/4, 3/4, 1/2, 1/4].
    # Lesion 1: lesion 2 (voxels 2, 3) masked out, voxels 0, 1, 4 kept.
    #   Dice = 2·(1/2) / ((1/2 + 1/4 + 1/4) + 1) = 1/2
    #   CE   = (−log 1/2 − log 3/4 − log 3/4) / 3 = (log 2 + 2 log 4/3) / 3
    # Lesion 2: lesion 1 (voxel 0) masked out, voxels 1..4 kept.
    #   Dice = 2·(3/4 + 1/2) / ((1/4 + 3/4 + 1/2 + 1/4) + 2) = (5/2) / (15/4) = 2/3
    #   CE   = (log 4/3 + log 4/3 + log 2 + log 4/3) / 4 = (3 log 4/3 + log 2) / 4
    # blob term = mean of (CE − Dice) over the two lesions.
    y, inst, logits = line([1, 0, 1, 1, 0], [1, 0, 2, 2, 0], [1 / 2, 1 / 4, 3 / 4, 1 / 2, 1 / 4])
    term1 = (L2 + 2 * L43) / 3 - 1 / 2
    term2 = (3 * L43 + L2) / 4 - 2 / 3
    blob_only = BlobDiceCELoss(alpha=0.0, beta=1.0, smooth=0.0)
    assert blob_only(logits, y, inst).item() == pytest.approx((term1 + term2) / 2, rel=1e-12)
    # the paper's weights: 2 · global Dice+CE (nnU-Net's) + 1 · blob term
    full = BlobDiceCELoss(smooth=0.0)
    main = VolumeAwareDiceCELoss(va_labels=(), smooth=0.0)(logits, y).item()
    assert full(logits, y, inst).item() == pytest.approx(2 * main + (term1 + term2) / 2, rel=1e-12)


def test_multiclass_masks_only_lesions_of_the_same_label():
    # Channels (bg, GTVp, GTVn). Voxels: v0 GTVp id 1 p=(1/4,1/2,1/4); v1 GTVn id 2 p=(1/4,1/4,1/2);
    # v2 background p=(1/2,1/4,1/4); v3 GTVn id 3 p=(1/8,1/8,3/4).
    # Lesion 2 (GTVn): lesion 3 masked, the GTVp voxel v0 stays (background of channel 2).
    #   Dice_2 = 2·(1/2) / ((1/4 + 1/2 + 1/4) + 1) = 1/2;   CE = (log 2 + log 2 + log 2)/3 = log 2
    # Lesion 3 (GTVn): lesion 2 masked.
    #   Dice_2 = 2·(3/4) / ((1/4 + 1/4 + 3/4) + 1) = 2/3;   CE = (2 log 2 + log 4/3)/3
    # Lesion 1 (GTVp): no other GTVp lesion, all 4 voxels kept.
    #   Dice_1 = 2·(1/2) / ((1/2 + 1/4 + 1/4 + 1/8) + 1) = 8/17;  CE = (3 log 2 + log 4/3)/4
    probs = [[1 / 4, 1 / 2, 1 / 4], [1 / 4, 1 / 4, 1 / 2], [1 / 2, 1 / 4, 1 / 4], [1 / 8, 1 / 8, 3 / 4]]
    y, inst, logits = line([1, 2, 0, 2], [1, 2, 0, 3], probs)
    t2 = L2 - 1 / 2
    t3 = (2 * L2 + L43) / 3 - 2 / 3
    t1 = (3 * L2 + L43) / 4 - 8 / 17
    nodes_only = BlobDiceCELoss(alpha=0.0, blob_labels=(2,), smooth=0.0)
    assert nodes_only(logits, y, inst).item() == pytest.approx((t2 + t3) / 2, rel=1e-12)
    both = BlobDiceCELoss(alpha=0.0, smooth=0.0)
    assert both(logits, y, inst).item() == pytest.approx((t1 + t2 + t3) / 3, rel=1e-12)


def test_mean_over_lesions_then_over_samples_with_lesions():
    # Sample 0 has the two lesions of the first test (blob term a). Sample 1 has one lesion (voxel 0,
    # p 1/2; four background voxels at p 1/4), nothing to mask:
    #   Dice = 2·(1/2) / ((1/2 + 4·1/4) + 1) = 1 / (5/2) = 2/5,  CE = (log 2 + 4 log 4/3) / 5   (term b)
    # Sample 2 has none. Expected: (a + b) / 2 (the empty sample is not averaged in).
    y0, i0, x0 = line([1, 0, 1, 1, 0], [1, 0, 2, 2, 0], [1 / 2, 1 / 4, 3 / 4, 1 / 2, 1 / 4])
    y1, i1, x1 = line([1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1 / 2, 1 / 4, 1 / 4, 1 / 4, 1 / 4])
    y2, i2, x2 = line([0] * 5, [0] * 5, [1 / 4] * 5)
    a = ((L2 + 2 * L43) / 3 - 1 / 2 + (3 * L43 + L2) / 4 - 2 / 3) / 2
    b = (L2 + 4 * L43) / 5 - 2 / 5
    loss = BlobDiceCELoss(alpha=0.0, smooth=0.0)
    got = loss(torch.cat([x0, x1, x2]), torch.cat([y0, y1, y2]), torch.cat([i0, i1, i2])).item()
    assert got == pytest.approx((a + b) / 2, rel=1e-12)


def test_finite_on_empty_target_and_empty_prediction():
    logits, y, ids = random_case()
    loss = BlobDiceCELoss()
    empty = loss(logits, torch.zeros_like(y), torch.zeros_like(ids))
    # no lesion: the blob term is 0, the loss is alpha · nnU-Net's DC+CE
    assert empty.item() == pytest.approx(2 * VolumeAwareDiceCELoss(va_labels=())(logits, torch.zeros_like(y)).item())
    sure_bg = torch.zeros_like(logits)
    sure_bg[:, 0] = 30.0  # the network predicts no lesion anywhere
    sure_bg.requires_grad_(True)
    value = loss(sure_bg, y, ids)
    (grad,) = torch.autograd.grad(value, sure_bg)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_gradcheck_float64():
    logits, y, ids = random_case(seed=1)
    loss = BlobDiceCELoss(blob_labels=(1, 2))
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, y, ids), (logits,), eps=1e-6, atol=1e-6)


def test_float32_and_permuted_ids_give_the_same_value():
    logits, y, ids = random_case(seed=2)
    loss = BlobDiceCELoss()
    perm = torch.tensor([0, 3, 1, 2])[ids]  # relabel ids 1, 2, 3 -> 3, 1, 2
    assert loss(logits, y, perm).item() == pytest.approx(loss(logits, y, ids).item(), rel=1e-12)
    assert loss(logits.float(), y, ids).item() == pytest.approx(loss(logits, y, ids).item(), rel=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": -1}, "alpha must be >= 0"),
    ({"beta": float("nan")}, "beta must be a finite number"),
    ({"blob_labels": (0,)}, "foreground labels"),
    ({"blob_labels": ()}, "at least one label"),
    ({"blob_labels": "2"}, "sequence of foreground labels"),
    ({"smooth": -1e-5}, "smooth must be >= 0"),
])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlobDiceCELoss(**kwargs)


def test_shape_errors():
    logits, y, ids = random_case()
    with pytest.raises(ValueError, match="instances must be"):
        BlobDiceCELoss()(logits, y, ids[:, :, :2])
    with pytest.raises(ValueError, match="blob_labels .* channels"):
        BlobDiceCELoss(blob_labels=(3,))(logits, y, ids)
