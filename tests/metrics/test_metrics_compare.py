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
from vadice.report.comparison import compare_folders
from vadice.metrics.evaluate import CASE_COLUMNS, LESION_COLUMNS, evaluate_folders


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
    res = compare_folders([a, b], ["base", "better"], out, n_boot=300, seed=1)
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "comparison.json", "comparison.md"]
    js = json.loads((out / "comparison.json").read_text())
    assert js["runs"] == ["base", "better"] and js["n_cases"] == 6 and js["n_seeds"] == {"base": 1, "better": 1}
    row = next(r for r in js["rows"] if r["label"] == "GTVn" and r["metric"] == "dsc")
    assert row["kind"] == "per_case" and row["diff"]["base"] is None and row["p"]["base"] is None
    x, y = _per_case(a, "GTVn", "dsc"), _per_case(b, "GTVn", "dsc")
    ok = np.isfinite(x) & np.isfinite(y)
    # Shown values are means over the cases defined in both runs, the same cases as Δ and p.
    assert row["values"]["base"] == pytest.approx(np.mean(x[ok])) and row["n_pairs"]["better"] == ok.sum()
    assert row["values"]["better"] == pytest.approx(np.mean(y[ok]))
    assert row["diff"]["better"] == pytest.approx(np.mean(y[ok] - x[ok]))
    assert row["n_undefined"] == {"base": int(np.isnan(x).sum()), "better": int(np.isnan(y).sum())}
    agg = next(r for r in js["rows"] if r["label"] == "GTVp" and r["metric"] == "dscagg")
    assert agg["kind"] == "cohort" and agg["p"]["better"] is None
    assert agg["diff"]["better"] > 0 and agg["ci_low"]["better"] <= agg["diff"]["better"] <= agg["ci_high"]["better"]
    assert agg["n_boot_valid"]["better"] == 300 and agg["verdict"]["better"] in ("one seed", "CI includes 0")
    sa = json.loads((a / "summary.json").read_text())["labels"]
    sb = json.loads((b / "summary.json").read_text())["labels"]
    assert agg["values"]["base"] == pytest.approx(sa["GTVp"]["dscagg"], rel=1e-9)
    assert agg["values"]["better"] == pytest.approx(sb["GTVp"]["dscagg"], rel=1e-9)
    # Pooled lesion counts and size bins agree with what the evaluation itself summarised.
    for lab in ("GTVp", "GTVn"):
        sens = next(r for r in js["rows"] if r["label"] == lab and r["metric"] == "lesion_sensitivity")
        assert sens["counts"]["base"] == [sa[lab]["n_gt_detected"], sa[lab]["n_gt_lesions"]]
        for b_ in sa[lab]["size_stratified_sensitivity"]:
            r = next(r for r in js["rows"] if r["label"] == lab and r["metric"] == f"lesion_sensitivity {b_['bin']}")
            assert r["counts"]["base"] == [b_["n_detected"], b_["n_gt"]]
    assert any(r["metric"] == "dscagg_mean" for r in js["rows"])
    md = (out / "comparison.md").read_text()
    assert "## Headline" in md and "| GTVn | dsc |" in md
    assert "A Δ is **consistent** only when its CI excludes 0" in md
    assert "One seed per run" in md  # the single-seed warning
    with open(out / "comparison.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * len(js["rows"])
    again = compare_runs([a, b], ["base", "better"], n_boot=300, seed=1)
    assert again["rows"][-1]["ci_low"] == res["rows"][-1]["ci_low"]


def test_delta_is_recomputed_from_the_shown_values(runs):
    # Every row: the values shown and Δ come from one case set, so value(run) - value(first) = Δ.
    _, _, _, a, b = runs
    res = compare_runs([a, b, a], ["base", "better", "same"], n_boot=20)
    checked = 0
    for r in res["rows"]:
        for name in ("better", "same"):
            if np.isfinite(r["values"][name]) and np.isfinite(r["values"]["base"]):
                assert r["diff"][name] == pytest.approx(r["values"][name] - r["values"]["base"], abs=1e-12)
                checked += 1
        assert r["diff"]["same"] == pytest.approx(0.0, abs=1e-12) or np.isnan(r["diff"]["same"])
    assert checked >= len(res["rows"])


def _write_eval(folder, settings, rows, lesions=()):
    """An evaluation folder in the evaluator's own formats (its column lists), from hand-made rows."""
    folder.mkdir(parents=True)
    with open(folder / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CASE_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()})
    with open(folder / "lesions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(LESION_COLUMNS))
        w.writeheader()
        for i, (case, label, vol, det) in enumerate(lesions, 1):
            w.writerow({"case": case, "label": label, "source": "gt", "lesion_id": i, "volume_ml": vol,
                        "detected": int(det), "lesion_dsc": 0.5})
    (folder / "summary.json").write_text(json.dumps({"tool": "vadice evaluate", "settings": settings,
                                                     "labels": {}, "missing_predictions": [],
                                                     "resampled_predictions": []}))
    return folder


def _case(case, label, inter, gt, pred, hd95, msd=1.0, det=(1, 1), match=(1, 1)):
    dsc = 2 * inter / (gt + pred) if gt + pred else float("nan")
    return {"case": case, "label": label, "dsc": dsc, "sds": dsc, "msd": msd, "hd95": hd95,
            "gt_volume_ml": gt, "pred_volume_ml": pred, "intersection_ml": inter,
            "n_gt_lesions": det[1], "n_gt_detected": det[0], "n_pred_lesions": match[1], "n_pred_matched": match[0]}


def test_two_seed_folders_pool_to_the_hand_computed_answer(runs, tmp_path):
    settings = json.loads((runs[3] / "summary.json").read_text())["settings"]
    nan = float("nan")
    # GTVn (intersection, truth, prediction) in ml and HD95 per run, seed and case (A, B).
    spec = {
        ("base", 0): [("A", 1, 2, 2, 5.0, 1.0), ("B", 0, 1, 0, nan, 2.0)],
        ("base", 1): [("A", 2, 2, 2, 3.0, 1.0), ("B", 1, 1, 1, 2.0, 2.0)],
        ("dual", 0): [("A", 2, 2, 2, 1.0, 1.0), ("B", 1, 1, 1, 2.0, nan)],
        ("dual", 1): [("A", 1, 2, 3, 4.0, 1.0), ("B", 0, 1, 1, nan, 2.0)],
    }
    folders = {}
    for (run, seed), cases in spec.items():
        rows = []
        for case, inter, gt, pred, hd, msd in cases:
            rows.append(_case(case, "GTVn", inter, gt, pred, hd, msd, det=(1 if inter else 0, 1)))
            rows.append(_case(case, "GTVp", 3, 4, 4, 2.0))
        small = seed == 0 and run == "dual"  # only dual's seed 0 finds the small node of case A
        lesions = [(c[0], "GTVn", 0.2 if c[0] == "A" else 2.0, (c[0] == "A" and small) or (c[0] == "B" and c[1] > 0))
                   for c in cases]
        folders[(run, seed)] = _write_eval(tmp_path / run / f"seed_{seed}", settings, rows, lesions)
    res = compare_folders([[folders[("base", 0)], folders[("base", 1)]], [folders[("dual", 0)], folders[("dual", 1)]]],
                          ["base", "dual"], tmp_path / "cmp", n_boot=200)
    row = {(r["label"], r["metric"]): r for r in res["rows"]}
    agg = row[("GTVn", "dscagg")]
    # Pooled over both seeds and cases: base 2(1+0+2+1)/(4+1+4+2) = 8/11, dual 2(2+1+1+0)/(4+2+5+2) = 8/13.
    assert agg["values"] == {"base": pytest.approx(8 / 11), "dual": pytest.approx(8 / 13)}
    assert agg["diff"]["dual"] == pytest.approx(8 / 13 - 8 / 11)
    # Seed 0: dual 6/6 - base 2/5 = +0.6; seed 1: dual 2/7 - base 6/6: the seeds disagree in sign.
    assert agg["seed_diffs"]["dual"] == [pytest.approx(0.6), pytest.approx(2 / 7 - 1)]
    assert agg["seed_values"]["base"] == [pytest.approx(0.4), pytest.approx(1.0)]
    assert agg["n_seeds_agree"]["dual"] == 1 and agg["verdict"]["dual"] in ("seeds disagree", "CI includes 0")
    # HD95: defined in every run and seed only for case A: base (5+3)/2 = 4, dual (1+4)/2 = 2.5.
    hd = row[("GTVn", "hd95")]
    assert hd["values"] == {"base": 4.0, "dual": 2.5} and hd["diff"]["dual"] == pytest.approx(-1.5)
    assert hd["n_pairs"]["dual"] == 1 and hd["n_undefined"] == {"base": 1, "dual": 1}
    assert hd["seed_diffs"]["dual"] == [pytest.approx(1.0 - 5.0), pytest.approx(4.0 - 3.0)]
    assert not hd["undefined_differ"]
    msd = row[("GTVn", "msd")]
    assert msd["n_undefined"] == {"base": 0, "dual": 1} and msd["undefined_differ"]
    # Lesion sensitivity from cases.csv counts: a case's node counts as detected when it has an intersection.
    assert row[("GTVn", "lesion_sensitivity")]["counts"] == {"base": [3, 4], "dual": [3, 4]}
    # ... and the < 0.5 ml bin holds case A's node: dual finds it once in two seeds, base never.
    small = row[("GTVn", "lesion_sensitivity <0.5 ml")]
    assert small["counts"] == {"base": [0, 2], "dual": [1, 2]} and small["diff"]["dual"] == pytest.approx(0.5)
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "Undefined values differ between runs for GTVn msd" in md
    assert "seeds 0.6, -0.714" in md


def test_case_seed_pairing_is_marked_as_pseudo_replication(runs):
    _, _, _, a, b = runs
    res = compare_runs([[a, a], [b, b]], ["base", "better"], n_boot=50)
    single = compare_runs([a, b], ["base", "better"], n_boot=50)
    for r1, r2 in zip(res["rows"], single["rows"]):
        for name in ("base", "better"):
            assert r1["values"][name] == pytest.approx(r2["values"][name], nan_ok=True)
    assert not any("pseudo-replication" in w for w in res["warnings"])
    paired = compare_runs([[a, a], [b, b]], ["base", "better"], n_boot=50, pair_key=("case", "seed"))
    assert paired["rows"][0]["n_wilcoxon"]["better"] == 2 * single["rows"][0]["n_wilcoxon"]["better"]
    assert any("pseudo-replication" in w for w in paired["warnings"])


def test_empty_prediction_warning(runs, tmp_path):
    tmp_path, gt_dir, _, a, _ = runs
    empty = tmp_path / "pred_empty"
    empty.mkdir()
    for i in range(6):
        g, _, _ = label_pair(i)
        p = g.copy()
        p[p == 2] = 0
        write_nifti(p, _geom(g.shape, (2.0, 0.5, 0.75)), empty / f"case_{i:03d}.nii.gz")
    c = tmp_path / "eval_empty"
    evaluate_folders(gt_dir, empty, c, progress=False)
    out = tmp_path / "cmp_empty"
    res = compare_folders([a, c], ["base", "nolymph"], out, n_boot=20)
    assert any(w.startswith("nolymph predicts no GTVn on 6 of 6") for w in res["warnings"])
    assert not any(w.startswith("base predicts") for w in res["warnings"])
    md = (out / "comparison.md").read_text()
    assert md.index("## Warnings") < md.index("## Headline") and "nolymph predicts no GTVn" in md


def test_refuses_different_case_sets(runs):
    tmp_path, gt_dir, pred_dir, a, _ = runs
    (gt_dir / "case_005.nii.gz").unlink()
    (pred_dir / "case_005.nii.gz").unlink()
    c = tmp_path / "eval_c"
    evaluate_folders(gt_dir, pred_dir, c, progress=False)
    with pytest.raises(InputError, match="case sets differ: missing 1 case.*case_005"):
        compare_runs([a, c], ["a", "c"])


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
    out = capsys.readouterr().out
    assert "dscagg" in out and "consistent = CI excludes 0" in out and "warning: One seed per run" in out
    assert main(["-q", "compare", str(a), str(b), "--names", "x", "--out", str(out)]) == 2
    assert main(["-q", "compare", str(a), str(tmp_path / "nope"), "--out", str(tmp_path / "c2")]) == 2
    assert not (tmp_path / "c2").exists()


def test_empty_penalty_is_counted_as_penalised_not_excluded(runs, tmp_path):
    tmp_path, gt_dir, pred_dir, _, _ = runs
    empty = tmp_path / "pred_nolymph"
    empty.mkdir()
    for i in range(6):
        g, p, _ = label_pair(i)
        p[p == 2] = 0
        write_nifti(p, _geom(g.shape, (2.0, 0.5, 0.75)), empty / f"case_{i:03d}.nii.gz")
    plain, penal = tmp_path / "e_plain", tmp_path / "e_penalty"
    evaluate_folders(gt_dir, empty, plain, progress=False)
    evaluate_folders(gt_dir, empty, penal, progress=False, empty_distance_penalty=50.0)
    n_missed = sum(1 for i in range(6) if (label_pair(i)[0] == 2).any())
    ex = json.loads((plain / "summary.json").read_text())["labels"]["GTVn"]
    assert ex["excluded"]["pred_empty_only"] == n_missed and ex["penalised"]["pred_empty_only"] == 0
    pen = json.loads((penal / "summary.json").read_text())
    assert pen["labels"]["GTVn"]["excluded"]["pred_empty_only"] == 0
    assert pen["labels"]["GTVn"]["penalised"]["pred_empty_only"] == n_missed
    assert "included in means" in pen["conventions"]["empty_distances"]
    # In penalty mode HD95 is defined everywhere and every case is in the shown mean.
    ev_dir = tmp_path / "e_penalty_base"
    evaluate_folders(gt_dir, pred_dir, ev_dir, progress=False, empty_distance_penalty=50.0)
    out = tmp_path / "cmp_pen"
    res = compare_folders([ev_dir, penal], ["base", "nolymph"], out, n_boot=20)
    hd = next(r for r in res["rows"] if r["label"] == "GTVn" and r["metric"] == "hd95")
    assert hd["n_undefined"]["nolymph"] == 0 and hd["n_pairs"]["nolymph"] == 6
    assert hd["values"]["nolymph"] == pytest.approx(50.0)
    assert "set to the penalty 50 mm and included" in (out / "comparison.md").read_text()


def test_evaluate_cli_names_the_undefined_counts(runs, capsys):
    tmp_path, gt_dir, pred_dir, _, _ = runs
    assert main(["-q", "evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(tmp_path / "e_cli")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "e_cli" / "summary.json").read_text())["labels"]["GTVn"]["excluded"]
    assert "HD95/MSD undefined, left out of means" in out
    assert (f"both empty {summary['both_empty']}, truth empty {summary['gt_empty_only']}, "
            f"prediction empty {summary['pred_empty_only']}") in out


def test_runs_with_different_seed_counts(runs):
    _, _, _, a, b = runs
    res = compare_runs([[a, a], [b]], ["base", "better"], n_boot=50)
    assert any("different numbers of seeds" in w for w in res["warnings"])
    verdicts = {r["verdict"]["better"] for r in res["rows"] if np.isfinite(r["diff"]["better"])}
    assert verdicts <= {"CI includes 0", "seeds unpaired"} and all(r["seed_diffs"]["better"] == [] for r in res["rows"])


def test_headline_with_other_label_names(runs, tmp_path):
    from vadice.report.comparison import headline_rows

    _, gt_dir, pred_dir, _, _ = runs
    evals = []
    for name, pred in (("a", pred_dir), ("b", gt_dir)):
        out = tmp_path / f"named_{name}"
        evaluate_folders(gt_dir, pred, out, labels={"tumour": 1, "node": 2}, progress=False)
        evals.append(out)
    result = compare_runs(evals, names=["a", "b"])
    got = [(r["label"], r["metric"]) for r in headline_rows(result)]
    assert got == [(lab, m) for lab in ("tumour", "node")
                   for m in ("lesion_sensitivity", "lesion_sensitivity <0.5 ml", "lesion_precision", "dscagg")]


SHIFTS = (-0.2, -0.05, 0.05, 0.2)  # each seed's shift of every case, shared by the twins of that seed


def _twin_runs(tmp_path, settings):
    """Four seeds of 'base' and 'dual' on six cases, written by hand.

    GTVn DSC (truth = prediction = 1 ml, so DSC = the intersection): base 0.5 + shift(seed) + 0.01·case, dual
    the same + 0.02: the seed's shift is shared by both twins, so in a paired design every resample's Δ is
    exactly 0.02, while resampling seeds apart adds the ±0.2 seed spread. GTVn lesions: 2 per case; base
    detects 1 in every seed, dual 2 in seeds 0-2 and 1 in seed 3 (a tie: Δ = 0 for seed 3).
    """
    runs = {}
    for run in ("base", "dual"):
        runs[run] = []
        for k, shift in enumerate(SHIFTS):
            rows = []
            for i in range(6):
                inter = 0.5 + shift + 0.01 * i + (0.02 if run == "dual" else 0.0)
                det = 2 if run == "dual" and k < 3 else 1
                rows.append(_case(f"c{i}", "GTVn", inter, 1.0, 1.0, 2.0, det=(det, 2), match=(det, 2)))
                rows.append(_case(f"c{i}", "GTVp", 3, 4, 4, 2.0))
            runs[run].append(_write_eval(tmp_path / run / f"seed_{k}", settings, rows))
    return [runs["base"], runs["dual"]]


def test_paired_seeds_narrow_the_ci_and_count_ties_neither_way(runs, tmp_path):
    settings = json.loads((runs[3] / "summary.json").read_text())["settings"]
    groups = _twin_runs(tmp_path, settings)
    warm = [[f"sha-{k}" for k in range(4)]] * 2  # seed k of both runs continued from warm start k
    paired = compare_folders(groups, ["base", "dual"], tmp_path / "cmp_paired", n_boot=400, warm_starts=warm)
    unpaired = compare_runs(groups, ["base", "dual"], n_boot=400)
    assert paired["settings"]["seed_pairing"]["paired"] and not unpaired["settings"]["seed_pairing"]["paired"]
    pr = {(r["label"], r["metric"]): r for r in paired["rows"]}
    ur = {(r["label"], r["metric"]): r for r in unpaired["rows"]}

    dsc_p, dsc_u = pr[("GTVn", "dsc")], ur[("GTVn", "dsc")]
    assert dsc_p["diff"]["dual"] == pytest.approx(0.02) == dsc_u["diff"]["dual"]
    # Paired: the shared shift cancels in every resample, so the interval is the point 0.02 (by hand).
    assert dsc_p["ci_low"]["dual"] == pytest.approx(0.02) and dsc_p["ci_high"]["dual"] == pytest.approx(0.02)
    assert dsc_p["verdict"]["dual"] == "consistent"
    # Unpaired: seeds drawn apart keep the seed spread (shifts differ by up to 0.4): the CI holds 0.
    assert dsc_u["ci_low"]["dual"] < -0.05 and dsc_u["ci_high"]["dual"] > 0.09
    assert dsc_u["verdict"]["dual"] == "CI includes 0"

    # Sensitivity: per-seed Δ +0.5, +0.5, +0.5, 0. Tie neutral (paired): 3 of 4 > half -> consistent;
    # tie against (unpaired): seed 3 disagrees.
    sens_p, sens_u = pr[("GTVn", "lesion_sensitivity")], ur[("GTVn", "lesion_sensitivity")]
    assert sens_p["seed_diffs"]["dual"] == [0.5, 0.5, 0.5, 0.0] == sens_u["seed_diffs"]["dual"]
    assert sens_p["ci_low"]["dual"] > 0 and sens_u["ci_low"]["dual"] > 0
    assert (sens_p["n_seeds_agree"]["dual"], sens_p["verdict"]["dual"]) == (3, "consistent")
    assert (sens_u["n_seeds_agree"]["dual"], sens_u["verdict"]["dual"]) == (3, "seeds disagree")

    out = tmp_path / "cmp_paired"
    md = (out / "comparison.md").read_text()
    assert "**Seeds.** paired seeds: seed k of every run continued from the same warm start" in md
    assert "a seed with Δ = 0 counts neither way" in md
    with open(out / "comparison.csv", newline="") as fh:
        assert {r["seed_pairing"] for r in csv.DictReader(fh)} == {"paired"}
    js = json.loads((out / "comparison.json").read_text())
    assert js["settings"]["seed_pairing"]["ties"] == "neutral"


def test_seed_pairing_decision():
    from vadice.metrics.compare import seed_pairing

    assert seed_pairing([2, 2], [["a", "b"], ["a", "b"]])[0] is True
    paired, why = seed_pairing([2, 2], [["a", "b"], ["a", "c"]])
    assert not paired and "seed position(s) [1] differ" in why
    assert seed_pairing([2, 2], [["a", None], ["a", None]]) == (False, "unpaired seeds: no shared warm start "
                                                                        "recorded for every seed")
    assert not seed_pairing([2, 2])[0] and not seed_pairing([2, 3], [["a", "b"], ["a", "b", "c"]])[0]
    assert seed_pairing([2, 2], paired=True)[0] and not seed_pairing([2, 2], [["a", "b"]] * 2, paired=False)[0]
    with pytest.raises(ValueError, match=r"different numbers of seeds \(\[2, 3\]\)"):
        seed_pairing([2, 3], paired=True)


def test_cli_pairs_seed_folders_on_request(runs, tmp_path, capsys):
    settings = json.loads((runs[3] / "summary.json").read_text())["settings"]
    base, dual = (",".join(str(f) for f in g) for g in _twin_runs(tmp_path, settings))
    assert main(["-q", "compare", base, dual, "--names", "base,dual", "--out", str(tmp_path / "c1"),
                 "--n-boot", "200", "--paired"]) == 0
    assert capsys.readouterr().out.count("paired seeds: seed k of every run is the twin") == 1
    js = json.loads((tmp_path / "c1" / "comparison.json").read_text())
    assert js["n_seeds"] == {"base": 4, "dual": 4} and js["settings"]["seed_pairing"]["paired"]
    # no warm start recorded for these folders: unpaired unless asked
    assert main(["-q", "compare", base, dual, "--names", "base,dual", "--out", str(tmp_path / "c2"),
                 "--n-boot", "50"]) == 0
    assert "unpaired seeds: no shared warm start" in capsys.readouterr().out
    assert main(["-q", "compare", base, dual.split(",")[0], "--out", str(tmp_path / "c3"), "--paired"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different numbers of seeds ([4, 1])" in err
    assert not (tmp_path / "c3").exists()


def test_post_processed_arms_against_a_plain_baseline_are_flagged(runs):
    _, _, _, a, b = runs
    flagged = compare_runs([a, b], ["baseline", "dual+pp"], n_boot=20)["warnings"]
    assert any(w.startswith("dual+pp post-processed, baseline not") for w in flagged)
    matched = compare_runs([a, b], ["baseline+pp", "dual+pp"], n_boot=20)["warnings"]
    assert not any("post-processed" in w for w in matched)
