"""The demo recipe end to end with a tiny budget: the real demo cohort, the shipped warm start, three set-ups.

One run serves every test here (it is the suite's most expensive fixture after the study recipes). Scores are
not asserted (2 iterations per set-up segment little); what is checked is the recipe itself: every set-up
really started from the one shipped checkpoint (nnU-Net says it loaded it, and the recorded hash is that
checkpoint's), predictions cover fold 0's held-out cases only, and the report says that the set-ups were
fine-tuned from a common baseline. The demo's other path, a common baseline trained in the run itself, is the
same ``Experiment.warm_start`` the study recipes train (tests/test_bench_recipes.py, ``make test-recipes``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import pytest

from vadice.io import sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from vadice.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "demo_out"
    with mock.patch.dict(os.environ):  # run_demo points nnU-Net's roots into its folder
        report = run_demo(out, iterations=2, progress=False)
        yield out, Path(report)


def test_the_shipped_checkpoint_fits_todays_demo_plans(demo_run):
    """Fails when the planner or the cohort generator drifts from what the shipped checkpoint was made
    with (the strict load names the mismatching weights), when its bytes do not match its recorded
    SHA-256, or when nnU-Net's split would hold out a case the checkpoint was trained on."""
    from vadice.demo import DEMO_CASES, PROVENANCE_FILE, WEIGHTS_FILE

    out, _ = demo_run
    sha = sha256_file(WEIGHTS_FILE)
    assert sha == json.loads(PROVENANCE_FILE.read_text())["sha256"]
    assert not (out / "run" / "warm_start").exists()  # nothing trained from scratch
    splits = json.loads((out / "nnUNet_preprocessed" / "Dataset990_VadiceDemo" / "splits_final.json").read_text())
    assert sorted(splits[0]["val"]) == json.loads(PROVENANCE_FILE.read_text())["held_out_cases"]
    assert len(json.loads((out / "cohort" / "cohort.json").read_text())["cases"]) == DEMO_CASES


def test_every_setup_starts_from_the_one_warm_start_checkpoint(demo_run):
    from vadice.demo import WEIGHTS_FILE

    out, _ = demo_run
    units = sorted((out / "run" / "units").glob("*.json"))
    assert [u.name.split("__")[0] for u in units] == ["baseline", "dual", "selective-ln"]
    for unit in units:
        info = json.loads(unit.read_text())
        assert info["warm_start_sha256"] == sha256_file(WEIGHTS_FILE)
        options = Path(info["fold_dir"]) / "vadice_trainer_options.json"
        assert Path(json.loads(options.read_text())["warm_start"]).resolve() == WEIGHTS_FILE.resolve()
        log = (out / "run" / "logs" / unit.name.replace(".json", ".log")).read_text()
        # The trainer's own log line, written after load_state_dict(strict=True): the weights really went in.
        assert "vadice warm start: all network weights from " in log
        loaded = log.split("vadice warm start: all network weights from ", 1)[1].split()[0]
        assert Path(loaded).resolve() == WEIGHTS_FILE.resolve()


def test_predictions_are_fold_0_held_out_cases(demo_run):
    out, _ = demo_run
    pre = out / "nnUNet_preprocessed" / "Dataset990_VadiceDemo"
    splits = json.loads((pre / "splits_final.json").read_text())
    held_out = sorted(splits[0]["val"])
    for setup in ("baseline", "dual", "selective-ln"):
        names = sorted(p.name.replace(".nii.gz", "") for p in (out / "run" / "predictions" / setup / "seed_0")
                       .glob("*.nii.gz"))
        assert names == held_out
        assert not set(names) & set(splits[0]["train"])


def test_demo_cohort_is_the_neck_grid(demo_run):
    out, _ = demo_run
    cohort = json.loads((out / "cohort" / "cohort.json").read_text())
    assert cohort["size"] == "neck"


def test_report_says_fine_tuned_from_a_common_baseline(demo_run):
    _, report = demo_run
    html = report.read_text()
    assert "Fine-tuned from a common baseline" in html
    assert "shipped common baseline checkpoint" in html
    assert "not ResEnc M" in html
    assert "Operating points (FROC)" in html  # probabilities kept: set-ups compared at matched operating points
