"""The VA Dice + cross-entropy loss nnU-Net trains with, its presets, and the dataset's median lesion volumes.

:class:`VolumeAwareDiceCELoss` is nnU-Net's ``DC_and_CE_loss`` with the soft Dice
term replaced by :class:`vadice.losses.va_dice.VolumeAwareDiceLoss`
(docs/va-loss.md); ``va_labels=()`` reproduces nnU-Net's loss.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vadice.losses.va_dice import PRESETS, WEIGHTINGS, VolumeAwareDiceLoss, softmax_dim1

__all__ = ["VolumeAwareDiceCELoss", "loss_from_preset", "median_lesion_volumes"]


class VolumeAwareDiceCELoss(nn.Module):
    """VA soft Dice plus unweighted cross-entropy, like nnU-Net's ``DC_and_CE_loss``.

    ``weight_ce * CE + weight_dice * VA-Dice``. The Dice part is the attribute
    ``dc`` (compile it alone, as nnU-Net does); CE is ``F.cross_entropy`` on
    the logits, unweighted. With ``va_labels=()`` value and gradient equal
    nnU-Net's DC_and_CE_loss with MemoryEfficientSoftDiceLoss.

    Args:
      weight_ce, weight_dice: term weights (a zero weight skips the term).
      ignore_label: label excluded from both terms, as nnU-Net: the Dice uses
        it as a loss mask (and as background for the lesion weights), CE
        ignores it; a batch of only ignored voxels gives CE 0.
      **va_kwargs: options of :class:`VolumeAwareDiceLoss`.
    """

    def __init__(self, weight_ce: float = 1.0, weight_dice: float = 1.0, ignore_label: int | None = None,
                 **va_kwargs):
        super().__init__()
        for name, value in (("weight_ce", weight_ce), ("weight_dice", weight_dice)):
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if ignore_label is not None:
            if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)):
                raise ValueError(f"ignore_label must be an integer or None, got {ignore_label!r}")
            if int(ignore_label) in tuple(va_kwargs.get("va_labels", PRESETS["dual"]["va_labels"])):
                raise ValueError(f"ignore_label {ignore_label} cannot also be a VA label")
        if va_kwargs.get("apply_nonlin", softmax_dim1) is not softmax_dim1:
            raise ValueError("VolumeAwareDiceCELoss takes logits; apply_nonlin is fixed to softmax")
        va_kwargs.pop("apply_nonlin", None)
        self.weight_ce = float(weight_ce)
        self.weight_dice = float(weight_dice)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.dc = VolumeAwareDiceLoss(apply_nonlin=softmax_dim1, **va_kwargs)

    def forward(
        self,
        net_output: torch.Tensor,
        target: torch.Tensor,
        instances: torch.Tensor | None = None,
        volumes: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Args as :meth:`VolumeAwareDiceLoss.forward`; ``net_output`` holds logits (B, C, *S)."""
        if target.ndim == net_output.ndim - 1:
            target = target.unsqueeze(1)
        if self.ignore_label is not None:
            mask = target != self.ignore_label
            target_dice = torch.where(mask, target, torch.zeros_like(target))
        else:
            mask, target_dice = None, target

        loss = net_output.new_zeros((), dtype=torch.promote_types(net_output.dtype, torch.float32))
        if self.weight_dice != 0:
            loss = loss + self.weight_dice * self.dc(net_output, target_dice, instances, volumes, loss_mask=mask)
        if self.weight_ce != 0:
            if target.shape[1] != 1:
                raise ValueError(f"target must be (B, 1, *S), got {tuple(target.shape)}")
            labels = target[:, 0].long()
            if self.ignore_label is None:
                ce = F.cross_entropy(net_output, labels)
            else:
                # Sum / count instead of nnU-Net's `if num_fg > 0`: same value, no host sync, and a batch
                # of only ignored voxels gives 0 instead of NaN.
                ce = F.cross_entropy(net_output, labels, ignore_index=self.ignore_label, reduction="sum")
                ce = ce / mask.sum().clamp_min(1)
            loss = loss + self.weight_ce * ce
        return loss


def loss_from_preset(name: str, weighting: str = "bounded", **overrides) -> VolumeAwareDiceCELoss:
    """The training loss (VA Dice + CE) of a named set-up.

    Args:
      name: one of ``PRESETS``: ``baseline`` (M = ∅, nnU-Net's DC+CE),
        ``dual`` (M = {1, 2}), ``selective-ln`` (M = {2}).
      weighting: one of ``WEIGHTINGS``: ``bounded`` (the defaults: ratios
        clipped to [0.1, 10] around the pool's geometric-mean volume) or
        ``equal-mass`` (no clipping: equal total weight per lesion).
      **overrides: options of :class:`VolumeAwareDiceCELoss` /
        :class:`VolumeAwareDiceLoss` (e.g. ``batch_dice``, ``ddp``, ``gamma``).

    Raises:
      ValueError: unknown preset or weighting name, or invalid option.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown VA loss preset {name!r}; choose one of {sorted(PRESETS)}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown VA weighting {weighting!r}; choose one of {sorted(WEIGHTINGS)}")
    return VolumeAwareDiceCELoss(**{**PRESETS[name], **WEIGHTINGS[weighting], **overrides})


def median_lesion_volumes(tables: Iterable[Iterable[Any]], labels: Iterable[int] | None = None,
                          allow_missing: bool = False) -> dict[int, float | None]:
    """Median whole-case lesion volume per label over cases (absolute mode's v_ref).

    The one place vadice computes it: the lesion table's ``median_volume_mm3``
    and the VA trainers' absolute-mode reference come from here too.

    Args:
      tables: one lesion table per case; a table is an iterable of
        :class:`vadice.lesions.Lesion` objects or of mappings with keys
        ``label`` and ``volume_mm3``.
      labels: labels that must get a reference (``None``: every label seen).
      allow_missing: give ``None`` for a requested label without any lesion
        instead of raising.

    Returns:
      ``{label: median volume in mm³}``, lesions of all cases pooled.

    Raises:
      ValueError: a requested label has no lesion (unless ``allow_missing``),
        or a volume is not finite and > 0.
    """
    pooled: dict[int, list[float]] = {}
    for case, table in enumerate(tables):
        for lesion in table:
            if isinstance(lesion, Mapping):
                label, vol = lesion["label"], lesion["volume_mm3"]
            else:
                label, vol = lesion.label, lesion.volume_mm3
            vol = float(vol)
            if not (math.isfinite(vol) and vol > 0):
                raise ValueError(f"case {case}: lesion of label {label} has volume {vol!r}, expected finite > 0 mm³")
            pooled.setdefault(int(label), []).append(vol)
    wanted = sorted(pooled) if labels is None else [int(lab) for lab in labels]
    missing = [lab for lab in wanted if lab not in pooled]
    if missing and not allow_missing:
        raise ValueError(f"no lesion of label(s) {missing} in the tables: no reference volume can be measured")
    return {lab: float(np.median(pooled[lab])) if lab in pooled else None for lab in wanted}
