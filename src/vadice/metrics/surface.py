"""Surface-distance metrics: surface Dice (SDS), mean symmetric surface distance, HD95.

Surfaces are made of surface elements ("surfels") on the voxel-corner grid,
weighted by their area, as DeepMind's surface-distance does (MONAI matches it
with ``use_subvoxels=True``): every corner of the grid gets the 8-bit code of
the 2x2x2 voxels around it, codes other than "all outside"/"all inside" are
surface points, and each carries the area of the marching-cubes surface
inside its 2x2x2 cell.

Distances from each surface point to the other surface come from a KD-tree
over the other surface's points (scipy cKDTree) on the crop of both masks:
surfaces are sparse, and on realistic crops this beat a Euclidean distance
transform ~4x. All work happens on the bounding box of both masks plus one
voxel, so the cost depends on the structures, not the image size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from vadice.lesions import check_spacing

HD_MODES = ("directed", "pooled")


def check_binary_pair(gt: np.ndarray, pred: np.ndarray, ndim: int = 3) -> None:
    """Raise a specific error unless ``gt`` and ``pred`` are same-shape bool arrays.

    Raises:
      TypeError: not NumPy arrays, or not dtype bool.
      ValueError: wrong dimensionality or shape mismatch.
    """
    for name, arr in (("gt", gt), ("pred", pred)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array, got {type(arr).__name__}")
        if arr.dtype != bool:
            raise TypeError(f"{name} must have dtype bool, got {arr.dtype}")
        if arr.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got {arr.ndim}-D shape {arr.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: {gt.shape} vs {pred.shape}")


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of the non-zero voxels of ``mask``, grown by ``margin``.

    Uses per-axis max-reductions rather than ``np.nonzero``: on a 512x512x80
    volume that is ~1 ms instead of ~50 ms. Returns None for an empty mask.
    """
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.max(axis=other) if mask.size else np.zeros(mask.shape[axis]))
        if hit.size == 0:
            return None
        lo = max(int(hit[0]) - margin, 0)
        hi = min(int(hit[-1]) + 1 + margin, mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


@functools.lru_cache(maxsize=1)
def _unit_normals() -> tuple[np.ndarray, ...]:
    """Per neighbour code, the half cross products of its marching-cubes triangles.

    Computed once from scikit-image's classic (Lorensen) marching cubes on a
    single 2x2x2 cell at unit spacing, where every vertex is an edge midpoint
    and therefore exact. The surface separating a configuration from its
    complement is the same surface, but a marching-cubes table resolves
    ambiguous faces differently for the two; we always triangulate the side
    with at most four inside corners so that a code and its complement have
    the same area (which is what DeepMind's table does too).
    """
    from skimage import measure  # imported lazily: 0.1 s import, needed once

    normals: list[np.ndarray] = []
    for code in range(256):
        ones = bin(code).count("1")
        if ones in (0, 8):
            normals.append(np.zeros((0, 3)))
            continue
        cell_code = code if ones <= 4 else 255 - code
        cell = np.array([(cell_code >> (7 - bit)) & 1 for bit in range(8)], dtype=np.float64)
        verts, faces, _, _ = measure.marching_cubes(
            cell.reshape(2, 2, 2), 0.5, method="lorensen", allow_degenerate=False
        )
        tri = verts.astype(np.float64)[faces]
        normals.append(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) / 2.0)
    return tuple(normals)


@functools.lru_cache(maxsize=64)
def _area_table(spacing: tuple[float, ...]) -> np.ndarray:
    # A triangle's area vector scales component-wise by the product of the two
    # other spacings (cross product of scaled edges).
    s0, s1, s2 = spacing
    scale = np.array([s1 * s2, s0 * s2, s0 * s1])
    table = np.array([np.linalg.norm(n * scale, axis=1).sum() for n in _unit_normals()])
    table.flags.writeable = False
    return table


