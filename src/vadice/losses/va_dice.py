"""Volume-aware (VA) soft Dice loss, framework-agnostic PyTorch.

Definition (docs/va-loss.md): for a label c in the VA set M and lesion k of that
label, ``r_k = clip((V_ref,c / max(V_k, V_min)) ** gamma, r_min, r_max)`` where
V_k is the lesion's volume in mm³ measured on the WHOLE case. Every voxel of
lesion k gets weight ``r_k`` in the Dice term of label c ("absolute" mode), or
``r_k`` rescaled so that the weights of the label-c voxels of a pool (a sample,
or the batch with batch Dice, across DDP ranks) sum to their count ("mass"
mode). All other voxels weigh 1 in every term. The weighted soft Dice of a
label is ``(2 Σ w p y + s) / (Σ w p + Σ w y + s)``; the loss is minus its mean
over labels, exactly nnU-Net's ``MemoryEfficientSoftDiceLoss`` convention, so
that ``va_labels=()`` (or ``gamma=0``) reproduces nnU-Net's value and gradient.

Weights are looked up by lesion id on the tensor's device (scatter/gather over
a per-sample volume table); no per-lesion Python loop, no NumPy and no host
synchronisation on the training path, so ``torch.compile(fullgraph=True)``
traces it. Only the fallback without an instance map labels connected
components, on the CPU, through :mod:`vadice.lesions`.

The Dice + cross-entropy pair nnU-Net trains with, the presets and the median
lesion volumes are in :mod:`vadice.losses.va_dice_ce`. (Just over 500 lines:
:class:`VolumeAwareDiceLoss` alone, its checks, weight lookup and DDP pooling, is
~400; split, one definition would sit in two modules.)
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from vadice.lesions import check_connectivity, label_components

__all__ = [
    "PRESETS",
    "WEIGHTINGS",
    "VolumeAwareDiceLoss",
    "softmax_dim1",
]

MODES = ("mass", "absolute")

PRESETS: dict[str, dict[str, Any]] = {
    "baseline": dict(va_labels=()),
    "dual": dict(va_labels=(1, 2)),
    "selective-ln": dict(va_labels=(2,)),
}

# How lesions are weighted against each other (docs/va-loss.md, "Defaults"). "bounded" is what
# VolumeAwareDiceLoss() does; "equal-mass" drops the clipping so that, in mass mode, every lesion
# of at least v_min_mm3 carries the same total weight however far apart the volumes are.
WEIGHTINGS: dict[str, dict[str, Any]] = {
    "bounded": dict(gamma=1.0, v_min_mm3=10.0, r_min=0.1, r_max=10.0),
    "equal-mass": dict(gamma=1.0, v_min_mm3=10.0, r_min=None, r_max=None),
}


def softmax_dim1(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the channel axis (a module-level function so losses pickle)."""
    return torch.softmax(x, 1)


