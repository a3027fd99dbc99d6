#!/usr/bin/env python
"""The answerable study of the VA loss (issue 21): one command, resumable, its table pasted unchanged.

The design is the one dict ``DESIGN`` below, declared in docs/evidence.md §4 (commit acfbb56) before any result;
it does not change once the run has started. In words:

* training cohort: ``vadice synth --profile clinical --size neck``, 50 patients, cohort seed 7301; nnU-Net's
  5-fold split, fold 0 only (40 training, 10 validation = out-of-fold patients);
* test cohort: the same generator, 100 patients, seed 7401, the experiment's test set (``vadice experiment
  --test-set``): predicted by every set-up and seed, never trained or fitted on; probabilities kept (FROC);
* seeds 0, 1, 2, paired: per seed one common baseline warm start of 2500 iterations (50 epochs) that every
  set-up continues for 800 iterations (16 epochs); 5 validation iterations, no validation mirroring,
  cpu-small preset on the CPU (the mechanism of bench/cpu_study.py);
* set-ups: baseline, dual, selective-ln;
* post-processed arms ``<set-up>+pp``: per set-up and seed, the minimum component volumes (objective ``f1``,
  the default grid) fitted on that unit's fold-0 out-of-fold predictions against their truth, applied to its
  test-set predictions (:func:`vadice.postprocess.arm.post_processed_arm`); compared against ``baseline+pp``;
* evaluation size bins split at 1 ml: "small node" = GTVn < 1 ml (bench/loss_bench.py's bins).

Writes OUT/study.md: the design, the command, the code version (refusing to start a study from a dirty checkout
without --allow-dirty), the machine, the wall time; on the test set table A (the +pp arms against baseline+pp),
table B (the raw arms against the baseline; also on the out-of-fold patients, labelled), HD95 per arm against its
reference, table C (matched FROC operating points, read from the experiment's froc_comparison_test/); figures
(FROC of the test set, sensitivity by node size per arm) and OUT/run/report_test.html. Every step is skipped when
its output exists, so a stopped run resumes where it stopped.

Seed by seed (a machine that keeps nothing between sessions): ``--seed S --state DIR`` runs seed S's piece alone
(its warm start and set-ups, the test set predicted, both sets evaluated, FROC folders, +pp arms; nothing compared,
no result printed) and exports what later steps read to DIR/seed_<S> (bench/study_state.py: no checkpoints, no
probabilities); ``--state DIR`` without ``--seed`` restores every seed's piece into an emptied --out and combines
them without training or predicting, after checking that every piece ran this design from this commit in this
--out folder, on the cohorts and plans made again here. The tables are those of the study run in one go.

Usage:
    .venv/bin/python bench/va_study.py --out runs/va_study               # the study
    .venv/bin/python bench/va_study.py --out /work/va_study --seed 0 --state studies/va_study   # one seed's piece
    .venv/bin/python bench/va_study.py --out /work/va_study --state studies/va_study            # combine
    .venv/bin/python bench/va_study.py --out /tmp/va_tiny --tiny         # the recipe in a few minutes
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_study  # noqa: E402  (evidence_table, figures, machine_text, table cells)
from cpu_study import _fmt  # noqa: E402
import loss_bench  # noqa: E402  (the 1 ml size bins, the HD95 table)

DESIGN = dict(
    profile="clinical", size="neck", cases=50, cohort_seed=7301, folds=(0,),
    test_cases=100, test_seed=7401,
    setups=("baseline", "dual", "selective-ln"), seeds=(0, 1, 2),
    warm=2500, warm_epochs=50, iterations=800, epochs=16, val_iterations=5, val_mirroring=False,
    preset="cpu-small", device="cpu", probabilities=True,
    pp_setups=("baseline", "dual", "selective-ln"), pp_objective="f1", pp_grid="default",
    pp_fit="per set-up and seed, on its fold-0 out-of-fold predictions; applied to its test-set predictions",
    size_bins_ml=loss_bench.SIZE_BINS_ML,
)
TINY = {**DESIGN, "cases": 6, "test_cases": 4, "seeds": (0, 1), "warm": 2, "warm_epochs": 1, "iterations": 2,
        "epochs": 1, "val_iterations": 1}
DATASET_ID, DATASET_NAME = 993, "VadiceVAStudy"
PP = "+pp"
SMALL = loss_bench.SMALL  # "lesion_sensitivity <1 ml"
TABLE_ROWS = (("GTVn", SMALL), ("GTVn", "lesion_sensitivity"), ("GTVn", "lesion_precision"),
              ("GTVp", "lesion_precision"), ("GTVp", "dscagg"), ("GTVn", "dscagg"))
START_FILE = "va_study_start.json"


def code_describe(root: Path | None = None) -> str | None:
    """``git describe --always --dirty --abbrev=40`` of the checkout holding this script (None outside git): the
    full commit (with an annotated tag's name in front), so that pieces run in sessions whose clones lack the tag
    or abbreviate hashes differently still name the same version."""
    root = root or Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
                              capture_output=True,
                              text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def check_start(out: Path, design: dict, tiny: bool, allow_dirty: bool, command: str) -> dict:
    """The start record (``OUT/va_study_start.json``): written when the study starts, read when it resumes.

    Raises:
      SystemExit: starting a study (not ``--tiny``) from a dirty checkout without ``allow_dirty``; resuming with
        another design.
    """
    path = out / START_FILE
    if path.is_file():
        record = json.loads(path.read_text())
        if record["design"] != json.loads(json.dumps(design)):
            raise SystemExit(f"va_study: {path} records another design; use a new --out folder")
        return record
    version = code_describe()
    if not tiny and not allow_dirty and (version is None or version.endswith("-dirty")):
        raise SystemExit(f"va_study: refusing to start a study from checkout {version or '(not git)'}: commit "
                         "first, or pass --allow-dirty (recorded in study.md)")
    from vadice.io import write_text

    record = {"code_version": version, "allow_dirty": allow_dirty, "command": command, "design": design,
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(record, indent=2))
    return json.loads(path.read_text())


def experiment_settings(out: Path, dataset: Path, design: dict):
    from vadice.experiment import ExperimentSettings

    return ExperimentSettings(
        dataset=str(dataset), preset=design["preset"], folds=tuple(design["folds"]), seeds=tuple(design["seeds"]),
        setups=tuple(design["setups"]), device=design["device"], iterations=design["iterations"],
        epochs=design["epochs"], val_iterations=design["val_iterations"], val_mirroring=design["val_mirroring"],
        warm_start_iterations=design["warm"], warm_start_epochs=design["warm_epochs"],
        test_set=str(out / "test_cohort"), probabilities=design["probabilities"])


def open_study(out: Path, design: dict, progress: bool = True):
    """The cohorts, the converted and planned dataset and the experiment of the study in ``out`` (idempotent:
    every piece and the combining step make them again from the design)."""
    from vadice.data.hntsmrg import convert
    from vadice.data.synth import generate_cohort
    from vadice.demo import set_nnunet_roots
    from vadice.experiment import Experiment

    out.mkdir(parents=True, exist_ok=True)
    roots = set_nnunet_roots(out)
    for folder, n, seed in (("cohort", design["cases"], design["cohort_seed"]),
                            ("test_cohort", design["test_cases"], design["test_seed"])):
        generate_cohort(out / folder, n, seed, size=design["size"], profile=design["profile"], progress=progress)
    dataset = convert(out / "cohort", task=1, dataset_id=DATASET_ID, out=roots["nnUNet_raw"], name=DATASET_NAME,
                      progress=progress)
    exp = Experiment.open(out / "run", experiment_settings(out, dataset, design), progress=progress)
    exp.prepare(fingerprint_samples=1_000_000)
    return exp


def run(out: Path, design: dict, progress: bool = True, workers: int = 1, pieces: list[dict] = ()) -> tuple:
    """Run (or resume) the study in ``out``: cohorts, training, then :func:`analyse`. With ``pieces`` (restored
    by :func:`study_state.restore_state`), nothing is trained or predicted: the pieces' inputs and plans are
    checked against the ones made here, and their evaluation and FROC folders are compared.

    Raises:
      SystemExit: a piece made on other cohorts or plans, or a unit that no piece finished.
    """
    exp = open_study(out, design, progress)
    if pieces:
        check_pieces(out, exp, pieces)
    else:
        exp.run_units()
    return exp, analyse(exp, design, progress, workers, predict=not pieces)


def run_piece(out: Path, design: dict, seed: int, progress: bool = True, workers: int = 1):
    """One seed of the study in ``out`` (its warm start, its set-ups, its test-set predictions, evaluations, FROC
    folders and +pp arms), nothing compared: see :func:`analyse_piece`."""
    exp = open_study(out, design, progress)
    exp.run_units([u for u in exp.settings.units() if u.seed == seed])
    analyse_piece(exp, design, seed, progress, workers)
    return exp


def check_pieces(out: Path, exp, pieces: list[dict]) -> None:
    """The restored pieces were made on the cohorts and plans made again here, and together finish every unit.

    Raises:
      SystemExit: they were not, or they do not.
    """
    import study_state

    study_state.check_inputs(out, pieces)
    plans = exp.plan.plans_sha256
    for piece in pieces:
        if piece["plans_sha256"] != plans:
            raise SystemExit(f"va_study: seed {piece['seed']}'s piece was trained on other plans "
                             f"({piece['plans_sha256'][:12]} here {plans[:12]})")
    if missing := exp.missing():
        raise SystemExit("va_study: no piece finished " + ", ".join(str(u) for u in missing))


def pp_arm_on_test_set(exp, setup: str, seed: int, objective: str, progress: bool = False) -> Path:
    """``<setup>+pp`` of one seed on the test set: fitted on the unit's out-of-fold predictions and their truth,
    applied to its test-set predictions (``predictions_test/<setup>+pp/seed_<S>``)."""
    from vadice.experiment import Unit
    from vadice.postprocess.arm import post_processed_arm

    cases, model_dirs = [], set()
    for fold in exp.settings.folds:
        info = json.loads(exp.marker(Unit(setup, fold, seed)).read_text())
        cases += info["cases"]
        model_dirs.add(info["model_dir"])
    oof = exp.prediction_dir(setup, seed)
    return post_processed_arm(
        {c: oof / f"{c}.nii.gz" for c in cases}, exp.set_gt_dir("oof"), exp.set_prediction_dir("test", setup, seed),
        exp.set_prediction_dir("test", f"{setup}{PP}", seed), pp_file(exp, setup, seed), objective=objective,
        group="out_of_fold", apply_truth_dir=exp.test_gt_dir(), progress=progress,
        source={"setup": setup, "seed": seed, "model_dir": sorted(model_dirs)[0],
                "fitted_on": f"out-of-fold predictions of folds {list(exp.settings.folds)}"})


def pp_file(exp, setup: str, seed: int) -> Path:
    return exp.run_dir / "postprocessing" / setup / f"seed_{seed}" / "postprocessing.json"


def _compare(evaluations: dict, runs: list[str], out_dir: Path, spread: Path) -> dict:
    """A seeded comparison of ``runs`` (the first the reference), skipped when written."""
    from vadice.experiment import compare_seeded

    if not (out_dir / "comparison.json").is_file():
        compare_seeded({r: evaluations[r] for r in runs}, runs, out_dir, spread_file=spread)
    return json.loads((out_dir / "comparison.json").read_text())


def analyse_piece(exp, design: dict, seed: int, progress: bool = True, workers: int = 1) -> None:
    """What :func:`analyse` computes per seed, for one seed: the test set predicted, both sets evaluated, their
    FROC folders, the +pp arms fitted, applied and evaluated. Resumable; reads and prints no result."""
    setups, pp_runs = list(exp.settings.setups), [f"{s}{PP}" for s in design["pp_setups"]]
    exp.predict_test_set(seeds=[seed])
    for which in ("oof", "test"):
        exp.evaluate(setups, workers=workers, which=which, size_bins_ml=design["size_bins_ml"], reuse=True,
                     seeds=[seed])
        exp.compute_froc(which, exp.set_gt_dir(which), reuse=True, seeds=[seed])
    for setup in design["pp_setups"]:
        pp_arm_on_test_set(exp, setup, seed, design["pp_objective"], progress)
    exp.evaluate(pp_runs, size_bins_ml=design["size_bins_ml"], reuse=True, which="test", workers=workers,
                 seeds=[seed])


def analyse(exp, design: dict, progress: bool = True, workers: int = 1, predict: bool = True) -> dict:
    """Collect both sets (1 ml size bins, FROC), build the +pp arms, compare, report; every step resumable.
    ``predict=False``: the test set is not predicted (pieces restored with their evaluation and FROC folders).

    Returns:
      ``{"raw_test", "raw_oof", "pp_test", "paired", "froc_test"}``: the comparisons of the raw arms (test set,
      out-of-fold), of the +pp arms against baseline+pp (test set), per arm its comparison with its reference
      alone (test set; HD95), and the FROC comparison of the test set.
    """
    from vadice.experiment import build_report
    from vadice.testset import set_dir

    exp.collect(which="both", size_bins_ml=design["size_bins_ml"], reuse=True, workers=workers, predict=predict)
    setups = list(exp.settings.setups)
    pp_runs = [f"{s}{PP}" for s in design["pp_setups"]]
    for setup in design["pp_setups"]:
        for seed in exp.settings.seeds:
            pp_arm_on_test_set(exp, setup, seed, design["pp_objective"], progress)
    evaluations = exp.evaluate(setups + pp_runs, size_bins_ml=design["size_bins_ml"], reuse=True, which="test",
                               workers=workers)
    run_dir = exp.run_dir
    paired = {}
    for group in (setups, pp_runs):
        for name in group[1:]:
            paired[name] = _compare(evaluations, [group[0], name], run_dir / "comparison_paired_test" / name,
                                    run_dir / "comparison_paired_test" / f"{name}.seed_spread.json")
    result = {
        "raw_test": json.loads((run_dir / set_dir("test", "comparison") / "comparison.json").read_text()),
        "raw_oof": json.loads((run_dir / set_dir("oof", "comparison") / "comparison.json").read_text()),
        "pp_test": _compare(evaluations, pp_runs, run_dir / "comparison_pp_test", run_dir / "seed_spread_pp_test.json"),
        "paired": paired,
        "froc_test": json.loads((run_dir / set_dir("test", "froc_comparison") / "froc_comparison.json").read_text()),
    }
    if not (run_dir / set_dir("test", "report")).is_file():
        build_report(run_dir, which="test", notes=["The post-processed arms (+pp) and their comparison with "
                                                   "baseline+pp are in study.md (bench/va_study.py)."])
    return result


def froc_table(froc: dict) -> str:
    """Table C from a ``froc_comparison.json`` (:func:`vadice.metrics.froc_compare.compare_froc`), as written:
    per view (all nodes, nodes in the size view) and set-up, ΔCPM against the reference with its CI, per-seed Δ
    and verdict, the set-up's precision at the reference's sensitivity and its sensitivity at the reference's
    FP rate (the reference's own operating point in the header)."""
    ref, st = froc["reference"], froc["settings"]
    lines = [f"Reference {ref}; label {froc['label']}; {froc['n_patients']} patients; own operating point = the "
             f"pooled row at threshold {st['operating_threshold']:g}; seeds "
             f"{'paired' if st['paired'] else 'unpaired'}, ties {st['ties']}; CI {st['confidence']:.0%} two-level "
             f"bootstrap ({st['n_boot']} resamples).", "",
             f"| view | set-up | CPM {ref} | CPM set-up | ΔCPM [95 % CI]; per-seed Δ; seeds agreeing; verdict | "
             f"{ref}'s own point: sensitivity, FP/patient, precision | precision at {ref}'s sensitivity (threshold) | "
             f"sensitivity at {ref}'s FP/patient |", "|---|---|---|---|---|---|---|---|"]
    for view, blocks in froc["views"].items():
        name = f"{froc['label']} all" if view == "all" else f"{froc['label']} {view}"
        own = blocks[ref]["operating_point"]
        point = f"{_fmt(own['sensitivity'])}, {_fmt(own['fp_per_patient'], 2)}, {_fmt(own['precision'])}"
        for setup, b in blocks.items():
            if setup == ref:
                continue
            d, at = b["delta_cpm"], b["at_reference_point"]
            seeds = ", ".join(_fmt(x) for x in d["seed_diffs"])
            delta = (f"{_fmt(d['diff'])} [{_fmt(d['low'])}, {_fmt(d['high'])}]; {seeds}; "
                     f"{d['n_agree']}/{len(d['seed_diffs'])} agree; {d['verdict']}")
            lines.append(f"| {name} | {setup} | {_fmt(blocks[ref]['pooled']['cpm'])} | {_fmt(b['pooled']['cpm'])} | "
                         f"{delta} | {point} | {_fmt(at['precision_at_sensitivity'])} ({_fmt(at['threshold'], 2)}) | "
                         f"{_fmt(at['sensitivity_at_fp'])} |")
    return "\n".join(lines)


def pp_fits_table(exp, design: dict) -> str:
    """Per +pp arm and seed: the fitted minimum volumes, the cases fitted on, and the test cases that share a
    fitted case's name (other patients of the test cohort; their truth differs, checked when applied)."""
    from vadice.postprocess import load_postprocessing

    test_cases = exp.test_cases()
    lines = ["| arm | seed | min volume GTVp (mm³) | min volume GTVn (mm³) | fitted on (out-of-fold cases) | "
             "test cases sharing a fitted case's name |", "|---|---|---|---|---|---|"]
    for setup in design["pp_setups"]:
        for seed in exp.settings.seeds:
            pp = load_postprocessing(pp_file(exp, setup, seed))
            vol = {n: pp.min_volume_mm3[v] for n, v in pp.labels.items()}
            lines.append(f"| {setup}{PP} | {seed} | {_fmt(vol.get('GTVp'), 0)} | {_fmt(vol.get('GTVn'), 0)} | "
                         f"{len(pp.cases)} | {len(pp.seen(test_cases))} |")
    return "\n".join(lines)


def markdown(exp, design: dict, result: dict) -> str:
    """study.md's result part: the tables A, B, HD95, C and the +pp fits."""
    from vadice.testset import n_patients

    n_test, n_oof = n_patients(exp.test_cases()), n_patients(exp._pooled_cases())
    pp, raw = result["pp_test"], result["raw_test"]
    return "\n\n".join([
        f"Test set: {n_test} patients (never trained or fitted on). Seeds: {raw['settings']['seed_pairing']['reason']}. "
        "Values pool seeds; Δ is arm minus reference; CI the two-level bootstrap (patients, then seeds); "
        "\"consistent\" needs the CI to exclude 0 and the seeds to agree in sign.",
        f"## A. Primary: post-processed arms against {pp['runs'][0]}, test set ({n_test} patients)",
        "Each arm at its own operating point: its minimum component volumes fitted on its own out-of-fold "
        f"predictions ({design['pp_objective']}).",
        cpu_study.evidence_table(pp, TABLE_ROWS),
        f"## B. Raw arms (no post-processing) against {raw['runs'][0]}, test set ({n_test} patients)",
        cpu_study.evidence_table(raw, TABLE_ROWS),
        "## HD95 (mm), test set: each arm against its reference on the cases where both predicted the label",
        loss_bench.paired_table(result["paired"]),
        f"## C. Matched operating points (FROC of the raw arms' probabilities), test set ({n_test} patients)",
        froc_table(result["froc_test"]),
        f"## B on the out-of-fold patients ({n_oof}; raw arms only — the +pp fits used these cases)",
        cpu_study.evidence_table(result["raw_oof"], TABLE_ROWS),
        "## Post-processing fits",
        pp_fits_table(exp, design),
    ])


def figures(exp, design: dict, out: Path, result: dict) -> list[Path]:
    """The test set's FROC (as the report draws it) and sensitivity by node size per arm."""
    from vadice.io import write_bytes
    from vadice.report.plots import froc_png

    froc = out / "va_study_froc_test.png"
    write_bytes(froc, froc_png(result["froc_test"]))
    runs = list(exp.settings.setups) + [f"{s}{PP}" for s in design["pp_setups"]]
    return [froc] + cpu_study.figures(exp.run_dir, out, which="test", runs=runs, prefix="va_study_test")


def header(design: dict, tiny: bool, command: str, start: dict, exp, minutes: float, pieces: list[dict] = ()) -> str:
    version = code_describe()
    run_code = json.loads((exp.run_dir / "manifest.json").read_text()).get("code_version") or {}
    dirty = " (started dirty, allowed by --allow-dirty)" if start.get("allow_dirty") else ""
    text = (f"# vadice VA study ({'tiny recipe check' if tiny else 'study'})\n\n"
            f"design: {json.dumps(design)}\n\ncommand: `{command}`\n\n"
            f"code version: started from `{start['code_version']}` at {start['started_utc']}{dirty}; this "
            f"invocation `{version}`; the run's manifest: commit {str(run_code.get('commit'))[:12]}, dirty "
            f"{run_code.get('dirty')}\n\nwall time of this invocation: {minutes:.1f} min (a resumed run counts only "
            f"its own part); machine: {cpu_study.machine_text()}")
    if pieces:
        text += ("\n\nrun seed by seed, one piece per seed (bench/study_state.py), combined here without training or "
                 "predicting:\n\n| seed | code | started (UTC) | wall time of its last invocation | machine |\n"
                 "|---|---|---|---|---|\n" + "\n".join(
                     f"| {p['seed']} | `{p['code_version']}` | {p['started_utc']} | {p['minutes']:.1f} min | "
                     f"{p['machine']} |" for p in sorted(pieces, key=lambda p: p["seed"])))
    return text


def piece_states(state: Path, design: dict) -> list[Path]:
    """Every design seed's exported piece under ``state`` (``seed_<S>``).

    Raises:
      SystemExit: a seed without a piece.
    """
    missing = [s for s in design["seeds"] if not (state / f"seed_{s}").is_dir()]
    if missing:
        raise SystemExit(f"va_study: {state} has no piece of seed(s) {missing}; run them with --seed first")
    return [state / f"seed_{s}" for s in design["seeds"]]


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version (lower-case names) but the installers (pip, setuptools,
    wheel: ``make venv`` upgrades pip): what a piece trained with. Pieces run on fresh machines whose ``make venv``
    takes the newest release in each range, so they are compared in full."""
    from importlib import metadata

    return dict(sorted((d.metadata["Name"].lower(), d.version) for d in metadata.distributions()
                       if d.metadata["Name"] and d.metadata["Name"].lower() not in ("pip", "setuptools", "wheel")))


def check_piece_records(pieces: list[dict], design: dict, out: Path) -> None:
    """Pieces of one study: this design, one code version (this checkout's), this study folder, and the packages
    installed here.

    Raises:
      SystemExit: they are not.
    """
    norm = json.loads(json.dumps(design))
    version, packages = code_describe(), installed_packages()
    for p in pieces:
        what = (("design", p["design"] != norm), ("code version", p["code_version"] != version),
                ("study folder (the units' markers name its paths)", p["out"] != str(out)))
        for name, differs in what:
            if differs:
                raise SystemExit(f"va_study: seed {p['seed']}'s piece has another {name} than this invocation")
        if diff := sorted(k for k in set(packages) | set(p["packages"]) if packages.get(k) != p["packages"].get(k)):
            k = diff[0]
            raise SystemExit(f"va_study: seed {p['seed']}'s piece ran with other packages ({len(diff)}, e.g. {k} "
                             f"{p['packages'].get(k)} there, {packages.get(k)} here): install the study's lock file "
                             "(studies/va_study/README.md)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="study folder (resumed if it holds an unfinished study)")
    p.add_argument("--tiny", action="store_true", help="the same recipe with 6 + 4 cases, 2 seeds, 2 iterations")
    p.add_argument("--seed", type=int, help="run one seed's piece only (trained, predicted, evaluated; nothing "
                   "compared or printed); with --state, export it to STATE/seed_<S>")
    p.add_argument("--state", type=Path, help="folder of exported pieces: with --seed, where the piece goes; "
                   "without, restore every seed's piece into --out and combine them (nothing trained)")
    p.add_argument("--allow-dirty", action="store_true", help="start a study from a checkout with uncommitted "
                   "changes (recorded)")
    p.add_argument("--workers", type=int, default=1, help="evaluation workers (no effect on the numbers)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    design = TINY if args.tiny else DESIGN
    out = args.out.resolve()
    command = shlex.join(["bench/va_study.py"] + list(sys.argv[1:] if argv is None else argv))
    start = time.time()
    import study_state
    from vadice.io import write_text

    if args.seed is not None:
        if args.seed not in design["seeds"]:
            raise SystemExit(f"va_study: seed {args.seed} is not one of the design's {list(design['seeds'])}")
        dest = None if args.state is None else args.state.resolve() / f"seed_{args.seed}"
        if dest is not None and dest.exists():
            raise SystemExit(f"va_study: {dest} exists: seed {args.seed}'s piece was exported already")
        record = check_start(out, design, args.tiny, args.allow_dirty, command)
        exp = run_piece(out, design, args.seed, progress=not args.quiet, workers=args.workers)
        minutes = (time.time() - start) / 60
        print(f"va_study: seed {args.seed}'s piece finished ({minutes:.1f} min of this invocation)")
        if dest is not None:
            piece = {"seed": args.seed, "design": json.loads(json.dumps(design)), "code_version": code_describe(),
                     "out": str(out), "started_utc": record["started_utc"], "command": command,
                     "minutes": round(minutes, 1), "machine": cpu_study.machine_text(),
                     "plans_sha256": exp.plan.plans_sha256, "packages": installed_packages()}
            print(f"va_study: exported to {study_state.export_state(out, dest, piece)}")
        return 0
    pieces = []
    if args.state is not None:
        pieces = study_state.restore_state(piece_states(args.state.resolve(), design), out)
        check_piece_records(pieces, design, out)
    record = check_start(out, design, args.tiny, args.allow_dirty, command)
    exp, result = run(out, design, progress=not args.quiet, workers=args.workers, pieces=pieces)
    pngs = figures(exp, design, out, result)
    minutes = (time.time() - start) / 60
    text = (header(design, args.tiny, command, record, exp, minutes, pieces) + "\n\n" + markdown(exp, design, result)
            + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs)
            + "\n\nReport of the test set (raw arms): run/report_test.html\n")
    write_text(out / "study.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
