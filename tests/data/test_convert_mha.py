"""HNTS-MRG sources given as MetaImage (.mha), the challenge's container format: converted to the NIfTI dataset.

Hand-built volumes with an oblique direction and an odd origin, so that a geometry mistake in the .mha -> NIfTI
step (axis order, LPS/RAS, direction transposed) shows as a mismatch against the values written here.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from vadice.cli import main
from vadice.data.hntsmrg import convert, source_files
from vadice.io import InputError, read_image

SHAPE = (6, 20, 16)  # z, y, x
SPACING = (0.7, 0.6, 2.5)  # x, y, z
ORIGIN = (-31.25, 12.5, -87.0)
_c, _s = np.cos(0.3), np.sin(0.3)
DIRECTION = (_c, -_s, 0.0, _s, _c, 0.0, 0.0, 0.0, 1.0)  # rotated 0.3 rad about z


def _image(array: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    return img


def _write_case(root, cid, fmt):
    """Writes the six files of case ``cid``; ``fmt`` maps a key to "mha" or "nii" (default mha)."""
    rng = np.random.default_rng(cid)
    arrays = {}
    for key, path in source_files(root / str(cid), cid).items():
        if "mask" in key:
            data = np.zeros(SHAPE, np.uint8)
            data[1:3, 4:9, 3:7] = 1
            data[4, 14:17, 10:13] = 2
        else:
            data = (rng.random(SHAPE) * 400).astype(np.float32)
        arrays[key] = data
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt.get(key, "mha") == "mha":
            path = path.with_name(path.name.replace(".nii.gz", ".mha"))
        sitk.WriteImage(_image(data), str(path), useCompression=True)
    return arrays


def _nifti_geometry_ok(path):
    """Geometry of a written NIfTI, read with nibabel (not SimpleITK, which wrote it), against the constants."""
    img = nib.load(str(path))
    # NIfTI stores RAS+; ITK's LPS+ direction and origin flip x and y.
    lps = np.diag([-1.0, -1.0, 1.0]) @ img.affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    direction = lps / spacing
    origin = np.array([-img.affine[0, 3], -img.affine[1, 3], img.affine[2, 3]])
    np.testing.assert_allclose(spacing, SPACING, atol=1e-5)
    np.testing.assert_allclose(direction.reshape(-1), DIRECTION, atol=1e-5)
    np.testing.assert_allclose(origin, ORIGIN, atol=1e-4)


def test_mha_sources_become_a_nifti_dataset_with_their_geometry(tmp_path):
    src = tmp_path / "src"
    arrays = {cid: _write_case(src, cid, {}) for cid in (1, 2)}
    dataset = convert(src, task=2, dataset_id=41, out=tmp_path / "raw", progress=False)

    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 2
    for cid in (1, 2):
        label = dataset / "labelsTr" / f"HNTS_{cid:03d}_midRT.nii.gz"
        _nifti_geometry_ok(label)
        written = np.asarray(nib.load(str(label)).dataobj).T  # nibabel (x, y, z) -> (z, y, x)
        np.testing.assert_array_equal(written, arrays[cid]["midRT_mask"])
        channel = np.asarray(nib.load(str(dataset / "imagesTr" / f"HNTS_{cid:03d}_midRT_0001.nii.gz")).dataobj).T
        np.testing.assert_array_equal(channel, arrays[cid]["preRT_T2_registered"])
    assert not list(dataset.rglob("*.mha"))


def test_mixed_formats_convert_and_nifti_is_copied_byte_for_byte(tmp_path):
    src = tmp_path / "src"
    _write_case(src, 1, {"preRT_T2": "nii"})
    _write_case(src, 2, {k: "nii" for k in source_files(src / "2", 2)})
    dataset = convert(src, task=1, dataset_id=42, out=tmp_path / "raw", progress=False)
    nifti_source = source_files(src / "1", 1)["preRT_T2"]
    assert nifti_source.name.endswith(".nii.gz")
    assert (dataset / "imagesTr" / "HNTS_001_preRT_0000.nii.gz").read_bytes() == nifti_source.read_bytes()
    _nifti_geometry_ok(dataset / "labelsTr" / "HNTS_001_preRT.nii.gz")  # from the .mha mask


def test_rerun_keeps_unchanged_mha_cases(tmp_path, caplog):
    src = tmp_path / "src"
    _write_case(src, 1, {})
    dataset = convert(src, task=1, dataset_id=43, out=tmp_path / "raw", progress=False)
    label = dataset / "labelsTr" / "HNTS_001_preRT.nii.gz"
    before = label.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="vadice"):
        convert(src, task=1, dataset_id=43, out=tmp_path / "raw", progress=False)
    assert label.stat().st_mtime_ns == before
    assert "kept 1 unchanged case" in caplog.text


def test_both_formats_of_one_file_is_refused_naming_it(tmp_path, capsys):
    src = tmp_path / "src"
    _write_case(src, 1, {})
    mha = source_files(src / "1", 1)["preRT_mask"]
    sitk.WriteImage(sitk.ReadImage(str(mha)), str(mha).replace(".mha", ".nii.gz"))
    out = tmp_path / "raw"
    code = main(["-q", "convert", str(src), "--task", "1", "--dataset-id", "44", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "1_preRT_mask" in err[0] and "keep one format" in err[0]
    assert not (out / "Dataset044_HNTSMRGTask1").exists()


def test_truncated_mha_is_named_and_nothing_is_written(tmp_path, capsys):
    src = tmp_path / "src"
    _write_case(src, 1, {})
    _write_case(src, 2, {})
    bad = source_files(src / "2", 2)["preRT_T2"]
    assert bad.suffix == ".mha"
    bad.write_bytes(bad.read_bytes()[:-200])
    out = tmp_path / "raw"
    code = main(["-q", "convert", str(src), "--task", "1", "--dataset-id", "45", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].endswith(f"{bad}: truncated or corrupt MetaImage (ITK could not read its header or voxel data)")
    assert not (out / "Dataset045_HNTSMRGTask1").exists()


def test_non_finite_and_wrong_label_mha_are_refused(tmp_path):
    nan = np.zeros(SHAPE, np.float32)
    nan[0, 0, 0] = np.nan
    sitk.WriteImage(_image(nan), str(tmp_path / "nan.mha"))
    with pytest.raises(InputError, match=r"nan\.mha: 1 non-finite"):
        read_image(tmp_path / "nan.mha")
    array, _ = read_image(tmp_path / "nan.mha", check_finite=False)
    assert np.isnan(array[0, 0, 0])

    src = tmp_path / "src"
    _write_case(src, 1, {})
    mask = source_files(src / "1", 1)["preRT_mask"]
    bad = np.full(SHAPE, 3, np.uint8)
    sitk.WriteImage(_image(bad), str(mask))
    with pytest.raises(InputError, match=r"label value\(s\) 3"):
        convert(src, task=1, dataset_id=46, out=tmp_path / "raw", progress=False)


def test_read_image_refuses_vector_and_2d_mha_and_other_suffixes(tmp_path):
    vec = sitk.Image([4, 5, 3], sitk.sitkVectorFloat32, 2)
    sitk.WriteImage(vec, str(tmp_path / "vec.mha"))
    with pytest.raises(InputError, match="3-D scalar image, got 3-D with 2 component"):
        read_image(tmp_path / "vec.mha")
    sitk.WriteImage(sitk.Image([4, 5], sitk.sitkUInt8), str(tmp_path / "flat.mha"))
    with pytest.raises(InputError, match="got 2-D"):
        read_image(tmp_path / "flat.mha")
    (tmp_path / "x.nrrd").write_bytes(b"NRRD0004\n")
    with pytest.raises(InputError, match="not a NIfTI or MetaImage"):
        read_image(tmp_path / "x.nrrd")
