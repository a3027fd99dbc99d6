"""``vadice froc`` and ``vadice froc-compare``: argument parsing and printing only (docs/froc.md)."""

from __future__ import annotations

import argparse
import csv

from vadice.cli.options import ExamplesFormatter


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "froc",
        help="lesion-level FROC curves and CPM from probability maps",
        description="Operating points: for every threshold t of a grid, the components of p >= t of a label's "
                    "probability map are matched to the truth lesions by vadice evaluate's rule; writes froc.csv "
                    "(sensitivity overall and per size bin, false-positive components per patient, precision, "
                    "per label and threshold) and summary.json (CPM: mean sensitivity at 1/8 ... 8 FP per "
                    "patient, and the sensitivity at --fp-rate) into OUT_DIR at once. Probabilities are "
                    "<case>.npz files (key 'probabilities', C x Z x Y x X on the truth's grid) as "
                    "nnUNetv2_predict --save_probabilities writes them; truth is <case>.nii.gz.",
        epilog="examples:\n"
               "  vadice froc --gt labelsTs --prob probs --label 2 --out froc_dual\n"
               "  vadice froc --gt labelsTs --prob probs --label 1 --label 2 --out froc_dual --fp-rate 0.5 "
               "--match iou:0.1 --patients patients.csv",
        formatter_class=ExamplesFormatter,
    )
    p.add_argument("--gt", required=True, metavar="GT_DIR", help="folder of truth label maps <case>.nii.gz")
    p.add_argument("--prob", required=True, metavar="PROB_DIR", help="folder of <case>.npz probability files")
    p.add_argument("--label", required=True, type=int, action="append", metavar="N",
                   help="label value to evaluate (its channel in the .npz); repeat for several")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--thresholds", default=None, metavar="T,...",
                   help="increasing probability thresholds in (0, 1] (default 0.05,0.10,...,0.95)")
    p.add_argument("--fp-rate", type=float, default=1.0, metavar="R",
                   help="FP per patient at which to report the sensitivity (default %(default)s)")
    p.add_argument("--match", default="overlap", metavar="RULE",
                   help="lesion match rule: overlap (default) or iou:T, as vadice evaluate")
    p.add_argument("--connectivity", type=int, default=26, choices=(6, 18, 26), help="lesion connectivity")
    p.add_argument("--size-bins", default="0.5,1,5,10", metavar="ML,...",
                   help="inner edges of the lesion size bins in ml (default %(default)s)")
    p.add_argument("--patients", default=None, metavar="CSV",
                   help="CSV with columns case,patient when a patient has several cases (e.g. pre-RT and "
                        "mid-RT); FP are divided by patients (default: each case is a patient)")
    p.set_defaults(func=run_froc)

    c = subparsers.add_parser(
        "froc-compare",
        help="compare set-ups' FROC curves, CPM and matched operating points",
        description="Compare 'vadice froc' folders (their counts.npz) of the same patients against the first "
                    "run: per-seed and pooled FROC curves with a bootstrap band, CPM, ΔCPM with a two-level CI "
                    "(patients, then seeds: jointly with --paired) and the seeds' verdict, and each set-up read at "
                    "the reference's operating point (threshold 0.5 by default) and vice versa; for all lesions "
                    "and those in --size-bin. Writes froc_comparison.json and .md into OUT_DIR at once.",
        epilog="example:\n"
               "  vadice froc-compare froc/baseline/seed_0,froc/baseline/seed_1 froc/dual/seed_0,froc/dual/seed_1 "
               "--names baseline,dual --label GTVn --paired --out froc_cmp",
        formatter_class=ExamplesFormatter,
    )
    c.add_argument("runs", nargs="+", metavar="RUN",
                   help="'vadice froc' folders; the first is the reference. A run of several training seeds: its "
                        "seed folders joined by commas, in seed order (as vadice compare)")
    c.add_argument("--names", default=None, help="comma-separated run names (default: folder names)")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder")
    c.add_argument("--label", default="GTVn", metavar="NAME",
                   help="label name as vadice froc wrote it (default %(default)s)")
    c.add_argument("--size-bin", default="<1 ml", metavar="RANGE",
                   help="a second view on the truth lesions in this range: '<X ml', 'A-B ml' or '>=X ml' on the "
                        "size-bin edges (default '%(default)s'); 'none' for no second view")
    c.add_argument("--threshold", type=float, default=0.5, metavar="T",
                   help="each set-up's own operating point, a threshold of the grid (default %(default)s)")
    c.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    pairing = c.add_mutually_exclusive_group()
    pairing.add_argument("--paired", dest="paired", action="store_const", const=True, default=None,
                         help="seed k of every run is the twin of seed k of the first (one warm start): resample "
                              "seeds jointly and count a seed with Δ = 0 neither way")
    pairing.add_argument("--unpaired", dest="paired", action="store_const", const=False,
                         help="each seed a training of its own (the default: vadice froc records no warm start)")
    c.set_defaults(func=run_froc_compare)


