"""Reading one DICOM MR series from a folder into a volume with its exact geometry.

Slices are ordered by their position along the slice normal (never by file name
or InstanceNumber), the spacing between them must be uniform (a gap is reported
as missing slices), and an oblique ImageOrientationPatient is kept in the
direction matrix. pydicom reads the files; SimpleITK/GDCM's series reader is not
used because it only warns about non-uniform spacing and silently accepts gaps.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from vadice.io import Geometry, InputError

log = logging.getLogger(__name__)

# Relative tolerance on slice gaps: scanners store positions with ~1e-4 mm rounding.
SPACING_RTOL = 0.01
# Orientation cosines of slices of one series may differ only by rounding.
ORIENTATION_ATOL = 1e-4


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder (headers only)."""

    uid: str
    modality: str
    description: str
    files: tuple[Path, ...]

    def summary(self) -> str:
        desc = f" {self.description!r}" if self.description else ""
        return f"{self.uid} ({self.modality}{desc}, {len(self.files)} file(s))"


@dataclass(frozen=True)
class MRSeries:
    """A read MR series: the volume (z, y, x) in slice-position order, its geometry and the slice headers."""

    folder: Path
    array: np.ndarray
    geometry: Geometry
    slices: tuple[Dataset, ...]  # same order as array's z axis, pixel data not loaded

    @property
    def series_uid(self) -> str:
        return str(self.slices[0].SeriesInstanceUID)

    @property
    def study_uid(self) -> str:
        return str(self.slices[0].StudyInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.slices[0].FrameOfReferenceUID)


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def scan_folder(folder: str | os.PathLike) -> list[SeriesInfo]:
    """Find the image series in a folder (recursively), reading headers only.

    Files that are not DICOM are skipped; DICOM files without pixel data
    (RTSTRUCT, DICOMDIR, reports) are skipped too.

    Args:
      folder: the folder to scan.

    Returns:
      One :class:`SeriesInfo` per SeriesInstanceUID with image files, sorted by UID.

    Raises:
      InputError: missing folder, or no DICOM image in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM folder not found")
    groups: dict[str, list[Path]] = defaultdict(list)
    meta: dict[str, tuple[str, str]] = {}
    n_dicom = 0
    for path in _candidate_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            continue
        n_dicom += 1
        # stop_before_pixels hides PixelData, so test the image attributes instead.
        if "Rows" not in ds or "Columns" not in ds or "SeriesInstanceUID" not in ds:
            continue
        uid = str(ds.SeriesInstanceUID)
        groups[uid].append(path)
        meta.setdefault(uid, (str(ds.get("Modality", "")), str(ds.get("SeriesDescription", ""))))
    if not groups:
        what = f"{n_dicom} DICOM file(s) but no image" if n_dicom else "no DICOM file"
        raise InputError(folder, f"{what} in this folder")
    return [SeriesInfo(uid, *meta[uid], tuple(files)) for uid, files in sorted(groups.items())]


def choose_series(folder: str | os.PathLike, series_uid: str | None = None) -> SeriesInfo:
    """The series to read: the only one in ``folder``, or the one named ``series_uid``.

    Raises:
      InputError: several series and no (or an unknown) ``series_uid``; the
        message lists them.
    """
    found = scan_folder(folder)
    listing = "; ".join(s.summary() for s in found)
    if series_uid is not None:
        for info in found:
            if info.uid == series_uid:
                return info
        raise InputError(folder, f"no series {series_uid} here; found: {listing}")
    if len(found) > 1:
        raise InputError(folder, f"{len(found)} series in this folder, choose one with --series UID: {listing}")
    return found[0]


def _vec(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        raise InputError(path, f"missing or malformed {keyword}")
    return np.asarray([float(v) for v in value], dtype=np.float64)


def _slice_geometry(ds: Dataset, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ImageOrientationPatient 6, ImagePositionPatient 3, PixelSpacing 2) of one slice."""
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(path, "multi-frame (enhanced) DICOM is not supported; export the series as single slices")
    return (_vec(ds, "ImageOrientationPatient", 6, path), _vec(ds, "ImagePositionPatient", 3, path),
            _vec(ds, "PixelSpacing", 2, path))


