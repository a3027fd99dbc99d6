"""Every kind of bad input: one clear line naming the file and the problem, exit code 2, nothing written.

Cases are tiny hand-built volumes (independent of the synthetic generator) so that each corruption is explicit.
"""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vadice.cli import main
from vadice.data.hntsmrg import source_files
from vadice.data.validate import check_mask
from vadice.io import Geometry, InputError, write_nifti, write_sitk

SHAPE = (8, 24, 24)  # z, y, x
GEOM = Geometry(size=(24, 24, 8), spacing=(0.5, 0.5, 2.0), origin=(-3.0, -2.5, -100.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _write_case(root, cid, seed=0):
    rng = np.random.default_rng(seed + cid)
    files = source_files(root / str(cid), cid)
    for key, path in files.items():
        if "mask" in key:
            # Noisy labels compress poorly, so a truncated file still has a complete header.
            data = rng.integers(0, 3, SHAPE).astype(np.uint8)
        else:
            data = (rng.random(SHAPE) * 500).astype(np.float32 if "registered" in key else np.int16)
        write_nifti(data, GEOM, path)
    return files


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    for cid in (3, 7, 12):
        _write_case(root, cid)
    return root


def _geom(**kw):
    d = dict(size=GEOM.size, spacing=GEOM.spacing, origin=GEOM.origin, direction=GEOM.direction)
    d.update(kw)
    return Geometry(**d)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:-64])  # keeps the header, cuts voxel data and the gzip trailer


def _rewrite(path, array=None, geom=GEOM):
    if array is None:
        array = np.zeros(SHAPE, np.uint8)
    write_nifti(array, geom, path)


def _nan_image(path):
    data = np.ones(SHAPE, np.float32)
    data[3, 4, 5] = np.nan
    write_nifti(data, GEOM, path)


def _inf_image(path):
    data = np.ones(SHAPE, np.float32)
    data[0, 0, 0] = np.inf
    write_nifti(data, GEOM, path)


def _two_d(path):
    img = sitk.GetImageFromArray(np.ones(SHAPE[1:], np.int16))
    img.SetSpacing((0.5, 0.5))
    write_sitk(img, path)


def _label3(path):
    data = np.zeros(SHAPE, np.uint8)
    data[1, 2, 3] = 3
    _rewrite(path, data)


def _float_half(path):
    data = np.zeros(SHAPE, np.float32)
    data[2, 2, 2] = 0.5
    _rewrite(path, data)


def _negative_label(path):
    data = np.zeros(SHAPE, np.int16)
    data[2, 2, 2] = -1
    _rewrite(path, data)


def _garbage(path):
    path.write_bytes(gzip.compress(b"this is not a nifti file" * 10))


def _four_d(path):
    nib.save(nib.Nifti1Image(np.ones(SHAPE[::-1] + (2,), np.int16), np.eye(4)), str(path))


# kind -> (file key, corruption, words the error must contain)
CORRUPTIONS = {
    "truncated_gzip": ("preRT_T2", _truncate, "truncated"),
    "truncated_mask": ("preRT_mask", _truncate, "truncated"),
    "wrong_shape": ("preRT_mask", lambda p: _rewrite(p, np.zeros((8, 24, 23), np.uint8), _geom(size=(23, 24, 8))),
                    "size"),
    "spacing_mismatch": ("preRT_mask", lambda p: _rewrite(p, geom=_geom(spacing=(0.5, 0.5, 2.5))), "spacing"),
    "origin_mismatch": ("preRT_mask", lambda p: _rewrite(p, geom=_geom(origin=(-3.0, -2.5, -90.0))), "origin"),
    "direction_mismatch": ("preRT_mask", lambda p: _rewrite(
        p, geom=_geom(direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))), "direction"),
    "label_3": ("preRT_mask", _label3, "label value(s) 3"),
    "negative_label": ("preRT_mask", _negative_label, "label value(s) -1"),
    "float_mask_half": ("preRT_mask", _float_half, "non-integer"),
    "nan_image": ("preRT_T2", _nan_image, "non-finite"),
    "inf_image": ("preRT_T2", _inf_image, "non-finite"),
    "two_d_image": ("preRT_T2", _two_d, "3-D"),
    "four_d_image": ("preRT_T2", _four_d, "3-D"),
    "not_nifti": ("preRT_T2", _garbage, "unreadable"),
    "missing_mask": ("preRT_mask", lambda p: p.unlink(), "file not found"),
    "missing_image": ("preRT_T2", lambda p: p.unlink(), "file not found"),
    "unknown_file": ("preRT_T2", lambda p: p.with_name("7_preRT_T1.nii.gz").write_bytes(p.read_bytes()),
                     "unexpected file"),
    # Task 2 inputs.
    "registered_mask_label_3": ("preRT_mask_registered", _label3, "label value(s) 3"),
    "registered_image_grid": ("preRT_T2_registered", lambda p: _rewrite(
        p, np.ones(SHAPE, np.float32), _geom(origin=(0.0, 0.0, 0.0))), "origin"),
    "midrt_mask_float": ("midRT_mask", _float_half, "non-integer"),
}
TASK2_KINDS = {"registered_mask_label_3", "registered_image_grid", "midrt_mask_float"}


