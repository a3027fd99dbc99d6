"""HNTS-MRG -> nnU-Net conversion of a synthetic cohort: layout, geometry, nnU-Net acceptance, resume."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from vadice.cli import main
from vadice.data import hntsmrg
from vadice.data.hntsmrg import convert, source_files
from vadice.io import read_geometry, read_nifti, sha256_file, write_nifti

EXPECTED = {
    # (task, include_midrt): (timepoints, channel source keys, label key per timepoint)
    (1, False): {"preRT": (["preRT_T2"], "preRT_mask")},
    (1, True): {"preRT": (["preRT_T2"], "preRT_mask"), "midRT": (["midRT_T2"], "midRT_mask")},
    (2, False): {"midRT": (["midRT_T2", "preRT_T2_registered", "preRT_mask_registered"], "midRT_mask")},
}


def _assert_consistent(dataset):
    """nnU-Net's own bookkeeping rules, checked cheaply (the full nnU-Net check runs in the layout test)."""
    info = json.loads((dataset / "dataset.json").read_text())
    labels = sorted(p.name[: -len(".nii.gz")] for p in (dataset / "labelsTr").glob("*.nii.gz"))
    images = sorted(p.name for p in (dataset / "imagesTr").glob("*.nii.gz"))
    n = len(info["channel_names"])
    assert len(labels) == info["numTraining"]
    assert images == sorted(f"{c}_{i:04d}.nii.gz" for c in labels for i in range(n))


def _ids(cohort):
    return [c["id"] for c in json.loads((cohort / "cohort.json").read_text())["cases"]]


