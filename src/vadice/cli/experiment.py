"""``vadice experiment``, ``vadice report`` and ``vadice demo``."""

from __future__ import annotations

import argparse

from vadice import registry
from vadice.cli import UsageError
from vadice.io import InputError
from vadice.cli.options import ExamplesFormatter, add_device, parse_folds, parse_int_list

SLURM_HINT = ("cluster: run one unit per job with --unit SETUP:FOLD (see docs/experiment.md for a SLURM array "
              "script), then --collect once")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="train the three loss set-ups over folds and seeds, evaluate and compare them",
        description="For each set-up (baseline, dual, selective-ln), fold and seed: train through nnU-Net "
        "(resuming finished or interrupted parts), keep the fold's out-of-fold predictions, then evaluate "
        "every set-up on the pooled predictions, compare them against the baseline (paired by case, seeds "
        "pooled, seed k of every set-up paired when they share a warm start; a difference is 'consistent' when "
        "its patient-and-seed bootstrap CI excludes 0 and the seeds agree in sign) and write report.html. A run "
        "keeps the code version it started on (see --allow-code-change).",
        epilog="examples:\n  vadice experiment 101 --out runs/task1 --folds 0,1,2,3,4 --seeds 0,1,2\n"
        "  vadice experiment 101 --out runs/task1 --unit dual:3      # one unit (e.g. a SLURM array task)\n"
        "  vadice experiment 101 --out runs/task1 --collect          # evaluate + compare + report\n"
        "  vadice experiment 101 --out runs/task1 --test-set test_cohort   # + a second cohort (vadice synth "
        "... --seed 7) that no training sees: report_test.html\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", metavar="DATASET", help="nnU-Net dataset id, name (Dataset101_X) or raw folder")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created; resumable)")
    p.add_argument("--folds", default="0,1,2,3,4",
                   help="comma-separated folds of the dataset's split (nnU-Net's default split: 0-4), "
                        "or 'all' (default 0,1,2,3,4)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    p.add_argument("--setups", default=",".join(registry.STUDY_SETUPS),
                   help="comma-separated set-ups, baseline first (default %(default)s); also: "
                        + ", ".join(s for s in registry.SETUPS if s not in registry.STUDY_SETUPS)
                        + " (docs/losses.md)")
    p.add_argument("--preset", choices=tuple(registry.PRESETS), default="resenc-m",
                   help="network plan: resenc-m, nnU-Net's ResEnc M (GPU; the default), or cpu-small, "
                        "a reduced network for CPU demos")
    add_device(p)
    p.add_argument("--iterations", type=int, help="training iterations per unit (default: nnU-Net's 1000x250)")
    p.add_argument("--epochs", type=int, help="epochs per unit (with --iterations: iterations spread over them)")
    p.add_argument("--val-iterations", type=int, help="validation iterations per epoch (default nnU-Net's 50)")
    p.add_argument("--no-val-mirroring", action="store_true",
                   help="out-of-fold predictions without test-time mirroring (faster; for short budgets)")
    p.add_argument("--warm-start-iterations", type=int, metavar="N",
                   help="a common warm start: per fold and seed, one baseline phase of N iterations that "
                        "every set-up then continues from for --iterations (default: each trains from scratch)")
    p.add_argument("--warm-start-epochs", type=int, metavar="E",
                   help="epochs of the warm-start phase (N spread over them; default 1)")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per unit (nnU-Net -num_gpus)")
    p.add_argument("--unit", action="append", metavar="SETUP:FOLD[:SEED]",
                   help="run only this unit (repeatable); no evaluation. " + SLURM_HINT)
    p.add_argument("--collect", action="store_true",
                   help="only evaluate, compare and report; fails listing the units still missing")
    p.add_argument("--tolerance", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)")
    p.add_argument("--workers", type=int, default=1, help="processes for the evaluation")
    p.add_argument("--pair-by", choices=("case", "case-seed"), default="case",
                   help="Wilcoxon pairing with several seeds: 'case' averages each case over seeds first "
                   "(patients are the independent units; default), 'case-seed' pairs (case, seed) units: "
                   "pseudo-replication, p too small, flagged in the outputs")
    p.add_argument("--allow-code-change", action="store_true",
                   help="continue a run that started on another code version (git commit or uncommitted "
                        "changes to tracked files); refused by default, since its units would differ in code, "
                        "and the report lists the versions the units ran on")
    p.add_argument("--test-set", metavar="DIR",
                   help="a second cohort in HNTS-MRG layout (e.g. vadice synth … --seed <other>) that no training "
                        "or fitting sees: converted into RUN_DIR/test_set, predicted by every set-up and seed "
                        "(the ensemble of its fold models) at collect time, evaluated and compared apart "
                        "(evaluation_test/, comparison_test/, report_test.html); part of the run's settings")
    p.add_argument("--on", choices=("oof", "test", "both"), default=None,
                   help="which predictions to evaluate, compare and report: the pooled out-of-fold ones, the "
                        "test set's, or both (default: both with --test-set, else oof)")
    p.add_argument("--no-probabilities", action="store_true",
                   help="keep no class probabilities (<case>.npz beside every prediction, nnU-Net's --npz for the "
                        "held-out ones) and compute no FROC; saves disk (docs/experiment.md: the cost)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.set_defaults(func=run_experiment)

    r = sub.add_parser("report", help="write the self-contained report.html of an experiment run folder",
                       description="Render RUN_DIR/report.html: settings, comparison table with CIs and "
                       "adjusted p-values, per-case plots, size-stratified sensitivity, training curves, "
                       "best and worst cases. Needs a collected run (vadice experiment … --collect).",
                       epilog="examples:\n"
                              "  vadice report runs/task1                    # writes runs/task1/report.html\n"
                              "  vadice report demo_out/run --out demo.html",
                       formatter_class=ExamplesFormatter)
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--out", metavar="HTML", help="output file (default RUN_DIR/report.html, report_test.html)")
    r.add_argument("--on", choices=("oof", "test"), default="oof",
                   help="the out-of-fold predictions (default) or the test set (--test-set)")
    r.set_defaults(func=run_report)

    d = sub.add_parser("demo", help="the whole pipeline on a small synthetic cohort, on the CPU (about 5 min on 2 cores)",
                       description="Synthetic cohort (30 cases, neck grid) -> Task 1 conversion -> cpu-small plan "
                       "-> baseline, dual and selective-ln each fine-tuned on fold 0 from one common baseline "
                       "checkpoint (shipped with vadice, with the command and log that made it) -> predictions "
                       "of the held-out cases -> evaluate -> compare -> report. Shows networks that segment and "
                       "the whole pipeline; one seed and a few held-out cases cannot show an effect of the loss.",
                       epilog="examples:\n"
                              "  vadice demo                                 # into ./demo_out\n"
                              "  vadice demo --out /tmp/demo --from-scratch  # train the common baseline too",
                       formatter_class=ExamplesFormatter)
    d.add_argument("--out", default="demo_out", metavar="DIR", help="demo folder (default ./demo_out)")
    d.add_argument("--cases", type=int, default=None, help="synthetic cases (default: the demo's own)")
    d.add_argument("--iterations", type=int, default=None, help="training iterations per set-up")
    d.add_argument("--seed", type=int, default=0,
                   help="cohort and training seed (the shipped checkpoint serves seed 0 and 30 cases; other "
                        "cohorts train their common baseline here)")
    d.add_argument("--from-scratch", action="store_true",
                   help="train the common baseline phase here (5000 iterations: about 35 min on 2 quiet cores) "
                        "instead of starting from the shipped checkpoint (vadice/demo_weights)")
    d.set_defaults(func=run_demo)


def _settings(args):
    from vadice.experiment import ExperimentSettings

    setups = tuple(s.strip() for s in args.setups.split(",") if s.strip())
    if args.iterations is not None and args.iterations < 1:
        raise UsageError("--iterations must be >= 1")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be >= 1")
    if args.val_iterations is not None and args.val_iterations < 1:
        raise UsageError("--val-iterations must be >= 1")
    for flag in ("warm_start_iterations", "warm_start_epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warm_start_epochs is not None and args.warm_start_iterations is None:
        raise UsageError("--warm-start-epochs needs --warm-start-iterations")
    return ExperimentSettings(
        dataset=str(args.dataset), preset=args.preset, folds=parse_folds(args.folds),
        seeds=parse_int_list(args.seeds, "--seeds"), setups=setups, device=args.device,
        iterations=args.iterations, epochs=args.epochs, val_iterations=args.val_iterations,
        val_mirroring=not args.no_val_mirroring, num_gpus=args.num_gpus,
        warm_start_iterations=args.warm_start_iterations, warm_start_epochs=args.warm_start_epochs,
        test_set=args.test_set, probabilities=not args.no_probabilities,
    )


def run_experiment(args) -> int:
    from vadice.experiment import Experiment, parse_unit

    if args.unit and args.collect:
        raise UsageError("--unit and --collect exclude each other")
    if args.on in ("test", "both") and args.test_set is None:
        raise UsageError(f"--on {args.on} needs --test-set DIR")
    settings = _settings(args)
    # every argument is checked before the run folder is touched: a refused start leaves nothing behind
    units = [u for text in args.unit for u in parse_unit(text, settings)] if args.unit else None
    exp = Experiment.open(args.out, settings, progress=not args.quiet, existing=args.collect,
                          allow_code_change=args.allow_code_change)
    if args.collect:
        missing = exp.missing()
        if missing:
            shown = " ".join(f"--unit {u.setup}:{u.fold}:{u.seed}" for u in missing)  # all: to resubmit
            raise InputError(exp.run_dir, f"{len(missing)} unit(s) not finished; run them first: {shown}")
    else:
        exp.run_units(units)
        if args.unit:
            print(f"unit(s) done: {', '.join(args.unit)}; when all are done: vadice experiment … --collect")
            return 0
    result = exp.collect(tolerances=(args.tolerance,), workers=args.workers, pair_by=args.pair_by, which=args.on)
    for which, one in result["sets"].items():
        print(f"## {one['label']}\n")
        print(one["comparison"]["markdown"])
    if not args.no_report:
        from vadice.experiment import build_report

        for which in result["sets"]:
            print(f"report: {build_report(exp.run_dir, which=which)}")
    return 0


def run_report(args) -> int:
    from pathlib import Path

    from vadice.experiment import build_report

    if not Path(args.run_dir).is_dir():
        raise InputError(args.run_dir, "folder does not exist")
    path = build_report(args.run_dir, out=args.out, which=args.on)
    print(f"report: {path}")
    return 0


def run_demo(args) -> int:
    from vadice.demo import run_demo as demo

    demo(args.out, cases=args.cases, iterations=args.iterations, seed=args.seed, progress=not args.quiet,
         from_scratch=args.from_scratch)
    return 0
