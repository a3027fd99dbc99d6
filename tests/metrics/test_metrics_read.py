"""The evaluation's fast mask reader (SimpleITK voxels) gives what nibabel gives, or steps aside."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from vadice.io import Geometry, InputError, read_nifti, write_nifti
from vadice.metrics.pairs import _read_integer_nifti, read_label_map

OBLIQUE = (0.9848077530122080, -0.1736481776669303, 0.0, 0.1736481776669303, 0.9848077530122080, 0.0, 0.0, 0.0, 1.0)


def _mask(shape=(12, 30, 40), seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.uint8)
    m[2:8, 5:20, 3:30] = 1
    m[rng.random(shape) < 0.05] = 2
    return m


def _same_as_nibabel(path):
    fast = _read_integer_nifti(path)
    assert fast is not None, "fast path not taken"
    ref, ref_geom = read_nifti(path)
    np.testing.assert_array_equal(fast[0], ref)
    assert fast[0].dtype == ref.dtype and fast[1] == ref_geom


@pytest.mark.parametrize("direction", [(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), OBLIQUE])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_fast_read_equals_nibabel(tmp_path, direction, suffix):
    path = tmp_path / f"m{suffix}"
    write_nifti(_mask(), Geometry((40, 30, 12), (0.5, 0.7, 2.0), (10.0, -3.0, 5.5), direction), path)
    _same_as_nibabel(path)


@pytest.mark.parametrize("name", ["preRT/2_preRT_mask.nii.gz", "midRT/2_midRT_mask.nii.gz"])
def test_fast_read_equals_nibabel_on_real_masks(hntsmrg_case2, name):
    _same_as_nibabel(hntsmrg_case2 / name)


def test_truncated_or_unusual_files_take_the_checked_path(tmp_path):
    path = tmp_path / "m.nii.gz"
    write_nifti(_mask(shape=(40, 64, 64)), Geometry((64, 64, 40), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
                                                     (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 8, len(data) - 1):
        bad = tmp_path / f"cut{cut}.nii.gz"
        bad.write_bytes(data[:cut])
        assert _read_integer_nifti(bad) is None  # SimpleITK alone would fill the missing half with zeros
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_label_map(tmp_path / f"cut{len(data) // 2}.nii.gz", (1, 2))
    plain = tmp_path / "short.nii"
    plain.write_bytes(gzip.decompress(data)[:-100])
    assert _read_integer_nifti(plain) is None
    # Scaled data (slope 2) and float masks are nibabel's: values as nibabel scales them.
    img = nib.load(str(path))
    scaled = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    scaled.header.set_slope_inter(2.0, 0.0)
    nib.save(scaled, str(tmp_path / "scaled.nii.gz"))
    assert _read_integer_nifti(tmp_path / "scaled.nii.gz") is None
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine), str(tmp_path / "f.nii.gz"))
    assert _read_integer_nifti(tmp_path / "f.nii.gz") is None
    assert read_label_map(tmp_path / "f.nii.gz", (1, 2))[0].dtype == np.uint8


@pytest.mark.parametrize("allowed,values,stray", [
    ((1, 2), (1, 2), None),  # 0..max all allowed: the one-reduction check
    ((2,), (2,), None),  # max 2 but 1 not allowed: the value-set check, nothing stray
    ((2,), (1, 2), "1"),
    ((1, 3), (1, 3), None),
    ((1, 3), (1, 2, 3), "2"),
    ((1, 2), (1, 2, 7), "7"),
])
def test_label_check_names_strays_whichever_check_runs(tmp_path, allowed, values, stray):
    m = np.zeros((6, 9, 11), np.uint8)
    for k, v in enumerate(values):
        m[1 + k, 2:4, 3:5] = v
    path = tmp_path / "m.nii.gz"
    write_nifti(m, Geometry((11, 9, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)), path)
    if stray is None:
        np.testing.assert_array_equal(read_label_map(path, allowed)[0], m)
    else:
        with pytest.raises(InputError, match=rf"unexpected label value\(s\) {stray};"):
            read_label_map(path, allowed)
