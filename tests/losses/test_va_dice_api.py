"""VA Dice: degenerate inputs, autocast, fallback, compile, DDP, errors, presets, reference volumes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from va_synth import make_batch, pad_volumes, reference_dice_loss, reference_weights

from vadice.lesions import Lesion, label_lesions
from vadice.losses import (
    PRESETS,
    VolumeAwareDiceCELoss,
    VolumeAwareDiceLoss,
    loss_from_preset,
    median_lesion_volumes,
)

MODES = pytest.mark.parametrize("mode", ["mass", "absolute"])
BOTH = pytest.mark.parametrize("batch_dice", [False, True])


def make_loss(mode, **kw):
    return VolumeAwareDiceLoss(mode=mode, v_ref=20.0 if mode == "absolute" else None, **kw)


def finite_loss_and_grad(loss, logits, *args):
    x = logits.clone().requires_grad_(True)
    value = loss(x, *args)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    return value, grad


# ---------------------------------------------------------------- degenerate inputs


def _empty_target():
    y = torch.zeros(2, 1, 4, 6, 6, dtype=torch.int16)
    return torch.randn(2, 3, 4, 6, 6), y, torch.zeros_like(y), torch.zeros(2, 1)


def _empty_prediction():
    logits, y, inst, vols = make_batch(1, (4, 8, 8), n_lesions=4, case_volumes=True)
    logits[:, 0] = 30.0
    logits[:, 1:] = -30.0
    return logits, y, inst, vols


def _all_foreground():
    y = torch.full((2, 1, 4, 6, 6), 2, dtype=torch.int16)
    y[1, :, :2] = 1  # second sample: half PT, half LN
    inst = torch.ones_like(y)
    inst[1, :, :2] = 2
    return torch.randn(2, 3, 4, 6, 6), y, inst, torch.tensor([[0.0, 5e4, 0.0], [0.0, 3e3, 8e3]])


def _one_voxel_lesions():
    y = torch.zeros(1, 1, 5, 7, 7, dtype=torch.int16)
    inst = torch.zeros_like(y)
    for k, (z, yy, x) in enumerate([(0, 0, 0), (2, 3, 3), (4, 6, 6), (0, 6, 0)], start=1):
        y[0, 0, z, yy, x] = 2 if k < 4 else 1
        inst[0, 0, z, yy, x] = k
    # Sub-voxel and zero table entries must hit the V_min floor, not divide by zero.
    return torch.randn(1, 3, 5, 7, 7), y, inst, torch.tensor([[0.0, 0.5, 0.0, 0.25, 1e-30]])


@BOTH
@MODES
@pytest.mark.parametrize("case", [_empty_target, _empty_prediction, _all_foreground, _one_voxel_lesions])
def test_degenerate_inputs_are_finite(case, mode, batch_dice):
    torch.manual_seed(0)
    logits, y, inst, vols = case()
    loss = make_loss(mode, batch_dice=batch_dice)
    value, _ = finite_loss_and_grad(loss, logits, y, inst, vols)
    w = loss.voxel_weights(y, inst, vols)
    assert torch.isfinite(w).all() and (w > 0).all()
    if mode == "mass":  # per pool and label, the weights of label voxels sum to their count
        pools = [slice(None)] if batch_dice else [slice(b, b + 1) for b in range(y.shape[0])]
        for pool in pools:
            for lab in (1, 2):
                on = y[pool] == lab
                assert w[pool][on].sum().item() == pytest.approx(on.sum().item(), rel=1e-5)
    expected = reference_dice_loss(torch.softmax(logits.double(), 1).numpy(), y.long(),
                                   reference_weights(y, inst, vols, (1, 2), mode=mode,
                                                     v_ref=20.0 if mode == "absolute" else None,
                                                     batch_dice=batch_dice), batch_dice)
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_one_voxel_lesion_weight_is_capped_by_vmin_and_rmax():
    logits, y, inst, vols = _one_voxel_lesions()
    w = VolumeAwareDiceLoss(mode="absolute", v_ref=200.0, v_min_mm3=10.0, r_max=None).voxel_weights(y, inst, vols)
    assert torch.allclose(w[inst > 0], torch.tensor(20.0))  # 200 / V_min
    w = VolumeAwareDiceLoss(mode="absolute", v_ref=200.0, v_min_mm3=10.0, r_max=8.0).voxel_weights(y, inst, vols)
    assert torch.allclose(w[inst > 0], torch.tensor(8.0))


@BOTH
def test_lesion_vanishing_at_coarse_scale_drops_out_and_weights_renormalise(batch_dice):
    # Deep-supervision targets are nearest-exact downsamplings that keep odd indices at scale 1/2:
    # a one-voxel node at even coordinates vanishes, the other lesions stay.
    y = torch.zeros(2, 1, 8, 16, 16, dtype=torch.int16)
    inst = torch.zeros_like(y)
    y[:, :, 1:7, 1:9, 1:9] = 2
    inst[:, :, 1:7, 1:9, 1:9] = 1
    y[:, :, 2, 12, 12] = 2
    inst[:, :, 2, 12, 12] = 2
    y[:, :, 3:6, 11:14, 3:6] = 1
    inst[:, :, 3:6, 11:14, 3:6] = 3
    vols = torch.tensor([[0.0, 3000.0, 1.0, 200.0]] * 2)
    loss = VolumeAwareDiceLoss(batch_dice=batch_dice, v_min_mm3=1.0, r_min=None, r_max=None)
    torch.manual_seed(0)
    logits = [torch.randn(2, 3, 8 // s, 16 // s, 16 // s) for s in (1, 2, 4)]
    full_w = loss.voxel_weights(y, inst, vols)
    assert full_w[inst == 2].min() > 100 * full_w[inst == 1].max()
    for s, x in zip((1, 2, 4), logits):
        ys = F.interpolate(y.float(), scale_factor=1 / s, mode="nearest-exact").short()
        ins = F.interpolate(inst.float(), scale_factor=1 / s, mode="nearest-exact").short()
        if s > 1:
            assert not (ins == 2).any()  # the speck vanished
        finite_loss_and_grad(loss, x, ys, ins, vols)
        w = loss.voxel_weights(ys, ins, vols)
        on = ys == 2
        assert w[on].sum().item() == pytest.approx(on.sum().item(), rel=1e-5)
        np.testing.assert_allclose(w[:, 0].numpy(), reference_weights(ys, ins, vols, (1, 2), v_min=1.0, r_min=None,
                                                                      r_max=None, batch_dice=batch_dice), rtol=1e-5)
    # Once the speck is gone the remaining node is alone in its pool: plain weight 1.
    assert torch.all(w[ys == 2] == 1.0)


# ---------------------------------------------------------------- absolute mode, fallback, autocast


def test_absolute_mode_uses_vref_vmin_and_clipping():
    y = torch.zeros(1, 1, 1, 4, 4, dtype=torch.int16)
    inst = torch.zeros_like(y)
    y[0, 0, 0, 0, :] = torch.tensor([2, 2, 2, 1])
    inst[0, 0, 0, 0, :] = torch.tensor([1, 2, 3, 4])
    vols = torch.tensor([[0.0, 1.0, 100.0, 1e5, 40.0]])
    loss = VolumeAwareDiceLoss(mode="absolute", v_ref={1: 10.0, 2: 100.0}, gamma=1.0, v_min_mm3=10.0,
                               r_min=0.1, r_max=5.0)
    w = loss.voxel_weights(y, inst, vols)[0, 0, 0, 0]
    # LN: 100/max(1,10)=10 -> r_max 5; 100/100 = 1; 100/1e5 -> r_min 0.1. PT: (10/40) = 0.25.
    torch.testing.assert_close(w, torch.tensor([5.0, 1.0, 0.1, 0.25]))
    w2 = VolumeAwareDiceLoss(mode="absolute", v_ref={1: 10.0, 2: 100.0}, gamma=0.5, v_min_mm3=10.0,
                             r_min=None, r_max=None).voxel_weights(y, inst, vols)[0, 0, 0, 0]
    torch.testing.assert_close(w2, torch.tensor([math.sqrt(10), 1.0, math.sqrt(1e-3), 0.5]))


@pytest.mark.parametrize("shape,spacing", [((6, 12, 12), (2.0, 0.5, 0.5)), ((12, 12), (0.7, 0.5))])
@MODES
def test_fallback_equals_explicit_path_when_nothing_is_cut(shape, spacing, mode):
    logits, y, _, _ = make_batch(11, shape, n_lesions=5, margin=1)
    inst, tables = [], []
    for b in range(y.shape[0]):
        ids, lesions = label_lesions(y[b, 0].numpy(), spacing)
        inst.append(torch.from_numpy(ids.astype(np.int64)))
        tables.append(torch.tensor([0.0] + [les.volume_mm3 for les in lesions]))
    inst = torch.stack(inst)[:, None]
    loss = make_loss(mode, spacing=spacing, v_min_mm3=0.5, r_min=0.05, r_max=20.0)
    torch.testing.assert_close(loss.voxel_weights(y), loss.voxel_weights(y, inst, tables))
    v1, g1 = finite_loss_and_grad(loss, logits, y)
    v2, g2 = finite_loss_and_grad(loss, logits, y, inst, tables)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)
    # instances without volumes: patch voxel counts x spacing, the same here.
    v3, _ = finite_loss_and_grad(loss, logits, y, inst)
    torch.testing.assert_close(v3, v2)


def test_sums_stay_fp32_under_bf16_autocast():
    # Probabilities given in bfloat16; the loss must accumulate in fp32, not in bfloat16.
    logits, y, inst, vols = make_batch(5, (16, 48, 48), n_lesions=8, max_size=6, case_volumes=True)
    probs = torch.softmax(logits, 1).bfloat16()
    loss = VolumeAwareDiceLoss(apply_nonlin=None, v_min_mm3=1.0, batch_dice=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(probs, y, inst, vols)
    assert value.dtype == torch.float32
    w = reference_weights(y, inst, vols, (1, 2), v_min=1.0, batch_dice=True)
    expected = reference_dice_loss(probs.double().numpy(), y, w, batch_dice=True)
    assert value.item() == pytest.approx(expected, rel=2e-6)
    # Through the softmax of bfloat16 logits too: finite, fp32, close to the fp32 loss.
    x = logits.bfloat16().requires_grad_(True)
    full = VolumeAwareDiceLoss(v_min_mm3=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = full(x, y, inst, vols)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(x.grad.float()).all()
    assert value.item() == pytest.approx(full(logits.bfloat16().float(), y, inst, vols).item(), rel=1e-2)


def test_loss_mask_matches_nnunet():
    logits, y, inst, vols = make_batch(2, (6, 10, 10))
    mask = torch.from_numpy(np.random.default_rng(0).random(y.shape) > 0.3)
    ours = VolumeAwareDiceLoss(va_labels=())(logits, y, inst, vols, loss_mask=mask)
    theirs = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, do_bg=False, smooth=1e-5,
                                         ddp=False)(logits, y, loss_mask=mask)
    torch.testing.assert_close(ours, theirs)


# ---------------------------------------------------------------- Dice + CE, presets


def test_dice_ce_with_only_ignored_voxels_is_finite():
    logits = torch.randn(1, 3, 4, 5, 5, requires_grad=True)
    y = torch.full((1, 1, 4, 5, 5), 3, dtype=torch.int16)
    value = VolumeAwareDiceCELoss(ignore_label=3)(logits, y, torch.zeros_like(y), torch.zeros(1, 1))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_dice_ce_term_weights():
    logits, y, inst, vols = make_batch(4, (5, 8, 8), case_volumes=True)
    dc = VolumeAwareDiceLoss(v_min_mm3=1.0)(logits, y, inst, vols)
    ce = F.cross_entropy(logits, y[:, 0])
    for wc, wd in [(1, 1), (0, 1), (1, 0), (0.3, 2.0)]:
        value = VolumeAwareDiceCELoss(weight_ce=wc, weight_dice=wd, v_min_mm3=1.0)(logits, y, inst, vols)
        torch.testing.assert_close(value, wc * ce + wd * dc)


def test_presets():
    assert PRESETS["baseline"]["va_labels"] == () and PRESETS["dual"]["va_labels"] == (1, 2)
    assert PRESETS["selective-ln"]["va_labels"] == (2,)
    assert loss_from_preset("selective-ln").dc.va_labels == (2,)
    dual = loss_from_preset("dual", batch_dice=True, gamma=0.5)
    assert dual.dc.va_labels == (1, 2) and dual.dc.batch_dice and dual.dc.gamma == 0.5
    logits, y, inst, vols = make_batch(9, (5, 8, 8), case_volumes=True)
    theirs = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                            dice_class=MemoryEfficientSoftDiceLoss)
    torch.testing.assert_close(loss_from_preset("baseline")(logits, y, inst, vols), theirs(logits, y))
    with pytest.raises(ValueError, match="unknown VA loss preset 'selective'"):
        loss_from_preset("selective")


# ---------------------------------------------------------------- torch.compile, DDP


@BOTH
def test_compiles_without_graph_breaks(batch_dice):
    logits, y, inst, vols = make_batch(6, (4, 8, 8), case_volumes=True)
    table = pad_volumes(vols).float()
    loss = VolumeAwareDiceLoss(batch_dice=batch_dice, v_min_mm3=1.0)
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    v1, v2 = loss(x1, y, inst, table), compiled(x2, y, inst, table)
    v1.backward()
    v2.backward()
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(x1.grad, x2.grad)


def _ddp_worker(rank, world, init_file, out_dir, logits, y, inst, vols):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        part = slice(rank * (len(y) // world), (rank + 1) * (len(y) // world))
        results = {}
        losses = {
            "va": VolumeAwareDiceLoss(batch_dice=True, ddp=True, v_min_mm3=1.0),
            "plain": VolumeAwareDiceLoss(va_labels=(), batch_dice=True, ddp=True),
            "nnunet": MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=True, do_bg=False,
                                                  smooth=1e-5, ddp=True),
        }
        for name, loss in losses.items():
            x = logits[part].clone().requires_grad_(True)
            args = (y[part],) if name == "nnunet" else (y[part], inst[part], vols[part])
            value = loss(x, *args)
            value.backward()
            results[name] = (value.detach(), x.grad)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_batch_dice_pools_across_ranks(tmp_path):
    # Two gloo ranks with one sample each must see the loss of the whole batch; gradients follow
    # nnU-Net's AllGatherGrad convention (world size x the single-process gradient).
    logits, y, inst, vols = make_batch(8, (4, 8, 8), n_lesions=5, case_volumes=True)
    table = pad_volumes(vols).float()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), logits, y, inst, table),
                                nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, va_labels in [("va", (1, 2)), ("plain", ())]:
        x = logits.clone().requires_grad_(True)
        whole = VolumeAwareDiceLoss(va_labels=va_labels, batch_dice=True, v_min_mm3=1.0)(x, y, inst, table)
        whole.backward()
        for r, res in enumerate(ranks):
            torch.testing.assert_close(res[name][0], whole.detach())
            torch.testing.assert_close(res[name][1], 2 * x.grad[r : r + 1])
    for res in ranks:
        torch.testing.assert_close(res["plain"][0], res["nnunet"][0])
        torch.testing.assert_close(res["plain"][1], res["nnunet"][1])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(va_labels=(0, 2)), "integers > 0"),
        (dict(va_labels=(2, 2)), "must not repeat"),
        (dict(va_labels=("2",)), "integers > 0"),
        (dict(va_labels="12"), "sequence of labels"),
        (dict(gamma=-1.0), "gamma must be"),
        (dict(gamma=float("nan")), "gamma must be"),
        (dict(mode="relative"), "mode must be one of"),
        (dict(mode="absolute"), "needs v_ref"),
        (dict(mode="absolute", v_ref={1: 5.0}), r"label\(s\) \[2\]"),
        (dict(v_ref=-3.0), "v_ref must be finite and > 0"),
        (dict(v_ref={1: 5.0, 2: float("inf")}), r"v_ref\[2\]"),
        (dict(v_min_mm3=0.0), "v_min_mm3 must be finite and > 0"),
        (dict(r_min=-0.1), "r_min must be > 0"),
        (dict(r_min=2.0, r_max=1.0), "r_min must be <= r_max"),
        (dict(smooth=-1.0), "smooth must be"),
        (dict(spacing=(1.0, 0.0, 1.0)), "spacing must be positive"),
        (dict(connectivity=5), "connectivity must be one of"),
        (dict(apply_nonlin="softmax"), "apply_nonlin must be callable"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VolumeAwareDiceLoss(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ignore_label=2), "cannot also be a VA label"),
        (dict(weight_ce=float("nan")), "weight_ce must be"),
        (dict(apply_nonlin=torch.sigmoid), "apply_nonlin is fixed"),
        (dict(ignore_label=1.5), "ignore_label must be an integer"),
    ],
)
def test_bad_dice_ce_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VolumeAwareDiceCELoss(**kwargs)


def _bad_inputs():
    logits, y, inst, vols = make_batch(3, (4, 6, 6), n_lesions=3)
    table = pad_volumes(vols).float()
    k = table.shape[1]
    return [
        ((logits, y[..., :5], inst, table), "target must be a label map"),
        ((logits, y[:1], inst, table), "target must be a label map"),
        ((logits, y, inst[..., :5], table), "instances must have the target's shape"),
        ((logits, y, inst, table[:1]), r"volumes must be a \(B, K\+1\) tensor with B = 2"),
        ((logits, y, inst, table[0]), r"volumes must be a \(B, K\+1\) tensor"),
        ((logits, y, inst, vols[:1]), "one table per sample"),
        ((logits, y, inst, [table[0][None], table[1][None]]), "must be 1-D"),
        ((logits, y, inst, "volumes"), "volumes must be a"),
        ((logits, y, torch.where(inst > 0, inst + k, inst), table), r"lesion ids must lie in \[0,"),
        ((logits, y, inst, table - 1e3), "finite and >= 0"),
        ((logits, y, inst, table * float("nan")), "finite and >= 0"),
        ((logits, y, inst.float() + 0.5, table), "integer lesion ids"),
        ((logits, y, None, table), "volumes were given without instances"),
        ((logits, torch.where(y > 0, 3, y), inst, table), r"target labels must lie in \[0, 3\)"),
        ((logits, y.float() + 0.25, inst, table), "integer labels"),
        ((logits[:, :2], y.clamp(max=1), inst, table), "need more channels"),
        ((logits.long(), y, inst, table), "floating point"),
        ((logits[:, :, 0, 0, 0], y, inst, table), r"logits must be \(B, C, \*spatial\)"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_raise(case):
    args, match = _bad_inputs()[case]
    with pytest.raises(ValueError, match=match):
        VolumeAwareDiceLoss(v_min_mm3=1.0)(*args)


# ---------------------------------------------------------------- reference volumes


def test_median_lesion_volumes_from_tables():
    rng = np.random.default_rng(0)
    tables, pooled = [], {1: [], 2: []}
    for case in range(5):
        mask = np.zeros((8, 20, 20), np.uint8)
        for j in range(1 + case % 3):
            z, a, b = rng.integers(0, 6), rng.integers(0, 17), 6 * j
            size = rng.integers(1, 4)
            mask[z : z + 2, a : a + size, b : b + 3] = 1 + (j > 0)
        _, lesions = label_lesions(mask, (2.0, 0.5, 0.5))
        for les in lesions:
            pooled[les.label].append(les.voxels * 0.5)
        tables.append(lesions if case % 2 else [les.to_dict() for les in lesions])
    got = median_lesion_volumes(tables)
    assert got == {lab: pytest.approx(float(np.median(v))) for lab, v in pooled.items() if v}
    assert median_lesion_volumes(tables, labels=[2]) == {2: got[2]}
    with pytest.raises(ValueError, match=r"no lesion of label\(s\) \[3\]"):
        median_lesion_volumes(tables, labels=[1, 3])
    bad = [[Lesion(1, 2, 0, 0.0, (0.0, 0.0, 0.0), (0, 1, 0, 1, 0, 1))]]
    with pytest.raises(ValueError, match="case 0: lesion of label 2 has volume 0.0"):
        median_lesion_volumes(bad)


@MODES
def test_real_case_patch_cutting_nodes_keeps_case_weights(hntsmrg_case2, mode):
    from vadice.io import read_mask

    mask, geom = read_mask(hntsmrg_case2 / "preRT" / "2_preRT_mask.nii.gz")
    ids, lesions = label_lesions(mask, geom.spacing_zyx)
    table = torch.tensor([[0.0] + [les.volume_mm3 for les in lesions]])
    v_ref = median_lesion_volumes([lesions]) if mode == "absolute" else None
    loss = VolumeAwareDiceLoss(mode=mode, v_ref=v_ref)
    # Crop to the lesions' bounding region, then cut it through the middle of the largest node.
    (z0, z1), (y0, y1), (x0, x1) = [(min(les.bbox[2 * a] for les in lesions), max(les.bbox[2 * a + 1] for les in lesions))
                                    for a in range(3)]
    y_case = torch.from_numpy(mask[z0:z1, y0:y1, x0:x1].astype(np.int64))[None, None]
    i_case = torch.from_numpy(ids[z0:z1, y0:y1, x0:x1].astype(np.int64))[None, None]
    big = max((les for les in lesions if les.label == 2), key=lambda les: les.volume_mm3)
    cut_x = (big.bbox[4] + big.bbox[5]) // 2 - x0
    y_patch, i_patch = y_case[..., :cut_x], i_case[..., :cut_x]
    assert 0 < (i_patch == big.lesion_id).sum() < big.voxels
    w_case = loss.voxel_weights(y_case, i_case, table)
    w_patch = loss.voxel_weights(y_patch, i_patch, table)
    nodes = [les.lesion_id for les in lesions if les.label == 2 and (i_patch == les.lesion_id).any()]
    assert big.lesion_id in nodes and len(nodes) >= 2
    per_case = {k: w_case[i_case == k][0].item() for k in nodes}
    per_patch = {k: w_patch[i_patch == k][0].item() for k in nodes}
    if mode == "absolute":
        assert per_patch == pytest.approx(per_case, rel=1e-6)
    else:
        for k in nodes:
            assert per_patch[k] / per_patch[big.lesion_id] == pytest.approx(per_case[k] / per_case[big.lesion_id],
                                                                            rel=1e-5)
    # The smaller node weighs more than the large one whichever way it is measured.
    small = min(nodes, key=lambda k: table[0, k].item())
    assert per_patch[small] > per_patch[big.lesion_id]
