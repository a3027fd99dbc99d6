"""A label map on a DICOM MR series' grid written back as RTSTRUCT and/or DICOM SEG, never over a file by surprise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

DICOM_OUTPUT_TYPES = ("rtstruct", "seg")
_PREFIX = {"rtstruct": "RS", "seg": "SEG"}


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """The ``--overwrite`` rule of the DICOM commands and ``export-model``: an existing output is kept unless asked.

    Args:
      paths: the files a command is about to write.
      overwrite: whether replacing them was asked for.

    Raises:
      FileExistsError: one of ``paths`` exists and ``overwrite`` is false (the first one is named).
    """
    for path in paths:
        if Path(path).exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists (use --overwrite to replace it)")


def dicom_targets(out_dir: str | os.PathLike, name: str, types: Iterable[str]) -> dict[str, Path]:
    """Where the DICOM outputs among ``types`` go.

    Args:
      out_dir: output folder.
      name: the case name (``RS_<name>.dcm``, ``SEG_<name>.dcm``).
      types: output types; ``nifti`` is not a DICOM output and is skipped.

    Returns:
      ``{type: path}`` for ``rtstruct`` and ``seg``, in the order given.

    Raises:
      ValueError: an unknown output type.
    """
    targets = {}
    for kind in types:
        if kind == "nifti":
            continue
        if kind not in _PREFIX:
            raise ValueError(f"unknown output type {kind!r}; choose from nifti, {', '.join(DICOM_OUTPUT_TYPES)}")
        targets[kind] = Path(out_dir) / f"{_PREFIX[kind]}_{name}.dcm"
    return targets


def refuse_existing_dicom(out_dir: str | os.PathLike, name: str, types: Iterable[str], overwrite: bool) -> None:
    """Check, before any work, that :func:`write_dicom_outputs` will not meet an existing file.

    Raises:
      FileExistsError: a DICOM output exists and ``overwrite`` is false.
      ValueError: an unknown output type.
    """
    refuse_existing(dicom_targets(out_dir, name, types).values(), overwrite)


def write_dicom_outputs(series, labels_path: str | os.PathLike, out_dir: str | os.PathLike, name: str,
                        types: Iterable[str], overwrite: bool = False) -> list[Path]:
    """RTSTRUCT and/or SEG files of a NIfTI label map that lies on ``series``' grid.

    Args:
      series: the :class:`vadice.dicom.series.MRSeries` the label map was made on.
      labels_path: the label map (labels 1 GTVp, 2 GTVn).
      out_dir: output folder.
      name: the case name in the file names.
      types: output types among ``rtstruct``, ``seg`` (``nifti`` is skipped).
      overwrite: replace existing files.

    Returns:
      The written paths (``RS_<name>.dcm``, ``SEG_<name>.dcm``).

    Raises:
      InputError: the label map is unreadable or not on the series' grid.
      FileExistsError: an output exists and ``overwrite`` is false.
      ValueError: an unknown output type.
    """
    # imported here: highdicom (behind write_seg) is slow to import, and refuse_existing is used without it
    from vadice.dicom.rtstruct import write_rtstruct
    from vadice.dicom.seg import write_seg
    from vadice.io import InputError, read_mask

    targets = dicom_targets(out_dir, name, types)
    refuse_existing(targets.values(), overwrite)
    labels, geom = read_mask(labels_path)
    if diffs := series.geometry.differences(geom, atol=1e-3):
        raise InputError(labels_path, f"not on the grid of series {series.series_uid}: " + "; ".join(diffs))
    writers = {"rtstruct": write_rtstruct, "seg": write_seg}
    for kind, path in targets.items():
        writers[kind](labels, series, path)
    return list(targets.values())
