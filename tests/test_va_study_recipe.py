"""bench/va_study.py --tiny end to end: a real (tiny) study trained through nnU-Net, then run again.

Its own file so that pytest-xdist (--dist loadfile) runs it beside test_bench_recipes.py's recipe test; both are
marked ``recipe`` (``make test-recipes``, run by CI after ``make test``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import va_study  # noqa: E402


@pytest.mark.slow
@pytest.mark.recipe
def test_va_study_tiny_recipe_end_to_end_and_resumed(tmp_path):
    """bench/va_study.py --tiny: clinical cohorts (6 training, 4 test patients), 2 seeds sharing a warm start per
    seed, the three set-ups, the test set predicted with probabilities, +pp arms fitted on each unit's
    out-of-fold cases and applied to its test-set predictions, tables A/B/C, figures, the test-set report; then
    the same command again: nothing trained, the tables unchanged. Scores are not asserted."""
    out = tmp_path / "va"
    with mock.patch.dict(os.environ):  # the recipe points nnU-Net's roots into the study folder
        assert va_study.main(["--out", str(out), "--tiny", "-q"]) == 0
    text = (out / "study.md").read_text()
    run = out / "run"
    markers = {p: p.read_bytes() for p in (run / "units").glob("*.json")}
    assert len(markers) == 3 * len(va_study.TINY["seeds"])
    for seed in va_study.TINY["seeds"]:
        warm = {json.loads(b)["warm_start_sha256"] for p, b in markers.items() if p.stem.endswith(f"seed{seed}")}
        assert len(warm) == 1 and None not in warm
    test_cases = json.loads((run / "manifest.json").read_text())["test_set"]["cases"]
    assert len(test_cases) == va_study.TINY["test_cases"]
    for setup in va_study.TINY["pp_setups"]:
        oof = json.loads((run / "units" / f"{setup}__fold0__seed1.json").read_text())["cases"]
        pp = json.loads((run / "postprocessing" / setup / "seed_1" / "postprocessing.json").read_text())
        assert pp["fitted_on"]["cases"] == sorted(oof) and pp["objective"] == "f1"
        applied = sorted(p.name for p in (run / "predictions_test" / f"{setup}+pp" / "seed_1").glob("*.nii.gz"))
        assert applied == [f"{c}.nii.gz" for c in test_cases]
    for heading in ("## A. Primary: post-processed arms against baseline+pp, test set (4 patients)",
                    "## B. Raw arms (no post-processing) against baseline, test set (4 patients)",
                    "## C. Matched operating points", "| GTVn | lesion_sensitivity <1 ml |", "code version: started"):
        assert heading in text
    for png in ("va_study_froc_test.png", "va_study_test_sensitivity_by_size.png"):
        assert (out / png).stat().st_size > 5000
    assert (run / "report_test.html").is_file()

    with mock.patch.dict(os.environ):
        assert va_study.main(["--out", str(out), "--tiny", "-q"]) == 0
    assert {p: p.read_bytes() for p in (run / "units").glob("*.json")} == markers
    body = lambda t: t.split("Test set:", 1)[1]  # noqa: E731  (the header has this invocation's wall time)
    assert body((out / "study.md").read_text()) == body(text)
