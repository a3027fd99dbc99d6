import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from vadice.io import (
    Geometry,
    InputError,
    atomic_dir,
    read_mask,
    read_nifti,
    write_nifti,
)

GEOM = Geometry(size=(6, 5, 4), spacing=(0.5, 0.6, 2.0), origin=(10.0, -3.0, 7.5),
                direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def test_roundtrip_keeps_geometry_and_matches_simpleitk(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = write_nifti(data, GEOM, tmp_path / "img.nii.gz")
    arr, geom = read_nifti(path)
    np.testing.assert_array_equal(arr, data)
    assert geom.differences(GEOM) == []
    ref = sitk.ReadImage(str(path))
    assert Geometry.of_sitk(ref).differences(geom) == []
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), arr)
    assert geom.spacing_zyx == pytest.approx((2.0, 0.6, 0.5))


def test_truncated_gzip_is_rejected(tmp_path):
    data = np.random.default_rng(0).random((20, 30, 30)).astype(np.float32)
    path = write_nifti(data, Geometry((30, 30, 20), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                       tmp_path / "img.nii.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_nifti(path)


def test_nan_and_2d_and_missing(tmp_path):
    data = np.zeros((3, 4, 5), np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="non-finite"):
        read_nifti(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="3-D"):
        read_nifti(tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="not found"):
        read_nifti(tmp_path / "nope.nii.gz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="not a NIfTI"):
        read_nifti(tmp_path / "x.txt")
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a header"))
    with pytest.raises(InputError, match=r"junk\.nii\.gz: "):
        read_nifti(tmp_path / "junk.nii.gz")


def test_mask_checks(tmp_path):
    m = np.zeros((3, 4, 5), np.float32)
    m[0, 0, 0] = 0.5
    nib.save(nib.Nifti1Image(m, np.eye(4)), tmp_path / "half.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        read_mask(tmp_path / "half.nii.gz")
    m[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(m, np.eye(4)), tmp_path / "three.nii.gz")
    with pytest.raises(InputError, match="unexpected label value"):
        read_mask(tmp_path / "three.nii.gz")
    labels, _ = read_mask(tmp_path / "three.nii.gz", allowed_labels=(0, 3))
    assert labels.dtype == np.uint8 and labels.max() == 3


def test_error_message_is_one_line_naming_file(tmp_path):
    err = InputError(tmp_path / "a.nii.gz", "bad thing")
    assert str(err) == f"{tmp_path / 'a.nii.gz'}: bad thing"
    assert "\n" not in str(err)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "done.txt").write_text("x")
    assert (final / "done.txt").exists()


def test_label_values_matches_unique():
    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.int16, np.int64, np.uint16):
        data = rng.integers(0, 5, size=(7, 8, 9)).astype(dtype)
        from vadice.io import label_values

        assert label_values(data).tolist() == np.unique(data).tolist()
    assert label_values(np.array([-3, 7, -3], np.int32)).tolist() == [-3, 7]


def test_written_files_follow_umask(tmp_path):
    import os

    from vadice.io import copy_file, write_text

    old = os.umask(0o022)
    try:
        a = write_text(tmp_path / "a.txt", "x")
        b = copy_file(a, tmp_path / "b.txt")
    finally:
        os.umask(old)
    assert (a.stat().st_mode & 0o777) == 0o644 == (b.stat().st_mode & 0o777)


def test_write_dir_atomically_replaces_a_folder_whole(tmp_path):
    from vadice.io import write_dir_atomically

    out = tmp_path / "out"
    write_dir_atomically(out, {"a.txt": "1", "b.txt": "2"})
    write_dir_atomically(out, {"c.txt": "3"})
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left


def test_write_dir_atomically_keeps_the_old_folder_when_writing_fails(tmp_path):
    from vadice.io import write_dir_atomically

    out = tmp_path / "out"
    write_dir_atomically(out, {"a.txt": "1"})
    with pytest.raises(OSError):
        write_dir_atomically(out, {"a.txt": "new", "no/such/sub.txt": "x"})
    assert (out / "a.txt").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_json_clean_makes_strict_json():
    import json

    import numpy as np

    from vadice.io import json_clean

    cleaned = json_clean({1: [np.float32(0.5), float("nan"), np.int64(3)], "x": (np.inf, "s")})
    assert json.dumps(cleaned, allow_nan=False) == '{"1": [0.5, null, 3], "x": [null, "s"]}'
