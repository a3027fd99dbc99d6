"""Per-component bookkeeping shared by the comparator losses (blob, CC-DiceCE, CATMIL).

Every comparator needs the same few things from a batch: the label map as a
(B, 1, *S) long tensor, the id map flattened per sample, the label of each
lesion id, per-id sums by scatter (no Python loop over lesions), and the
"mean over components of a sample, then over the samples that have one"
reduction. They live here so that the three loss modules hold only their
formulas.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Iterable

import numpy as np
import torch

__all__ = [
    "check_label_set",
    "check_number",
    "component_mean",
    "id_labels",
    "id_map",
    "label_map",
    "num_ids",
    "scatter_sum",
]


def check_number(name: str, value, minimum: float = 0.0, strict: bool = False) -> float:
    """A finite real option ``>= minimum`` (``> minimum`` if ``strict``).

    Raises:
      ValueError: naming the option and the bound.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def check_label_set(name: str, labels: Iterable[int] | None) -> tuple[int, ...] | None:
    """Foreground labels (ints > 0, no repeats) or ``None`` (= every foreground label).

    Raises:
      ValueError: a string, a non-integer, a label <= 0, a repeated label or an empty set.
    """
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise ValueError(f"{name} must be a sequence of foreground labels or None, got {labels!r}")
    out = tuple(labels)
    for lab in out:
        if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)) or lab <= 0:
            raise ValueError(f"{name} must hold foreground labels (integers > 0), got {out!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a label, got {out!r}")
    if not out:
        # an empty set would make the component term silently 0: the main loss alone is the baseline trainer
        raise ValueError(f"{name} must name at least one label (None = all foreground labels)")
    return tuple(int(lab) for lab in out)


def label_map(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` as a (B, 1, *S) long tensor matching ``logits`` (B, C, *S).

    Raises:
      ValueError: non-float logits, mismatched shapes.
    """
    if logits.ndim < 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float (B, C, *spatial) tensor, got {logits.dtype} {tuple(logits.shape)}")
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape != (logits.shape[0], 1, *logits.shape[2:]):
        raise ValueError(f"target must be (B, 1, *S) = {(logits.shape[0], 1, *logits.shape[2:])} "
                         f"to match logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    return target.long()


def id_map(instances: torch.Tensor, y: torch.Tensor, name: str = "instances") -> torch.Tensor:
    """``instances`` as a (B, N) long tensor (N = voxels per sample), checked against ``y`` (B, 1, *S)."""
    if instances.ndim == y.ndim - 1:
        instances = instances.unsqueeze(1)
    if instances.shape != y.shape:
        raise ValueError(f"{name} must be (B, 1, *S) = {tuple(y.shape)}, got {tuple(instances.shape)}")
    return instances.to(y.device).long().flatten(1)


def num_ids(ids: torch.Tensor) -> int:
    """Width of a per-id table for ``ids``: max id + 1 (one host synchronisation).

    Raises:
      ValueError: negative ids.
    """
    if ids.numel() == 0:
        return 1
    lo, hi = torch.aminmax(ids)
    if int(lo) < 0:
        raise ValueError(f"lesion ids must be >= 0, got {int(lo)}")
    return int(hi) + 1


def scatter_sum(ids: torch.Tensor, values: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) sums of ``values`` (B, N) per id, with gradient to ``values``."""
    out = torch.zeros(ids.shape[0], width, dtype=values.dtype, device=values.device)
    return out.scatter_add(1, ids, values)


def id_labels(y_flat: torch.Tensor, ids: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) label of each lesion id (0 for ids absent from the patch and for id 0).

    The label is read at the id's own voxels (the max if an inconsistent map
    gives one id several labels; vadice's augmentation never does).
    """
    out = torch.zeros(ids.shape[0], width, dtype=torch.long, device=ids.device)
    out = out.scatter_reduce(1, ids, y_flat, reduce="amax", include_self=True)
    out[:, 0] = 0
    return out


def component_mean(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over the present components of each sample, then over the samples that have one.

    Args:
      values: (B, K) per-component terms (anything where ``present`` is False).
      present: (B, K) bool.

    Returns:
      0-d tensor; 0 when no sample has a component (never NaN).
    """
    values = torch.where(present, values, torch.zeros_like(values))
    n = present.sum(1).to(values.dtype)
    per_sample = values.sum(1) / n.clamp_min(1)
    has = (n > 0).to(values.dtype)
    return (per_sample * has).sum() / has.sum().clamp_min(1)
