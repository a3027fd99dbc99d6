"""Imaging cues of one lymph node (or any structure), measured from a T2 image and the node's voxels.

The cues radiologists read to call a cervical node metastatic (docs/data.md): long/short axis ratio (round vs
oval), short-axis size, a fatty hilum, central necrosis, heterogeneous signal, and the side of the neck
relative to the primary tumour. Measured from voxels only, so that the same code reads a synthetic cohort and
real HNTS-MRG scans (non-fat-suppressed T2, where fat and necrosis are both bright).

* Axes: principal axes of the node's voxel positions in mm. A solid ellipsoid with semi-axis ``a`` has
  variance ``a**2 / 5`` along it, so a diameter is ``2 * sqrt(5 * eigenvalue)``.
* Bright cluster: the largest 26-connected set of node voxels brighter than ``BRIGHT_FACTOR`` x the node's
  median (the median is the parenchyma as long as fat or necrosis fill under half the node), kept when it
  holds at least ``max(MIN_BRIGHT_VOXELS, MIN_BRIGHT_SHARE x node voxels)``.
* Hilum vs necrosis: a hilum enters the node from its surface, a necrotic core sits in its middle. The bright
  cluster's centroid is compared with the node's: offset over the short semi-axis ``>= HILUM_OFFSET`` is a
  hilum, below it a central necrosis.
* Heterogeneity: interquartile range over median of the node's non-bright voxels (inner voxels where the node
  is thick enough to erode, so that the partial-volume rim does not count).
"""

from __future__ import annotations

import math

import cc3d
import numpy as np
from scipy import ndimage

from vadice.io import Geometry

BRIGHT_FACTOR = 1.3
MIN_BRIGHT_VOXELS = 3
MIN_BRIGHT_SHARE = 0.06
HILUM_OFFSET = 0.4
MIDLINE_MM = 2.0  # a primary whose centroid lies closer than this to the body midline has no side


def axes_mm(coords_zyx: np.ndarray, spacing_zyx) -> np.ndarray:
    """Diameters (mm) along the principal axes of a set of voxels, longest first.

    Args:
      coords_zyx: ``(n, 3)`` voxel indices.
      spacing_zyx: voxel spacing in mm, array order.

    Returns:
      three diameters ``2 * sqrt(5 * eigenvalue)`` of the positions' covariance (a solid ellipsoid's own axes).

    Raises:
      ValueError: fewer than 2 voxels.
    """
    if len(coords_zyx) < 2:
        raise ValueError(f"principal axes need at least 2 voxels, got {len(coords_zyx)}")
    pts = np.asarray(coords_zyx, dtype=float) * np.asarray(spacing_zyx, dtype=float)
    eig = np.linalg.eigvalsh(np.cov(pts, rowvar=False))
    return 2.0 * np.sqrt(5.0 * np.clip(eig[::-1], 0.0, None))


def measure_node(image: np.ndarray | None, region: np.ndarray, spacing_zyx) -> dict:
    """Cues of one node from its voxels.

    Args:
      image: T2 image (z, y, x), or a crop of it; None: shape cues only (signal cues None).
      region: boolean array of the node's voxels, same shape.
      spacing_zyx: voxel spacing in mm.

    Returns:
      dict with ``voxels``, ``volume_ml``, ``long_axis_mm``, ``short_axis_mm``, ``axis_ratio`` (long/short),
      ``bright_voxels`` (largest bright cluster kept, 0 if none), ``bright_offset`` (its centroid's distance
      from the node's over the short semi-axis; None without cluster), ``hilum``, ``necrosis`` (bools) and
      ``heterogeneity`` (IQR / median of the non-bright voxels).

    Raises:
      ValueError: shapes differ or fewer than 2 voxels.
    """
    if image is not None and image.shape != region.shape:
        raise ValueError(f"image {image.shape} and region {region.shape} differ in shape")
    region = region.astype(bool)
    coords = np.argwhere(region)
    spacing = np.asarray(spacing_zyx, dtype=float)
    diam = axes_mm(coords, spacing)
    shape_cues = {"voxels": int(len(coords)), "volume_ml": len(coords) * float(np.prod(spacing)) / 1000.0,
                  "long_axis_mm": float(diam[0]), "short_axis_mm": float(diam[2]),
                  "axis_ratio": float(diam[0] / diam[2]) if diam[2] > 0 else math.inf}
    if image is None:
        return {**shape_cues, "bright_voxels": None, "bright_offset": None, "hilum": None, "necrosis": None,
                "heterogeneity": None}
    values = image[region].astype(float)
    median = float(np.median(values))
    bright = region & (image > BRIGHT_FACTOR * median)
    n_bright, offset = 0, None
    if bright.any():
        cluster = cc3d.largest_k(bright.view(np.uint8), k=1, connectivity=26) > 0
        n = int(cluster.sum())
        if n >= max(MIN_BRIGHT_VOXELS, MIN_BRIGHT_SHARE * len(coords)):
            n_bright = n
            shift = (np.argwhere(cluster).mean(axis=0) - coords.mean(axis=0)) * spacing
            offset = float(np.linalg.norm(shift) / (diam[2] / 2.0)) if diam[2] > 0 else math.inf
            bright = cluster
        else:
            bright = np.zeros_like(region)
    inner = ndimage.binary_erosion(region)
    core = inner if inner.sum() >= 10 else region
    rest = image[core & ~bright].astype(float)
    if rest.size == 0:
        rest = values
    q25, q50, q75 = np.percentile(rest, [25, 50, 75])
    return {**shape_cues, "bright_voxels": n_bright, "bright_offset": offset,
            "hilum": offset is not None and offset >= HILUM_OFFSET,
            "necrosis": offset is not None and offset < HILUM_OFFSET,
            "heterogeneity": float((q75 - q25) / q50) if q50 > 0 else None}


def physical_x(geometry: Geometry, index_zyx) -> float:
    """Patient x (mm, ITK/LPS: + is the patient's left) of a voxel position (z, y, x), fractional allowed."""
    ijk = np.asarray(index_zyx, dtype=float)[::-1] * np.asarray(geometry.spacing, dtype=float)
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    return float(geometry.origin[0] + direction[0] @ ijk)


def body_midline_x(image: np.ndarray, geometry: Geometry) -> float:
    """Patient x (mm) of the body's left-right centre: the mean over voxels brighter than a quarter of the
    95th percentile (air is far darker, muscle and fat above it, also under a +-25 % bias field)."""
    body = image > 0.25 * float(np.percentile(image, 95))
    return physical_x(geometry, ndimage.center_of_mass(body))


def side_of(x_mm: float, midline_mm: float) -> int:
    """+1 left, -1 right of the midline, 0 within ``MIDLINE_MM`` of it."""
    d = x_mm - midline_mm
    return 0 if abs(d) < MIDLINE_MM else (1 if d > 0 else -1)
