"""``vadice postprocess fit`` and ``vadice postprocess apply``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import math

from vadice import registry
from vadice.cli.options import ExamplesFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "postprocess",
        help="fit / apply per-label minimum component volumes (fewer false-positive lesions)",
        description="Post-processing that removes predicted components smaller than a per-label minimum "
                    "volume, fitted on cross-validation predictions (docs/postprocessing.md).",
        epilog="examples:\n"
               "  vadice postprocess fit runs/task1 --setup dual --seed 0 --out pp_dual.json\n"
               "  vadice postprocess apply pp_dual.json -i seg/ -o seg_pp/",
        formatter_class=ExamplesFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    f = actions.add_parser(
        "fit",
        help="choose the minimum volumes on a model's fold validation predictions",
        description="For each label, choose the minimum component volume (mm³) from a fixed candidate grid "
                    "that maximises the objective (default: lesion F1, pooled over cases; ties -> the smaller "
                    "volume), scored with vadice evaluate's own lesion matching. With several folds, each "
                    "fold's volumes are also fitted on the other folds only and scored on that fold "
                    "(cross-validation, recorded in the file and printed); the file itself is fitted on all "
                    "folds and lists every case it saw: `vadice predict --postprocessing` refuses those.",
        epilog="examples:\n"
               "  vadice postprocess fit MODEL_DIR --out pp.json   # MODEL_DIR: Trainer__Plans__3d_fullres\n"
               "  vadice postprocess fit runs/task1 --setup dual --seed 0 --out pp_dual.json\n"
               "  vadice postprocess fit train_preds/ --gt labelsTr/ --out pp.json   # one group, no CV",
        formatter_class=ExamplesFormatter,
    )
    f.add_argument("source", metavar="RUN_OR_MODEL_DIR",
                   help="an nnU-Net model folder (fold_<k>/validation/), an experiment run folder with --setup, "
                        "or a folder of <case>.nii.gz predictions")
    f.add_argument("--out", required=True, metavar="PP_JSON", help="post-processing file to write")
    f.add_argument("--gt", metavar="GT_DIR",
                   help="truth label maps (default: RUN/gt for a run folder; nnU-Net's gt_segmentations or "
                        "labelsTr of the model's dataset, from nnUNet_preprocessed / nnUNet_raw)")
    f.add_argument("--setup", choices=tuple(registry.SETUPS),
                   help="with an experiment run folder: which set-up's model")
    f.add_argument("--seed", type=int, default=0, help="with an experiment run folder: which seed (default 0)")
    f.add_argument("--objective", default="f1", metavar="OBJ",
                   help="f1 (default) or precision@sens-drop:D (best precision losing at most D sensitivity)")
    f.add_argument("--grid", default=None, metavar="MM3,...",
                   help="candidate minimum volumes in mm³ (default 0,10,20,50,100,200,500)")
    f.add_argument("--labels", default="GTVp=1,GTVn=2", metavar="NAME=V,...", help="default: %(default)s")
    f.add_argument("--connectivity", type=int, default=26, choices=(6, 18, 26),
                   help="component connectivity (default 26, as vadice evaluate)")
    f.add_argument("--match", default="overlap", metavar="RULE", help="lesion match rule: overlap or iou:T")
    f.add_argument("--cv-out", metavar="DIR",
                   help="also write every case's prediction post-processed with its fold's cross-validated "
                        "volumes into this new folder (for vadice evaluate / compare; needs two or more folds)")
    f.set_defaults(func=run_fit)

    a = actions.add_parser(
        "apply",
        help="apply a post-processing file to a folder of label maps",
        description="Remove small components from every <case>.nii.gz of IN_DIR with a fitted post-processing "
                    "file, into a new OUT_DIR (same headers). Cases the file was fitted on are refused.",
        epilog="example:\n  vadice postprocess apply pp.json -i seg/ -o seg_pp/",
        formatter_class=ExamplesFormatter,
    )
    a.add_argument("postprocessing", metavar="PP_JSON", help="file from `vadice postprocess fit`")
    a.add_argument("-i", "--input", required=True, metavar="IN_DIR", help="folder of label maps")
    a.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="new folder for the results")
    a.set_defaults(func=run_apply)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_fit(args) -> int:
    from pathlib import Path

    from vadice.cli import UsageError
    from vadice.cli.evaluate import parse_labels
    from vadice.io import InputError
    from vadice.postprocess.fit import (
        DEFAULT_GRID_MM3,
        check_grid,
        default_truth_dir,
        fit_postprocessing,
        parse_objective,
        validation_folds,
        write_cross_validated,
    )
    from vadice.models import resolve_model
    from vadice.postprocess import check_out_file, save_postprocessing

    try:
        parse_objective(args.objective)
    except ValueError as exc:
        raise UsageError(f"--objective: {exc}") from None
    try:
        grid = DEFAULT_GRID_MM3 if args.grid is None else check_grid([float(v) for v in args.grid.split(",")])
    except ValueError as exc:
        raise UsageError(f"--grid: {exc}") from None
    labels = parse_labels(args.labels)
    source = Path(args.source)
    is_run = (source / "manifest.json").is_file() and (source / "units").is_dir()
    model = resolve_model(source, args.setup, args.seed)
    gt = Path(args.gt) if args.gt else (source / "gt" if is_run and (source / "gt").is_dir()
                                        else default_truth_dir(model))
    if gt is None:
        raise InputError(source, "no truth labels found for these predictions: pass --gt LABELS_DIR")
    check_out_file(args.out)
    folds = validation_folds(model)
    if args.cv_out is not None:  # refused before the fit, not after minutes of it
        if len(folds) < 2:
            raise UsageError("--cv-out needs predictions of two or more folds (cross-validation)")
        if Path(args.cv_out).exists():
            raise InputError(args.cv_out, "exists; choose a new folder for the cross-validated predictions")
    provenance = {"model_dir": str(model.resolve()), "given": str(source)}
    if is_run:
        provenance.update(run_dir=str(source.resolve()), setup=args.setup, seed=args.seed)
    try:
        pp = fit_postprocessing(folds, gt, labels=labels, grid=grid, objective=args.objective,
                                connectivity=args.connectivity, match=args.match, source=provenance,
                                progress=not args.quiet)
    except InputError:
        raise
    except ValueError as exc:  # an option fit_postprocessing refused (labels, match rule)
        raise UsageError(str(exc)) from None
    if args.cv_out is not None:
        write_cross_validated(pp, folds, args.cv_out)
    try:
        save_postprocessing(pp, args.out)
    except BaseException:
        if args.cv_out is not None:  # no partial output: the folder without its file is no result
            import shutil

            shutil.rmtree(args.cv_out, ignore_errors=True)
        raise
    _print_fit(pp)
    print(f"wrote {args.out} (fitted on {len(pp.cases)} case(s) of {len(folds)} fold(s))")
    if args.cv_out is not None:
        print(f"wrote the cross-validated predictions to {args.cv_out}")
    return 0


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _print_fit(pp) -> None:
    cv = pp.details.get("cross_validation")
    for name, value in pp.labels.items():
        line = f"{name}: min volume {pp.min_volume_mm3[value]:g} mm³"
        if cv:
            b, a = cv["out_of_fold"][name]["before"], cv["out_of_fold"][name]["after"]
            per_fold = ", ".join(f"{f}: {d['min_volume_mm3'][name]:g}" for f, d in cv["folds"].items())
            line += (f"; cross-validated (per fold {per_fold}): sensitivity {_fmt(b['sensitivity'])} -> "
                     f"{_fmt(a['sensitivity'])}, precision {_fmt(b['precision'])} -> {_fmt(a['precision'])}, "
                     f"F1 {_fmt(b['f1'])} -> {_fmt(a['f1'])}")
        else:
            line += " (one group: no cross-validation)"
        print(line)


def run_apply(args) -> int:
    from vadice.postprocess import apply_to_folder, load_postprocessing

    pp = load_postprocessing(args.postprocessing)
    written = apply_to_folder(pp, args.input, args.output, args.postprocessing)
    print(f"wrote {len(written)} label map(s) to {args.output}")
    return 0
