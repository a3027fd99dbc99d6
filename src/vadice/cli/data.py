"""``vadice synth``, ``vadice convert``, ``vadice stats``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from vadice.cli import UsageError
from vadice.data import dataset_stats, hntsmrg, synth

_RAW = argparse.RawDescriptionHelpFormatter


def _workers_default() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", formatter_class=_RAW,
        help="write a synthetic head-and-neck MR cohort in the HNTS-MRG 2024 layout",
        description=(
            "Write a synthetic cohort in the exact HNTS-MRG 2024 training layout:\n"
            "  OUT_DIR/<id>/preRT/<id>_preRT_T2.nii.gz, <id>_preRT_mask.nii.gz\n"
            "  OUT_DIR/<id>/midRT/<id>_midRT_T2.nii.gz, <id>_midRT_mask.nii.gz,\n"
            "                     <id>_preRT_T2_registered.nii.gz, <id>_preRT_mask_registered.nii.gz\n"
            "plus OUT_DIR/cohort.json, the ground-truth lesion table (case, timepoint, label,\n"
            "lesion id, voxels, volume in ml, centroid). Labels: 1 GTVp, 2 GTVn. Lesion volumes\n"
            "follow the published HNTS-MRG statistics (see docs/data.md). Same seed, same voxels.\n"
            "OUT_DIR/audit/<id>_preRT_structures.nii.gz maps every structure (lesions, normal nodes,\n"
            "glands, mucosa) by its id in cohort.json, where each is described (kind, level, side, size, cues).\n"
            "An interrupted run resumes when started again with the same arguments."),
        epilog=("examples:\n"
                "  vadice synth cohort --cases 6 --seed 0                # 6 small cases, a few seconds\n"
                "  vadice synth cohort_full --cases 20 --seed 1 --size full --workers 4\n"
                "  vadice synth cohort_c --cases 50 --seed 3 --size neck --profile clinical"),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="output folder (absent or empty)")
    p.add_argument("--cases", type=int, required=True, help="number of patients")
    p.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    p.add_argument("--size", choices=synth.SIZES, default="small",
                   help="small: grid <= 48x128x128 (z,y,x), coarser voxels, same volumes in ml (default); "
                        "neck: 160 mm crop around the neck at ~1.5x1.5x2 mm, the CPU demo's cohort; "
                        "full: realistic grids, e.g. 512x512x75 at 0.5x0.5x2 mm")
    p.add_argument("--profile", default="v1", metavar="{" + ",".join(synth.PROFILES) + "}",
                   help="v1: look-alike normal nodes with the metastatic nodes' signal, size and place (default; the "
                        "demo weights' cohort); clinical: nodes after the imaging criteria of nodal metastasis "
                        "(round, no fatty hilum, necrosis, ipsilateral levels II-III; docs/data.md)")
    p.add_argument("--workers", type=int, default=_workers_default(),
                   help="cases rendered in parallel (default: %(default)s)")
    p.set_defaults(func=_synth)

    p = subparsers.add_parser(
        "convert", formatter_class=_RAW,
        help="convert an HNTS-MRG 2024 training folder into an nnU-Net v2 raw dataset",
        description=(
            "Validate every case, then write <out>/Dataset<ID>_<NAME>/{imagesTr,labelsTr,dataset.json}.\n"
            "  task 1: _0000 pre-RT T2; label pre-RT mask (--include-midrt adds mid-RT cases,\n"
            "          named HNTS_<id>_midRT beside HNTS_<id>_preRT)\n"
            "  task 2: _0000 mid-RT T2, _0001 registered pre-RT T2, _0002 registered pre-RT mask\n"
            "          (channel noNorm); label mid-RT mask\n"
            "Labels {background: 0, GTVp: 1, GTVn: 2}. Files are copied byte for byte, so their\n"
            "geometry is the source's. Checks per case: files present, readable and complete NIfTI,\n"
            "3-D, image and mask on the same grid (size, spacing, origin, direction), mask values\n"
            "integer and in {0,1,2}, image finite. Any problem stops the run before anything is\n"
            "written (one line per bad case) unless --skip-invalid. Running again resumes: identical\n"
            "cases are skipped (content hashes in vadice_convert.json), dataset.json is written last."),
        epilog=("examples:\n"
                "  vadice convert HNTSMRG24_train --task 1 --dataset-id 501\n"
                "  vadice convert HNTSMRG24_train --task 1 --dataset-id 502 --include-midrt\n"
                "  vadice convert HNTSMRG24_train --task 2 --dataset-id 503 --out $nnUNet_raw --skip-invalid"),
    )
    p.add_argument("src_dir", metavar="SRC_DIR", type=Path, help="HNTS-MRG training folder of <id>/ case folders")
    p.add_argument("--task", type=int, choices=(1, 2), required=True, help="1: pre-RT, 2: mid-RT")
    p.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id (1..999)")
    p.add_argument("--out", type=Path, default=None, metavar="NNUNET_RAW",
                   help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--name", default=None, help="dataset name (default: HNTSMRGTask1 / HNTSMRGTask2)")
    p.add_argument("--include-midrt", action="store_true", help="task 1: add mid-RT images as extra cases")
    p.add_argument("--skip-invalid", action="store_true",
                   help="convert the valid cases; list the others in <dataset>/skipped_cases.json")
    p.add_argument("--workers", type=int, default=_workers_default(),
                   help="cases validated in parallel (default: %(default)s)")
    p.set_defaults(func=_convert)

    p = subparsers.add_parser(
        "stats", formatter_class=_RAW,
        help="lesion statistics (per label: cases, lesions per case, volumes) of a dataset",
        description=(
            "Per label (GTVp, GTVn): cases with the label, lesions per case, lesion volumes in ml\n"
            "(min, q25, median, q75, max), fraction < 1 ml and count < 0.5 ml; a lesion is a\n"
            "connected component (26-connectivity by default, as in the HNTS-MRG statistics).\n"
            "Input: an HNTS-MRG folder (statistics per timepoint preRT/midRT), one <id>/ case\n"
            "folder, or an nnU-Net raw dataset (its labelsTr; also by id or name, as for `plan`).\n"
            "Prints a table and writes lesion_stats.json (including every lesion) and\n"
            "lesion_volumes.png. --cues adds the pre-RT node cues measured from the T2 images\n"
            "(axis ratio, short axis, fatty hilum, necrosis by size, laterality to the primary),\n"
            "for normal nodes too when a synthetic cohort's audit maps are there."),
        epilog=("examples:\n"
                "  vadice stats cohort                      # writes ./vadice_stats/cohort/\n"
                "  vadice stats 501                         # $nnUNet_raw/Dataset501_*, like vadice plan 501\n"
                "  vadice stats $nnUNet_raw/Dataset501_HNTSMRGTask1 --out stats_task1"),
    )
    p.add_argument("path", metavar="SRC_OR_DATASET", type=Path,
                   help="HNTS-MRG folder, nnU-Net dataset folder, or nnU-Net dataset id / name")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: ./vadice_stats/<name of SRC_OR_DATASET>)")
    p.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26, help="default: 26")
    p.add_argument("--cues", action="store_true",
                   help="also measure node cues from the pre-RT T2 images (HNTS-MRG folders only)")
    p.add_argument("--workers", type=int, default=_workers_default(),
                   help="masks read in parallel (default: %(default)s)")
    p.set_defaults(func=_stats)


def _usage(exc: ValueError) -> UsageError:
    return UsageError(str(exc))


def _synth(args) -> int:
    if args.cases < 1:
        raise _usage(ValueError(f"--cases must be >= 1, got {args.cases}"))
    if args.seed < 0:
        raise _usage(ValueError(f"--seed must be >= 0, got {args.seed}"))
    if args.profile not in synth.PROFILES:  # checked here, not by argparse, for a one-line error
        raise _usage(ValueError(f"--profile must be one of {', '.join(synth.PROFILES)}, got {args.profile!r}"))
    out = synth.generate_cohort(args.out_dir, args.cases, args.seed, size=args.size, progress=not args.quiet,
                                workers=args.workers, profile=args.profile)
    if not args.quiet:
        print(f"wrote {args.cases} {args.size} {args.profile} cases and {out / synth.COHORT_FILE}")
    return 0


def _convert(args) -> int:
    try:
        hntsmrg.check_task_args(args.task, args.dataset_id, args.name, args.out)
        hntsmrg.training_units(args.task, args.include_midrt)
    except ValueError as exc:
        raise _usage(exc) from None
    dataset = hntsmrg.convert(args.src_dir, args.task, args.dataset_id, out=args.out, name=args.name,
                              include_midrt=args.include_midrt, skip_invalid=args.skip_invalid,
                              progress=not args.quiet, workers=args.workers)
    if not args.quiet:
        info = json.loads((dataset / "dataset.json").read_text())
        print(f"wrote {dataset} ({info['numTraining']} training cases, channels {info['channel_names']})")
        skipped = dataset / hntsmrg.SKIPPED
        if skipped.exists():
            n = len(json.loads(skipped.read_text())["skipped"])
            if n:
                print(f"skipped {n} invalid input(s): see {skipped}")
    return 0


def _stats_source(path: Path) -> Path:
    """A folder as given; otherwise an nnU-Net dataset id or name, resolved like `vadice plan` does."""
    text = str(path)
    if path.exists() or not (text.isdigit() or re.fullmatch(r"Dataset\d{3}_\S+", text)):
        return path
    from vadice.nnunet.paths import resolve_dataset

    return resolve_dataset(text).raw_dir


def _stats(args) -> int:
    source = _stats_source(args.path)
    stats = dataset_stats.dataset_statistics(source, connectivity=args.connectivity, progress=not args.quiet,
                                             workers=args.workers)
    if args.cues:
        stats["cues"] = dataset_stats.cue_statistics(source, connectivity=args.connectivity, progress=not args.quiet,
                                                     workers=args.workers)
    out = args.out if args.out is not None else Path("vadice_stats") / source.resolve().name
    json_path, png_path = dataset_stats.write_statistics(stats, out)
    print(dataset_stats.format_statistics(stats))
    if args.cues:
        print(dataset_stats.format_cues(stats["cues"]))
    if not args.quiet:
        print(f"wrote {json_path} and {png_path}")
    return 0
