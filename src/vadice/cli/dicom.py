"""``vadice import-rtstruct``, ``export-rtstruct``, ``gc-predict``, ``export-model``: argument parsing and printing.

The work is done by :mod:`vadice.dicom` (series, RTSTRUCT/SEG, the challenge container), :mod:`vadice.models`
(which model) and :mod:`vadice.sharing` (model zips).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vadice import registry
from vadice.cli.options import ExamplesFormatter, add_postprocessing, parse_folds, parse_output_types

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-rtstruct",
        help="turn a clinic's RTSTRUCT into a NIfTI label map on its MR series' grid",
        description="Rasterise the contours of RTSTRUCT onto the grid of the DICOM MR series in SERIES_DIR "
        "(same frame of reference): each plane's contours combine even-odd (holes), voxels whose centre lies on "
        "a contour count as inside. ROI names map to labels with --map (shell wildcards, case-insensitive, "
        "first match wins; unmatched ROIs are skipped).",
        epilog="example:\n  vadice import-rtstruct patient7/MR patient7/RS.dcm --out labels/p7.nii.gz "
        "--image-out images/p7_0000.nii.gz --map 'GTVp*=1,GTVn*=2,LN*=2'",
        formatter_class=ExamplesFormatter,
    )
    p.add_argument("series_dir", metavar="SERIES_DIR", help="folder with the DICOM MR series")
    p.add_argument("rtstruct", metavar="RTSTRUCT", help="RTSTRUCT file drawn on that series")
    p.add_argument("--out", required=True, help="label map to write (.nii.gz)")
    p.add_argument("--image-out", help="also write the MR series as NIfTI here (same grid)")
    p.add_argument("--map", default="GTVp*=1,GTVn*=2", help="ROI name patterns to labels (default 'GTVp*=1,GTVn*=2')")
    _series_and_overwrite(p)
    p.set_defaults(func=run_import)

    p = sub.add_parser(
        "export-rtstruct",
        help="write a NIfTI label map made on a DICOM MR series as RTSTRUCT and/or DICOM SEG",
        description="LABELS must lie on the grid of the series in SERIES_DIR (as `vadice predict` outputs for "
        "a DICOM input do). Labels 1/2 become ROIs GTVp/GTVn referencing every slice of the series.",
        epilog="example:\n  vadice export-rtstruct patient7/MR seg/p7.nii.gz --out-dir p7_dicom "
        "--output-type rtstruct,seg",
        formatter_class=ExamplesFormatter,
    )
    p.add_argument("series_dir", metavar="SERIES_DIR", help="folder with the DICOM MR series")
    p.add_argument("labels", metavar="LABELS", help="label map (.nii.gz) on the series' grid")
    p.add_argument("--out-dir", required=True, help="folder for RS_<name>.dcm / SEG_<name>.dcm")
    p.add_argument("--output-type", default="rtstruct", help="comma-separated: rtstruct, seg (default rtstruct)")
    _series_and_overwrite(p)
    p.set_defaults(func=run_export)

    p = sub.add_parser(
        "gc-predict",
        help="the HNTS-MRG grand-challenge container entry point (.mha in, output.mha out)",
        description="Task 1 reads INPUT/images/pre-rt-t2w-head-neck/*.mha; Task 2 reads "
        "INPUT/images/{mid-rt-t2w-head-neck, registered-pre-rt-head-neck, registered-pre-rt-head-neck-segmentation}/"
        "*.mha. Writes OUTPUT/images/mri-head-neck-segmentation/output.mha (uint8, compressed, the input's "
        "exact size, spacing, origin and direction). See docs/clinic.md for the Docker image.",
        epilog="example:\n  vadice gc-predict --task 1 --model /opt/algorithm/model --input test/input "
        "--output test/output --device cpu",
        formatter_class=ExamplesFormatter,
    )
    p.add_argument("--task", type=int, choices=(1, 2), required=True, help="challenge task")
    p.add_argument("--model", default="/opt/algorithm/model",
                   help="trained model folder (Trainer__Plans__configuration; default /opt/algorithm/model)")
    p.add_argument("--input", default="/input", help="input root (default /input)")
    p.add_argument("--output", default="/output", help="output root (default /output)")
    p.add_argument("--folds", default="available",
                   help="comma-separated folds, 'all', or 'available' = every fold with a checkpoint (default)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    p.add_argument("--device", choices=("auto", *registry.DEVICES), default="auto",
                   help="where to run the network (default: cuda when available)")
    add_postprocessing(p)
    p.set_defaults(func=run_gc_predict)

    p = sub.add_parser(
        "export-model",
        help="pack a trained model (or an experiment run's set-up) into one zip for colleagues",
        description="Writes nnU-Net's model-zip layout (installable with nnUNetv2_install_pretrained_model_from_zip) "
        "plus vadice_model.json (version, folds, checkpoint SHA-256) and, from an experiment run folder, the run's "
        "manifest.json (settings) and comparison.json (evaluation summary). `vadice predict -m model.zip` and "
        "`vadice gc-predict --model model.zip` use it directly.",
        epilog="example:\n  vadice export-model runs/task1 --setup dual --out vadice_task1_dual.zip",
        formatter_class=ExamplesFormatter,
    )
    p.add_argument("model", metavar="RUN_OR_MODEL_DIR", help="Trainer__Plans__configuration folder or a run folder")
    p.add_argument("--out", required=True, help="zip file to write")
    p.add_argument("--setup", choices=tuple(registry.SETUPS), help="with a run folder: which set-up")
    p.add_argument("--seed", type=int, default=0, help="with a run folder: which seed (default 0)")
    p.add_argument("--folds", default="available",
                   help="comma-separated folds, 'all', or 'available' = every fold with a checkpoint (default)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    p.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    p.add_argument("--postprocessing", metavar="PP_JSON",
                   help="ship this fitted post-processing file (`vadice postprocess fit`) in the zip; recipients "
                        "apply it with `vadice predict --postprocessing bundled`")
    p.set_defaults(func=run_export_model)


def _series_and_overwrite(p) -> None:
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID when SERIES_DIR holds several series")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run_import(args) -> int:
    from vadice.dicom.export import refuse_existing
    from vadice.dicom.rtstruct import read_rtstruct
    from vadice.dicom.series import read_series
    from vadice.io import write_nifti

    outs = [args.out] + ([args.image_out] if args.image_out else [])
    refuse_existing(outs, args.overwrite)
    series = read_series(args.series_dir, args.series)
    labels, used = read_rtstruct(args.rtstruct, series, args.map)
    write_nifti(labels, series.geometry, args.out)
    if args.image_out:
        write_nifti(series.array, series.geometry, args.image_out)
    counts = ", ".join(f"{name} -> {label} ({int((labels == label).sum())} voxels)" for name, label in used.items())
    print(f"wrote {args.out}: {counts}")
    return 0


def run_export(args) -> int:
    from vadice.dicom.export import DICOM_OUTPUT_TYPES, write_dicom_outputs
    from vadice.dicom.series import read_series
    from vadice.io import strip_nifti_suffix

    types = parse_output_types(args.output_type, DICOM_OUTPUT_TYPES)
    series = read_series(args.series_dir, args.series)
    name = strip_nifti_suffix(Path(args.labels).name)
    written = write_dicom_outputs(series, args.labels, args.out_dir, name, types, args.overwrite)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def run_gc_predict(args) -> int:
    from vadice.dicom.container import TASK_INPUTS, gc_predict
    from vadice.io import InputError
    from vadice.models import available_folds, resolve_model
    from vadice.predict import model_channels, predict

    model = resolve_model(args.model)
    n_channels = model_channels(model)
    if n_channels != len(TASK_INPUTS[args.task]):
        raise InputError(model, f"model has {n_channels} input channel(s); task {args.task} needs "
                         f"{len(TASK_INPUTS[args.task])}")
    folds = available_folds(model, args.checkpoint) if args.folds == "available" else parse_folds(args.folds)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    log.info("task %d: model %s, folds %s, device %s", args.task, model, ",".join(map(str, folds)), device)

    def segment(in_dir: Path, out_dir: Path) -> None:
        predict(in_dir, out_dir, model, folds=folds, device=device, overlays=False, checkpoint=args.checkpoint,
                progress=not args.quiet, postprocessing=args.postprocessing)

    out = gc_predict(args.task, args.input, args.output, segment)
    print(f"wrote {out}")
    return 0


def run_export_model(args) -> int:
    from vadice.dicom.export import refuse_existing
    from vadice.models import resolve_model
    from vadice.sharing import export_model

    refuse_existing([args.out], args.overwrite)
    model = resolve_model(args.model, args.setup, args.seed)
    run_dir = Path(args.model) if args.setup else None
    folds = None if args.folds == "available" else parse_folds(args.folds)
    out = export_model(model, args.out, folds=folds, checkpoint=args.checkpoint, run_dir=run_dir,
                       postprocessing=args.postprocessing)
    print(f"wrote {out}")
    return 0
