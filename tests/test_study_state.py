"""bench/study_state.py: which files a study piece keeps, and the refusals of export, restore and the input check
(hand-made study folders; the whole round trip on a study is in test_va_study.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import study_state  # noqa: E402


def _write(root: Path, rel: str, data: str = "x") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


def _study(root: Path, seed: int) -> Path:
    for rel in ("cohort/HNTS_001/preRT/HNTS_001_preRT_T2.nii.gz", "test_cohort/cohort.json",
                "nnUNet_raw/Dataset993_X/labelsTr/a.nii.gz", "nnUNet_preprocessed/plans.json",
                "run/test_set/Dataset993_TestSet/labelsTr/b.nii.gz", "run/gt/a.nii.gz", "run/overlays/o.png"):
        _write(root, rel, "input")
    for rel in (f"run/units/baseline__fold0__seed{seed}.json", f"run/predictions_test/dual/seed_{seed}/b.nii.gz",
                f"run/predictions_test/dual/seed_{seed}/.vadice_predict.json",
                f"run/evaluation_test/dual/seed_{seed}/lesions.csv", f"run/froc_test/dual/seed_{seed}/counts.npz",
                f"run/nnUNet_results/seed_{seed}/m/fold_0/training_log_1.txt", f"run/logs/u{seed}.log"):
        _write(root, rel, f"seed {seed}")
    for rel in (f"run/predictions_test/dual/seed_{seed}/b.npz", f"run/nnUNet_results/seed_{seed}/m/fold_0/c.pth",
                f"run/nnUNet_results/seed_{seed}/m/fold_0/progress.png", f"run/predictions/dual/seed_{seed}/a.pkl"):
        _write(root, rel, "big")
    _write(root, "run/manifest.json", json.dumps({"seed": seed}))
    _write(root, "va_study_start.json", json.dumps({"seed": seed}))
    return root


def test_a_piece_keeps_markers_logs_label_maps_and_tables_not_inputs_checkpoints_or_probabilities(tmp_path):
    root = _study(tmp_path / "s", 0)
    assert [p.as_posix() for p in study_state.state_files(root)] == [
        "run/evaluation_test/dual/seed_0/lesions.csv", "run/froc_test/dual/seed_0/counts.npz", "run/logs/u0.log",
        "run/manifest.json", "run/nnUNet_results/seed_0/m/fold_0/training_log_1.txt",
        "run/predictions_test/dual/seed_0/.vadice_predict.json", "run/predictions_test/dual/seed_0/b.nii.gz",
        "run/units/baseline__fold0__seed0.json", "va_study_start.json"]
    assert sorted(study_state.input_hashes(root)) == ["cohort/HNTS_001/preRT/HNTS_001_preRT_T2.nii.gz",
                                                      "test_cohort/cohort.json"]


def test_export_restore_round_trip_and_refusals(tmp_path):
    state = tmp_path / "state"
    for seed in (0, 1):
        study_state.export_state(_study(tmp_path / f"s{seed}", seed), state / f"seed_{seed}", {"seed": seed})
    with pytest.raises(SystemExit, match="seed_0 exists; a piece is exported once"):
        study_state.export_state(tmp_path / "s0", state / "seed_0", {"seed": 0})
    assert not list(state.glob("*.partial"))

    out = tmp_path / "combined"
    pieces = study_state.restore_state([state / "seed_0", state / "seed_1"], out)
    assert [p["seed"] for p in pieces] == [0, 1]
    assert (out / "run/logs/u1.log").read_text() == "seed 1"
    assert json.loads((out / "run/manifest.json").read_text()) == {"seed": 0}  # the first piece's record
    assert not (out / "run/predictions_test/dual/seed_0/b.npz").exists() and not (out / "cohort").exists()
    assert study_state.restore_state([state / "seed_0"], out)  # again: identical files are fine

    _write(tmp_path / "s0", "cohort/HNTS_001/preRT/HNTS_001_preRT_T2.nii.gz", "input")
    study_state.check_inputs(tmp_path / "s0", pieces)
    _write(tmp_path / "s0", "cohort/HNTS_001/preRT/HNTS_001_preRT_T2.nii.gz", "other")
    with pytest.raises(SystemExit, match=r"differ from seed 0's \(1 file\(s\), e\.g\. cohort/HNTS_001"):
        study_state.check_inputs(tmp_path / "s0", pieces)

    clash = tmp_path / "clash"
    _write(clash, "run/logs/u1.log", "another run")
    with pytest.raises(SystemExit, match=r"u1\.log differs from"):
        study_state.restore_state([state / "seed_0", state / "seed_1"], clash)
    assert [p.relative_to(clash).as_posix() for p in clash.rglob("*") if p.is_file()] == ["run/logs/u1.log"]

    (state / "seed_1" / "files" / "run/logs/u1.log").unlink()
    with pytest.raises(SystemExit, match=r"seed_1: 1 listed file\(s\) missing, e\.g\. run/logs/u1\.log"):
        study_state.restore_state([state / "seed_1"], tmp_path / "x")
    with pytest.raises(SystemExit, match="is not an exported piece"):
        study_state.restore_state([tmp_path / "s0"], tmp_path / "x")
