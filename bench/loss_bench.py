#!/usr/bin/env python
"""The small-lesion loss bench: VA against the published alternatives, and two precision levers.

Builds on the seeded CPU study (bench/cpu_study.py), whose cohort, split, seeds, schedule and common
warm starts it reuses, so every loss continues from the very same checkpoint per seed. Design (fixed before any
result; written in docs/evidence.md, section 3):

* set-ups (each 800 iterations from the study's per-seed warm start of 2500 baseline iterations, cpu-small):
  baseline, dual, selective-ln (the study's own units, adopted unchanged), blob, cc-dicece, catmil (the published
  comparators, their papers' default weights), dual-fp (VA dual + the false-positive component term, weight 1);
* post-processing lever: for baseline, dual and selective-ln, per seed, a per-label minimum component volume
  fitted on the predictions of fold 0's *training* cases (never the held-out ones; the file lists the cases and
  vadice refuses to apply it to them) with the objective ``precision@sens-drop:0`` (the highest lesion precision
  that keeps the fitting cases' sensitivity), applied to the held-out predictions: rows ``baseline+pp``,
  ``dual+pp``, ``selective-ln+pp``. The post-processed arms are compared against ``baseline+pp`` (the baseline
  with the same kind of fitted post-processing), never against the plain baseline, so that a post-processing
  effect is not read as a loss effect;
* evaluation: vadice evaluate with size bins split at 1 ml ("small node" = GTVn < 1 ml, the published 31 %);
  vadice's comparison against the baseline (patients then seeds, two-level CI, seeds paired since every set-up
  of seed k continues from seed k's warm start; "consistent" only when the CI excludes 0, no seed has the other
  sign and more than half have the pooled sign);
* goal (issue 12): a configuration whose GTVn small-node sensitivity is at least dual's and whose GTVn and GTVp
  lesion precision are at least the baseline's, in every seed. If none reaches it, the table says which comes
  closest (most of the 3 x seeds conditions met; ties by the smaller total shortfall).

Writes OUT/bench.md (table, goal verdict, command, wall time, machine), OUT/bench_precision_vs_sensitivity.png,
and, in the bench's run folder, comparison/ (all configurations), comparison_paired/<name>/ (each against its
reference) and comparison_pp/. Resumable: finished units, fitted files and evaluations are kept.

Usage:
    .venv/bin/python bench/cpu_study.py --out runs/cpu_study              # first (the study)
    .venv/bin/python bench/loss_bench.py --study runs/cpu_study           # ~65 min more on 2 quiet cores
    .venv/bin/python bench/cpu_study.py --out /tmp/s --tiny && .venv/bin/python bench/loss_bench.py --study /tmp/s --tiny
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_study  # noqa: E402  (the study whose cohort, schedule and warm starts the bench continues)

from vadice.metrics.compare import PP_SUFFIX  # noqa: E402

NEW_SETUPS = ("blob", "cc-dicece", "catmil", "dual-fp")
PP_SETUPS = ("baseline", "dual", "selective-ln")  # baseline first: the +pp arms' reference
PP_REFERENCE = PP_SETUPS[0] + PP_SUFFIX
PP_OBJECTIVE = "precision@sens-drop:0"
SIZE_BINS_ML = (1.0,)
SMALL = "lesion_sensitivity <1 ml"
TABLE_METRICS = (
    ("GTVn", SMALL), ("GTVn", "lesion_sensitivity"), ("GTVp", "lesion_sensitivity"), ("GTVn", "lesion_precision"),
    ("GTVp", "lesion_precision"), ("GTVn", "dscagg"), ("GTVp", "dscagg"),
)
# Per-case metrics are compared on the cases where every compared run has a value (HD95 needs both masks
# non-empty). In one comparison of all nine configurations, a configuration that predicts nothing on a case
# removes that case for all of them, so these rows come from one comparison per configuration against the
# baseline (found when the bench's first run left HD95 blank for every configuration).
PAIRED_METRICS = (("GTVn", "hd95"), ("GTVp", "hd95"))


def study_settings(study: Path, design: dict, setups: tuple):
    """The study's experiment settings with another list of set-ups."""
    from vadice.experiment import ExperimentSettings

    dataset = study / "nnUNet_raw" / f"Dataset{cpu_study.DATASET_ID:03d}_{cpu_study.DATASET_NAME}"
    return ExperimentSettings(
        dataset=str(dataset), preset="cpu-small", folds=(0,), seeds=tuple(design["seeds"]), device="cpu",
        iterations=design["iterations"], epochs=design["epochs"], val_iterations=design["val_iterations"],
        val_mirroring=False, warm_start_iterations=design["warm"], warm_start_epochs=design["warm_epochs"],
        setups=setups)


