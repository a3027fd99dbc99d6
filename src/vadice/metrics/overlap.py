"""Volumetric overlap: Dice, volumes, and the HNTS-MRG aggregated Dice (DSCagg)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vadice.lesions import check_spacing
from vadice.metrics.surface import check_binary_pair


@dataclass(frozen=True)
class Overlap:
    """Voxel counts of one structure in one case, with the voxel volume.

    Attributes:
      gt_voxels, pred_voxels, intersection_voxels: counts.
      voxel_mm3: volume of one voxel in mm³.
    """

    gt_voxels: int
    pred_voxels: int
    intersection_voxels: int
    voxel_mm3: float

    @property
    def gt_mm3(self) -> float:
        return self.gt_voxels * self.voxel_mm3

    @property
    def pred_mm3(self) -> float:
        return self.pred_voxels * self.voxel_mm3

    @property
    def intersection_mm3(self) -> float:
        return self.intersection_voxels * self.voxel_mm3

    @property
    def dsc(self) -> float:
        """Dice; NaN when both masks are empty (undefined, excluded from means)."""
        denom = self.gt_voxels + self.pred_voxels
        return float("nan") if denom == 0 else 2.0 * self.intersection_voxels / denom


def overlap(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> Overlap:
    """Voxel counts of truth, prediction and their intersection.

    Args:
      gt, pred: bool arrays of the same shape (3-D).
      spacing: voxel spacing in mm, array axis order.

    Returns:
      :class:`Overlap`.

    Raises:
      TypeError, ValueError: as :func:`vadice.metrics.surface.check_binary_pair`,
        or bad spacing.
    """
    check_binary_pair(gt, pred)
    spacing = check_spacing(spacing, 3)
    return Overlap(
        gt_voxels=int(np.count_nonzero(gt)),
        pred_voxels=int(np.count_nonzero(pred)),
        intersection_voxels=int(np.count_nonzero(gt & pred)),
        voxel_mm3=float(np.prod(spacing)),
    )


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice similarity coefficient 2|A∩B| / (|A|+|B|).

    Args:
      gt, pred: bool arrays of the same shape (3-D).

    Returns:
      value in [0, 1]; 0 when exactly one mask is empty; NaN when both are.
    """
    return overlap(gt, pred, (1.0, 1.0, 1.0)).dsc


def dscagg(
    intersection_mm3: Sequence[float],
    gt_mm3: Sequence[float],
    pred_mm3: Sequence[float],
) -> float:
    """HNTS-MRG aggregated Dice of one structure over a cohort.

    DSCagg = 2 Σ|A∩B| / Σ(|A|+|B|) with physical volumes. Cases where the
    structure is absent from both contribute nothing; a false-positive
    prediction on a case without the structure enters the denominator.

    Args:
      intersection_mm3, gt_mm3, pred_mm3: per-case volumes, same length.

    Returns:
      value in [0, 1]; NaN when the structure is absent from every truth and
      prediction (0/0, which the official notebook leaves unguarded).

    Raises:
      ValueError: lengths differ or negative volumes.
    """
    inter, g, p = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (intersection_mm3, gt_mm3, pred_mm3))
    if not inter.size == g.size == p.size:
        raise ValueError(f"per-case sequences differ in length: {inter.size}, {g.size}, {p.size}")
    if (inter < 0).any() or (g < 0).any() or (p < 0).any():
        raise ValueError("volumes must be >= 0")
    return float(pooled_dscagg(inter, g, p))


def pooled_dscagg(intersection: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                  axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """DSCagg = 2 Σ|A∩B| / Σ(|A|+|B|) pooled over ``axis``: the one DSCagg formula, vectorised.

    :func:`dscagg` (one cohort) and the comparison (cases and seeds of every
    bootstrap resample at once) both use it, so there is one definition.

    Args:
      intersection, gt, pred: volumes of one shape (any unit, the same for all three).
      axis: the axes pooled (None: all).

    Returns:
      array of the remaining shape (0-d for ``axis=None``); NaN where Σ(|A|+|B|) is 0.
    """
    d = np.sum(np.asarray(gt) + np.asarray(pred), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, 2.0 * np.sum(intersection, axis=axis) / np.where(d > 0, d, 1), np.nan)
