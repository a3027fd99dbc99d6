"""`vadice nnunet-path`, `vadice plan`, `vadice train`: thin wrappers over vadice.nnunet.plan and .train.

nnU-Net and torch are imported only when a command runs, so `vadice --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from vadice import registry
from vadice.cli.options import ExamplesFormatter
from vadice.nnunet import trainer_dir

log = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _fold(text: str) -> int | str:
    try:
        folds = registry.parse_folds(text, "fold")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(folds) != 1:
        raise argparse.ArgumentTypeError(f"one fold at a time, got {text!r}")
    return folds[0]


def _presets_help() -> str:
    return "; ".join(f"{p.name}: {p.description}" for p in registry.PRESETS.values())


def _add_roots(p: argparse.ArgumentParser, which: tuple[str, ...]) -> None:
    for name in which:
        var = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}[name]
        p.add_argument(f"--{name}", metavar="DIR", help=f"nnU-Net {name} root (default: ${var})")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "nnunet-path", help="print the directory to put in nnUNet_extTrainer",
        description="Print the directory holding vadice's nnU-Net trainers. Put it in nnUNet_extTrainer so that "
                    "plain nnUNetv2_train / nnUNetv2_predict find nnUNetTrainerVADual, "
                    "nnUNetTrainerVASelectiveLN, nnUNetTrainerVA and nnUNetTrainerBudget.",
        epilog="examples:\n"
               "  vadice nnunet-path\n"
               "  eval \"$(vadice nnunet-path --export)\"   # then plain nnUNetv2_train finds the trainers",
        formatter_class=ExamplesFormatter)
    p.add_argument("--export", action="store_true",
                   help="print a shell line: export nnUNet_extTrainer=DIR (keeps an existing value)")
    p.set_defaults(func=cmd_nnunet_path)

    p = subparsers.add_parser(
        "plan", help="nnU-Net planning and preprocessing, plus lesion preprocessing",
        description="Fingerprint (with nnU-Net's dataset integrity check), plan and preprocess an nnU-Net raw "
                    "dataset for 3d_fullres, then label lesions for the volume-aware trainers. Rerunning skips "
                    "finished steps. DATASET is an id (101), a name (Dataset101_HNTS) or the raw dataset folder.",
        epilog="examples:\n"
               "  vadice plan 501 --preset cpu-small          # CPU: the small network\n"
               "  vadice plan 101                             # GPU: nnU-Net ResEnc M (the default preset)\n"
               "  vadice plan $nnUNet_raw/Dataset101_HNTSMRGTask1 --num-processes 8",
        formatter_class=ExamplesFormatter)
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--preset", choices=tuple(registry.PRESETS), default="resenc-m",
                   help=f"default resenc-m. {_presets_help()}")
    p.add_argument("--num-processes", type=_positive_int, default=2, metavar="N",
                   help="worker processes (default 2)")
    p.add_argument("--no-verify", action="store_true", help="skip nnU-Net's dataset integrity check")
    _add_roots(p, ("raw", "preprocessed"))
    p.set_defaults(func=cmd_plan)

    p = subparsers.add_parser(
        "train", help="train one set-up and fold through nnU-Net",
        description="Train through nnU-Net's nnUNetv2_train entry point: the baseline with nnU-Net's own "
                    "nnUNetTrainer (nnUNetTrainerBudget when a budget or seed is given), dual / selective-ln with "
                    "vadice's volume-aware trainers. Prints the equivalent plain nnUNetv2_train command. A finished "
                    "fold is not retrained. After the last epoch nnU-Net predicts the fold's validation cases "
                    "(the final validation: minutes on a CPU); each case is announced.",
        epilog="examples:\n"
               "  vadice train 101 --loss dual --fold 0                       # GPU, nnU-Net's full schedule\n"
               "  vadice train 501 --loss dual --fold 0 --preset cpu-small --device cpu --iterations 20 \\\n"
               "      --no-val-mirroring --threads 1                          # a CPU smoke run\n"
               "  vadice train 501 --loss dual --fold 0 --preset cpu-small --device cpu --iterations 90 \\\n"
               "      --warm-start demo                                       # from the shipped demo baseline\n"
               "  vadice train 101 --loss baseline --fold 3 --resume          # continue an interrupted run",
        formatter_class=ExamplesFormatter)
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--loss", choices=tuple(registry.SETUPS), required=True,
                   help="the set-up (docs/losses.md); dual-fp at its weight 1 stopped predicting in the CPU "
                        "loss bench (docs/evidence.md, section 3)")
    p.add_argument("--fold", type=_fold, required=True,
                   help="a fold of the dataset's split (0-4 with nnU-Net's default 5-fold split, or the folds of "
                        "splits_final.json) or 'all'")
    p.add_argument("--preset", choices=tuple(registry.PRESETS), default="resenc-m",
                   help="which `vadice plan` plans to train: resenc-m (the default) or cpu-small")
    p.add_argument("--device", choices=registry.DEVICES, default="cuda", help="default cuda")
    p.add_argument("--iterations", type=_positive_int, metavar="N",
                   help="total training iterations (split evenly over --epochs, default 1 epoch)")
    p.add_argument("--epochs", type=_positive_int, metavar="E", help="epochs (nnU-Net default 1000)")
    p.add_argument("--no-val-mirroring", action="store_true",
                   help="final validation without test-time mirroring (up to 8x faster; for short budgets)")
    p.add_argument("--val-iterations", type=_positive_int, metavar="N",
                   help="validation iterations per epoch (nnU-Net default 50)")
    p.add_argument("--seed", type=_non_negative_int, metavar="S", help="seed Python/NumPy/torch")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (nnU-Net --c)")
    p.add_argument("--num-gpus", type=_positive_int, default=1, metavar="G",
                   help="nnU-Net multi-GPU (DDP) training on G GPUs (-num_gpus)")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="torch CPU threads for training (default: nnU-Net's, one per core; use 1 on a busy machine)")
    p.add_argument("--warm-start", metavar="CHECKPOINT",
                   help="start from this nnU-Net checkpoint's network weights, segmentation heads included, with "
                        "a fresh optimiser and schedule; 'demo': the demo's common baseline shipped with vadice "
                        "(cpu-small plans of the demo cohort)")
    p.add_argument("--log", metavar="FILE", help="training log (default <fold folder>/vadice_train.log)")
    _add_roots(p, ("raw", "preprocessed", "results"))
    p.set_defaults(func=cmd_train)


def cmd_nnunet_path(args) -> int:
    path = str(trainer_dir())
    if args.export:
        # `eval "$(vadice nnunet-path --export)"` must keep other trainer directories already set
        print(f'export nnUNet_extTrainer={shlex.quote(path)}"${{nnUNet_extTrainer:+:$nnUNet_extTrainer}}"')
    else:
        print(path)
    return 0


def cmd_plan(args) -> int:
    from vadice.nnunet.plan import plan

    result = plan(args.dataset, preset=args.preset, num_processes=args.num_processes,
                         verify=not args.no_verify, progress=not args.quiet, raw=args.raw,
                         preprocessed=args.preprocessed)
    done = ", ".join(result.steps_run) if result.steps_run else "nothing to do (all steps up to date)"
    print(f"{result.dataset_name}: plans {result.plans_identifier} ({args.preset}) in {result.preprocessed_folder}")
    print(f"  ran: {done}; nnU-Net output: {result.log_file}")
    return 0


def cmd_train(args) -> int:
    from vadice.nnunet.paths import NNUNetError
    from vadice.nnunet.train import train

    try:
        result = train(
            args.dataset, loss=args.loss, fold=args.fold, preset=args.preset, device=args.device,
            iterations=args.iterations, epochs=args.epochs, val_iterations=args.val_iterations, seed=args.seed,
            val_mirroring=not args.no_val_mirroring,
            resume=args.resume, num_gpus=args.num_gpus, results_dir=args.results, log_file=args.log,
            progress=not args.quiet, echo=args.verbose, raw=args.raw, preprocessed=args.preprocessed,
            threads=args.threads, warm_start=args.warm_start)
    except NNUNetError as exc:
        print(f"vadice train: error: {exc}", file=sys.stderr)
        return 1
    print("equivalent plain nnU-Net command:")
    print(f"  {result.command}")
    if result.skipped:
        print(f"already trained, nothing done: {result.fold_dir}")
    else:
        print(f"trained in {result.seconds:.0f} s: {result.checkpoint}")
    print(f"log: {result.log_file}")
    return 0