def adopt_study_units(study_exp, bench_exp) -> list:
    """Reuse the study's finished units (markers and held-out predictions) and its warm starts, unchanged.

    The settings must be the study's in every fixed field but the set-ups; the warm-start folder is linked, so
    each seed's new set-ups continue from the checkpoint the study's set-ups continued from.

    Raises:
      InputError: different settings, or a study unit not finished.
    """
    from vadice.io import InputError, copy_file

    old, new = study_exp.settings.fixed(), bench_exp.settings.fixed()
    diffs = [k for k in old if k != "setups" and old[k] != new[k]]
    if diffs:
        raise InputError(study_exp.run_dir, f"the bench needs the study's settings; these differ: {diffs}")
    missing = study_exp.missing()
    if missing:
        raise InputError(study_exp.run_dir, f"the study is unfinished ({len(missing)} units); run "
                         "bench/cpu_study.py to the end first")
    link = bench_exp.run_dir / "warm_start"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((study_exp.run_dir / "warm_start").resolve(), target_is_directory=True)
    adopted = []
    for unit in study_exp.settings.units():
        if bench_exp.is_done(unit):
            continue
        for pred in sorted(study_exp.prediction_dir(unit.setup, unit.seed).glob("*.nii.gz")):
            copy_file(pred, bench_exp.prediction_dir(unit.setup, unit.seed) / pred.name)
        bench_exp.marker(unit).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(study_exp.marker(unit), bench_exp.marker(unit))
        adopted.append(unit)
    return adopted


def training_cases(exp) -> list[str]:
    """Fold 0's training cases (nnU-Net's splits_final.json): what the post-processing may be fitted on."""
    from vadice.nnunet.paths import resolve_dataset

    ref = resolve_dataset(exp.settings.dataset)
    splits = json.loads((ref.preprocessed_dir / "splits_final.json").read_text())
    return sorted(splits[0]["train"])


def post_processed(exp, setup: str, seed: int, progress: bool) -> Path:
    """Fit the minimum component volumes on fold 0's training-case predictions; apply them to the held-out ones
    (:func:`vadice.postprocess.arm.post_processed_arm`).

    Returns the folder of post-processed held-out predictions (``predictions/<setup>+pp/seed_<S>``).
    """
    from vadice.experiment import Unit
    from vadice.nnunet.inference import predict
    from vadice.nnunet.paths import resolve_dataset
    from vadice.postprocess.arm import post_processed_arm

    out = exp.prediction_dir(f"{setup}+pp", seed)
    if out.is_dir():
        return out
    info = json.loads(exp.marker(Unit(setup, 0, seed)).read_text())
    work = exp.run_dir / "postprocessing" / setup / f"seed_{seed}"
    train_pred = work / "training_predictions"
    raw = resolve_dataset(exp.settings.dataset).raw_dir
    cases = training_cases(exp)
    todo = [c for c in cases if not (train_pred / f"{c}.nii.gz").is_file()]
    if todo:
        predict(info["model_dir"], [str(raw / "imagesTr" / f"{c}_0000.nii.gz") for c in todo], train_pred,
                folds=(0,), device="cpu", use_mirroring=False, progress=progress)
    return post_processed_arm({c: train_pred / f"{c}.nii.gz" for c in cases}, raw / "labelsTr",
                              exp.prediction_dir(setup, seed), out, work / "postprocessing.json",
                              objective=PP_OBJECTIVE, group="train",
                              source={"setup": setup, "seed": seed, "model_dir": info["model_dir"]})


def evaluate_all(exp, runs: list[str]) -> tuple[dict, dict[str, dict]]:
    """Evaluate every run name and seed with the bench's size bins; compare against the baseline.

    Post-processed runs (``<setup>+pp``) have ``baseline+pp`` as their reference wherever it is among ``runs``:
    their Δs come from the comparison ``comparison_pp`` and from their per-configuration comparisons. Each
    comparison has its own folder beside ``comparison`` (never inside it: a folder ``vadice compare`` replaces
    may hold only its own files), so that a resumed bench compares again into the same places.

    Returns:
      ``(comparison, paired, pp)``: the comparison of all runs against the baseline (its per-seed values feed
      the goal rule and the figure; its Δs of post-processed runs are not shown), per configuration its
      comparison with its reference alone (``comparison_paired/<name>``; see ``PAIRED_METRICS``), and the
      comparison of the post-processed runs against ``baseline+pp`` (None without it).
    """
    from vadice.experiment import compare_seeded

    evaluations = exp.evaluate(runs, size_bins_ml=SIZE_BINS_ML, reuse=True)
    compare_seeded(evaluations, runs, exp.run_dir / "comparison")
    paired = {}
    for name in runs[1:]:
        if name == PP_REFERENCE:
            continue
        ref = reference(name, runs)
        folder = exp.run_dir / "comparison_paired" / name
        compare_seeded({r: evaluations[r] for r in (ref, name)}, [ref, name], folder,
                       spread_file=folder.parent / f"{name}.seed_spread.json")
        paired[name] = json.loads((folder / "comparison.json").read_text())
    pp = None
    pp_runs = [PP_REFERENCE] + [r for r in runs if r.endswith(PP_SUFFIX) and r != PP_REFERENCE]
    if PP_REFERENCE in runs and len(pp_runs) > 1:
        compare_seeded({r: evaluations[r] for r in pp_runs}, pp_runs, exp.run_dir / "comparison_pp",
                       spread_file=exp.run_dir / "seed_spread_pp.json")
        pp = json.loads((exp.run_dir / "comparison_pp" / "comparison.json").read_text())
    return json.loads((exp.run_dir / "comparison" / "comparison.json").read_text()), paired, pp


