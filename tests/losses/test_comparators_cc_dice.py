"""CC-DiceCE (arXiv 2511.17146): the Voronoi partition and the loss on examples worked out on paper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from comparator_cases import line, random_case

from vadice.losses import CCDiceCELoss, VolumeAwareDiceCELoss, voronoi_regions

L2, L43 = math.log(2), math.log(4 / 3)


def test_voronoi_per_label_on_a_line():
    # ids [1, 0, 2, 0, 0, 0, 0, 3]; lesions 1 and 3 are GTVn (2), lesion 2 is GTVp (1).
    # GTVn cells: voxel 3 is 3 from lesion 1 and 4 from lesion 3 -> 1; voxel 4: 4 vs 3 -> 3.
    # The GTVp lesion in between does not cut the GTVn partition. GTVp cell: everything -> 2.
    inst = np.array([1, 0, 2, 0, 0, 0, 0, 3])
    regions = voronoi_regions(inst, [0, 2, 1, 2], labels=(1, 2))
    np.testing.assert_array_equal(regions[0], [2] * 8)
    np.testing.assert_array_equal(regions[1], [1, 1, 1, 1, 3, 3, 3, 3])
    # a label without lesions: no cells (0)
    np.testing.assert_array_equal(voronoi_regions(inst, [0, 2, 1, 2], labels=(3,))[0], [0] * 8)


def test_voronoi_uses_the_spacing_in_mm():
    # 4x2 grid, lesion 1 at (0, 0), lesion 2 at (3, 1). Voxel (2, 0): in voxels 2 from lesion 1 and
    # sqrt(1 + 1) = 1.41 from lesion 2 -> 2; with spacing (1 mm, 10 mm): 2 mm vs sqrt(1 + 100) mm -> 1.
    inst = np.zeros((4, 2), np.int64)
    inst[0, 0], inst[3, 1] = 1, 2
    assert voronoi_regions(inst, [0, 1, 1], (1,))[0][2, 0] == 2
    assert voronoi_regions(inst, [0, 1, 1], (1,), spacing=(1.0, 10.0))[0][2, 0] == 1


def test_loss_by_hand_on_a_line():
    # Voxels 0..6, GTVp lesions at voxel 0 (id 1) and voxel 5 (id 2): cells R_1 = {0, 1, 2} (voxel 2 is
    # 2 from lesion 1 and 3 from lesion 2), R_2 = {3, 4, 5, 6}. p(label 1) = [1/2, 1/4, 1/2, 1/4, 1/2, 3/4, 1/4].
    # R_1: Dice = 2·(1/2) / ((1/2 + 1/4 + 1/2) + 1) = 1 / (9/4) = 4/9
    #      CE   = (log 2 + log 4/3 + log 2) / 3
    # R_2: Dice = 2·(3/4) / ((1/4 + 1/2 + 3/4 + 1/4) + 1) = (3/2) / (11/4) = 6/11
    #      CE   = (log 4/3 + log 2 + log 4/3 + log 4/3) / 4
    # region term = mean over the two components of (CE − Dice).
    labels = [1, 0, 0, 0, 0, 1, 0]
    y, inst, logits = line(labels, [1, 0, 0, 0, 0, 2, 0], [1 / 2, 1 / 4, 1 / 2, 1 / 4, 1 / 2, 3 / 4, 1 / 4])
    regions = torch.from_numpy(voronoi_regions(inst[0, 0].numpy(), [0, 1, 1], (1,)))[None]
    assert regions.flatten().tolist() == [1, 1, 1, 2, 2, 2, 2]
    term = ((2 * L2 + L43) / 3 - 4 / 9 + (3 * L43 + L2) / 4 - 6 / 11) / 2
    main = VolumeAwareDiceCELoss(va_labels=(), smooth=0.0)(logits, y).item()
    loss = CCDiceCELoss(region_labels=(1,), smooth=0.0)
    assert loss(logits, y, regions).item() == pytest.approx(main + term, rel=1e-12)
    assert CCDiceCELoss(region_labels=(1,), smooth=0.0, lambda_cc=0.5)(logits, y, regions).item() == \
        pytest.approx(main + 0.5 * term, rel=1e-12)
    # without a partition the loss makes one from the patch: here the same cells
    assert loss(logits, y).item() == pytest.approx(main + term, rel=1e-12)


def test_multiclass_cells_and_selective_labels():
    # Channels (bg, GTVp, GTVn); voxels: v0 GTVn (id 1), v1 GTVp (id 2), v2 background, v3 GTVn (id 3).
    # GTVn cells: {v0, v1} -> 1 (v1 is 1 from v0, 2 from v3), {v2, v3} -> 3; GTVp cell: all -> 2.
    # p per voxel: v0 (1/4,1/4,1/2), v1 (1/4,1/2,1/4), v2 (1/2,1/4,1/4), v3 (1/4,1/4,1/2).
    # GTVn cell 1: Dice_2 = 2·(1/2) / ((1/2 + 1/4) + 1) = 4/7;   CE = (log 2 + log 2)/2 = log 2
    # GTVn cell 3: Dice_2 = 2·(1/2) / ((1/4 + 1/2) + 1) = 4/7;   CE = (log 2 + log 2)/2 = log 2
    # GTVp cell 2: Dice_1 = 2·(1/2) / ((1/4 + 1/2 + 1/4 + 1/4) + 1) = 4/9;  CE = log 2
    probs = [[1 / 4, 1 / 4, 1 / 2], [1 / 4, 1 / 2, 1 / 4], [1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 4, 1 / 2]]
    y, inst, logits = line([2, 1, 0, 2], [1, 2, 0, 3], probs)
    regions = torch.from_numpy(voronoi_regions(inst[0, 0].numpy(), [0, 2, 1, 2], (1, 2)))[None]
    assert regions[0, 1].flatten().tolist() == [1, 1, 3, 3] and regions[0, 0].flatten().tolist() == [2] * 4
    main = VolumeAwareDiceCELoss(va_labels=(), smooth=0.0)(logits, y).item()
    both = CCDiceCELoss(region_labels=(1, 2), smooth=0.0)(logits, y, regions).item()
    assert both - main == pytest.approx(L2 - (4 / 7 + 4 / 7 + 4 / 9) / 3, rel=1e-12)
    nodes = CCDiceCELoss(region_labels=(1, 2), cc_labels=(2,), smooth=0.0)(logits, y, regions).item()
    assert nodes - main == pytest.approx(L2 - 4 / 7, rel=1e-12)


def test_component_cropped_out_of_the_patch_gets_no_term():
    # A cell whose lesion is outside the patch (ids of the case's partition, no label voxel here):
    # only the cell of lesion 1 (voxels 0, 1) counts. Dice = 2·(1/2)/((1/2 + 1/4) + 1) = 4/7,
    # CE = (log 2 + log 4/3)/2.
    y, _, logits = line([1, 0, 0, 0], [1, 0, 0, 0], [1 / 2, 1 / 4, 1 / 4, 1 / 4])
    regions = torch.tensor([1, 1, 5, 5]).view(1, 1, 1, 1, 4)
    main = VolumeAwareDiceCELoss(va_labels=(), smooth=0.0)(logits, y).item()
    got = CCDiceCELoss(region_labels=(1,), smooth=0.0)(logits, y, regions).item()
    assert got - main == pytest.approx((L2 + L43) / 2 - 4 / 7, rel=1e-12)


def _regions(y, ids):
    lut = [0, 1, 1, 2]
    return torch.stack([torch.from_numpy(voronoi_regions(i[0].numpy(), lut, (1, 2))) for i in ids]).long()


def test_finite_on_empty_target_and_empty_prediction():
    logits, y, ids = random_case()
    loss = CCDiceCELoss()
    zero = torch.zeros_like(y)
    empty = loss(logits, zero, torch.zeros(2, 2, *y.shape[2:], dtype=torch.long))
    assert empty.item() == pytest.approx(VolumeAwareDiceCELoss(va_labels=())(logits, zero).item())
    sure_bg = torch.zeros_like(logits)
    sure_bg[:, 0] = 30.0
    sure_bg.requires_grad_(True)
    value = loss(sure_bg, y, _regions(y, ids))
    (grad,) = torch.autograd.grad(value, sure_bg)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_gradcheck_float64():
    logits, y, ids = random_case(seed=1)
    regions = _regions(y, ids)
    loss = CCDiceCELoss()
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, y, regions), (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"lambda_cc": -0.1}, "lambda_cc must be >= 0"),
    ({"region_labels": (1, 1)}, "must not repeat"),
    ({"region_labels": None}, "region_labels must name"),
    ({"cc_labels": (3,)}, r"cc_labels \(3,\) must be among region_labels"),
    ({"connectivity": 8}, "connectivity"),
])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CCDiceCELoss(**kwargs)


def test_shape_errors():
    logits, y, ids = random_case()
    with pytest.raises(ValueError, match=r"regions must be \(B, 2, \*S\)"):
        CCDiceCELoss()(logits, y, ids)
    with pytest.raises(ValueError, match="voxel|ids must lie"):
        voronoi_regions(np.array([0, 4]), [0, 1], (1,))