def neighbour_code_area_table(spacing: Sequence[float]) -> np.ndarray:
    """Surfel area in mm² for each of the 256 codes of a 2x2x2 neighbourhood.

    Bit ``7 - (4a + 2b + c)`` of a code is set when the voxel at offset
    ``(a, b, c)`` (array axis order) of the cell is inside.

    Args:
      spacing: voxel spacing in mm, array axis order.

    Returns:
      float64 array of shape (256,); codes 0 and 255 have area 0.
    """
    return _area_table(check_spacing(spacing, 3)).copy()


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit neighbour code of every voxel corner of a 3-D bool mask.

    Returns:
      uint8 array of shape ``mask.shape + 1`` per axis; corner ``(i, j, k)``
      lies between voxels ``i-1, i`` (and likewise on the other axes).
    """
    padded = np.pad(mask.view(np.uint8), 1)
    n0, n1, n2 = (s + 1 for s in mask.shape)
    code = np.zeros((n0, n1, n2), dtype=np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                code |= padded[a:a + n0, b:b + n1, c:c + n2] << np.uint8(7 - (4 * a + 2 * b + c))
    return code


def separated_boxes(mask: np.ndarray) -> list[tuple[slice, ...]]:
    """Tight boxes of groups of voxels separated from each other by at least one empty plane.

    Splits recursively wherever a box's projection on an axis has a gap. A
    2x2x2 neighbour-code cell never holds voxels of two such groups, so the
    surface of ``mask`` is the union of the groups' surfaces, each computed on
    its own box: a distant false positive no longer stretches one box over
    the space between it and the rest. Empty mask: no box.
    """
    first = bounding_box(mask)
    todo, out = ([first] if first is not None else []), []
    while todo:
        box = todo.pop()
        sub = mask[box]
        for axis in range(mask.ndim):
            other = tuple(a for a in range(mask.ndim) if a != axis)
            hit = sub.max(axis=other)
            if hit.all():
                continue
            # Runs of occupied planes along this axis; the box is tight, so it starts and ends occupied.
            edges = np.flatnonzero(np.diff(hit.astype(np.int8)))
            starts = np.concatenate(([0], edges[1::2] + 1))
            stops = np.concatenate((edges[0::2] + 1, [hit.size]))
            for lo, hi in zip(starts, stops):
                part = list(box)
                part[axis] = slice(box[axis].start + int(lo), box[axis].start + int(hi))
                tight = bounding_box(mask[tuple(part)])
                todo.append(tuple(slice(p.start + t.start, p.start + t.stop) for p, t in zip(part, tight)))
            break
        else:
            out.append(box)
    return out


def _surface(mask: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    points, areas = [np.zeros((0, 3))], [np.zeros(0)]
    for box in separated_boxes(mask):
        code = neighbour_codes(mask[box])
        idx = np.nonzero((code != 0) & (code != 255))
        offset = np.array([b.start for b in box], dtype=np.float64)
        points.append((np.stack(idx, axis=1) + offset) * np.asarray(spacing))
        areas.append(_area_table(spacing)[code[idx]])
    return np.concatenate(points), np.concatenate(areas)


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed distances between two surfaces, with surfel areas.

    Attributes:
      distances_gt_to_pred: mm, one per truth surfel, sorted ascending
        (``inf`` when the prediction is empty).
      areas_gt: mm², matching ``distances_gt_to_pred``.
      distances_pred_to_gt: mm, one per predicted surfel, sorted ascending.
      areas_pred: mm², matching ``distances_pred_to_gt``.
    """

    distances_gt_to_pred: np.ndarray
    areas_gt: np.ndarray
    distances_pred_to_gt: np.ndarray
    areas_pred: np.ndarray

    @property
    def gt_empty(self) -> bool:
        return self.areas_gt.size == 0

    @property
    def pred_empty(self) -> bool:
        return self.areas_pred.size == 0


def _directed(points_from: np.ndarray, points_to: np.ndarray) -> np.ndarray:
    if points_from.shape[0] == 0:
        return np.zeros(0)
    if points_to.shape[0] == 0:
        return np.full(points_from.shape[0], np.inf)
    # leafsize above the default suits one batched query per tree.
    dist, _ = cKDTree(points_to, leafsize=32, balanced_tree=False).query(points_from, k=1)
    return dist