def reference(run: str, runs: Sequence[str]) -> str:
    """What ``run`` is compared against: ``baseline+pp`` for a post-processed run when it is among ``runs``,
    else the first run (the baseline)."""
    return PP_REFERENCE if run.endswith(PP_SUFFIX) and PP_REFERENCE in runs else runs[0]


def paired_table(paired: dict[str, dict]) -> str:
    """Per-case metrics of each configuration against its reference (the baseline, or baseline+pp for a
    post-processed one), on the cases where both have a value."""
    lines = ["| label | metric | configuration | cases × seeds paired | reference | reference value | "
             "configuration | Δ [95 % CI]; per-seed Δ; verdict |", "|---|---|---|---|---|---|---|---|"]
    fmt = cpu_study._fmt
    for key in PAIRED_METRICS:
        for name, comparison in paired.items():
            row = {(r["label"], r["metric"]): r for r in comparison["rows"]}.get(key)
            if row is None:
                continue
            base = comparison["runs"][0]
            n = len(row["seed_values"][name]) * row["n_pairs"][name]
            lines.append(f"| {key[0]} | {key[1]} | {name} | {n} | {base} | {fmt(row['values'][base])} | "
                         f"{fmt(row['values'][name])} | {cpu_study.delta_cell(row, name)} |")
    return "\n".join(lines)


def goal_verdict(comparison: dict, reference_sensitivity: str = "dual") -> tuple[list[dict], str]:
    """Per configuration and seed: small-node sensitivity >= dual's, GTVn and GTVp precision >= baseline's
    (>= baseline+pp's for a post-processed configuration, when baseline+pp is among the runs: post-processing
    alone must not count as reaching the baseline's precision).

    Returns:
      ``(rows, sentence)``: per configuration the conditions met (of 3 x seeds), the total shortfall, whether
      every condition holds in every seed; and one sentence naming the configuration(s) reaching the goal or
      the one that comes closest.
    """
    rows = {(r["label"], r["metric"]): r for r in comparison["rows"]}
    small, prec_n, prec_p = rows[("GTVn", SMALL)], rows[("GTVn", "lesion_precision")], rows[("GTVp", "lesion_precision")]
    out = []
    for run in comparison["runs"]:
        if run in ("baseline", reference_sensitivity, PP_REFERENCE):
            continue
        met, total, shortfall = 0, 0, 0.0
        precision_ref = reference(run, comparison["runs"])
        checks = ((small, reference_sensitivity), (prec_n, precision_ref), (prec_p, precision_ref))
        for row, ref in checks:
            for mine, theirs in zip(row["seed_values"][run], row["seed_values"][ref]):
                total += 1
                if mine is None or theirs is None:
                    continue
                if mine >= theirs - 1e-12:
                    met += 1
                else:
                    shortfall += theirs - mine
        out.append({"config": run, "met": met, "of": total, "shortfall": round(shortfall, 4),
                    "reached": met == total})
    reached = [r["config"] for r in out if r["reached"]]
    if reached:
        sentence = "Goal reached (every condition in every seed) by: " + ", ".join(reached) + "."
    elif out:
        best = sorted(out, key=lambda r: (-r["met"], r["shortfall"]))[0]
        sentence = (f"No configuration reaches the goal. Closest: {best['config']} ({best['met']} of {best['of']} "
                    f"seed-conditions met, total shortfall {best['shortfall']:.3f}).")
    else:
        sentence = "No configuration to judge."
    return out, sentence


