"""The CPU study's and the loss bench's recipes without training: adoption of the study's units, the goal rule,
tables and figures from a real comparison. (Training end to end is the recipes' own ``--tiny`` mode.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from vadice.experiment import Experiment, ExperimentSettings, Unit
from vadice.io import Geometry, InputError, write_nifti

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import cpu_study  # noqa: E402
import loss_bench  # noqa: E402

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _comparison(values: dict[str, dict[tuple[str, str], list]]) -> dict:
    """A comparison.json holding only per-seed values: {run: {(label, metric): [seed values]}}."""
    runs = list(values)
    keys = next(iter(values.values())).keys()
    rows = [{"label": lab, "metric": m, "seed_values": {r: values[r][(lab, m)] for r in runs}} for lab, m in keys]
    return {"runs": runs, "rows": rows}


def _values(small, prec_n, prec_p):
    return {("GTVn", loss_bench.SMALL): small, ("GTVn", "lesion_precision"): prec_n,
            ("GTVp", "lesion_precision"): prec_p}


def test_goal_rule_by_hand():
    # two seeds; dual's small-node sensitivity and the baseline's precisions are the bars
    comparison = _comparison({
        "baseline": _values([0.6, 0.6], [0.5, 0.5], [0.9, 0.8]),
        "dual": _values([0.8, 0.7], [0.3, 0.3], [0.8, 0.7]),
        "blob": _values([0.8, 0.75], [0.6, 0.5], [0.9, 0.85]),       # every bar, every seed (ties count)
        "dual+pp": _values([0.7, 0.7], [0.6, 0.6], [0.9, 0.7]),      # seed 0 small -0.1, seed 1 GTVp -0.1
        "catmil": _values([None, 0.9], [0.9, 0.9], [0.95, 0.95]),    # undefined: not met, no shortfall
    })
    rows, sentence = loss_bench.goal_verdict(comparison)
    by = {r["config"]: r for r in rows}
    assert set(by) == {"blob", "dual+pp", "catmil"}
    assert by["blob"] == {"config": "blob", "met": 6, "of": 6, "shortfall": 0.0, "reached": True}
    assert (by["dual+pp"]["met"], by["dual+pp"]["shortfall"], by["dual+pp"]["reached"]) == (4, 0.2, False)
    assert (by["catmil"]["met"], by["catmil"]["shortfall"]) == (5, 0.0)
    assert sentence == "Goal reached (every condition in every seed) by: blob."

    del comparison["rows"][0]["seed_values"]["blob"]
    for row in comparison["rows"]:
        row["seed_values"].pop("blob", None)
    comparison["runs"].remove("blob")
    _, sentence = loss_bench.goal_verdict(comparison)
    # catmil meets 5 of 6 (its undefined seed is not met) and beats dual+pp's 4 of 6
    assert sentence.startswith("No configuration reaches the goal. Closest: catmil (5 of 6")


def _experiment(run_dir, setups, seeds=(0, 1), iterations=800):
    settings = ExperimentSettings(dataset="/nowhere/Dataset991_VadiceStudy", preset="cpu-small", folds=(0,),
                                  seeds=seeds, setups=setups, device="cpu", iterations=iterations, epochs=16,
                                  warm_start_iterations=2500, warm_start_epochs=50)
    return Experiment(run_dir, settings, progress=False)


def _finish(exp, unit, cases=("c1", "c2")):
    pred = exp.prediction_dir(unit.setup, unit.seed)
    pred.mkdir(parents=True, exist_ok=True)
    for c in cases:
        (pred / f"{c}.nii.gz").write_bytes(f"{unit.key} {c}".encode())
    exp.marker(unit).parent.mkdir(parents=True, exist_ok=True)
    exp.marker(unit).write_text(json.dumps({"unit": unit.key, "cases": list(cases)}))


def test_adopting_the_study_copies_its_units_and_links_its_warm_starts(tmp_path):
    study = _experiment(tmp_path / "study" / "run", ("baseline", "dual", "selective-ln"))
    (study.run_dir / "warm_start" / "seed_0").mkdir(parents=True)
    for unit in study.settings.units():
        _finish(study, unit)
    bench = _experiment(tmp_path / "study" / "bench_run", ("baseline", "dual", "selective-ln", "blob"))
    adopted = loss_bench.adopt_study_units(study, bench)

    assert sorted(u.key for u in adopted) == sorted(u.key for u in study.settings.units())
    assert (bench.run_dir / "warm_start").resolve() == (study.run_dir / "warm_start").resolve()
    assert [u.setup for u in bench.missing()] == ["blob", "blob"]
    copied = bench.prediction_dir("dual", 1) / "c2.nii.gz"
    assert copied.read_bytes() == b"dual__fold0__seed1 c2"
    assert loss_bench.adopt_study_units(study, bench) == []  # resumable: nothing adopted twice


def test_adopting_refuses_other_settings_and_an_unfinished_study(tmp_path):
    study = _experiment(tmp_path / "s" / "run", ("baseline", "dual"))
    for unit in study.settings.units():
        _finish(study, unit)
    other = _experiment(tmp_path / "s" / "bench_run", ("baseline", "dual", "blob"), iterations=400)
    with pytest.raises(InputError, match=r"these differ: \['iterations'\]"):
        loss_bench.adopt_study_units(study, other)
    study.marker(Unit("dual", 0, 1)).unlink()
    bench = _experiment(tmp_path / "s" / "bench_run2", ("baseline", "dual", "blob"))
    with pytest.raises(InputError, match=r"unfinished \(1 units\)"):
        loss_bench.adopt_study_units(study, bench)
    assert not (tmp_path / "s" / "bench_run2").exists()


def _mask_pair(rng, shape=(12, 40, 40)):
    gt = np.zeros(shape, np.uint8)
    gt[3:9, 5:20, 5:20] = 1                                  # a tumour
    for z, y, x in ((5, 28, 8), (6, 30, 30), (4, 10, 32)):    # three small nodes
        gt[z - 1:z + 2, y - 2:y + 2, x - 2:x + 2] = 2
    pred = gt.copy()
    drop = rng.integers(0, 3)                                 # miss one node at random
    pred[pred == 2] = 0
    for i, (z, y, x) in enumerate(((5, 28, 8), (6, 30, 30), (4, 10, 32))):
        if i != drop:
            pred[z - 1:z + 2, y - 2:y + 2, x - 2:x + 2] = 2
    if rng.random() < 0.5:
        pred[10, 35, 35] = 2                                   # a spurious speck
    return gt, pred


MASK_GEOM = Geometry((40, 40, 12), (0.8, 0.8, 2.0), (0.0, 0.0, 0.0), IDENTITY)


def _labelled_experiment(tmp_path, pairs: dict, setups: tuple) -> Experiment:
    """An experiment on a raw dataset whose labelsTr holds the truth of ``pairs``; every unit finished on its
    cases (predictions are written by the test)."""
    dataset = tmp_path / "nnUNet_raw" / "Dataset991_VadiceStudy"
    (dataset / "labelsTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text("{}")
    for c, (gt, _) in pairs.items():
        write_nifti(gt, MASK_GEOM, dataset / "labelsTr" / f"{c}.nii.gz")
    settings = ExperimentSettings(dataset=str(dataset), preset="cpu-small", folds=(0,), seeds=(0, 1),
                                  setups=setups, device="cpu", iterations=8, epochs=1)
    exp = Experiment(tmp_path / "run", settings, progress=False)
    for unit in settings.units():
        _finish(exp, unit, tuple(pairs))
    return exp


def test_tables_and_figures_from_a_real_comparison(tmp_path):
    rng = np.random.default_rng(7)
    cases = [f"case_{i}" for i in range(5)]
    pairs = {c: _mask_pair(rng) for c in cases}
    runs = ["baseline", "dual", "blob", "silent"]  # silent: predicts nothing, as dual-fp did in the bench
    exp = _labelled_experiment(tmp_path, pairs, tuple(runs[:3]))
    run_dir = exp.run_dir
    for setup in runs:
        for seed in (0, 1):
            for c in cases:
                pred = _mask_pair(rng)[1] if setup != "baseline" or seed else pairs[c][1]
                write_nifti(pred * (setup != "silent"), MASK_GEOM, exp.prediction_dir(setup, seed) / f"{c}.nii.gz")
    comparison, paired, pp = loss_bench.evaluate_all(exp, runs)
    assert sorted(paired) == ["blob", "dual", "silent"] and pp is None
    # a resumed bench compares again into the same folders: each must still hold only its own files
    assert loss_bench.evaluate_all(exp, runs) == (comparison, paired, pp)

    # GTVp HD95 across all four is blank (no case where all four predicted a tumour); paired with the baseline
    # it is there.
    all_runs = {(r["label"], r["metric"]): r for r in comparison["rows"]}[("GTVp", "hd95")]
    assert all_runs["values"]["dual"] is None
    dual = {(r["label"], r["metric"]): r for r in paired["dual"]["rows"]}[("GTVp", "hd95")]
    assert dual["n_pairs"]["dual"] == 5 and dual["values"]["dual"] is not None
    rows, sentence = loss_bench.goal_verdict(comparison)
    text = loss_bench.markdown(comparison, rows, sentence, paired)
    hd_dual = next(line for line in text.splitlines() if line.startswith("| GTVp | hd95 | dual |"))
    assert hd_dual.split(" | ")[3:7] == ["10", "baseline", f"{dual['values']['baseline']:.3f}",
                                         f"{dual['values']['dual']:.3f}"]
    assert "| GTVp | hd95 | silent | 0 | baseline | — | — |" in text
    small_row = next(line for line in text.splitlines() if line.startswith(f"| GTVn | {loss_bench.SMALL} |"))
    ours = {(r["label"], r["metric"]): r for r in comparison["rows"]}[("GTVn", loss_bench.SMALL)]
    assert small_row.split(" | ")[2] == f"{ours['values']['baseline']:.3f}"
    assert "| blob |" in text and "**Goal**" in text
    assert loss_bench.figure(comparison, tmp_path).stat().st_size > 5000

    study_table = cpu_study.evidence_table(comparison)
    assert "| GTVn | lesion_precision |" in study_table and "agree" in study_table
    pngs = cpu_study.figures(run_dir, tmp_path)
    assert [p.name for p in pngs] == ["study_sensitivity_by_size.png", "study_precision_vs_sensitivity.png"]


def test_experiment_evaluate_pools_the_units_cases_and_reuses_only_when_asked(tmp_path):
    rng = np.random.default_rng(3)
    pairs = {c: _mask_pair(rng) for c in ("c1", "c2")}
    exp = _labelled_experiment(tmp_path, pairs, ("baseline",))
    for seed in (0, 1):  # baseline; and a post-processed copy: any folder under predictions/ is evaluated alike
        for c, (_, pred) in pairs.items():
            write_nifti(pred, MASK_GEOM, exp.prediction_dir("baseline", seed) / f"{c}.nii.gz")
            write_nifti(np.zeros_like(pred), MASK_GEOM, exp.prediction_dir("baseline+pp", seed) / f"{c}.nii.gz")

    evaluations = exp.evaluate(["baseline", "baseline+pp"], size_bins_ml=(1.0,), reuse=True)
    assert sorted(p.name for p in (exp.run_dir / "gt").iterdir()) == ["c1.nii.gz", "c2.nii.gz"]
    summary = evaluations["baseline"][1] / "summary.json"
    text = summary.read_text()
    assert "<1 ml" in text
    empty = json.loads((evaluations["baseline+pp"][0] / "summary.json").read_text())["labels"]["GTVn"]
    assert (empty["n_gt_lesions"], empty["n_gt_detected"], empty["n_pred_lesions"]) == (6, 0, 0)

    summary.write_text(text + " ")  # a kept evaluation is not redone with reuse=True, and is without it
    exp.evaluate(["baseline"], size_bins_ml=(1.0,), reuse=True)
    assert summary.read_text().endswith(" ")
    exp.evaluate(["baseline"], size_bins_ml=(1.0,))
    assert summary.read_text() == text

    exp.marker(Unit("baseline", 0, 1)).write_text(json.dumps({"cases": ["c1"]}))
    with pytest.raises(InputError, match="different case sets"):
        exp.evaluate(["baseline"])


@pytest.mark.slow
@pytest.mark.recipe
def test_study_and_bench_recipes_end_to_end_with_a_tiny_budget(tmp_path):
    """The study's ``--tiny`` recipe (6 cases, 2 seeds, 2 iterations per phase), then the bench on it: warm starts
    shared per seed, the study's units adopted, the comparators and dual-fp trained, post-processing fitted on
    training cases only, the goal rule applied. Scores are not asserted (2 iterations segment nothing)."""
    import os

    from vadice.io import sha256_file

    study = tmp_path / "study"
    with mock.patch.dict(os.environ):  # the recipes point nnU-Net's roots into the study folder
        comparison = cpu_study.run(study, cpu_study.TINY, progress=False)
        bench, paired, pp, bench_dir = loss_bench.run(study, cpu_study.TINY, progress=False)

    assert comparison["runs"] == ["baseline", "dual", "selective-ln"]
    assert (study / "run" / "report.html").is_file()
    for seed in cpu_study.TINY["seeds"]:
        warm = next((study / "run" / "warm_start" / f"seed_{seed}").rglob("checkpoint_final.pth"))
        units = [json.loads(p.read_text()) for p in (bench_dir / "units").glob(f"*__seed{seed}.json")]
        assert len(units) == 3 + len(loss_bench.NEW_SETUPS)
        assert {u["warm_start_sha256"] for u in units} == {sha256_file(warm)}
    assert bench["runs"] == ["baseline", "dual", "selective-ln", *loss_bench.NEW_SETUPS, "baseline+pp", "dual+pp",
                             "selective-ln+pp"]
    assert pp["runs"] == ["baseline+pp", "dual+pp", "selective-ln+pp"]  # matched: +pp against baseline+pp
    pp = json.loads(next((bench_dir / "postprocessing" / "dual").rglob("postprocessing.json")).read_text())
    held_out = set(json.loads((bench_dir / "units" / "dual__fold0__seed0.json").read_text())["cases"])
    splits = json.loads((study / "nnUNet_preprocessed" / f"Dataset{cpu_study.DATASET_ID:03d}_{cpu_study.DATASET_NAME}"
                         / "splits_final.json").read_text())
    assert set(pp["fitted_on"]["cases"]) == set(splits[0]["train"])
    assert not held_out & set(pp["fitted_on"]["cases"])
    rows, sentence = loss_bench.goal_verdict(bench)
    assert {r["config"] for r in rows} == {"selective-ln", *loss_bench.NEW_SETUPS, "dual+pp", "selective-ln+pp"}
    assert sorted(paired) == sorted(r for r in bench["runs"][1:] if r != "baseline+pp")
    assert paired["dual+pp"]["runs"] == ["baseline+pp", "dual+pp"] and paired["dual"]["runs"] == ["baseline", "dual"]
    assert sentence


def test_post_processed_configurations_must_beat_the_post_processed_baseline():
    # dual+pp clears the plain baseline's precision but not baseline+pp's: post-processing alone is no gain
    comparison = _comparison({
        "baseline": _values([0.6, 0.6], [0.5, 0.5], [0.8, 0.8]),
        "dual": _values([0.8, 0.8], [0.3, 0.3], [0.7, 0.7]),
        "baseline+pp": _values([0.6, 0.6], [0.9, 0.9], [0.9, 0.9]),
        "dual+pp": _values([0.8, 0.8], [0.7, 0.7], [0.85, 0.85]),
    })
    rows, sentence = loss_bench.goal_verdict(comparison)
    assert [r["config"] for r in rows] == ["dual+pp"]  # baseline+pp is a reference, not a configuration
    assert rows[0]["met"] == 2 and rows[0]["shortfall"] == pytest.approx(2 * 0.2 + 2 * 0.05)
    assert loss_bench.reference("dual+pp", comparison["runs"]) == "baseline+pp"
    assert loss_bench.reference("dual+pp", ["baseline", "dual+pp"]) == "baseline"  # no matched arm: the baseline
    assert loss_bench.reference("blob", comparison["runs"]) == "baseline"


def _row(label, metric, values, diff, low, high, seed_diffs, agree, verdict):
    """A comparison row written by hand: values per run; the Δ fields of the second run."""
    runs = list(values)
    ref, other = runs[0], runs[1]
    return {"label": label, "metric": metric, "values": values, "diff": {ref: None, other: diff},
            "ci_low": {ref: None, other: low}, "ci_high": {ref: None, other: high},
            "seed_diffs": {ref: None, other: seed_diffs}, "n_seeds_agree": {ref: None, other: agree},
            "verdict": {ref: None, other: verdict}}


def _hand_comparison(ref, other, pairing="paired seeds: as requested"):
    rows = [
        _row("GTVn", "lesion_sensitivity", {ref: 0.5, other: 0.6}, 0.1, 0.02, 0.18, [0.05, 0.15], 2, "consistent"),
        _row("GTVn", "lesion_precision", {ref: 0.7, other: 0.65}, -0.05, -0.12, 0.03, [-0.1, 0.0], 1,
             "CI includes 0"),
        _row("GTVp", "dscagg", {ref: 0.8, other: None}, None, None, None, [], 0, "undefined"),
    ]
    return {"runs": [ref, other], "rows": rows, "settings": {"seed_pairing": {"paired": True, "reason": pairing}}}


def test_evidence_table_writes_each_ci_and_verdict_as_given():
    metrics = (("GTVn", "lesion_sensitivity"), ("GTVn", "lesion_precision"), ("GTVp", "dscagg"), ("GTVp", "hd95"))
    table = cpu_study.evidence_table(_hand_comparison("baseline", "dual"), metrics).splitlines()
    assert table[0] == ("| label | metric | baseline | dual | Δ dual − baseline [95 % CI]; per-seed Δ; verdict |")
    assert table[1] == "|---|---|---|---|---|"
    assert table[2:] == [
        "| GTVn | lesion_sensitivity | 0.500 | 0.600 | 0.100 [0.020, 0.180]; 0.050, 0.150; 2/2 agree; consistent |",
        "| GTVn | lesion_precision | 0.700 | 0.650 | -0.050 [-0.120, 0.030]; -0.100, 0.000; 1/2 agree; "
        "CI includes 0 |",
        "| GTVp | dscagg | 0.800 | — | — [—, —]; ; 0/0 agree; undefined |",
    ]  # GTVp hd95 is not in the comparison: skipped
    with pytest.raises(ValueError, match="must start with the reference 'baseline'"):
        cpu_study.evidence_table(_hand_comparison("baseline", "dual"), metrics, runs=["dual"])


def test_bench_markdown_puts_post_processed_arms_against_baseline_pp():
    main = _hand_comparison("baseline", "dual")
    main["runs"] = ["baseline", "dual", "dual+pp"]  # the all-runs comparison: its dual+pp Δ must not be shown
    for r in main["rows"]:
        for k in ("values", "diff", "ci_low", "ci_high", "seed_diffs", "n_seeds_agree", "verdict"):
            r[k]["dual+pp"] = {"values": 0.99, "diff": 9.0, "ci_low": 8.0, "ci_high": 10.0, "seed_diffs": [9.0],
                               "n_seeds_agree": 1, "verdict": "consistent"}[k]
    pp = _hand_comparison("baseline+pp", "dual+pp")
    text = loss_bench.markdown(main, [], "No configuration to judge.", {}, pp)
    assert "9.000 [8.000, 10.000]" not in text
    assert "| Δ dual − baseline [95 % CI]; per-seed Δ; verdict |" in text
    assert "| Δ dual+pp − baseline+pp [95 % CI]; per-seed Δ; verdict |" in text
    assert text.count("0.100 [0.020, 0.180]; 0.050, 0.150; 2/2 agree; consistent") == 2
    assert "Losses against baseline (seeds: paired seeds: as requested):" in text
    assert "Post-processed arms against baseline+pp, the baseline with the same fitted post-processing" in text


def test_collect_pairs_seeds_that_share_a_warm_start(tmp_path):
    from vadice.experiment import compare_seeded

    rng = np.random.default_rng(5)
    pairs = {c: _mask_pair(rng) for c in ("c1", "c2", "c3")}
    exp = _labelled_experiment(tmp_path, pairs, ("baseline", "dual"))
    for unit in exp.settings.units():
        info = json.loads(exp.marker(unit).read_text())
        exp.marker(unit).write_text(json.dumps({**info, "warm_start_sha256": f"warm-{unit.seed}"}))
        for c in pairs:
            write_nifti(_mask_pair(rng)[1], MASK_GEOM, exp.prediction_dir(unit.setup, unit.seed) / f"{c}.nii.gz")
    evaluations = exp.evaluate(["baseline", "dual"])
    paired = compare_seeded(evaluations, ["baseline", "dual"], exp.run_dir / "comparison")["result"]
    assert paired["settings"]["seed_pairing"]["paired"] and paired["settings"]["seed_pairing"]["ties"] == "neutral"
    # seed 1 of dual continued from another checkpoint: no longer twins
    exp.marker(Unit("dual", 0, 1)).write_text(json.dumps({"cases": list(pairs), "warm_start_sha256": "other"}))
    unpaired = compare_seeded(evaluations, ["baseline", "dual"], exp.run_dir / "comparison")["result"]
    assert unpaired["settings"]["seed_pairing"] == {
        "paired": False, "ties": "against",
        "reason": "unpaired seeds: the warm starts of seed position(s) [1] differ between runs"}
