#!/usr/bin/env python
"""The seeded CPU study of the VA loss: one command, resumable, written to be run before its results are seen.

Design (fixed before any result; change it only with a new row in docs/evidence.md):

* cohort: ``vadice synth --size neck --cases 50 --seed 2026`` — the published HNTS-MRG lesion statistics
  (31 % of nodes < 1 ml), unlabelled look-alikes, the demo's CPU grid;
* split: nnU-Net's own 5-fold split, fold 0 only (10 held-out cases), the same for every set-up and seed;
* set-ups: baseline, dual, selective-ln (VA mass mode, the presets' defaults);
* seeds: 0, 1, 2 (training seeds; the cohort is the same);
* schedule per seed: a common baseline phase of 2500 iterations (50 epochs x 50) shared by the three
  set-ups, then 800 iterations (16 epochs x 50) of each set-up's own loss; cpu-small preset, batch 2,
  final validation without test-time mirroring. Planned wall time on a quiet 2-core CPU: ~110 min
  (0.4 s per iteration, 14 700 iterations, 12 trainings' start-up and validation). Revised before any
  study run (first draft: 1000 + 400): the demo's baseline predicted nothing in its first 1500 iterations,
  the tumour from ~2000 and nodes from ~3000 (docs/benchmarks.md), so the set-up phase now spans the
  iterations in which nodes first appear;
* evaluation: vadice evaluate on the held-out predictions; vadice's comparison (patients resampled, then
  seeds, paired: seed k of every set-up continued from seed k's one warm start; verdict "consistent" only when
  the CI excludes 0, no seed has the other sign and more than half have the pooled sign).

Writes OUT/study.md (the evidence table: per set-up GTVn lesion sensitivity overall and per size bin,
lesion precision per label, DSCagg per label, DSC, HD95; differences to baseline with CI, per-seed
differences and sign agreement), OUT/study_sensitivity_by_size.png, OUT/study_precision_vs_sensitivity.png,
OUT/run/report.html; prints the wall time and the machine. Interrupted runs continue where they stopped.

Usage:
    .venv/bin/python bench/cpu_study.py --out runs/cpu_study             # the study (~2 h on 2 cores)
    .venv/bin/python bench/cpu_study.py --out /tmp/study_tiny --tiny     # the recipe in a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

STUDY = dict(cases=50, cohort_seed=2026, seeds=(0, 1, 2), warm=2500, warm_epochs=50, iterations=800, epochs=16,
             val_iterations=5)
TINY = dict(cases=6, cohort_seed=2026, seeds=(0, 1), warm=2, warm_epochs=1, iterations=2, epochs=1,
            val_iterations=1)
DATASET_ID, DATASET_NAME = 991, "VadiceStudy"
TABLE_METRICS = (
    ("GTVn", "lesion_sensitivity"), ("GTVn", "lesion_sensitivity <0.5 ml"), ("GTVn", "lesion_sensitivity 0.5-1 ml"),
    ("GTVn", "lesion_sensitivity 1-5 ml"), ("GTVn", "lesion_sensitivity 5-10 ml"),
    ("GTVn", "lesion_sensitivity >=10 ml"), ("GTVn", "lesion_precision"), ("GTVp", "lesion_sensitivity"),
    ("GTVp", "lesion_precision"), ("GTVn", "dscagg"), ("GTVp", "dscagg"), ("GTVn", "dsc"), ("GTVp", "dsc"),
    ("GTVn", "hd95"), ("GTVp", "hd95"),
)


def run(out: Path, design: dict, progress: bool = True) -> dict:
    """Run (or resume) the study in ``out``; returns the comparison (vadice.metrics.compare output)."""
    from vadice.data.hntsmrg import convert
    from vadice.data.synth import generate_cohort
    from vadice.demo import set_nnunet_roots
    from vadice.experiment import Experiment, ExperimentSettings, build_report

    out.mkdir(parents=True, exist_ok=True)
    roots = set_nnunet_roots(out)
    generate_cohort(out / "cohort", design["cases"], design["cohort_seed"], size="neck", progress=progress)
    dataset = convert(out / "cohort", task=1, dataset_id=DATASET_ID, out=roots["nnUNet_raw"], name=DATASET_NAME,
                      progress=progress)
    settings = ExperimentSettings(
        dataset=str(dataset), preset="cpu-small", folds=(0,), seeds=tuple(design["seeds"]), device="cpu",
        iterations=design["iterations"], epochs=design["epochs"], val_iterations=design["val_iterations"],
        val_mirroring=False, warm_start_iterations=design["warm"], warm_start_epochs=design["warm_epochs"])
    exp = Experiment.open(out / "run", settings, progress=progress)
    exp.prepare(fingerprint_samples=1_000_000)
    exp.run_units()
    result = exp.collect()
    build_report(exp.run_dir)
    return json.loads((exp.run_dir / "comparison" / "comparison.json").read_text())


def _fmt(v, digits=3) -> str:
    """A table cell: undefined values (None, NaN) as a dash."""
    return "—" if v is None or v != v else f"{v:.{digits}f}"


def delta_cell(row: dict, run: str) -> str:
    """One comparison row's Δ of ``run`` to the reference: Δ [CI]; per-seed Δ; seeds agreeing; verdict."""
    seeds = ", ".join(_fmt(d) for d in (row["seed_diffs"][run] or []))
    return (f"{_fmt(row['diff'][run])} [{_fmt(row['ci_low'][run])}, {_fmt(row['ci_high'][run])}]; {seeds}; "
            f"{row['n_seeds_agree'][run]}/{len(row['seed_diffs'][run] or [])} agree; {row['verdict'][run]}")


