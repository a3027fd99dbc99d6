"""Input validation for images and label maps, one-line errors naming the file.

Each check reads the file fully once through :func:`vadice.io.read_image`
(nibabel for NIfTI, SimpleITK for ``.mha``), which detects truncated gzip streams and keeps NaN voxels that
SimpleITK would silently zero. The checks return a small :class:`FileInfo`
so that callers can compare grids without reading the file again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vadice.io import GEOMETRY_ATOL, Geometry, InputError, read_image

ALLOWED_LABELS = (0, 1, 2)


@dataclass(frozen=True)
class FileInfo:
    """What validation learned about one file.

    Attributes:
      path: the file.
      geometry: its ITK geometry.
      dtype: on-disk voxel dtype (after header scaling).
      labels: label values present (masks only, else None).
    """

    path: Path
    geometry: Geometry
    dtype: str
    labels: tuple[int, ...] | None = None


class InvalidInputs(InputError):
    """Several bad inputs; ``problems`` holds ``(path, problem)`` pairs, one line each in the message."""

    def __init__(self, problems: Sequence[tuple[Path, str]], header: str | None = None):
        self.problems = [(Path(p), str(msg)) for p, msg in problems]
        lines = [f"{p}: {msg}" for p, msg in self.problems]
        if header is None and len(lines) == 1:
            text = lines[0]
        else:
            text = "\n".join(([header] if header else []) + lines)
        super().__init__(None, text)
        if len(self.problems) == 1:
            self.path = self.problems[0][0]


def check_image(path: str | os.PathLike) -> FileInfo:
    """Check that ``path`` is a readable, complete 3-D NIfTI or MetaImage image with finite numeric voxels.

    Raises:
      InputError: missing, unreadable, truncated, not 3-D, non-numeric or
        holding NaN/Inf voxels.
    """
    data, geom = read_image(path, check_finite=True)
    if data.dtype.kind not in "iuf":
        raise InputError(path, f"unsupported voxel type {data.dtype} (expected a scalar numeric image)")
    return FileInfo(Path(path), geom, str(data.dtype))


def check_mask(path: str | os.PathLike, allowed: Sequence[int] = ALLOWED_LABELS) -> FileInfo:
    """Check that ``path`` is a readable 3-D label map with integer values within ``allowed``.

    Equivalent to :func:`vadice.io.read_mask` but counts labels with
    ``np.bincount`` (linear time) instead of ``np.unique`` (a sort), which
    matters on 512x512x150 masks.

    Raises:
      InputError: as :func:`check_image`, plus non-integer values or labels
        outside ``allowed``.
    """
    return read_checked_mask(path, allowed)[1]


def read_checked_mask(path: str | os.PathLike, allowed: Sequence[int] = ALLOWED_LABELS
                      ) -> tuple[np.ndarray, FileInfo]:
    """As :func:`check_mask`, also returning the labels as a uint8 (z, y, x) array."""
    data, geom = read_image(path, check_finite=True)
    kind = data.dtype.kind
    if kind == "f":
        frac = data != np.rint(data)
        if frac.any():
            example = float(data.reshape(-1)[np.flatnonzero(frac.reshape(-1))[0]])
            raise InputError(path, f"mask has non-integer values (e.g. {example:g}); expected integer labels")
    elif kind not in "iub":
        raise InputError(path, f"mask has unsupported voxel type {data.dtype}")
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    allowed_set = sorted(set(int(a) for a in allowed))
    if lo < 0 or hi > 255:
        present = np.unique(data)
    else:
        present = np.flatnonzero(np.bincount(data.reshape(-1).astype(np.intp, copy=False)))
    present = [int(v) for v in np.asarray(present).tolist()]
    stray = [v for v in present if v not in allowed_set]
    if stray:
        raise InputError(path, f"unexpected label value(s) {', '.join(str(v) for v in stray)}; "
                               f"allowed {allowed_set}")
    info = FileInfo(Path(path), geom, str(data.dtype), tuple(present))
    return data.astype(np.uint8, copy=False), info


def check_same_grid(reference: FileInfo, other: FileInfo, atol: float = GEOMETRY_ATOL) -> None:
    """Raise if ``other`` is not on the grid of ``reference`` (size, spacing, origin, direction within ``atol``).

    Raises:
      InputError: naming ``other`` and every differing property
        (``this file != reference``).
    """
    diffs = reference.geometry.differences(other.geometry, atol=atol)
    if diffs:
        raise InputError(other.path, f"grid does not match {reference.path.name}: {'; '.join(diffs)}")
