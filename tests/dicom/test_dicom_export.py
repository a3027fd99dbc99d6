"""DICOM export of a label map (vadice.dicom.export): file names, existing files, a map off the series' grid."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_synth import write_series

from vadice.dicom.export import dicom_targets, refuse_existing, refuse_existing_dicom, write_dicom_outputs
from vadice.dicom.series import read_series
from vadice.io import Geometry, InputError, write_nifti


def test_targets_are_named_by_type_and_case_and_skip_nifti(tmp_path):
    assert dicom_targets(tmp_path, "p7", ("nifti", "seg", "rtstruct")) == {
        "seg": tmp_path / "SEG_p7.dcm", "rtstruct": tmp_path / "RS_p7.dcm"}
    assert dicom_targets(tmp_path, "p7", ("nifti",)) == {}
    with pytest.raises(ValueError, match="unknown output type 'pdf'"):
        dicom_targets(tmp_path, "p7", ("rtstruct", "pdf"))


def test_an_existing_output_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "SEG_p7.dcm").write_bytes(b"the clinic's file")
    refuse_existing_dicom(tmp_path, "p7", ("rtstruct",), overwrite=False)  # RS_p7.dcm does not exist
    refuse_existing_dicom(tmp_path, "p7", ("seg",), overwrite=True)
    with pytest.raises(FileExistsError, match=r"SEG_p7.dcm: already exists \(use --overwrite"):
        refuse_existing_dicom(tmp_path, "p7", ("rtstruct", "seg"), overwrite=False)
    with pytest.raises(FileExistsError, match="SEG_p7.dcm"):
        refuse_existing([tmp_path / "new.zip", tmp_path / "SEG_p7.dcm"], overwrite=False)


def test_a_label_map_off_the_series_grid_writes_nothing(tmp_path):
    w = write_series(tmp_path / "mr", np.zeros((5, 20, 24), np.uint16), spacing_xyz=(0.7, 0.8, 2.0))
    series = read_series(w.folder)
    labels = np.zeros((5, 20, 24), np.uint8)
    labels[2, 5:9, 5:9] = 1
    # the series' grid except one more column
    off = Geometry((25, 20, 5), series.geometry.spacing, series.geometry.origin, series.geometry.direction)
    write_nifti(np.zeros((5, 20, 25), np.uint8), off, tmp_path / "off.nii.gz")
    with pytest.raises(InputError, match="off.nii.gz: not on the grid of series"):
        write_dicom_outputs(series, tmp_path / "off.nii.gz", tmp_path / "out", "p", ("rtstruct", "seg"))
    assert not (tmp_path / "out").exists()
    write_nifti(labels, series.geometry, tmp_path / "on.nii.gz")
    written = write_dicom_outputs(series, tmp_path / "on.nii.gz", tmp_path / "out", "p", ("nifti", "rtstruct"))
    assert written == [tmp_path / "out" / "RS_p.dcm"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["RS_p.dcm"]  # no NIfTI: not a DICOM output