def figure(comparison: dict, out: Path) -> Path:
    """GTVn small-node sensitivity vs GTVn precision, and GTVp sensitivity vs precision: one point per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["label"], r["metric"]): r for r in comparison["rows"]}
    panels = (("GTVn", SMALL, "GTVn sensitivity, nodes < 1 ml"), ("GTVp", "lesion_sensitivity", "GTVp sensitivity"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, (label, sens_metric, xlabel) in zip(axes, panels):
        for i, run in enumerate(comparison["runs"]):
            xs = rows[(label, sens_metric)]["seed_values"][run]
            ys = rows[(label, "lesion_precision")]["seed_values"][run]
            pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=f"C{i % 10}",
                       marker="o" if "+pp" not in run else "s", label=run)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{label} lesion precision")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
    axes[1].legend(title="one point per seed", fontsize=8)
    fig.tight_layout()
    png = out / "bench_precision_vs_sensitivity.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def run(study: Path, design: dict, progress: bool = True) -> tuple[dict, dict[str, dict], dict | None, Path]:
    from vadice.demo import set_nnunet_roots
    from vadice.experiment import Experiment
    from vadice.registry import STUDY_SETUPS as SETUPS  # the study's arms (its default set-ups)
    from vadice.io import InputError

    if not (study / "run" / "manifest.json").is_file():
        raise InputError(study, "no CPU study here: run bench/cpu_study.py --out STUDY first")
    set_nnunet_roots(study)
    # read only: its units are adopted as they are, each marker keeping the code version it trained on
    study_exp = Experiment.open(study / "run", study_settings(study, design, SETUPS), progress,
                                existing=True, allow_code_change=True)
    setups = SETUPS + NEW_SETUPS
    exp = Experiment.open(study / "bench_run", study_settings(study, design, setups), progress)
    exp.prepare(fingerprint_samples=1_000_000)
    adopt_study_units(study_exp, exp)
    exp.run_units()
    runs = list(setups)
    for setup in PP_SETUPS:
        for seed in exp.settings.seeds:
            post_processed(exp, setup, seed, progress)
        runs.append(f"{setup}+pp")
    comparison, paired, pp = evaluate_all(exp, runs)
    return comparison, paired, pp, exp.run_dir


def markdown(comparison: dict, verdict_rows: list[dict], sentence: str, paired: dict[str, dict],
             pp: dict | None = None) -> str:
    """bench.md's body: the losses against the baseline, the post-processed arms against baseline+pp, HD95 per
    configuration against its reference, the goal."""
    losses = [r for r in comparison["runs"] if not r.endswith(PP_SUFFIX)]
    parts = [f"Losses against {losses[0]} (seeds: {comparison['settings']['seed_pairing']['reason']}):",
             cpu_study.evidence_table(comparison, TABLE_METRICS, runs=losses)]
    if pp is not None:
        parts += [f"Post-processed arms against {pp['runs'][0]}, the baseline with the same fitted post-processing "
                  "(a Δ here is the losses' difference after post-processing, not the post-processing's effect):",
                  cpu_study.evidence_table(pp, TABLE_METRICS)]
    goal = ["| configuration | conditions met | total shortfall | goal reached |", "|---|---|---|---|"]
    goal += [f"| {r['config']} | {r['met']} / {r['of']} | {r['shortfall']:.3f} | {'yes' if r['reached'] else 'no'} |"
             for r in verdict_rows]
    return ("\n\n".join(parts) + "\n\nHD95 (mm), each configuration against its reference on the cases where "
            f"both predicted the label (HD95 is undefined on an empty mask):\n\n{paired_table(paired)}\n\n"
            f"**Goal** (small-node sensitivity ≥ dual's, GTVn and GTVp precision ≥ baseline's — ≥ {PP_REFERENCE}'s "
            f"for a post-processed configuration —, every seed): {sentence}\n\n" + "\n".join(goal))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", type=Path, required=True, help="the folder of a finished bench/cpu_study.py run")
    p.add_argument("--tiny", action="store_true", help="the study was run with --tiny")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    design = cpu_study.TINY if args.tiny else cpu_study.STUDY
    study = args.study.resolve()
    start = time.time()
    comparison, paired, pp, run_dir = run(study, design, progress=not args.quiet)
    minutes = (time.time() - start) / 60
    verdict_rows, sentence = goal_verdict(comparison)
    png = figure(comparison, study)
    machine = cpu_study.machine_text()
    text = (f"# vadice loss bench ({'tiny recipe check' if args.tiny else 'bench'})\n\n"
            f"study design: {json.dumps(design)}; new set-ups {list(NEW_SETUPS)}; post-processing on "
            f"{list(PP_SETUPS)} ({PP_OBJECTIVE}, fitted on fold 0's training cases)\n\n"
            f"command: `{' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}`\n\n"
            f"wall time of this invocation: {minutes:.1f} min (a resumed run counts only its own part); "
            f"machine: {machine}\n\n{markdown(comparison, verdict_rows, sentence, paired, pp)}\n\n![{png.stem}]({png.name})\n")
    (study / "bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
