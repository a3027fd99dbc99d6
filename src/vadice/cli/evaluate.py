"""``vadice evaluate`` and ``vadice compare``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import math
import sys

from vadice.cli.options import ExamplesFormatter


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="metrics of a prediction folder against a truth folder",
        description="DSC, DSCagg, surface Dice, MSD, HD95 and lesion-wise detection per case and label. "
                    "Files are matched by case name (<case>.nii.gz). Writes cases.csv, lesions.csv and "
                    "summary.json into OUT_DIR atomically (an earlier evaluation folder there is replaced).",
        epilog="examples:\n"
               "  vadice evaluate --gt labelsTs --pred seg --out eval_dual --tolerance 1,2 --workers 2\n"
               "  vadice evaluate --gt labelsTs --pred seg --out eval_dual --strict-geometry --match iou:0.5",
        formatter_class=ExamplesFormatter,
    )
    p.add_argument("--gt", required=True, metavar="GT_DIR", help="folder of truth label maps")
    p.add_argument("--pred", required=True, metavar="PRED_DIR", help="folder of predicted label maps")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("--labels", default="GTVp=1,GTVn=2", metavar="NAME=V,...", help="default: %(default)s")
    p.add_argument("--tolerance", action="append", metavar="MM",
                   help="surface-Dice tolerance in mm; repeat or comma-separate for several; the first is the "
                        "headline 'sds' (default 2)")
    p.add_argument("--connectivity", type=int, default=26, choices=(6, 18, 26), help="lesion connectivity")
    p.add_argument("--match", default="overlap", metavar="RULE",
                   help="lesion match rule: overlap (default) or iou:T, e.g. iou:0.5")
    p.add_argument("--hd", default="directed", choices=("directed", "pooled"),
                   help="HD95 definition (default directed: max of the two directed 95th percentiles)")
    p.add_argument("--empty-penalty", type=float, default=None, metavar="MM",
                   help="MSD/HD95 value when exactly one side is empty, included in means and counted as "
                        "penalised (default: NaN, excluded and counted as excluded)")
    p.add_argument("--size-bins", default="0.5,1,5,10", metavar="ML,...",
                   help="inner edges of the lesion size bins in ml (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="parallel processes (default 1)")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate missing predictions as empty masks (listed in summary.json)")
    p.add_argument("--strict-geometry", action="store_true",
                   help="refuse a prediction whose grid differs from the truth's in size, origin or direction "
                        "(default: resample it onto the truth grid by nearest neighbour, with a warning)")
    p.set_defaults(func=run_evaluate)

    c = subparsers.add_parser(
        "compare",
        help="paired comparison of evaluation folders",
        description="Compare 'vadice evaluate' folders of the same cases against the first: per-case "
                    "values and differences on the cases defined in every run (undefined counts shown), "
                    "Wilcoxon signed-rank with Holm correction, bootstrap CIs (patients, then seeds: jointly "
                    "when seed k of every run shares a warm start, per run otherwise) for every difference, and "
                    "the verdict 'consistent' only when the CI excludes 0 and the seeds agree in sign.",
        epilog="example:\n"
               "  vadice compare eval_baseline eval_dual eval_sln --names baseline,dual,selective-ln --out cmp\n"
               "  vadice compare ev/baseline/seed_0,ev/baseline/seed_1 ev/dual/seed_0,ev/dual/seed_1 --paired "
               "--out cmp",
        formatter_class=ExamplesFormatter,
    )
    c.add_argument("runs", nargs="+", metavar="RUN",
                   help="evaluation folders; the first is the reference. A run of several training seeds: its "
                        "seed folders joined by commas, in seed order (seed k of every run is paired with seed k "
                        "of the first)")
    c.add_argument("--names", default=None, help="comma-separated run names (default: folder names)")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder")
    c.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    c.add_argument("--zero-method", default="wilcox", choices=("wilcox", "pratt", "zsplit"),
                   help="Wilcoxon treatment of zero differences (default %(default)s)")
    pairing = c.add_mutually_exclusive_group()
    pairing.add_argument("--paired", dest="paired", action="store_const", const=True, default=None,
                         help="seed k of every run is the twin of seed k of the first (one warm start): resample "
                              "seeds jointly and count a seed with Δ = 0 neither way (default: paired when the "
                              "runs' 'vadice experiment' units record one warm start per seed)")
    pairing.add_argument("--unpaired", dest="paired", action="store_const", const=False,
                         help="each seed a training of its own: resample seeds per run, a Δ of 0 counts against")
    c.set_defaults(func=run_compare)


def _usage(msg: str):
    from vadice.cli import UsageError

    return UsageError(msg)


def parse_labels(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise _usage(f"--labels: expected NAME=VALUE[,NAME=VALUE...], got {text!r}")
        if name.strip() in out:
            raise _usage(f"--labels: duplicate name {name.strip()!r}")
        out[name.strip()] = int(value)
    return out


def parse_floats(values, option: str) -> list[float]:
    out = []
    for item in values:
        for part in str(item).split(","):
            try:
                v = float(part)
            except ValueError:
                raise _usage(f"{option}: not a number: {part!r}") from None
            if not math.isfinite(v) or v < 0:
                raise _usage(f"{option}: must be a finite number >= 0, got {part!r}")
            out.append(v)
    return out


def _fmt(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def run_evaluate(args: argparse.Namespace) -> int:
    from vadice.metrics.evaluate import evaluate_folders

    labels = parse_labels(args.labels)
    tolerances = parse_floats(args.tolerance or ["2"], "--tolerance")
    bins = parse_floats([args.size_bins], "--size-bins")
    if args.workers < 1:
        raise _usage("--workers must be >= 1")
    try:
        from vadice.metrics.evaluate import check_labels, check_tolerances
        from vadice.metrics.lesionwise import check_bins, parse_match

        check_labels(labels)
        check_tolerances(tolerances)
        parse_match(args.match)
        check_bins(bins)
    except ValueError as exc:
        raise _usage(str(exc)) from None
    summary = evaluate_folders(
        args.gt, args.pred, args.out, labels=labels, tolerances=tolerances, connectivity=args.connectivity,
        match=args.match, hd_mode=args.hd, workers=args.workers, allow_missing=args.allow_missing,
        progress=not getattr(args, "quiet", False), size_bins_ml=bins, empty_distance_penalty=args.empty_penalty,
        strict_geometry=args.strict_geometry,
    )
    resampled = summary["resampled_predictions"]
    if resampled:
        shown = ", ".join(resampled[:5]) + (" …" if len(resampled) > 5 else "")
        print(f"vadice evaluate: warning: {len(resampled)} prediction(s) on another grid than the truth (size, "
              f"origin or direction) were resampled onto it: {shown}; --strict-geometry refuses them",
              file=sys.stderr)
    tol = f"{tolerances[0]:g}"
    print(f"{summary['n_cases']} cases -> {args.out}   DSCagg mean {_fmt(summary['dscagg_mean'])}"
          + (f"   resampled predictions: {len(resampled)}" if resampled else ""))
    print(f"{'label':<8} {'DSCagg':>7} {'DSC':>6} {'SDS' + tol:>7} {'MSD':>6} {'HD95md':>6} {'sens':>5} "
          f"{'prec':>5}  HD95/MSD undefined, left out of means")
    for name, s in summary["labels"].items():
        ex = s["excluded"]
        pen = s.get("penalised") or {}
        undefined = (f"both empty {ex['both_empty']}, truth empty {ex['gt_empty_only']}, "
                     f"prediction empty {ex['pred_empty_only']}")
        if any(pen.values()):
            undefined += (f"; penalised and included: truth empty {pen['gt_empty_only']}, "
                          f"prediction empty {pen['pred_empty_only']}")
        print(f"{name:<8} {_fmt(s['dscagg']):>7} {_fmt(s['dsc_mean']):>6} {_fmt(s['sds_mean']):>7} "
              f"{_fmt(s['msd_mean'], 2):>6} {_fmt(s['hd95_median'], 2):>6} {_fmt(s['lesion_sensitivity'], 2):>5} "
              f"{_fmt(s['lesion_precision'], 2):>5}  {undefined}")
    if summary["missing_predictions"]:
        print(f"missing predictions counted as empty: {len(summary['missing_predictions'])}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from vadice.experiment import evaluation_warm_start
    from vadice.metrics.compare import seed_pairing
    from vadice.report.comparison import compare_folders, headline_rows

    if len(args.runs) < 2:
        raise _usage("compare needs at least two evaluation folders")
    groups = [[part for part in run.split(",") if part] for run in args.runs]
    if any(not g for g in groups):
        raise _usage(f"empty run in {args.runs!r}")
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None and (len(names) != len(args.runs) or len(set(names)) != len(names) or not all(names)):
        raise _usage(f"--names: need {len(args.runs)} unique names, got {args.names!r}")
    if args.n_boot < 1:
        raise _usage("--n-boot must be >= 1")
    try:
        seed_pairing([len(g) for g in groups], paired=args.paired)
    except ValueError as exc:
        raise _usage(f"--paired: {exc}") from None
    warm = None if args.paired is not None else [[evaluation_warm_start(f) for f in g] for g in groups]
    result = compare_folders(groups, names=names, out_dir=args.out, n_boot=args.n_boot, seed=args.seed,
                             zero_method=args.zero_method, paired=args.paired, warm_starts=warm)
    base = result["runs"][0]
    print(f"{result['n_cases']} cases, reference {base} -> {args.out}")
    for w in result["warnings"]:
        print(f"warning: {w}")
    pairing = result["settings"]["seed_pairing"]
    print(f"{pairing['reason']}; consistent = CI excludes 0 and "
          + ("no seed's Δ has the other sign, more than half the pooled sign" if pairing["paired"]
             else "every seed's Δ has the pooled sign") + " (comparison.md gives the rule)")
    for r in headline_rows(result):
        parts = [f"{n}: Δ {_fmt(r['diff'][n])} [{_fmt(r['ci_low'][n])}, {_fmt(r['ci_high'][n])}] {r['verdict'][n]}"
                 for n in result["runs"][1:]]
        print(f"{r['label']:<6} {r['metric']:<28} {base} {_fmt(r['values'][base])}  " + "  ".join(parts))
    return 0