def surface_distances(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Distances from every surfel of each mask to the other mask's surface.

    Args:
      gt: 3-D bool array, truth.
      pred: 3-D bool array of the same shape, prediction.
      spacing: voxel spacing in mm, array axis order (z, y, x for vadice arrays).

    Returns:
      :class:`SurfaceDistances`, each direction sorted by distance.

    Raises:
      TypeError: non-array or non-bool inputs.
      ValueError: shape mismatch, not 3-D, or bad spacing.
    """
    check_binary_pair(gt, pred)
    spacing = check_spacing(spacing, 3)
    box = bounding_box(gt | pred)
    if box is None:
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    # Both surfaces in the coordinates of the shared box; each mask is then split into separated groups.
    pts_gt, area_gt = _surface(gt[box], spacing)
    pts_pred, area_pred = _surface(pred[box], spacing)
    d_gt = _directed(pts_gt, pts_pred)
    d_pred = _directed(pts_pred, pts_gt)
    o_gt = np.argsort(d_gt, kind="stable")
    o_pred = np.argsort(d_pred, kind="stable")
    return SurfaceDistances(d_gt[o_gt], area_gt[o_gt], d_pred[o_pred], area_pred[o_pred])


def _check_tolerance(tolerance_mm: float) -> float:
    tolerance_mm = float(tolerance_mm)
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
    return tolerance_mm


def surface_dice(sd: SurfaceDistances, tolerance_mm: float) -> float:
    """Surface Dice (SDS, normalised surface distance) at ``tolerance_mm``.

    (area of truth surface within tolerance of the prediction + area of the
    predicted surface within tolerance of the truth) / (total area of both).

    Returns:
      value in [0, 1]; 0 when exactly one surface is empty; NaN when both are.
    """
    tolerance_mm = _check_tolerance(tolerance_mm)
    total = sd.areas_gt.sum() + sd.areas_pred.sum()
    if total == 0:
        return float("nan")
    inside = (sd.areas_gt[sd.distances_gt_to_pred <= tolerance_mm].sum()
              + sd.areas_pred[sd.distances_pred_to_gt <= tolerance_mm].sum())
    return float(inside / total)


def mean_surface_distance(sd: SurfaceDistances) -> float:
    """Mean symmetric surface distance: area-weighted mean of both directed sets pooled.

    Returns:
      mm; NaN when either surface is empty (undefined, see docs/evaluation.md).
    """
    if sd.gt_empty or sd.pred_empty:
        return float("nan")
    num = np.dot(sd.distances_gt_to_pred, sd.areas_gt) + np.dot(sd.distances_pred_to_gt, sd.areas_pred)
    return float(num / (sd.areas_gt.sum() + sd.areas_pred.sum()))


def _weighted_percentile(sorted_dist: np.ndarray, areas: np.ndarray, percentile: float) -> float:
    # Smallest distance whose cumulative area fraction reaches the percentile
    # (no interpolation), the DeepMind definition.
    cum = np.cumsum(areas) / np.sum(areas)
    idx = int(np.searchsorted(cum, percentile / 100.0))
    return float(sorted_dist[min(idx, sorted_dist.size - 1)])


def hausdorff_distance(sd: SurfaceDistances, percentile: float = 95.0, mode: str = "directed") -> float:
    """Area-weighted percentile Hausdorff distance (HD95 by default).

    Args:
      sd: from :func:`surface_distances`.
      percentile: in (0, 100]; 100 gives the classic Hausdorff distance.
      mode: ``"directed"`` (default): max of the two directed percentiles
        (DeepMind/MONAI convention; a distant false-positive lesion shows).
        ``"pooled"``: percentile of both directed sets pooled (MedPy/panoptica
        style; can hide a distant false positive).

    Returns:
      mm; NaN when either surface is empty.

    Raises:
      ValueError: bad percentile or mode.
    """
    if not 0 < float(percentile) <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if mode not in HD_MODES:
        raise ValueError(f"mode must be one of {HD_MODES}, got {mode!r}")
    if sd.gt_empty or sd.pred_empty:
        return float("nan")
    if mode == "directed":
        return max(_weighted_percentile(sd.distances_gt_to_pred, sd.areas_gt, percentile),
                   _weighted_percentile(sd.distances_pred_to_gt, sd.areas_pred, percentile))
    dist = np.concatenate([sd.distances_gt_to_pred, sd.distances_pred_to_gt])
    areas = np.concatenate([sd.areas_gt, sd.areas_pred])
    order = np.argsort(dist, kind="stable")
    return _weighted_percentile(dist[order], areas[order], percentile)


def surface_metrics(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float],
    tolerances: Sequence[float] = (2.0,),
    hd_mode: str = "directed",
    percentile: float = 95.0,
) -> dict:
    """SDS at each tolerance, MSD and HD95 of one structure in one pass.

    Args:
      gt, pred: 3-D bool arrays of the same shape.
      spacing: mm, array axis order.
      tolerances: SDS tolerances in mm.
      hd_mode: ``"directed"`` or ``"pooled"`` (see :func:`hausdorff_distance`).
      percentile: Hausdorff percentile.

    Returns:
      ``{"sds": {tol: value}, "msd": float, "hd95": float, "flag": str}`` where
      flag is ``""``, ``"gt_empty"``, ``"pred_empty"`` or ``"both_empty"``.
    """
    tolerances = [_check_tolerance(t) for t in tolerances]
    sd = surface_distances(gt, pred, spacing)
    flag = ("both_empty" if sd.gt_empty and sd.pred_empty else "gt_empty" if sd.gt_empty
            else "pred_empty" if sd.pred_empty else "")
    return {
        "sds": {t: surface_dice(sd, t) for t in tolerances},
        "msd": mean_surface_distance(sd),
        "hd95": hausdorff_distance(sd, percentile, hd_mode),
        "flag": flag,
    }
