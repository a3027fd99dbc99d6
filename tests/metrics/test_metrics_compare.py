"""compare_runs and the compare CLI: refusals, table contents, statistics wiring."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from test_metrics_evaluate import _geom, make_folders
from metrics_cases import label_pair
from vadice.cli import main
from vadice.io import InputError, write_nifti
from vadice.metrics.compare import compare_runs
from vadice.metrics.evaluate import evaluate_folders


@pytest.fixture
def runs(tmp_path):
    gt_dir, pred_dir = make_folders(tmp_path, n=6)
    a = tmp_path / "eval_a"
    evaluate_folders(gt_dir, pred_dir, a, progress=False)
    # Run b: the truth itself for half of the cases (better), otherwise the same predictions.
    pred_b = tmp_path / "pred_b"
    pred_b.mkdir()
    for i in range(6):
        g, p, _ = label_pair(i)
        write_nifti(g if i % 2 == 0 else p, _geom(g.shape, (2.0, 0.5, 0.75)), pred_b / f"case_{i:03d}.nii.gz")
    b = tmp_path / "eval_b"
    evaluate_folders(gt_dir, pred_b, b, progress=False)
    return tmp_path, gt_dir, pred_dir, a, b


def _per_case(folder, label, metric):
    with open(folder / "cases.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] == label]
    return np.array([float(r[metric]) if r[metric] else np.nan for r in sorted(rows, key=lambda r: r["case"])])


def test_table_contents(runs):
    tmp_path, _, _, a, b = runs
    out = tmp_path / "cmp"
    res = compare_runs([a, b], ["base", "better"], out, n_boot=300, seed=1)
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "comparison.json", "comparison.md"]
    js = json.loads((out / "comparison.json").read_text())
    assert js["runs"] == ["base", "better"] and js["n_cases"] == 6
    assert {"runs", "run_dirs", "settings", "n_cases", "rows"} <= set(js)
    row = next(r for r in js["rows"] if r["label"] == "GTVn" and r["metric"] == "dsc")
    assert row["kind"] == "per_case" and row["diff"]["base"] is None and row["p"]["base"] is None
    x, y = _per_case(a, "GTVn", "dsc"), _per_case(b, "GTVn", "dsc")
    ok = np.isfinite(x) & np.isfinite(y)
    assert row["values"]["base"] == pytest.approx(np.nanmean(x))
    assert row["diff"]["better"] == pytest.approx(np.mean(y[ok] - x[ok]))
    assert row["p"]["better"] == pytest.approx(stats.wilcoxon(y[ok] - x[ok]).pvalue)
    assert row["n_pairs"]["better"] == ok.sum()
    per_case_p = [r["p"]["better"] for r in js["rows"] if r["kind"] == "per_case" and r["p"]["better"] is not None]
    assert all(r["p_holm"]["better"] is None or r["p_holm"]["better"] >= r["p"]["better"]
               for r in js["rows"] if r["kind"] == "per_case")
    assert len(per_case_p) >= 4
    agg = next(r for r in js["rows"] if r["label"] == "GTVp" and r["metric"] == "dscagg")
    assert agg["kind"] == "cohort" and agg["p"]["better"] is None
    assert agg["diff"]["better"] > 0 and agg["ci_low"]["better"] <= agg["diff"]["better"] <= agg["ci_high"]["better"]
    sa = json.loads((a / "summary.json").read_text())["labels"]["GTVp"]["dscagg"]
    sb = json.loads((b / "summary.json").read_text())["labels"]["GTVp"]["dscagg"]
    assert agg["values"]["base"] == pytest.approx(sa, rel=1e-9) and agg["values"]["better"] == pytest.approx(sb, rel=1e-9)
    assert any(r["metric"] == "dscagg_mean" for r in js["rows"])
    assert "| GTVn | dsc |" in (out / "comparison.md").read_text()
    with open(out / "comparison.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * len(js["rows"])
    # Deterministic with the seed.
    again = compare_runs([a, b], ["base", "better"], None, n_boot=300, seed=1)
    assert again["rows"][-1]["ci_low"] == res["rows"][-1]["ci_low"]


def test_seed_replicates(runs):
    _, _, _, a, b = runs
    res = compare_runs([[a, a], [b, b]], ["base", "better"], None, n_boot=50)
    single = compare_runs([a, b], ["base", "better"], None, n_boot=50)
    for r1, r2 in zip(res["rows"], single["rows"]):
        assert r1["values"] == r2["values"]
    paired = compare_runs([[a, a], [b, b]], ["base", "better"], None, n_boot=50, pair_key=("case", "seed"))
    assert paired["rows"][0]["n_pairs"]["better"] == 2 * single["rows"][0]["n_pairs"]["better"]


def test_refuses_different_case_sets(runs):
    tmp_path, gt_dir, pred_dir, a, _ = runs
    (gt_dir / "case_005.nii.gz").unlink()
    (pred_dir / "case_005.nii.gz").unlink()
    c = tmp_path / "eval_c"
    evaluate_folders(gt_dir, pred_dir, c, progress=False)
    with pytest.raises(InputError, match="case sets differ: missing 1 case.*case_005"):
        compare_runs([a, c], ["a", "c"], None)


def test_refuses_different_settings(runs, capsys):
    tmp_path, gt_dir, pred_dir, a, _ = runs
    c = tmp_path / "eval_iou"
    evaluate_folders(gt_dir, pred_dir, c, progress=False, match="iou:0.5")
    out = tmp_path / "cmp"
    rc = main(["-q", "compare", str(a), str(c), "--names", "a,c", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "match 'iou:0.5' vs 'overlap'" in err and "eval_iou" in err
    assert not out.exists()


def test_cli(runs, capsys):
    tmp_path, _, _, a, b = runs
    out = tmp_path / "cmp"
    assert main(["-q", "compare", str(a), str(b), "--names", "baseline,dual", "--out", str(out),
                 "--n-boot", "100"]) == 0
    assert "dscagg" in capsys.readouterr().out
    assert main(["-q", "compare", str(a), str(b), "--names", "x", "--out", str(out)]) == 2
    assert main(["-q", "compare", str(a), str(tmp_path / "nope"), "--out", str(tmp_path / "c2")]) == 2
    assert not (tmp_path / "c2").exists()