def read_series(folder: str | os.PathLike, series_uid: str | None = None,
                modalities: tuple[str, ...] = ("MR",)) -> MRSeries:
    """Read one MR series into a (z, y, x) float32 volume with its ITK geometry.

    Args:
      folder: folder holding the series' files (other series and non-DICOM
        files may sit next to them).
      series_uid: which series when the folder holds several.
      modalities: accepted Modality values.

    Returns:
      :class:`MRSeries` with rescaled intensities (RescaleSlope/Intercept applied).

    Raises:
      InputError: no or several series, wrong modality, multi-frame files,
        slices that differ in size, orientation or pixel spacing, duplicate or
        missing slices, non-uniform slice spacing, fewer than 2 slices.
    """
    folder = Path(folder)
    info = choose_series(folder, series_uid)
    if info.modality not in modalities:
        raise InputError(folder, f"series {info.uid} has modality {info.modality or 'unknown'}, "
                         f"expected {'/'.join(modalities)}")
    headers = []
    for path in info.files:
        ds = pydicom.dcmread(path)
        headers.append((path, ds, *_slice_geometry(ds, path)))
    for path, ds, *_ in headers:
        # RTSTRUCT and SEG point back at these; without them the contours cannot be placed.
        missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID") if not ds.get(k)]
        if missing:
            raise InputError(path, f"missing {', '.join(missing)}")
    path0, ds0, iop0, _, ps0 = headers[0]
    if len({str(h[1].FrameOfReferenceUID) for h in headers}) > 1:
        raise InputError(folder, f"series {info.uid} mixes several FrameOfReferenceUIDs")
    shape0 = (int(ds0.Rows), int(ds0.Columns))
    for path, ds, iop, _, ps in headers[1:]:
        if (int(ds.Rows), int(ds.Columns)) != shape0:
            raise InputError(path, f"slice size {ds.Rows}x{ds.Columns} differs from {path0.name} "
                             f"({shape0[0]}x{shape0[1]}) in the same series")
        if not np.allclose(iop, iop0, atol=ORIENTATION_ATOL, rtol=0):
            raise InputError(path, f"ImageOrientationPatient differs from {path0.name} in the same series")
        if not np.allclose(ps, ps0, atol=1e-6, rtol=1e-5):
            raise InputError(path, f"PixelSpacing differs from {path0.name} in the same series")
    if len(headers) < 2:
        raise InputError(info.files[0], "series has a single slice; a 3-D volume needs at least 2")
    row_dir, col_dir = iop0[:3], iop0[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise InputError(path0, "ImageOrientationPatient is not two orthogonal unit vectors")
    headers.sort(key=lambda h: float(np.dot(h[3], normal)))
    positions = np.array([np.dot(h[3], normal) for h in headers])
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise InputError(headers[i + 1][0], f"two slices at the same position ({positions[i]:.3f} mm along "
                         f"the normal) in series {info.uid}, with {headers[i][0].name}")
    step = float(np.median(gaps))
    if not np.allclose(gaps, step, rtol=SPACING_RTOL, atol=0):
        i = int(np.argmax(np.abs(gaps - step)))
        ratio = gaps[i] / step
        between = f"between {headers[i][0].name} and {headers[i + 1][0].name}"
        if abs(ratio - round(ratio)) < SPACING_RTOL * round(ratio) and round(ratio) >= 2:
            raise InputError(folder, f"{round(ratio) - 1} missing slice(s) {between}: gap {gaps[i]:.3f} mm, "
                             f"spacing {step:.3f} mm")
        raise InputError(folder, f"non-uniform slice spacing {between}: {gaps[i]:.3f} mm, elsewhere {step:.3f} mm")
    # In-plane: PixelSpacing is (row spacing, column spacing) = (y, x).
    spacing = (float(ps0[1]), float(ps0[0]), step)
    direction = np.column_stack([row_dir, col_dir, normal])
    geometry = Geometry(size=(shape0[1], shape0[0], len(headers)), spacing=spacing,
                        origin=tuple(float(v) for v in headers[0][3]),
                        direction=tuple(float(v) for v in direction.reshape(-1)))
    array = np.empty((len(headers), *shape0), dtype=np.float32)
    for k, (path, ds, *_) in enumerate(headers):
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for missing decoders / truncated data
            raise InputError(path, f"cannot decode pixel data ({str(exc).splitlines()[0][:200]})") from None
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        array[k] = pixels.astype(np.float32) * slope + intercept
        del ds.PixelData  # keep headers only; the volume holds the pixels
    log.info("read series %s: %d slices, %dx%d, spacing %s mm", info.uid, len(headers), *shape0,
             "x".join(f"{s:.4g}" for s in spacing))
    return MRSeries(folder, array, geometry, tuple(h[1] for h in headers))
