"""Synthetic DICOM MR series for the tests, written with pydicom only (no vadice code).

``write_series`` returns the geometry it used, computed here from its own parameters, so that tests compare
vadice's reader against numbers it never produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


@dataclass
class Written:
    folder: Path
    files: list[Path]          # in slice-position order
    sop_uids: list[str]        # in slice-position order
    series_uid: str
    study_uid: str
    frame_uid: str
    origin: np.ndarray         # position of the first slice
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    spacing_xyz: tuple[float, float, float]


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def write_series(folder: Path, pixels: np.ndarray, spacing_xyz=(0.9, 0.9, 2.0), origin=(-100.0, -80.0, 30.0),
                 rot: np.ndarray | None = None, modality: str = "MR", series_uid: str | None = None,
                 study_uid: str | None = None, frame_uid: str | None = None, slope: float | None = None,
                 intercept: float = 0.0, positions: list[float] | None = None, seed: int = 0,
                 description: str = "T2 axial") -> Written:
    """Write ``pixels`` (z, y, x, uint16) as single-slice MR files under shuffled names.

    ``positions`` (mm along the normal, one per slice) overrides the uniform spacing, for the bad-input tests.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rot = np.eye(3) if rot is None else rot
    row_dir, col_dir = rot[:, 0], rot[:, 1]
    normal = np.cross(row_dir, col_dir)
    study_uid, frame_uid = study_uid or generate_uid(), frame_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    nz = pixels.shape[0]
    positions = [k * spacing_xyz[2] for k in range(nz)] if positions is None else positions
    names = np.random.default_rng(seed).permutation(nz)  # file names unrelated to position
    files, uids = [], []
    for k in range(nz):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Case", "SYN001", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.PositionReferenceIndicator = "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 3, int(names[k]) + 1
        ds.SeriesDescription = description
        ds.Manufacturer = "synthetic"
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*row_dir, *col_dir)]
        pos = np.asarray(origin) + positions[k] * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]  # (row spacing, column spacing)
        ds.SliceThickness = spacing_xyz[2]
        ds.Rows, ds.Columns = pixels.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(pixels[k].astype(np.uint16)).tobytes()
        path = folder / f"IM{names[k]:04d}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
        uids.append(uid)
    return Written(folder, files, uids, series_uid, study_uid, frame_uid, np.asarray(origin, float) + positions[0] *
                   normal, row_dir, col_dir, normal, tuple(spacing_xyz))


def patient_to_pixel(points: np.ndarray, written: Written) -> np.ndarray:
    """Patient mm -> (slice, row, column) continuous indices, from the parameters the series was written with."""
    rel = points - written.origin
    dx, dy, dz = written.spacing_xyz
    return np.stack([rel @ written.normal / dz, rel @ written.col_dir / dy, rel @ written.row_dir / dx], axis=1)


def blob(shape, center, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1
