"""bench/va_study.py without training: table C read from a hand-made froc_comparison.json, the start rules, and the
analysis (collect, +pp arms fitted out-of-fold and applied to the test set, tables, figures, report, resumption)
on an experiment whose training and inference are replaced (test_experiment_testset.py's ``study`` fixture).
The recipe end to end is test_va_study_recipe.py."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import va_study  # noqa: E402
from test_experiment_testset import FakePredictor, _open, study  # noqa: E402,F401  (study: a fixture)


def _block(cpm, point, delta=None, at=None):
    return {"pooled": {"cpm": cpm}, "operating_point": point, "delta_cpm": delta, "at_reference_point": at}


def _hand_froc() -> dict:
    point = {"threshold": 0.5, "sensitivity": 0.8, "fp_per_patient": 1.25, "precision": 0.4}
    view = {
        "baseline": _block(0.5, point),
        "dual": _block(0.6, {**point, "sensitivity": 0.9},
                       {"diff": 0.1, "low": 0.02, "high": 0.2, "seed_diffs": [0.05, 0.15], "n_agree": 2,
                        "verdict": "consistent"},
                       {"sensitivity_at_fp": 0.85, "precision_at_sensitivity": 0.45, "threshold": 0.55}),
        "selective-ln": _block(0.45, point,
                               {"diff": -0.05, "low": -0.2, "high": 0.1, "seed_diffs": [-0.1, 0.0], "n_agree": 1,
                                "verdict": "CI includes 0"},
                               {"sensitivity_at_fp": 0.7, "precision_at_sensitivity": float("nan"),
                                "threshold": float("nan")}),
    }
    small = {k: dict(v) for k, v in view.items()}
    small["baseline"] = _block(0.3, {**point, "sensitivity": 0.5})
    return {"reference": "baseline", "label": "GTVn", "n_patients": 100, "views": {"all": view, "<1 ml": small},
            "settings": {"operating_threshold": 0.5, "paired": True, "ties": "neutral", "confidence": 0.95,
                         "n_boot": 2000}}


def test_table_c_reads_the_froc_comparison_as_written():
    lines = va_study.froc_table(_hand_froc()).splitlines()
    assert lines[0].startswith("Reference baseline; label GTVn; 100 patients; own operating point = the pooled "
                               "row at threshold 0.5; seeds paired, ties neutral; CI 95% two-level bootstrap")
    assert lines[2].startswith("| view | set-up | CPM baseline | CPM set-up | ΔCPM [95 % CI]")
    assert lines[4:] == [
        "| GTVn all | dual | 0.500 | 0.600 | 0.100 [0.020, 0.200]; 0.050, 0.150; 2/2 agree; consistent | "
        "0.800, 1.25, 0.400 | 0.450 (0.55) | 0.850 |",
        "| GTVn all | selective-ln | 0.500 | 0.450 | -0.050 [-0.200, 0.100]; -0.100, 0.000; 1/2 agree; "
        "CI includes 0 | 0.800, 1.25, 0.400 | — (—) | 0.700 |",
        "| GTVn <1 ml | dual | 0.300 | 0.600 | 0.100 [0.020, 0.200]; 0.050, 0.150; 2/2 agree; consistent | "
        "0.500, 1.25, 0.400 | 0.450 (0.55) | 0.850 |",
        "| GTVn <1 ml | selective-ln | 0.300 | 0.450 | -0.050 [-0.200, 0.100]; -0.100, 0.000; 1/2 agree; "
        "CI includes 0 | 0.500, 1.25, 0.400 | — (—) | 0.700 |",
    ]


def test_a_study_does_not_start_from_a_dirty_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(va_study, "code_describe", lambda root=None: "abc1234-dirty")
    with pytest.raises(SystemExit, match="refusing to start a study from checkout abc1234-dirty"):
        va_study.check_start(tmp_path / "s", va_study.DESIGN, tiny=False, allow_dirty=False, command="c")
    assert not (tmp_path / "s").exists()
    tiny = va_study.check_start(tmp_path / "t", va_study.TINY, tiny=True, allow_dirty=False, command="c")
    assert tiny["code_version"] == "abc1234-dirty" and not tiny["allow_dirty"]
    record = va_study.check_start(tmp_path / "s", va_study.DESIGN, tiny=False, allow_dirty=True, command="c")
    assert record["allow_dirty"] and record["design"]["cohort_seed"] == 7301
    # resuming reads the record (a clean checkout now changes nothing); another design is refused
    monkeypatch.setattr(va_study, "code_describe", lambda root=None: "def5678")
    assert va_study.check_start(tmp_path / "s", va_study.DESIGN, False, False, "c2") == record
    with pytest.raises(SystemExit, match="records another design"):
        va_study.check_start(tmp_path / "s", {**va_study.DESIGN, "pp_objective": "precision@sens-drop:0"},
                             False, False, "c")


def test_analysis_builds_pp_arms_out_of_fold_tables_and_resumes(study, monkeypatch):
    settings = replace(study.settings, setups=("baseline", "dual", "selective-ln"), seeds=(0, 1))
    exp = _open(study.tmp / "run", settings)
    exp.run_units()
    design = va_study.TINY
    result = va_study.analyse(exp, design, progress=False)
    run = exp.run_dir

    assert result["pp_test"]["runs"] == ["baseline+pp", "dual+pp", "selective-ln+pp"]
    assert result["raw_test"]["runs"] == result["raw_oof"]["runs"] == ["baseline", "dual", "selective-ln"]
    assert {k: v["runs"] for k, v in result["paired"].items()} == {
        "dual": ["baseline", "dual"], "selective-ln": ["baseline", "selective-ln"],
        "dual+pp": ["baseline+pp", "dual+pp"], "selective-ln+pp": ["baseline+pp", "selective-ln+pp"]}
    summary = json.loads((run / "evaluation_test" / "dual+pp" / "seed_1" / "summary.json").read_text())
    assert [b["bin"] for b in summary["labels"]["GTVn"]["size_stratified_sensitivity"]] == ["<1 ml", ">=1 ml"]
    oof_cases = ["HNTS_002_preRT", "HNTS_003_preRT", "HNTS_005_preRT"]
    for setup in ("baseline", "dual", "selective-ln"):
        for seed in (0, 1):
            pp = json.loads(va_study.pp_file(exp, setup, seed).read_text())
            assert pp["fitted_on"]["cases"] == oof_cases and pp["objective"] == "f1"
            assert pp["source"]["gt_dir"] == str(run / "gt")
            # HNTS_003 of the test cohort shares a fitted case's name, not its truth: post-processed too
            assert sorted(p.name for p in (run / "predictions_test" / f"{setup}+pp" / f"seed_{seed}").iterdir()) \
                == ["HNTS_003_preRT.nii.gz", "HNTS_007_preRT.nii.gz"]
    assert (run / "report_test.html").is_file()

    text = va_study.markdown(exp, design, result)
    for heading in ("## A. Primary: post-processed arms against baseline+pp, test set (2 patients)",
                    "## B. Raw arms (no post-processing) against baseline, test set (2 patients)",
                    "## C. Matched operating points", "## B on the out-of-fold patients (3;",
                    "## HD95 (mm), test set", "## Post-processing fits"):
        assert heading in text
    assert "| Δ dual+pp − baseline+pp [95 % CI]; per-seed Δ; verdict |" in text
    assert "| GTVn | lesion_sensitivity <1 ml |" in text and "| GTVn all | dual |" in text
    assert "| dual+pp | 1 |" in text and text.count("| 3 | 1 |") == 6  # 3 cases fitted on, 1 name shared
    pngs = va_study.figures(exp, design, study.tmp, result)
    assert [p.name for p in pngs] == ["va_study_froc_test.png", "va_study_test_sensitivity_by_size.png",
                                      "va_study_test_precision_vs_sensitivity.png"]
    assert all(p.stat().st_size > 5000 for p in pngs)

    # resumed: nothing predicted, evaluated, fitted, applied or FROC-counted again; the tables are the same
    def redo(*a, **k):
        raise AssertionError("redone")

    for target in ("vadice.metrics.evaluate.evaluate_folders", "vadice.metrics.froc_io.froc_folders",
                   "vadice.postprocess.arm.fit_postprocessing", "vadice.postprocess.arm.apply_to_folder"):
        monkeypatch.setattr(target, redo)
    FakePredictor.built, FakePredictor.cases = [], []
    again = va_study.analyse(exp, design, progress=False)
    assert FakePredictor.built == [] and va_study.markdown(exp, design, again) == text


def test_seed_by_seed_pieces_restored_elsewhere_combine_to_the_one_go_tables(study, monkeypatch):
    """Each seed run alone in its own folder (as on machines that keep nothing), exported, restored into a third
    folder and combined without predicting: the tables are those of the same study run in one go."""
    import study_state

    settings = replace(study.settings, setups=("baseline", "dual", "selective-ln"), seeds=(0, 1))
    design = va_study.TINY
    exp = _open(study.tmp / "all" / "run", settings)
    exp.run_units()
    text = va_study.markdown(exp, design, va_study.analyse(exp, design, progress=False))

    state = study.tmp / "state"
    for seed in (0, 1):
        root = study.tmp / f"piece{seed}"
        piece = _open(root / "run", settings)
        piece.run_units([u for u in settings.units() if u.seed == seed])
        va_study.analyse_piece(piece, design, seed, progress=False)
        assert not list((root / "run").glob("comparison*")) and not (root / "run" / "report_test.html").exists()
        assert sorted(p.name for p in (root / "run" / "evaluation_test").glob("*/seed_*")) == [f"seed_{seed}"] * 6
        study_state.export_state(root, state / f"seed_{seed}", {"seed": seed})
        kept = json.loads((state / f"seed_{seed}" / "piece.json").read_text())["files"]
        assert not [f for f in kept if f.endswith((".npz", ".pth", ".pkl")) and not f.endswith("/counts.npz")]
        assert f"run/froc_test/dual/seed_{seed}/summary.json" in kept
        assert f"run/predictions_test/dual+pp/seed_{seed}/HNTS_007_preRT.nii.gz" in kept
        assert f"run/postprocessing/dual/seed_{seed}/postprocessing.json" in kept

    combined = study.tmp / "combined"
    pieces = study_state.restore_state([state / "seed_0", state / "seed_1"], combined)
    assert [p["seed"] for p in pieces] == [0, 1]
    again = _open(combined / "run", settings)
    again.prepare_test_set()
    assert again.missing() == []

    def redo(*a, **k):
        raise AssertionError("redone")

    for target in ("vadice.metrics.evaluate.evaluate_folders", "vadice.metrics.froc_io.froc_folders",
                   "vadice.postprocess.arm.fit_postprocessing", "vadice.postprocess.arm.apply_to_folder"):
        monkeypatch.setattr(target, redo)
    FakePredictor.built = []
    result = va_study.analyse(again, design, progress=False, predict=False)
    assert FakePredictor.built == [] and va_study.markdown(again, design, result) == text
    assert (combined / "run" / "report_test.html").is_file()


def test_va_study_refuses_pieces_that_do_not_belong_together(tmp_path, monkeypatch):
    monkeypatch.setattr(va_study, "code_describe", lambda root=None: "va-study-2")
    state = tmp_path / "state"
    (state / "seed_0").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"no piece of seed\(s\) \[1, 2\]"):
        va_study.piece_states(state, va_study.DESIGN)
    out = tmp_path / "out"
    packages = va_study.installed_packages()
    assert packages["numpy"] == np.__version__ and packages["torch"].startswith("2.")
    good = {"seed": 1, "design": json.loads(json.dumps(va_study.DESIGN)), "code_version": "va-study-2",
            "out": str(out), "packages": packages}
    va_study.check_piece_records([good], va_study.DESIGN, out)
    for key, value, what in (("design", {**good["design"], "warm": 10}, "design"),
                             ("code_version", "va-study-2-dirty", "code version"),
                             ("out", "/elsewhere", "study folder")):
        with pytest.raises(SystemExit, match=f"seed 1's piece has another {what}"):
            va_study.check_piece_records([{**good, key: value}], va_study.DESIGN, out)
    with pytest.raises(SystemExit, match=r"ran with other packages \(2, e\.g\. numpy 1\.0 there, .* here\)"):
        va_study.check_piece_records([{**good, "packages": {**packages, "numpy": "1.0", "zz-extra": "1"}}],
                                     va_study.DESIGN, out)
    with pytest.raises(SystemExit, match="seed 5 is not one of the design's"):
        va_study.main(["--out", str(out), "--seed", "5"])
    (state / "seed_2").mkdir()
    with pytest.raises(SystemExit, match="seed_2 exists: seed 2's piece was exported already"):
        va_study.main(["--out", str(out), "--seed", "2", "--state", str(state)])
    assert not out.exists()