def _verify_with_nnunet(dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any problem


@pytest.mark.parametrize("task,include_midrt", sorted(EXPECTED))
def test_convert_layout_geometry_and_nnunet_accepts(small_cohort, tmp_path, task, include_midrt):
    dataset = convert(small_cohort, task, 42, out=tmp_path / "raw", include_midrt=include_midrt, progress=False)
    assert dataset == tmp_path / "raw" / f"Dataset042_HNTSMRGTask{task}"
    info = json.loads((dataset / "dataset.json").read_text())
    spec = EXPECTED[(task, include_midrt)]
    n_channels = len(next(iter(spec.values()))[0])
    assert info["labels"] == {"background": 0, "GTVp": 1, "GTVn": 2}
    assert info["file_ending"] == ".nii.gz"
    assert list(info["channel_names"]) == [str(i) for i in range(n_channels)]
    if task == 2:
        assert info["channel_names"]["2"] == "noNorm"
    ids = _ids(small_cohort)
    assert info["numTraining"] == len(ids) * len(spec)

    expected_images, expected_labels = set(), set()
    for cid in ids:
        files = source_files(small_cohort / str(cid), cid)
        for tp, (channel_keys, label_key) in spec.items():
            name = f"HNTS_{cid:03d}_{tp}"
            label_out = dataset / "labelsTr" / f"{name}.nii.gz"
            expected_labels.add(label_out.name)
            # Byte-for-byte copy: same content, hence same geometry, dtype and labels.
            assert sha256_file(label_out) == sha256_file(files[label_key])
            src_geom = read_geometry(files[label_key])
            assert read_geometry(label_out) == src_geom
            labels = set(np.unique(read_nifti(label_out)[0]).tolist())
            assert labels <= {0, 1, 2}
            for i, key in enumerate(channel_keys):
                img_out = dataset / "imagesTr" / f"{name}_{i:04d}.nii.gz"
                expected_images.add(img_out.name)
                assert sha256_file(img_out) == sha256_file(files[key])
                assert read_geometry(img_out) == src_geom
    assert {p.name for p in (dataset / "imagesTr").iterdir()} == expected_images
    assert {p.name for p in (dataset / "labelsTr").iterdir()} == expected_labels
    assert not list(dataset.rglob(".*"))
    _verify_with_nnunet(dataset)


def test_empty_mid_rt_masks_are_kept_as_training_cases(small_cohort, tmp_path):
    dataset = convert(small_cohort, 2, 43, out=tmp_path, progress=False)
    empty = [p for p in (dataset / "labelsTr").iterdir() if not read_nifti(p)[0].any()]
    assert empty, "the fixture cohort has complete responders; their empty masks must be converted"


def _mtimes(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*.nii.gz")}


def test_rerun_skips_identical_cases_and_redoes_changed_ones(small_cohort, tmp_path, caplog):
    src = tmp_path / "src"
    shutil.copytree(small_cohort, src)
    dataset = convert(src, 1, 44, out=tmp_path / "raw", progress=False)
    first = _mtimes(dataset)
    caplog.set_level("INFO", logger="vadice")  # an earlier CLI call in this process may have quietened "vadice"
    convert(src, 1, 44, out=tmp_path / "raw", progress=False)
    assert _mtimes(dataset) == first, "identical cases must not be rewritten"
    assert "unchanged" in caplog.text

    # Change one source mask (still valid): only that case is rewritten.
    cid = _ids(src)[0]
    files = source_files(src / str(cid), cid)
    mask, geom = read_nifti(files["preRT_mask"])
    changed = mask.copy()
    changed[0, 0, 0] = 2 if changed[0, 0, 0] != 2 else 0
    write_nifti(changed, geom, files["preRT_mask"])
    convert(src, 1, 44, out=tmp_path / "raw", progress=False)
    now = _mtimes(dataset)
    changed_label = next(k for k in now if k.name == f"HNTS_{cid:03d}_preRT.nii.gz")
    assert now[changed_label] != first[changed_label]
    assert sha256_file(dataset / changed_label) == sha256_file(files["preRT_mask"])
    untouched = [k for k in first if f"HNTS_{cid:03d}_" not in k.name]
    assert untouched and all(now[k] == first[k] for k in untouched)


def test_killed_run_is_completed(small_cohort, tmp_path):
    dataset = convert(small_cohort, 2, 45, out=tmp_path, progress=False)
    reference = {p.relative_to(dataset): sha256_file(p) for p in dataset.rglob("*.nii.gz")}
    # Simulate a kill mid-way: one case's outputs missing, a temporary left behind, no dataset.json yet.
    victim = sorted((dataset / "imagesTr").iterdir())[0]
    victim.unlink()
    (dataset / "labelsTr" / sorted(os.listdir(dataset / "labelsTr"))[-1]).unlink()
    (dataset / "imagesTr" / ".HNTS_999_midRT_0000.nii.gz.abc.part").write_bytes(b"partial")
    (dataset / "dataset.json").unlink()
    convert(small_cohort, 2, 45, out=tmp_path, progress=False)
    assert {p.relative_to(dataset): sha256_file(p) for p in dataset.rglob("*.nii.gz")} == reference
    assert not list(dataset.rglob(".*"))
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == len(_ids(small_cohort))
    _assert_consistent(dataset)


def test_removed_case_disappears_from_the_dataset(small_cohort, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(small_cohort, src)
    dataset = convert(src, 1, 46, out=tmp_path / "raw", progress=False)
    gone = _ids(src)[-1]
    shutil.rmtree(src / str(gone))
    convert(src, 1, 46, out=tmp_path / "raw", progress=False)
    names = {p.name for p in dataset.rglob("*.nii.gz")}
    assert not any(f"HNTS_{gone:03d}_" in n for n in names)
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == len(_ids(small_cohort)) - 1
    _assert_consistent(dataset)


def test_skip_invalid_converts_the_rest_and_reports(small_cohort, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(small_cohort, src)
    bad = _ids(src)[1]
    bad_file = source_files(src / str(bad), bad)["preRT_T2"]
    data = bad_file.read_bytes()
    bad_file.write_bytes(data[: len(data) // 3])
    out = tmp_path / "raw"
    assert main(["-q", "convert", str(src), "--task", "1", "--dataset-id", "47", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad_file) in err and "truncated" in err
    assert not out.exists() or not any(out.iterdir())

    assert main(["-q", "convert", str(src), "--task", "1", "--dataset-id", "47", "--out", str(out),
                 "--skip-invalid"]) == 0
    dataset = out / "Dataset047_HNTSMRGTask1"
    report = json.loads((dataset / "skipped_cases.json").read_text())["skipped"]
    assert [r["path"] for r in report] == [str(bad_file)]
    assert "truncated" in report[0]["problem"]
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["numTraining"] == len(_ids(src)) - 1
    assert not any(f"HNTS_{bad:03d}_" in p.name for p in dataset.rglob("*.nii.gz"))
    _assert_consistent(dataset)


def test_settings_and_id_conflicts(small_cohort, tmp_path, capsys, monkeypatch):
    out = tmp_path / "raw"
    convert(small_cohort, 1, 48, out=out, progress=False)
    # Same id, different task: refuse and leave the dataset alone.
    before = _mtimes(out)
    assert main(["-q", "convert", str(small_cohort), "--task", "2", "--dataset-id", "48", "--out", str(out),
                 "--name", "HNTSMRGTask1"]) == 2
    assert "different settings" in capsys.readouterr().err
    # Same id under another name: nnU-Net could not tell them apart.
    assert main(["-q", "convert", str(small_cohort), "--task", "2", "--dataset-id", "48", "--out", str(out)]) == 2
    assert "already used" in capsys.readouterr().err
    assert _mtimes(out) == before
    # No --out and no $nnUNet_raw.
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["-q", "convert", str(small_cohort), "--task", "1", "--dataset-id", "49"]) == 2
    assert "nnUNet_raw" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "envraw"))
    assert main(["-q", "convert", str(small_cohort), "--task", "1", "--dataset-id", "49"]) == 0
    assert (tmp_path / "envraw" / "Dataset049_HNTSMRGTask1" / "dataset.json").exists()
    # Bad arguments.
    base = ["-q", "convert", str(small_cohort), "--out", str(out)]
    for extra, needle in ((["--task", "1", "--dataset-id", "0"], "1..999"),
                          (["--task", "1", "--dataset-id", "50", "--name", "bad name"], "name"),
                          (["--task", "2", "--dataset-id", "50", "--include-midrt"], "task 1")):
        assert main(base + extra) == 2, extra
        assert needle in capsys.readouterr().err
    assert not (out / "Dataset050_HNTSMRGTask1").exists()


def test_foreign_dataset_folder_is_not_touched(small_cohort, tmp_path, capsys):
    dataset = tmp_path / "Dataset051_HNTSMRGTask1"
    dataset.mkdir()
    (dataset / "mine.txt").write_text("x")
    assert main(["-q", "convert", str(small_cohort), "--task", "1", "--dataset-id", "51", "--out",
                 str(tmp_path)]) == 2
    assert "not written by vadice" in capsys.readouterr().err
    assert [p.name for p in dataset.iterdir()] == ["mine.txt"]


def test_layout_constants_match_reference():
    files = source_files("/d/12", 12)
    assert files["preRT_T2"].as_posix() == "/d/12/preRT/12_preRT_T2.nii.gz"
    assert files["preRT_mask_registered"].as_posix() == "/d/12/midRT/12_preRT_mask_registered.nii.gz"
    assert hntsmrg.case_name(12, "midRT") == "HNTS_012_midRT"
