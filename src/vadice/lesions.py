"""Lesions: connected components per foreground label, with physical volumes.

The single implementation that the loss preprocessing, ``vadice stats`` and the
evaluation all use, so that "a lesion" means the same thing everywhere.
Components are found with connected-components-3d (cc3d), which labels a
multi-label volume in one pass and never joins voxels of different labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import cc3d
import numpy as np

CONNECTIVITIES = (6, 18, 26)


@dataclass(frozen=True)
class Lesion:
    """One connected component of one label.

    Attributes:
      lesion_id: id in the instance map (1..K, unique across labels).
      label: the label value the component belongs to.
      voxels: voxel count.
      volume_mm3: physical volume (voxels x voxel volume).
      centroid: centroid in voxel coordinates, array (z, y, x) order.
      bbox: (z0, z1, y0, y1, x0, x1), half-open voxel bounds.
    """

    lesion_id: int
    label: int
    voxels: int
    volume_mm3: float
    centroid: tuple[float, float, float]
    bbox: tuple[int, int, int, int, int, int]

    @property
    def volume_ml(self) -> float:
        return self.volume_mm3 / 1000.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["volume_ml"] = self.volume_ml
        return d


def check_connectivity(connectivity: int) -> int:
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    return int(connectivity)


def check_spacing(spacing: Sequence[float], ndim: int = 3) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing must have {ndim} values (array axis order), got {len(spacing)}")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing values must be finite and > 0, got {spacing}")
    return spacing


def label_components(
    mask: np.ndarray,
    labels: Iterable[int] | None = None,
    connectivity: int = 26,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance map of a label map, one id per connected component per label.

    Args:
      mask: integer label map, 2-D or 3-D.
      labels: foreground labels to consider; others are treated as background.
        ``None`` means every non-zero value.
      connectivity: 6, 18 or 26 (3-D); for 2-D inputs 6 maps to 4 and 18/26 to 8.

    Returns:
      ``(instances, component_label)``: instances is uint32 with 0 for
      background and 1..K for components, numbered in raster order of their
      first voxel; ``component_label[k]`` is the label of component k
      (index 0 unused, 0).

    Raises:
      ValueError: non-integer mask, bad dimensionality or connectivity.
    """
    connectivity = check_connectivity(connectivity)
    mask = np.asarray(mask)
    if mask.dtype.kind not in "iub":
        raise ValueError(f"mask must hold integer labels, got dtype {mask.dtype}")
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask must be 2-D or 3-D, got {mask.ndim}-D")
    if labels is not None:
        keep = np.isin(mask, np.asarray(sorted(set(int(l) for l in labels)), dtype=mask.dtype))
        mask = np.where(keep, mask, 0).astype(mask.dtype, copy=False)
    if mask.dtype == bool:
        mask = mask.view(np.uint8)
    flat = mask.ndim == 2
    if flat:
        # cc3d 3.29's 2-D path mislabels single-row images under 8-connectivity (a background pixel of a (1, N)
        # row got a component id). A one-slice 3-D volume gives the same partition through the tested 3-D path:
        # 6 -> 4-connectivity in the plane, 18 (= 26 on one slice) -> 8.
        mask = mask[None]
        connectivity = 6 if connectivity == 6 else 18
    instances, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    component_label = np.zeros(n + 1, dtype=np.int64)
    if n:
        fg = instances != 0
        component_label[instances[fg]] = mask[fg]
    return (instances[0] if flat else instances), component_label


def label_lesions(
    mask: np.ndarray,
    spacing: Sequence[float],
    labels: Iterable[int] | None = None,
    connectivity: int = 26,
) -> tuple[np.ndarray, list[Lesion]]:
    """Connected components with volumes, centroids and bounding boxes.

    Args:
      mask: integer label map (z, y, x).
      spacing: voxel spacing in mm, array axis order.
      labels: foreground labels to consider (``None``: all non-zero).
      connectivity: 6, 18 or 26.

    Returns:
      ``(instances, lesions)`` as :func:`label_components`, with one
      :class:`Lesion` per id in id order.
    """
    mask = np.asarray(mask)
    spacing = check_spacing(spacing, mask.ndim)
    instances, component_label = label_components(mask, labels, connectivity)
    n = len(component_label) - 1
    if n == 0:
        return instances, []
    stats = cc3d.statistics(instances)
    voxel_mm3 = float(np.prod(spacing))
    lesions = []
    for k in range(1, n + 1):
        count = int(stats["voxel_counts"][k])
        box = stats["bounding_boxes"][k]
        bbox = tuple(v for s in box for v in (int(s.start), int(s.stop)))
        if len(bbox) == 4:
            bbox = (0, 1) + bbox
        centroid = tuple(float(c) for c in stats["centroids"][k])
        if len(centroid) == 2:
            centroid = (0.0,) + centroid
        lesions.append(Lesion(k, int(component_label[k]), count, count * voxel_mm3, centroid, bbox))
    return instances, lesions


def lesion_volumes_mm3(instances: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Volume in mm³ of every id of an instance map, indexed by id (index 0 = background)."""
    spacing = check_spacing(spacing, np.ndim(instances))
    counts = np.bincount(np.asarray(instances).reshape(-1).astype(np.int64, copy=False))
    return counts.astype(np.float64) * float(np.prod(spacing))