def _floats(text: str, option: str) -> list[float]:
    from vadice.cli import UsageError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def read_patients(path: str) -> dict[str, str]:
    """``{case: patient}`` from a CSV with columns ``case`` and ``patient``.

    Raises:
      InputError: unreadable file, missing columns, a case listed twice.
    """
    from vadice.io import InputError

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"unreadable CSV ({exc.__class__.__name__})") from None
    if not rows or not {"case", "patient"} <= set(rows[0]):
        raise InputError(path, "expected a header with columns case,patient and at least one row")
    out = {}
    for row in rows:
        case = (row["case"] or "").strip()
        if case in out:
            raise InputError(path, f"case {case!r} listed twice")
        out[case] = (row["patient"] or "").strip()
    return out


def run_froc(args: argparse.Namespace) -> int:
    from vadice.cli import UsageError
    from vadice.metrics.froc import DEFAULT_THRESHOLDS, check_rates, check_thresholds
    from vadice.metrics.froc_io import froc_folders
    from vadice.metrics.lesionwise import check_bins, parse_match
    from vadice.registry import LABELS

    thresholds = DEFAULT_THRESHOLDS if args.thresholds is None else _floats(args.thresholds, "--thresholds")
    bins = _floats(args.size_bins, "--size-bins")
    if len(set(args.label)) != len(args.label) or min(args.label) < 1:
        raise UsageError(f"--label: values must be distinct and >= 1, got {args.label}")
    try:
        check_thresholds(thresholds)
        check_rates([args.fp_rate])
        check_bins(bins)
        parse_match(args.match)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    names = {v: k for k, v in LABELS.items()}
    labels = {names.get(v, f"label{v}"): v for v in args.label}
    patient_of = read_patients(args.patients) if args.patients else None
    summary = froc_folders(args.gt, args.prob, args.out, labels, thresholds=thresholds, fp_rate=args.fp_rate,
                           match=args.match, connectivity=args.connectivity, bins_ml=bins, patient_of=patient_of,
                           progress=not args.quiet)
    print(f"{summary['n_cases']} cases, {summary['n_patients']} patients -> {args.out}")
    for name, s in summary["labels"].items():
        cpm = "-" if s["cpm"] is None else f"{s['cpm']:.3f}"
        sens = "-" if s["sensitivity_at_fp_rate"] is None else f"{s['sensitivity_at_fp_rate']:.3f}"
        print(f"{name:<8} lesions {s['n_gt']:>4}   CPM {cpm}   sensitivity at {args.fp_rate:g} FP/patient {sens}")
    return 0


def run_froc_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vadice.cli import UsageError
    from vadice.metrics.compare import seed_pairing
    from vadice.metrics.froc_compare import compare_froc
    from vadice.report.comparison import write_froc_comparison

    groups = [[part for part in run.split(",") if part] for run in args.runs]
    if len(groups) < 2 or any(not g for g in groups):
        raise UsageError(f"froc-compare needs at least two non-empty runs, got {args.runs!r}")
    names = [n.strip() for n in args.names.split(",")] if args.names else [Path(g[0]).name for g in groups]
    if len(names) != len(groups) or len(set(names)) != len(names) or not all(names):
        raise UsageError(f"--names: need {len(groups)} unique names, got {args.names or ', '.join(names)!r}"
                         + ("" if args.names else " (the folder names; give --names)"))
    if args.n_boot < 1:
        raise UsageError("--n-boot must be >= 1")
    try:
        paired, reason = seed_pairing([len(g) for g in groups], paired=args.paired)
        result = compare_froc(dict(zip(names, groups)), names[0], args.label, paired=paired,
                              size_bin=None if args.size_bin.lower() == "none" else args.size_bin,
                              n_boot=args.n_boot, seed=args.seed, operating_threshold=args.threshold)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    write_froc_comparison(result, args.out)
    print(f"{result['n_patients']} patients, {args.label}, reference {names[0]} -> {args.out}")
    print(f"{reason}; consistent = CI excludes 0 and the seeds agree (froc_comparison.md gives the rule)")
    for view, blocks in result["views"].items():
        for name, b in blocks.items():
            d = b["delta_cpm"]
            delta = "" if d is None else (f"  ΔCPM {d['diff']:.3f} [{d['low']:.3f}, {d['high']:.3f}] {d['verdict']}"
                                          if d["diff"] is not None and d["diff"] == d["diff"] else "  ΔCPM -")
            cpm = b["pooled"]["cpm"]
            print(f"{view:<8} {name:<16} CPM {'-' if cpm != cpm else f'{cpm:.3f}'}{delta}")
    return 0