def _convert(src, out, task=1, *extra):
    return main(["-q", "convert", str(src), "--task", str(task), "--dataset-id", "9", "--out", str(out),
                 "--workers", "1", *extra])


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_bad_input_one_line_exit_2_nothing_written(src, tmp_path, capsys, kind):
    key, corrupt, words = CORRUPTIONS[kind]
    target = source_files(src / "7", 7)[key]
    corrupt(target)
    out = tmp_path / "raw"
    rc = _convert(src, out, 2 if kind in TASK2_KINDS else 1)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    named = target if kind != "unknown_file" else target.with_name("7_preRT_T1.nii.gz")
    assert str(named) in err, err
    assert words in err, err
    assert not out.exists(), "nothing may be written on invalid input"


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    assert _convert(tmp_path / "src", tmp_path / "raw") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "src") in err and "empty" in err
    assert not (tmp_path / "raw").exists()


def test_missing_folder_and_folder_without_cases(tmp_path, capsys):
    assert _convert(tmp_path / "nope", tmp_path / "raw") == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "src" / "HNTSMRG24_train" / "5").mkdir(parents=True)
    assert _convert(tmp_path / "src", tmp_path / "raw") == 2
    err = capsys.readouterr().err
    assert "no case folders" in err and "did you mean" in err and "HNTSMRG24_train" in err
    assert not (tmp_path / "raw").exists()


def test_unexpected_top_level_entry(src, tmp_path, capsys):
    (src / "scans").mkdir()
    (src / "README.md").write_text("allowed metadata")
    assert _convert(src, tmp_path / "raw") == 2
    err = capsys.readouterr().err.strip()
    assert str(src / "scans") in err and "unexpected entry" in err
    assert not (tmp_path / "raw").exists()


def test_several_bad_cases_one_line_each(src, tmp_path, capsys):
    _truncate(source_files(src / "3", 3)["preRT_T2"])
    _label3(source_files(src / "12", 12)["preRT_mask"])
    assert _convert(src, tmp_path / "raw") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "2 invalid inputs" in lines[0] and "--skip-invalid" in lines[0]
    assert len(lines) == 3
    assert str(source_files(src / "3", 3)["preRT_T2"]) in lines[1] and "truncated" in lines[1]
    assert str(source_files(src / "12", 12)["preRT_mask"]) in lines[2] and "label value(s) 3" in lines[2]
    assert not (tmp_path / "raw").exists()


def test_skip_invalid_report_lists_every_bad_input(src, tmp_path):
    import json

    _nan_image(source_files(src / "3", 3)["preRT_T2"])
    (src / "notes.bin").write_bytes(b"?")
    assert _convert(src, tmp_path / "raw", 1, "--skip-invalid") == 0
    dataset = tmp_path / "raw" / "Dataset009_HNTSMRGTask1"
    skipped = json.loads((dataset / "skipped_cases.json").read_text())["skipped"]
    assert {s["path"] for s in skipped} == {str(src / "notes.bin"), str(source_files(src / "3", 3)["preRT_T2"])}
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == ["HNTS_007_preRT.nii.gz",
                                                                        "HNTS_012_preRT.nii.gz"]
    # Fixing the case and converting again (without --skip-invalid) adds it and drops the report.
    shutil.rmtree(src / "3")
    _write_case(src, 3)
    (src / "notes.bin").unlink()
    assert _convert(src, tmp_path / "raw") == 0
    assert not (dataset / "skipped_cases.json").exists()
    assert len(list((dataset / "labelsTr").iterdir())) == 3


def test_only_invalid_cases_with_skip_invalid_is_an_error(tmp_path, capsys):
    root = tmp_path / "src"
    files = _write_case(root, 4)
    _label3(files["preRT_mask"])
    assert _convert(root, tmp_path / "raw", 1, "--skip-invalid") == 2
    assert "no valid case" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()


def test_hidden_files_and_metadata_are_ignored(src, tmp_path):
    (src / ".DS_Store").write_bytes(b"")
    (src / "7" / "preRT" / ".7_preRT_T2.nii.gz.tmp.part").write_bytes(b"")
    (src / "cohort.json").write_text("{}")
    assert _convert(src, tmp_path / "raw") == 0


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.int16, (3, 4, 5), elements=st.integers(-2, 5)))
def test_mask_check_accepts_exactly_labels_0_1_2(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("m") / "m.nii.gz"
    write_nifti(data, _geom(size=(5, 4, 3)), path)
    ok = set(np.unique(data).tolist()) <= {0, 1, 2}
    if ok:
        assert set(check_mask(path).labels) == set(np.unique(data).tolist())
    else:
        with pytest.raises(InputError, match="label value"):
            check_mask(path)
