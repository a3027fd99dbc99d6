"""Staging of vadice predict's input (vadice.dicom.staging): a DICOM series, .mha files and NIfTI folders."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_synth import write_series

from vadice.dicom.staging import StagedInput, stage_predict_input
from vadice.io import InputError


def _series(tmp_path, shape=(5, 20, 24)):
    pix = np.random.default_rng(0).integers(0, 1000, shape).astype(np.uint16)
    return write_series(tmp_path / "mr", pix, spacing_xyz=(0.7, 0.8, 2.0)), pix


def test_stage_predict_input_dicom_mha_and_nifti(tmp_path):
    w, pix = _series(tmp_path)
    (tmp_path / "t1").mkdir()
    staged = stage_predict_input(tmp_path / "mr", tmp_path / "t1")
    assert staged.case == "SYN001" and staged.series.series_uid == w.series_uid
    nii = nib.load(tmp_path / "t1/SYN001_0000.nii.gz")
    np.testing.assert_array_equal(np.asarray(nii.dataobj).T, pix)
    np.testing.assert_allclose(nii.header.get_zooms(), w.spacing_xyz, atol=1e-6)

    img = sitk.GetImageFromArray(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    img.SetSpacing((0.5, 0.6, 2.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    (tmp_path / "mha").mkdir()
    sitk.WriteImage(img, str(tmp_path / "mha/p1_0000.mha"))
    (tmp_path / "t2").mkdir()
    staged = stage_predict_input(tmp_path / "mha", tmp_path / "t2")
    assert staged.series is None and staged.folder == tmp_path / "t2"
    back = sitk.ReadImage(str(tmp_path / "t2/p1_0000.nii.gz"))
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-6)  # NIfTI stores float32
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))

    sitk.WriteImage(img, str(tmp_path / "t2/p2.nii.gz"))
    assert stage_predict_input(tmp_path / "t2", tmp_path / "unused").folder == tmp_path / "t2"
    with pytest.raises(InputError, match="--series applies to a DICOM MR series folder only"):
        stage_predict_input(tmp_path / "t2", tmp_path / "unused", series_uid="1.2")
    (tmp_path / "notes").mkdir()  # no DICOM, no NIfTI: left to vadice.predict's own checks
    (tmp_path / "notes/readme.txt").write_text("x")
    assert stage_predict_input(tmp_path / "notes", tmp_path / "unused") == StagedInput(tmp_path / "notes")


def test_series_uid_is_refused_for_every_input_that_is_not_a_dicom_folder(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    (tmp_path / "mha").mkdir()
    sitk.WriteImage(img, str(tmp_path / "mha/p1_0000.mha"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/readme.txt").write_text("x")
    for source in (tmp_path / "mha", tmp_path / "mha/p1_0000.mha", tmp_path / "notes"):
        with pytest.raises(InputError, match="--series applies"):
            stage_predict_input(source, tmp_path / "unused", series_uid="1.2")
    with pytest.raises(InputError, match="nowhere: input not found"):
        stage_predict_input(tmp_path / "nowhere", tmp_path / "unused")


@pytest.mark.parametrize("patient_id, case", [("SYN001", "SYN001"), ("Pat 7/ä", "Pat_7"), ("__", "case"),
                                              ("a..b", "a..b")])
def test_the_case_is_named_after_a_file_name_safe_patient_id(tmp_path, patient_id, case):
    import pydicom

    _series(tmp_path)
    for path in (tmp_path / "mr").iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientID = patient_id
        ds.save_as(path)
    (tmp_path / "t").mkdir()
    staged = stage_predict_input(tmp_path / "mr", tmp_path / "t")
    assert staged.case == case and (tmp_path / "t" / f"{case}_0000.nii.gz").is_file()