class _AllGatherGrad(torch.autograd.Function):
    """all_gather that passes gradients back to each rank's own slice.

    Same contract as nnU-Net's ``AllGatherGrad`` (which comes from PyTorch
    Lightning); rewritten here because this layer must not import nnunetv2.
    Forward stacks every rank's tensor on a new leading axis; backward sums the
    incoming gradients over ranks and returns this rank's slice.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = torch.distributed.get_world_size()
        gathered = [torch.zeros_like(tensor) for _ in range(world)]
        torch.distributed.all_gather(gathered, tensor.contiguous())
        return torch.stack(gathered, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, op=torch.distributed.ReduceOp.SUM)
        return grad[torch.distributed.get_rank()]


def _ddp_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _check_ratio_bound(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    value = float(value)
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name} must be > 0 (or None for no bound), got {value!r}")
    return value


def _check_volume(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number in mm³, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0 mm³, got {value!r}")
    return value


class VolumeAwareDiceLoss(nn.Module):
    """Soft Dice with per-lesion voxel weights that favour small lesions.

    Args:
      va_labels: foreground labels whose lesions are weighted (the set M);
        ``()`` gives nnU-Net's plain soft Dice.
      gamma: exponent of the volume ratio, >= 0 (0 = no weighting, 1 = every
        lesion equal total weight in mass mode).
      mode: ``"mass"`` (weights rescaled per pool so that label-c voxels keep
        their total count) or ``"absolute"`` (raw ratios against ``v_ref``).
      v_ref: reference volume in mm³, a number or a mapping label -> number
        covering every label of ``va_labels``. Required in absolute mode
        (use :func:`median_lesion_volumes` of the training cases). In mass mode
        it only sets the clipping reference; ``None`` there means the geometric
        mean volume of the label's lesions present in the pool.
      v_min_mm3: volume floor in mm³ before the ratio, so that one-voxel specks
        and mislabelled table entries cannot produce huge weights.
      r_min, r_max: clip bounds of the ratio (``None``: unbounded).
      batch_dice: pool sums (and mass normalisation) over the batch.
      do_bg: include the background channel in the Dice mean.
      smooth: the ``s`` of the Dice fraction (nnU-Net uses 1e-5).
      ddp: with batch Dice under an initialised ``torch.distributed``, pool
        over all ranks (statistics all-gathered with gradient, as nnU-Net).
      apply_nonlin: applied to the network output first (``None`` when the
        input already holds probabilities).
      spacing: voxel spacing in mm (array axis order) used only by the
        fallbacks that measure volumes from voxel counts; ``None``: voxel units.
      connectivity: 6, 18 or 26, for the fallback's connected components.
      check_values: in eager mode, verify label and id ranges and volume
        values (one host synchronisation per call); skipped under
        ``torch.compile``.

    Raises:
      ValueError: an invalid option, with the option named.
    """

    def __init__(
        self,
        va_labels: Iterable[int] = (1, 2),
        gamma: float = 1.0,
        mode: str = "mass",
        v_ref: float | Mapping[int, float] | None = None,
        v_min_mm3: float = 10.0,
        r_min: float | None = 0.1,
        r_max: float | None = 10.0,
        batch_dice: bool = False,
        do_bg: bool = False,
        smooth: float = 1e-5,
        ddp: bool = False,
        apply_nonlin: Callable[[torch.Tensor], torch.Tensor] | None = softmax_dim1,
        spacing: Sequence[float] | None = None,
        connectivity: int = 26,
        check_values: bool = True,
    ):
        super().__init__()
        if isinstance(va_labels, (str, bytes)) or not isinstance(va_labels, Iterable):
            raise ValueError(f"va_labels must be a sequence of labels, got {va_labels!r}")
        labels = tuple(va_labels)
        for lab in labels:
            if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)) or lab <= 0:
                raise ValueError(f"va_labels must be foreground labels (integers > 0), got {labels!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"va_labels must not repeat a label, got {labels!r}")
        self.va_labels = tuple(int(lab) for lab in labels)

        if isinstance(gamma, bool) or not isinstance(gamma, Real) or not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

        if v_ref is None:
            if mode == "absolute" and self.va_labels:
                raise ValueError(
                    "mode 'absolute' needs v_ref (mm³, a number or {label: volume}); "
                    "median_lesion_volumes() of the training cases gives it"
                )
            self.v_ref = None
        elif isinstance(v_ref, Mapping):
            missing = [lab for lab in self.va_labels if lab not in v_ref]
            if missing:
                raise ValueError(f"v_ref has no volume for label(s) {missing}; it must cover va_labels {self.va_labels}")
            self.v_ref = {int(lab): _check_volume(f"v_ref[{lab}]", v_ref[lab]) for lab in self.va_labels}
        else:
            vol = _check_volume("v_ref", v_ref)
            self.v_ref = {lab: vol for lab in self.va_labels}

        self.v_min_mm3 = _check_volume("v_min_mm3", v_min_mm3)
        self.r_min = _check_ratio_bound("r_min", r_min)
        self.r_max = _check_ratio_bound("r_max", r_max)
        if self.r_min is not None and self.r_max is not None and self.r_min > self.r_max:
            raise ValueError(f"r_min must be <= r_max, got r_min={self.r_min} > r_max={self.r_max}")
        if self.r_min is not None and math.isinf(self.r_min):
            raise ValueError("r_min must be finite")

        if isinstance(smooth, bool) or not isinstance(smooth, Real) or not (math.isfinite(smooth) and smooth >= 0):
            raise ValueError(f"smooth must be a finite number >= 0, got {smooth!r}")
        self.smooth = float(smooth)
        self.batch_dice = bool(batch_dice)
        self.do_bg = bool(do_bg)
        self.ddp = bool(ddp)
        if apply_nonlin is not None and not callable(apply_nonlin):
            raise ValueError(f"apply_nonlin must be callable or None, got {apply_nonlin!r}")
        self.apply_nonlin = apply_nonlin
        if spacing is not None:
            spacing = tuple(float(s) for s in spacing)
            if not spacing or not all(math.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(f"spacing must be positive finite numbers (mm), got {spacing!r}")
        self.spacing = spacing
        self.connectivity = check_connectivity(connectivity)
        self.check_values = bool(check_values)

    def extra_repr(self) -> str:
        return (
            f"va_labels={self.va_labels}, gamma={self.gamma}, mode={self.mode!r}, v_ref={self.v_ref}, "
            f"v_min_mm3={self.v_min_mm3}, r_min={self.r_min}, r_max={self.r_max}, "
            f"batch_dice={self.batch_dice}, do_bg={self.do_bg}, smooth={self.smooth}, ddp={self.ddp}"
        )

    # ------------------------------------------------------------------ public

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        instances: torch.Tensor | None = None,
        volumes: torch.Tensor | Sequence[torch.Tensor] | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Minus the mean weighted soft Dice (nnU-Net's sign convention).

        Args:
          logits: (B, C, *S) network output (probabilities if ``apply_nonlin``
            is None).
          target: (B, 1, *S) or (B, *S) integer label map (any dtype holding
            integers, e.g. nnU-Net's int16 or float).
          instances: (B, 1, *S) or (B, *S) lesion ids, 0 = none, ids unique per
            sample; e.g. the case's instance map cropped/augmented like the
            target. ``None``: connected components of the target itself
            (patch-level fallback: slower, and lesions cut by the patch border
            look smaller than they are).
          volumes: whole-case lesion volumes in mm³ indexed by id, a (B, K+1)
            tensor (index 0 unused, padded rows) or a list of B 1-D tensors.
            ``None`` with ``instances`` given: voxel counts in the patch
            (x ``spacing``).
          loss_mask: optional (B, 1, *S) mask, 1 = voxel counts (as nnU-Net's
            ``loss_mask``, used for an ignore label).

        Returns:
          0-d float32 (float64 for float64 input) tensor, in [-1, 0].

        Raises:
          ValueError: mismatched shapes, labels outside [0, C), ids outside the
            volume table, negative or non-finite volumes.
        """
        dc = self.dice_terms(logits, target, instances, volumes, loss_mask)
        return -dc.mean()

    def dice_terms(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        instances: torch.Tensor | None = None,
        volumes: torch.Tensor | Sequence[torch.Tensor] | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted soft Dice per label before averaging: (B, C') or (C',) with batch Dice.

        C' = C - 1 without the background channel. Arguments as :meth:`forward`.
        """
        y = self._check_shapes(logits, target, loss_mask)
        weights = None
        if self.va_labels:
            with torch.no_grad():
                weights = self._weights(y, instances, volumes, logits.device,
                                        torch.promote_types(logits.dtype, torch.float32))
        x = self.apply_nonlin(logits) if self.apply_nonlin is not None else logits
        return self._soft_dice(x, y, weights, loss_mask)

    @torch.no_grad()
    def voxel_weights(
        self,
        target: torch.Tensor,
        instances: torch.Tensor | None = None,
        volumes: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Per-voxel weights the loss would use, (B, 1, *S), float32, no gradient.

        A voxel of label c in ``va_labels`` carries this weight in the Dice term
        of label c; every other (voxel, label) pair weighs 1. With batch Dice the
        weights depend on the whole batch, so pass the batch. Arguments as
        :meth:`forward`.
        """
        if target.ndim < 2:
            raise ValueError(f"target must be (B, 1, *S) or (B, *S), got shape {tuple(target.shape)}")
        y = target if target.ndim >= 3 and target.shape[1] == 1 else target.unsqueeze(1)
        y = y.long()
        if not self.va_labels:
            return torch.ones(y.shape, dtype=torch.float32, device=y.device)
        return self._weights(y, instances, volumes, y.device, torch.float32)

    # ----------------------------------------------------------------- checks

    def _check_shapes(self, logits, target, loss_mask) -> torch.Tensor:
        if logits.ndim < 3:
            raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
        if not logits.is_floating_point():
            raise ValueError(f"logits must be floating point, got {logits.dtype}")
        b, c, *spatial = logits.shape
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        if target.ndim != logits.ndim or target.shape[0] != b or target.shape[1] != 1 or list(target.shape[2:]) != spatial:
            raise ValueError(
                f"target must be a label map (B, 1, *S) = {(b, 1, *spatial)} matching logits {tuple(logits.shape)}, "
                f"got {tuple(target.shape)} (one-hot targets are not supported)"
            )
        if target.is_complex():
            raise ValueError(f"target must hold integer labels, got {target.dtype}")
        if self.va_labels and max(self.va_labels) >= c:
            raise ValueError(f"va_labels {self.va_labels} need more channels than the logits' {c}")
        if loss_mask is not None and (loss_mask.ndim != logits.ndim or loss_mask.shape[0] != b
                                      or loss_mask.shape[1] != 1 or list(loss_mask.shape[2:]) != spatial):
            raise ValueError(f"loss_mask must be (B, 1, *S) = {(b, 1, *spatial)}, got {tuple(loss_mask.shape)}")
        if self.check_values and not torch.compiler.is_compiling():
            bad = torch.stack([
                (target < 0).any() | (target >= c).any(),
                (target != torch.round(target)).any() if target.is_floating_point() else torch.zeros((), dtype=torch.bool, device=target.device),
            ]).tolist()
            if bad[0]:
                raise ValueError(f"target labels must lie in [0, {c}) for {c} output channels")
            if bad[1]:
                raise ValueError("target must hold integer labels, got non-integer values")
        return target.to(device=logits.device, dtype=torch.long)

    def _instance_tensor(self, instances: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if instances.ndim == y.ndim - 1:
            instances = instances.unsqueeze(1)
        if instances.shape != y.shape:
            raise ValueError(
                f"instances must have the target's shape {tuple(y.shape)} (one map per deep-supervision scale), "
                f"got {tuple(instances.shape)}"
            )
        if instances.is_complex() or instances.dtype == torch.bool:
            raise ValueError(f"instances must hold integer lesion ids, got {instances.dtype}")
        if self.check_values and not torch.compiler.is_compiling() and instances.is_floating_point():
            if bool((instances != torch.round(instances)).any()):
                raise ValueError("instances must hold integer lesion ids (nearest-neighbour interpolation), "
                                 "got non-integer values")
        return instances.to(device=y.device, dtype=torch.long)

    def _volume_table(self, volumes, batch: int, device, dtype) -> torch.Tensor:
        if isinstance(volumes, torch.Tensor):
            if volumes.ndim != 2 or volumes.shape[0] != batch:
                raise ValueError(
                    f"volumes must be a (B, K+1) tensor with B = {batch} (index 0 unused), "
                    f"got shape {tuple(volumes.shape)}"
                )
            return volumes.to(device=device, dtype=dtype)
        if isinstance(volumes, (list, tuple)):
            if len(volumes) != batch:
                raise ValueError(f"volumes must hold one table per sample ({batch}), got {len(volumes)}")
            rows = [torch.as_tensor(v).to(device=device, dtype=dtype) for v in volumes]
            for i, r in enumerate(rows):
                if r.ndim != 1:
                    raise ValueError(f"volumes[{i}] must be 1-D (indexed by lesion id), got shape {tuple(r.shape)}")
            return nn.utils.rnn.pad_sequence(rows, batch_first=True)
        raise ValueError(f"volumes must be a (B, K+1) tensor or a list of 1-D tensors, got {type(volumes).__name__}")

    def _voxel_volume(self, ndim_spatial: int) -> float:
        if self.spacing is None:
            return 1.0
        if len(self.spacing) != ndim_spatial:
            raise ValueError(f"spacing has {len(self.spacing)} values but the patch has {ndim_spatial} spatial axes")
        return float(np.prod(self.spacing))

    def _fallback_instances(self, y: torch.Tensor, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Patch-level connected components: runs on the CPU with NumPy, once per call.
        spatial = y.ndim - 2
        if spatial not in (2, 3):
            raise ValueError(f"labelling lesions needs a 2-D or 3-D patch, got {spatial} spatial axes; pass instances")
        voxel = self._voxel_volume(spatial)
        y_np = y[:, 0].detach().cpu().numpy()
        maps, tables = [], []
        for sample in y_np:
            ids, _ = label_components(sample.astype(np.int64), self.va_labels, self.connectivity)
            maps.append(torch.from_numpy(ids.astype(np.int64)))
            tables.append(torch.from_numpy(np.bincount(ids.reshape(-1)).astype(np.float64) * voxel))
        inst = torch.stack(maps).unsqueeze(1).to(device)
        vols = nn.utils.rnn.pad_sequence([t.to(dtype) for t in tables], batch_first=True).to(device)
        return inst, vols

    # ---------------------------------------------------------------- weights

    def _weights(self, y, instances, volumes, device, dtype) -> torch.Tensor:
        """(B, 1, *S) weight of each voxel in the term of its own label."""
        batch = y.shape[0]
        if instances is None:
            if volumes is not None:
                raise ValueError("volumes were given without instances: they are indexed by the ids of an instance map")
            ids, vols = self._fallback_instances(y, device, dtype)
        else:
            ids = self._instance_tensor(instances, y)
            if volumes is None:
                # Patch-level volumes: voxel counts of each id in this patch.
                n_ids = int(ids.max()) + 1 if ids.numel() else 1
                vols = torch.zeros(batch, n_ids, device=device, dtype=dtype)
                vols.scatter_add_(1, ids.flatten(1), torch.ones(ids.flatten(1).shape, device=device, dtype=dtype))
                vols = vols * self._voxel_volume(y.ndim - 2)
            else:
                vols = self._volume_table(volumes, batch, device, dtype)
        if self.check_values and not torch.compiler.is_compiling():
            bad = torch.stack([
                (ids < 0).any() | (ids >= vols.shape[1]).any(),
                ~torch.isfinite(vols).all() | (vols < 0).any(),
            ]).tolist()
            if bad[0]:
                raise ValueError(f"lesion ids must lie in [0, {vols.shape[1]}): the volume table has {vols.shape[1]} "
                                 "entries per sample (index = id)")
            if bad[1]:
                raise ValueError("lesion volumes must be finite and >= 0 mm³")

        yf = y.flatten(1).to(device)
        idf = ids.flatten(1)
        lesion_vol = vols[:, 1:].clamp_min(self.v_min_mm3)
        pooled = self.batch_dice
        ddp = pooled and self.ddp and _ddp_active()
        omega = torch.ones(yf.shape, device=device, dtype=dtype)
        for lab in self.va_labels:
            is_lab = yf == lab
            # counts[b, k]: voxels of lesion k carrying label `lab` in this patch; k = 0 collects
            # label voxels without an id (inconsistent maps), which get ratio 1.
            counts = torch.zeros(vols.shape, device=device, dtype=dtype)
            counts.scatter_add_(1, idf, is_lab.to(dtype))
            present = (counts[:, 1:] > 0).to(dtype)

            if self.v_ref is not None:
                ref = torch.full((batch, 1), self.v_ref[lab], device=device, dtype=dtype)
            else:
                # Geometric mean volume of the pool's lesions (each counted once): the reference only
                # matters through clipping, and a log-mean can be all-reduced across ranks.
                log_sum = (present * lesion_vol.log()).sum(1, keepdim=True)
                n_les = present.sum(1, keepdim=True)
                if pooled:
                    stats = torch.cat([log_sum, n_les], 1).sum(0, keepdim=True)
                    if ddp:
                        torch.distributed.all_reduce(stats)
                    log_sum, n_les = stats[:, :1], stats[:, 1:]
                ref = torch.exp(log_sum / n_les.clamp_min(1.0)).expand(batch, 1)

            ratio = torch.cat([torch.ones_like(ref), ref / lesion_vol], 1) ** self.gamma
            if self.r_min is not None or self.r_max is not None:
                ratio = ratio.clamp(min=self.r_min, max=self.r_max)
            if self.mode == "mass":
                sums = torch.stack([counts.sum(1), (counts * ratio).sum(1)], 1)  # (B, 2)
                if pooled:
                    sums = sums.sum(0, keepdim=True)
                    if ddp:
                        torch.distributed.all_reduce(sums)
                n_vox, mass = sums[:, 0:1], sums[:, 1:2]
                # Empty label in the pool: leave weights at 1 rather than divide by zero.
                scale = torch.where(n_vox > 0, n_vox / mass.clamp_min(torch.finfo(dtype).tiny), torch.ones_like(n_vox))
                ratio = ratio * scale
            omega = torch.where(is_lab, torch.gather(ratio, 1, idf), omega)
        return omega.view(y.shape)

    # ------------------------------------------------------------------- dice

    def _soft_dice(self, x, y, weights, loss_mask) -> torch.Tensor:
        axes = tuple(range(2, x.ndim))
        # Products and sums in (at least) fp32 whatever autocast gives us.
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.no_grad():
            y_onehot = torch.zeros(x.shape, device=x.device, dtype=dtype)
            y_onehot.scatter_(1, y, 1)
            if not self.do_bg:
                y_onehot = y_onehot[:, 1:]
            if weights is None:
                gt_w, pred_w = y_onehot, None
            else:
                gt_w = y_onehot * weights.to(dtype)
                # 1 everywhere except on a voxel's own label channel, where it is the voxel weight.
                pred_w = gt_w - y_onehot + 1
            if loss_mask is not None:
                mask = loss_mask.to(dtype)
                gt_w = gt_w * mask
                pred_w = mask if pred_w is None else pred_w * mask
            sum_gt = gt_w.sum(axes, dtype=dtype)

        if not self.do_bg:
            x = x[:, 1:]
        x = x.to(dtype)
        intersect = (x * gt_w).sum(axes, dtype=dtype)
        sum_pred = x.sum(axes, dtype=dtype) if pred_w is None else (x * pred_w).sum(axes, dtype=dtype)

        if self.batch_dice:
            if self.ddp and _ddp_active():
                intersect = _AllGatherGrad.apply(intersect).sum(0, dtype=dtype)
                sum_pred = _AllGatherGrad.apply(sum_pred).sum(0, dtype=dtype)
                sum_gt = _AllGatherGrad.apply(sum_gt).sum(0, dtype=dtype)
            intersect = intersect.sum(0, dtype=dtype)
            sum_pred = sum_pred.sum(0, dtype=dtype)
            sum_gt = sum_gt.sum(0, dtype=dtype)

        return (2 * intersect + self.smooth) / (sum_gt + sum_pred + self.smooth).clamp_min(1e-8)
