"""Reading DICOM MR series: geometry against the parameters the synthetic series was written with."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_synth import rotation, write_series

from vadice.dicom.series import read_series, scan_folder
from vadice.io import InputError


def _pixels(shape=(6, 20, 24), seed=0):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


@pytest.mark.parametrize("dz", [1.0, 2.0, 3.0])
def test_axial_series_ordered_by_position_not_file_name(tmp_path, dz):
    pix = _pixels()
    w = write_series(tmp_path / "s", pix, spacing_xyz=(0.5, 0.7, dz))
    s = read_series(tmp_path / "s")
    np.testing.assert_array_equal(s.array, pix.astype(np.float32))
    assert s.geometry.size == (24, 20, 6)
    np.testing.assert_allclose(s.geometry.spacing, (0.5, 0.7, dz), atol=1e-9)
    np.testing.assert_allclose(s.geometry.origin, (-100.0, -80.0, 30.0), atol=1e-6)
    np.testing.assert_allclose(s.geometry.direction, np.eye(3).reshape(-1), atol=1e-9)
    assert [str(d.SOPInstanceUID) for d in s.slices] == w.sop_uids


def test_oblique_orientation_kept_and_matches_itk(tmp_path):
    """Geometry and voxel order must equal an independent reader's: SimpleITK/GDCM on the same files."""
    import SimpleITK as sitk

    rot = rotation("x", 20) @ rotation("z", 15)
    pix = _pixels((5, 16, 18), seed=3)
    w = write_series(tmp_path / "s", pix, spacing_xyz=(0.8, 0.8, 1.5), rot=rot)
    s = read_series(tmp_path / "s")
    direction = np.asarray(s.geometry.direction).reshape(3, 3)
    np.testing.assert_allclose(direction, np.column_stack([w.row_dir, w.col_dir, w.normal]), atol=1e-8)
    np.testing.assert_allclose(s.geometry.origin, w.origin, atol=1e-5)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    ref = reader.Execute()
    np.testing.assert_allclose(s.geometry.direction, ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(s.geometry.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(s.geometry.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_array_equal(s.array, sitk.GetArrayFromImage(ref).astype(np.float32))


def test_rescale_slope_and_intercept_applied(tmp_path):
    pix = _pixels((3, 8, 8))
    write_series(tmp_path / "s", pix, slope=0.5, intercept=-10)
    np.testing.assert_allclose(read_series(tmp_path / "s").array, pix * 0.5 - 10)


def test_several_series_listed_and_chosen(tmp_path):
    a = write_series(tmp_path / "mix", _pixels((3, 8, 8)), description="T2")
    b = write_series(tmp_path / "mix" / "other", _pixels((4, 8, 8), 1), description="T1", seed=1)
    with pytest.raises(InputError, match="2 series.*--series") as err:
        read_series(tmp_path / "mix")
    assert a.series_uid in str(err.value) and b.series_uid in str(err.value) and "\n" not in str(err.value)
    assert read_series(tmp_path / "mix", series_uid=b.series_uid).array.shape == (4, 8, 8)
    with pytest.raises(InputError, match="no series 1.2.3"):
        read_series(tmp_path / "mix", series_uid="1.2.3")


def test_missing_slice(tmp_path):
    w = write_series(tmp_path / "s", _pixels((6, 8, 8)), spacing_xyz=(1, 1, 2))
    w.files[3].unlink()
    with pytest.raises(InputError, match=r"1 missing slice\(s\)"):
        read_series(tmp_path / "s")


def test_non_uniform_spacing(tmp_path):
    write_series(tmp_path / "s", _pixels((4, 8, 8)), positions=[0, 2, 4, 5.2])
    with pytest.raises(InputError, match="non-uniform slice spacing"):
        read_series(tmp_path / "s")


def test_duplicate_position(tmp_path):
    write_series(tmp_path / "s", _pixels((3, 8, 8)), positions=[0, 2, 2])
    with pytest.raises(InputError, match="same position"):
        read_series(tmp_path / "s")


def test_non_mr_modality(tmp_path):
    write_series(tmp_path / "s", _pixels((3, 8, 8)), modality="CT")
    with pytest.raises(InputError, match="modality CT, expected MR"):
        read_series(tmp_path / "s")


def test_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom")
    with pytest.raises(InputError, match="no DICOM file"):
        scan_folder(tmp_path / "empty")
    w = write_series(tmp_path / "s", _pixels((2, 8, 8)))
    ds = pydicom.dcmread(w.files[0])
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(ds, keyword)
    ds.Modality = "RTSTRUCT"
    (tmp_path / "only").mkdir()
    ds.save_as(tmp_path / "only" / "rs.dcm")
    with pytest.raises(InputError, match="1 DICOM file.*but no image"):
        read_series(tmp_path / "only")
    with pytest.raises(InputError, match="not found"):
        read_series(tmp_path / "nowhere")


def test_slices_of_different_size_in_one_series(tmp_path):
    w = write_series(tmp_path / "s", _pixels((3, 8, 8)))
    write_series(tmp_path / "s2", _pixels((1, 8, 10)), series_uid=w.series_uid, study_uid=w.study_uid,
                 frame_uid=w.frame_uid, positions=[6.0])
    (tmp_path / "s2" / "IM0000").rename(tmp_path / "s" / "extra")
    with pytest.raises(InputError, match="slice size 8x10 differs"):
        read_series(tmp_path / "s")


def test_jpeg_lossless_series(tmp_path):
    """The usual PACS export compression; pydicom decodes it through python-gdcm (transcoded here with GDCM)."""
    import gdcm

    pix = _pixels((3, 16, 20))
    w = write_series(tmp_path / "s", pix)
    for path in w.files:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(path))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
    assert pydicom.dcmread(w.files[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(read_series(tmp_path / "s").array, pix)


def test_missing_or_mixed_frame_of_reference(tmp_path):
    w = write_series(tmp_path / "s", _pixels((3, 8, 8)))
    ds = pydicom.dcmread(w.files[1])
    del ds.FrameOfReferenceUID
    ds.save_as(w.files[1])
    with pytest.raises(InputError, match="missing FrameOfReferenceUID"):
        read_series(tmp_path / "s")
    ds.FrameOfReferenceUID = "1.2.3.4"
    ds.save_as(w.files[1])
    with pytest.raises(InputError, match="several FrameOfReferenceUIDs"):
        read_series(tmp_path / "s")
