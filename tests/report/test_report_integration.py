"""The report reads what `vadice evaluate` and `vadice compare` really write (format contract)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from vadice.io import Geometry, write_nifti
from vadice.metrics import evaluate
from vadice.report.comparison import compare_folders
from vadice.report import ReportInputs, best_and_worst_cases, write_report


def _cohort(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    geom = Geometry(size=(24, 24, 8), spacing=(0.8, 0.8, 3.0), origin=(0, 0, 0),
                    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    (root / "gt").mkdir(parents=True)
    evals = {}
    preds = {name: root / "pred" / name for name in ("baseline", "dual")}
    for d in preds.values():
        d.mkdir(parents=True)
    for c in range(5):
        gt = np.zeros((8, 24, 24), np.uint8)
        gt[2:6, 4:12, 4:12] = 1
        gt[3:5, 15:18, 15:18] = 2
        if c % 2:
            gt[4, 2:4, 18:21] = 2
        write_nifti(gt, geom, root / "gt" / f"case_{c}.nii.gz")
        for name, d in preds.items():
            p = np.roll(gt, int(rng.integers(0, 3)), axis=2)
            if rng.random() < 0.4:
                p[p == 2] = 0
            write_nifti(p, geom, d / f"case_{c}.nii.gz")
    for name, d in preds.items():
        evals[name] = root / "eval" / name
        evaluate.evaluate_folders(root / "gt", d, evals[name], progress=False)
    return evals


def test_report_on_real_evaluation_and_comparison(tmp_path):
    evals = _cohort(tmp_path)
    compare_folders([evals["baseline"], evals["dual"]], names=["baseline", "dual"], out_dir=tmp_path / "cmp",
                    n_boot=50)
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    out = write_report(ReportInputs(title="real", comparison=comparison,
                                    evaluations={k: {0: v} for k, v in evals.items()}),
                       tmp_path / "report.html")
    html = out.read_text()
    section = html[html.index('id="answer"'):html.index('id="comparison"')]
    # With one seed per set-up, the DSCagg shown is summary.json's own DSCagg of each evaluation.
    for name, folder in evals.items():
        summary = json.loads((folder / "summary.json").read_text())
        for lab in ("GTVp", "GTVn"):
            assert f">{summary['labels'][lab]['dscagg']:.3f}<" in section

    # best/worst agree with a direct read of cases.csv.
    with open(evals["dual"] / "cases.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] == "GTVn" and r["dsc"] != ""]
    dsc = {r["case"]: float(r["dsc"]) for r in rows}
    best, worst = best_and_worst_cases(evals["dual"], "GTVn")
    assert math.isclose(best[0][1], max(dsc.values())) and math.isclose(worst[0][1], min(dsc.values()))


def test_report_refuses_a_comparison_from_an_older_vadice(tmp_path):
    from vadice.experiment import build_report
    from vadice.io import InputError

    (tmp_path / "comparison").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"settings": {"setups": ["baseline"], "seeds": [0]}}))
    (tmp_path / "comparison" / "comparison.json").write_text(json.dumps({"runs": ["baseline"], "rows": []}))
    with pytest.raises(InputError, match=r"comparison\.json: written by an older vadice"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()
