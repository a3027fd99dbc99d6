"""VA Dice on examples small enough to work out on paper; the arithmetic is in the comments.

These do not go through va_synth's loop reference (which shares its reading of
the definition with the implementation): every expected number below was
computed by hand from docs/va-loss.md and is written as a fraction.
"""

from __future__ import annotations

import math

import pytest
import torch

from vadice.losses import WEIGHTINGS, VolumeAwareDiceLoss, loss_from_preset


def line(labels, ids, probs=None):
    """(1, 1, 1, 1, N) target and ids, and (1, 2, 1, 1, N) probabilities of [background, label 1]."""
    y = torch.tensor(labels, dtype=torch.long).view(1, 1, 1, 1, -1)
    inst = torch.tensor(ids, dtype=torch.long).view(1, 1, 1, 1, -1)
    if probs is None:
        return y, inst
    p1 = torch.tensor(probs, dtype=torch.float64).view(1, 1, 1, 1, -1)
    return y, inst, torch.cat([1 - p1, p1], 1)


def test_two_lesions_few_voxels_weights_and_value():
    # Voxels 0..5. Lesion A (id 1): voxel 0, whole-case volume 1 mm³. Lesion B (id 2): voxels 2-4, cut by
    # the patch border, whole-case volume 6 mm³. Voxels 1 and 5 are background.
    # Mass mode, gamma 1, no clipping (V_ref cancels): r_A ∝ 1/1, r_B ∝ 1/6.
    #   N = 4 label voxels, Σ r·n = 1·1 + (1/6)·3 = 3/2, scale = N / Σ r·n = 8/3
    #   w_A = 8/3, w_B = (1/6)(8/3) = 4/9;  check: 8/3 + 3·4/9 = 4 = N.
    # Probabilities of label 1: [1, 0.4, 0.5, 0.5, 0.5, 0]; background voxels weigh 1.
    #   Σ w p y = 8/3·1 + 4/9·(3·0.5) = 8/3 + 2/3 = 10/3
    #   Σ w p   = 10/3 + 1·0.4 = 56/15,   Σ w y = 4 = 60/15
    #   dc = 2·(10/3) / (56/15 + 60/15) = (100/15) / (116/15) = 25/29,  loss = −25/29 (smooth 0)
    # Plain soft Dice for contrast: 2·2.5 / (2.9 + 4) = 50/69.
    y, inst, p = line([1, 0, 1, 1, 1, 0], [1, 0, 2, 2, 2, 0], [1, 0.4, 0.5, 0.5, 0.5, 0])
    vols = torch.tensor([[0.0, 1.0, 6.0]], dtype=torch.float64)
    loss = VolumeAwareDiceLoss(va_labels=(1,), v_min_mm3=0.5, r_min=None, r_max=None, smooth=0.0,
                               apply_nonlin=None)
    w = loss.voxel_weights(y, inst, vols).flatten().double()
    torch.testing.assert_close(w, torch.tensor([8 / 3, 1, 4 / 9, 4 / 9, 4 / 9, 1], dtype=torch.float64))
    assert loss(p, y, inst, vols).item() == pytest.approx(-25 / 29, rel=1e-12)
    plain = VolumeAwareDiceLoss(va_labels=(), smooth=0.0, apply_nonlin=None)
    assert plain(p, y, inst, vols).item() == pytest.approx(-50 / 69, rel=1e-12)


def test_label_voxel_without_id_counts_as_a_reference_sized_lesion():
    # Lesion A (id 1): 1 voxel, 4 mm³; lesion B (id 2): 1 voxel, 1 mm³; one label-1 voxel with id 0.
    # Reference = geometric mean of A and B = 2 mm³ (the id-less voxel is no lesion, so not in the mean).
    #   r_A = 2/4 = 1/2, r_B = 2/1 = 2, r_orphan = 1 (documented: as if it were a reference-sized lesion)
    #   N = 3, Σ r·n = 7/2, scale = 6/7  ->  w = [3/7, 12/7, 6/7]
    y, inst = line([1, 1, 1], [1, 2, 0])
    vols = torch.tensor([[0.0, 4.0, 1.0]], dtype=torch.float64)
    loss = VolumeAwareDiceLoss(va_labels=(1,), v_min_mm3=0.5, r_min=None, r_max=None)
    torch.testing.assert_close(loss.voxel_weights(y, inst, vols).flatten().double(),
                               torch.tensor([3 / 7, 12 / 7, 6 / 7], dtype=torch.float64))


