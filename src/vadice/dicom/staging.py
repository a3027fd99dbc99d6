"""What ``vadice predict`` reads: its input (NIfTI, ``.mha`` or a DICOM MR series) staged as NIfTI files."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydicom.misc import is_dicom

from vadice.dicom.series import read_series
from vadice.io import InputError, is_nifti, read_mha, write_nifti, write_sitk


@dataclass(frozen=True)
class StagedInput:
    """``folder`` of NIfTI inputs; ``series`` (a :class:`vadice.dicom.series.MRSeries`) and ``case`` set for a
    DICOM input, so that its outputs can be written back as DICOM on the same series."""

    folder: Path
    series: object | None = None
    case: str | None = None


def _case_name(series) -> str:
    # PatientID becomes a file name: keep it to characters every file system and nnU-Net accept.
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", str(series.slices[0].get("PatientID", "") or "")).strip("._-")
    return name or "case"


def stage_predict_input(input_path: str | os.PathLike, tmp_dir: str | os.PathLike,
                        series_uid: str | None = None) -> StagedInput:
    """Turn ``vadice predict``'s input into a folder of NIfTI files.

    A folder holding NIfTI files is used as it is; ``.mha`` files (a folder of
    them, or one file) are converted to ``.nii.gz`` under ``tmp_dir`` keeping
    their names (so ``_0000`` channel suffixes still work); any other folder
    holding DICOM files is read as one DICOM MR series and staged as
    ``<PatientID>_0000.nii.gz``; anything else is passed through unchanged.

    Args:
      input_path: ``-i`` of ``vadice predict``.
      tmp_dir: an empty folder that outlives the prediction.
      series_uid: ``--series``: which series of a DICOM folder holding several; only for DICOM inputs.

    Returns:
      :class:`StagedInput`.

    Raises:
      InputError: input not found, unreadable inputs (see :func:`vadice.dicom.series.read_series`), or
        ``series_uid`` given for an input that is not a DICOM folder.
    """
    input_path, tmp_dir = Path(input_path), Path(tmp_dir)
    if not input_path.exists():
        raise InputError(input_path, "input not found")
    files = [input_path] if input_path.is_file() else sorted(
        p for p in input_path.iterdir() if p.is_file() and not p.name.startswith("."))
    mha = [p for p in files if p.suffix.lower() == ".mha"]
    as_is = any(is_nifti(p) for p in files) or (input_path.is_file() and not mha)
    dicom = not as_is and not mha and any(p.is_file() and is_dicom(p) for p in input_path.rglob("*"))
    if series_uid and not dicom:
        raise InputError(input_path, "not a DICOM folder: --series applies to a DICOM MR series folder only")
    if as_is:
        return StagedInput(input_path)
    if mha:
        for path in mha:
            write_sitk(read_mha(path), tmp_dir / (path.stem + ".nii.gz"))
        return StagedInput(tmp_dir)
    if not dicom:
        return StagedInput(input_path)  # no DICOM at all: vadice.predict names what is wrong with the folder
    series = read_series(input_path, series_uid)
    case = _case_name(series)
    write_nifti(series.array, series.geometry, tmp_dir / f"{case}_0000.nii.gz")
    return StagedInput(tmp_dir, series, case)