def evidence_table(comparison: dict, metrics=TABLE_METRICS, runs: list[str] | None = None) -> str:
    """The study's Markdown table from comparison.json: value, Δ [CI], per-seed Δ, seeds agreeing, verdict.

    Args:
      comparison: a ``vadice.metrics.compare`` result; its first run is the reference of every Δ.
      metrics: the ``(label, metric)`` rows, in order (rows the comparison lacks are skipped).
      runs: the runs shown (default all), the reference first.

    Returns:
      the table; every Δ column names its reference (``Δ dual+pp − baseline+pp``).

    Raises:
      ValueError: ``runs`` does not start with the comparison's reference or names a run it lacks.
    """
    ref = comparison["runs"][0]
    runs = list(comparison["runs"] if runs is None else runs)
    if not runs or runs[0] != ref or not set(runs) <= set(comparison["runs"]):
        raise ValueError(f"runs must start with the reference {ref!r} and be among {comparison['runs']}, got {runs}")
    rows = {(r["label"], r["metric"]): r for r in comparison["rows"]}
    head = "| label | metric | " + " | ".join(runs) + " | " + " | ".join(
        f"Δ {r} − {ref} [95 % CI]; per-seed Δ; verdict" for r in runs[1:]) + " |"
    lines = [head, "|" + "---|" * (2 + len(runs) + len(runs) - 1)]
    for key in metrics:
        row = rows.get(key)
        if row is None:
            continue
        cells = [_fmt(row["values"][r]) for r in runs] + [delta_cell(row, r) for r in runs[1:]]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures(run_dir: Path, out: Path, which: str = "oof", runs: list[str] | None = None,
            prefix: str = "study") -> list[Path]:
    """Sensitivity by node size per set-up (seed spread) and GTVn precision vs sensitivity per seed.

    Args:
      run_dir: the experiment run folder.
      out: where the two PNGs go (``<prefix>_sensitivity_by_size.png``, ``<prefix>_precision_vs_sensitivity.png``).
      which: the evaluations of the out-of-fold predictions (``"oof"``) or of the test set (``"test"``).
      runs: the evaluated names shown (set-ups or post-processed arms); default the set's comparison's runs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vadice.testset import set_dir

    evals = {}
    for summary in sorted((run_dir / set_dir(which, "evaluation")).glob("*/seed_*/summary.json")):
        setup, seed = summary.parent.parent.name, int(summary.parent.name.split("_")[1])
        evals.setdefault(setup, {})[seed] = json.loads(summary.read_text())["labels"]["GTVn"]
    setups = list(runs or json.loads((run_dir / set_dir(which, "comparison") / "comparison.json").read_text())["runs"])
    step = min(0.22, 0.8 / len(setups))
    fig, ax = plt.subplots(figsize=(7 if len(setups) <= 3 else 9, 4))
    for i, setup in enumerate(setups):
        per_seed = [[b["sensitivity"] for b in s["size_stratified_sensitivity"]] for s in evals[setup].values()]
        bins = [b["bin"] for b in next(iter(evals[setup].values()))["size_stratified_sensitivity"]]
        x = [j + (i - (len(setups) - 1) / 2) * step for j in range(len(bins))]
        for vals in per_seed:
            ax.scatter(x, [float("nan") if v is None else v for v in vals], s=14, color=f"C{i}", alpha=0.6)
        means = [sum(v for v in col if v is not None) / max(1, sum(v is not None for v in col))
                 if any(v is not None for v in col) else float("nan") for col in zip(*per_seed)]
        ax.plot(x, means, "_", ms=18 if len(setups) <= 3 else 10, mew=2, color=f"C{i}", label=setup)
    ax.set_xticks(range(len(bins)), bins)
    ax.set_xlabel("GTVn lesion volume")
    ax.set_ylabel("lesion sensitivity (dots: seeds, bar: mean)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    fig.tight_layout()
    size_png = out / f"{prefix}_sensitivity_by_size.png"
    fig.savefig(size_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for i, setup in enumerate(setups):
        pts = [(s["lesion_sensitivity"], s["lesion_precision"]) for s in evals[setup].values()]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=f"C{i}", label=setup)
    ax.set_xlabel("GTVn lesion sensitivity")
    ax.set_ylabel("GTVn lesion precision")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(title="one point per seed", fontsize=8 if len(setups) > 3 else None)
    fig.tight_layout()
    pr_png = out / f"{prefix}_precision_vs_sensitivity.png"
    fig.savefig(pr_png, dpi=110)
    plt.close(fig)
    return [size_png, pr_png]


def machine_text() -> str:
    """The machine line written beside every result table (processor, cores, platform)."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="study folder (resumed if it holds an unfinished study)")
    p.add_argument("--tiny", action="store_true", help="the same recipe with a few iterations, 6 cases, 2 seeds")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    design = TINY if args.tiny else STUDY
    out = args.out.resolve()
    start = time.time()
    comparison = run(out, design, progress=not args.quiet)
    minutes = (time.time() - start) / 60
    pngs = figures(out / "run", out)
    machine = machine_text()
    text = (f"# vadice CPU study ({'tiny recipe check' if args.tiny else 'study'})\n\n"
            f"design: {json.dumps(design)}\n\ncommand: `{' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}`\n\n"
            f"wall time of this invocation: {minutes:.1f} min (a resumed run counts only its own part); "
            f"machine: {machine}\n\nseeds: {comparison['settings']['seed_pairing']['reason']}\n\n"
            f"{evidence_table(comparison)}\n\n"
            + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n")
    (out / "study.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