def test_absolute_mode_by_hand():
    # v_ref 50 mm³, v_min 10 mm³, clip [0.1, 10], gamma 1; one voxel per lesion:
    #   V = 10   -> 50/10 = 5
    #   V = 1000 -> 50/1000 = 0.05 -> clipped up to 0.1
    #   V = 5    -> floored to 10 -> 5
    #   V = 2    -> floored to 10 -> 5  (the floor acts before r_max: 50/2 = 25 would be clipped to 10)
    y, inst = line([1, 1, 1, 1], [1, 2, 3, 4])
    vols = torch.tensor([[0.0, 10.0, 1000.0, 5.0, 2.0]])
    loss = VolumeAwareDiceLoss(va_labels=(1,), mode="absolute", v_ref=50.0)
    torch.testing.assert_close(loss.voxel_weights(y, inst, vols).flatten(), torch.tensor([5.0, 0.1, 5.0, 5.0]))


def nodes(volumes):
    """One label-1 lesion per volume, each with as many 1 mm³ voxels as its volume, on a line."""
    labels, ids = [], []
    for k, v in enumerate(volumes, start=1):
        labels += [1] * v
        ids += [k] * v
    y, inst = line(labels, ids)
    return y, inst, torch.tensor([[0.0, *map(float, volumes)]], dtype=torch.float64)


def lesion_masses(loss, y, inst, vols):
    w = loss.voxel_weights(y, inst, vols).flatten().double()
    return [w[inst.flatten() == k].sum().item() for k in range(1, vols.shape[1])]


def test_default_weighting_bounds_the_ratios_and_breaks_equal_mass_when_volumes_span_over_100x():
    # Nodes of 20, 200 and 5000 mm³ (HNTS-MRG nodes span 0.02-40 ml), defaults: gamma 1, v_min 10,
    # clip [0.1, 10] around the geometric mean G = (20·200·5000)^(1/3) = (2·10^7)^(1/3) = 271.44 mm³.
    #   ratios: 271.44/20 = 13.57 -> 10,  271.44/200 = 1.3572,  271.44/5000 = 0.0543 -> 0.1
    #   raw masses r·n: 200, 271.44, 500 (sum 971.44); N = 5220; scale = 5220/971.44 = 5.3735
    #   masses: 1074.7, 1458.5, 2686.7 instead of 5220/3 = 1740 each
    y, inst, vols = nodes([20, 200, 5000])
    g = (20 * 200 * 5000) ** (1 / 3)
    raw = [10 * 20, g / 200 * 200, 0.1 * 5000]
    expected = [m * 5220 / sum(raw) for m in raw]
    assert expected == pytest.approx([1074.7, 1458.5, 2686.7], abs=0.1)
    assert lesion_masses(VolumeAwareDiceLoss(va_labels=(1,)), y, inst, vols) == pytest.approx(expected, rel=1e-6)
    assert lesion_masses(loss_from_preset("dual").dc, y, inst, vols) == pytest.approx(expected, rel=1e-6)
    # the equal-mass weighting: 1740 each
    equal = loss_from_preset("dual", weighting="equal-mass").dc
    assert lesion_masses(equal, y, inst, vols) == pytest.approx([1740.0] * 3, rel=1e-6)


def test_default_weighting_gives_equal_mass_inside_the_band():
    # 100, 300, 900 mm³: G = (100·300·900)^(1/3) = 300; ratios 3, 1, 1/3 all inside [0.1, 10], none below
    # v_min, so the defaults give every lesion the same mass: N/3 = 1300/3.
    y, inst, vols = nodes([100, 300, 900])
    assert lesion_masses(VolumeAwareDiceLoss(va_labels=(1,)), y, inst, vols) == \
        pytest.approx([1300 / 3] * 3, rel=1e-6)


@pytest.mark.parametrize("weighting, equal", [("bounded", False), ("equal-mass", True)])
def test_missing_one_lesion_costs_the_same_only_without_clipping(weighting, equal):
    y, inst, vols = nodes([20, 200, 5000])
    perfect = torch.zeros(1, 2, *y.shape[2:], dtype=torch.float64).scatter_(1, y, 1.0)
    loss = VolumeAwareDiceLoss(va_labels=(1,), apply_nonlin=None, **WEIGHTINGS[weighting])
    base = loss(perfect, y, inst, vols).item()
    costs = []
    for k in (1, 2, 3):
        missed = perfect.clone()
        voxels = (inst == k)[:, 0]
        missed[:, 1][voxels] = 0.0
        missed[:, 0][voxels] = 1.0
        costs.append(loss(missed, y, inst, vols).item() - base)
    assert min(costs) > 0
    assert math.isclose(costs[0], costs[2], rel_tol=1e-9) is equal


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="unknown VA weighting 'flat'"):
        loss_from_preset("dual", weighting="flat")
