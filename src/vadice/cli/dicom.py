"""``vadice import-rtstruct``, ``vadice export-rtstruct``, ``vadice gc-predict``: DICOM and the challenge container."""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from vadice.cli import UsageError
from vadice.cli.options import add_postprocessing, parse_folds
from vadice.registry import SETUPS

log = logging.getLogger(__name__)

OUTPUT_TYPES = ("nifti", "rtstruct", "seg")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-rtstruct",
        help="turn a clinic's RTSTRUCT into a NIfTI label map on its MR series' grid",
        description="Rasterise the contours of RTSTRUCT onto the grid of the DICOM MR series in SERIES_DIR "
        "(same frame of reference): each plane's contours combine even-odd (holes), voxels whose centre lies on "
        "a contour count as inside. ROI names map to labels with --map (shell wildcards, case-insensitive, "
        "first match wins; unmatched ROIs are skipped).",
        epilog="example: vadice import-rtstruct patient7/MR patient7/RS.dcm --out labels/p7.nii.gz "
        "--image-out images/p7_0000.nii.gz --map 'GTVp*=1,GTVn*=2,LN*=2'",
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
        epilog="example: vadice export-rtstruct patient7/MR seg/p7.nii.gz --out-dir p7_dicom --output-type rtstruct,seg",
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
        epilog="example: vadice gc-predict --task 1 --model /opt/algorithm/model --input test/input "
        "--output test/output --device cpu",
    )
    p.add_argument("--task", type=int, choices=(1, 2), required=True, help="challenge task")
    p.add_argument("--model", default="/opt/algorithm/model",
                   help="trained model folder (Trainer__Plans__configuration; default /opt/algorithm/model)")
    p.add_argument("--input", default="/input", help="input root (default /input)")
    p.add_argument("--output", default="/output", help="output root (default /output)")
    p.add_argument("--folds", default="available",
                   help="comma-separated folds, 'all', or 'available' = every fold with a checkpoint (default)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    p.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto",
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
        epilog="example: vadice export-model runs/task1 --setup dual --out vadice_task1_dual.zip",
    )
    p.add_argument("model", metavar="RUN_OR_MODEL_DIR", help="Trainer__Plans__configuration folder or a run folder")
    p.add_argument("--out", required=True, help="zip file to write")
    p.add_argument("--setup", choices=tuple(SETUPS), help="with a run folder: which set-up")
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


def parse_output_types(text: str, allowed: tuple[str, ...] = OUTPUT_TYPES) -> tuple[str, ...]:
    """``'nifti,rtstruct'`` -> ``('nifti', 'rtstruct')``; raises UsageError on unknown or empty."""
    types = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    if not types or (bad := [t for t in types if t not in allowed]):
        raise UsageError(f"--output-type must be a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return types


def _refuse_existing(paths, overwrite: bool) -> None:
    for path in paths:
        if Path(path).exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists (use --overwrite to replace it)")


def run_import(args) -> int:
    from vadice.dicom.rtstruct import read_rtstruct
    from vadice.dicom.series import read_series
    from vadice.io import write_nifti

    outs = [args.out] + ([args.image_out] if args.image_out else [])
    _refuse_existing(outs, args.overwrite)
    series = read_series(args.series_dir, args.series)
    labels, used = read_rtstruct(args.rtstruct, series, args.map)
    write_nifti(labels, series.geometry, args.out)
    if args.image_out:
        write_nifti(series.array, series.geometry, args.image_out)
    counts = ", ".join(f"{name} -> {label} ({int((labels == label).sum())} voxels)" for name, label in used.items())
    print(f"wrote {args.out}: {counts}")
    return 0


def dicom_targets(out_dir, name: str, types) -> dict[str, Path]:
    """``{type: path}`` of the DICOM outputs (``RS_<name>.dcm``, ``SEG_<name>.dcm``) among ``types``."""
    return {t: Path(out_dir) / f"{'RS' if t == 'rtstruct' else 'SEG'}_{name}.dcm" for t in types if t != "nifti"}


def refuse_existing_dicom(out_dir, name: str, types, overwrite: bool) -> None:
    """Raise FileExistsError before any work when a DICOM output exists and ``overwrite`` is false."""
    _refuse_existing(dicom_targets(out_dir, name, types).values(), overwrite)


def write_dicom_outputs(series, labels_path, out_dir, name: str, types, overwrite: bool = False) -> list[Path]:
    """RTSTRUCT and/or SEG files of a NIfTI label map that lies on ``series``' grid.

    Returns:
      The written paths (``RS_<name>.dcm``, ``SEG_<name>.dcm``).

    Raises:
      InputError: the label map is not on the series' grid.
      FileExistsError: an output exists and ``overwrite`` is false.
    """
    from vadice.dicom.rtstruct import write_rtstruct
    from vadice.dicom.seg import write_seg
    from vadice.io import InputError, read_mask

    targets = dicom_targets(out_dir, name, types)
    _refuse_existing(targets.values(), overwrite)
    labels, geom = read_mask(labels_path)
    if diffs := series.geometry.differences(geom, atol=1e-3):
        raise InputError(labels_path, f"not on the grid of series {series.series_uid}: " + "; ".join(diffs))
    written = []
    for kind, path in targets.items():
        (write_rtstruct if kind == "rtstruct" else write_seg)(labels, series, path)
        written.append(path)
    return written


def run_export(args) -> int:
    from vadice.dicom.series import read_series
    from vadice.io import strip_nifti_suffix

    types = parse_output_types(args.output_type, ("rtstruct", "seg"))
    series = read_series(args.series_dir, args.series)
    name = strip_nifti_suffix(Path(args.labels).name)
    written = write_dicom_outputs(series, args.labels, args.out_dir, name, types, args.overwrite)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def available_folds(model: Path, checkpoint: str) -> tuple[str, ...]:
    """Folds of ``model`` that hold ``checkpoint`` (``fold_0`` … and ``fold_all``), numeric ones first."""
    found = [p.name[len("fold_"):] for p in sorted(model.glob("fold_*")) if (p / checkpoint).is_file()]
    return tuple(sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0)))


def run_gc_predict(args) -> int:
    from vadice.dicom.container import TASK_INPUTS, gc_predict
    from vadice.io import InputError
    from vadice.predict import model_channels, predict

    model = resolve_model(args.model)
    n_channels = model_channels(model)
    if n_channels != len(TASK_INPUTS[args.task]):
        raise InputError(model, f"model has {n_channels} input channel(s); task {args.task} needs "
                         f"{len(TASK_INPUTS[args.task])}")
    if args.folds == "available":
        folds = available_folds(model, args.checkpoint)
        if not folds:
            raise InputError(model, f"no fold_*/{args.checkpoint} in the model folder")
        folds = tuple(int(f) if f.isdigit() else f for f in folds)
    else:
        folds = parse_folds(args.folds)
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


@dataclass(frozen=True)
class StagedInput:
    """What ``vadice predict`` reads: ``folder`` of NIfTI inputs; ``series``/``case`` set for a DICOM input."""

    folder: Path
    series: object | None = None  # vadice.dicom.series.MRSeries
    case: str | None = None


def _case_name(series) -> str:
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", str(series.slices[0].get("PatientID", "") or "")).strip("._-")
    return name or "case"


def stage_predict_input(input_path, tmp_dir, series_uid: str | None = None) -> StagedInput:
    """Turn ``vadice predict``'s input into a folder of NIfTI files.

    A folder holding NIfTI files is used as it is; ``.mha`` files (a folder of
    them, or one file) are converted to ``.nii.gz`` under ``tmp_dir`` keeping
    their names (so ``_0000`` channel suffixes still work); any other folder
    holding DICOM files is read as one DICOM MR series and staged as
    ``<PatientID>_0000.nii.gz``; anything else is passed through unchanged.

    Args:
      input_path: ``-i`` of ``vadice predict``.
      tmp_dir: an empty folder that outlives the prediction.
      series_uid: ``--series``; only for DICOM inputs.

    Returns:
      :class:`StagedInput`.

    Raises:
      InputError: unreadable inputs (see vadice.dicom.series.read_series).
      UsageError: ``--series`` with a non-DICOM input.
    """
    from vadice.io import InputError, is_nifti, read_mha, write_nifti, write_sitk

    input_path, tmp_dir = Path(input_path), Path(tmp_dir)
    if not input_path.exists():
        raise InputError(input_path, "input not found")
    files = [input_path] if input_path.is_file() else sorted(
        p for p in input_path.iterdir() if p.is_file() and not p.name.startswith("."))
    mha = [p for p in files if p.suffix.lower() == ".mha"]
    if any(is_nifti(p) for p in files) or (input_path.is_file() and not mha):
        if series_uid:
            raise UsageError("--series applies to a DICOM folder input only")
        return StagedInput(input_path)
    if mha:
        if series_uid:
            raise UsageError("--series applies to a DICOM folder input only")
        for path in mha:
            write_sitk(read_mha(path), tmp_dir / (path.stem + ".nii.gz"))
        return StagedInput(tmp_dir)
    from pydicom.misc import is_dicom

    if not any(p.is_file() and is_dicom(p) for p in input_path.rglob("*")):
        if series_uid:
            raise UsageError("--series applies to a DICOM folder input only")
        return StagedInput(input_path)  # no DICOM at all: vadice.predict names what is wrong with the folder
    from vadice.dicom.series import read_series

    series = read_series(input_path, series_uid)
    case = _case_name(series)
    write_nifti(series.array, series.geometry, tmp_dir / f"{case}_0000.nii.gz")
    return StagedInput(tmp_dir, series, case)


def resolve_model(path) -> Path:
    """A model folder, or the folder inside a model zip (unpacked once into the cache)."""
    from vadice.sharing import model_from_zip

    path = Path(path)
    return model_from_zip(path) if path.suffix.lower() == ".zip" else path


def run_export_model(args) -> int:
    from vadice.experiment import model_dir_from
    from vadice.sharing import export_model

    _refuse_existing([args.out], args.overwrite)
    model = model_dir_from(args.model, args.setup, args.seed)
    run_dir = Path(args.model) if args.setup else None
    folds = None if args.folds == "available" else parse_folds(args.folds)
    out = export_model(model, args.out, folds=folds, checkpoint=args.checkpoint, run_dir=run_dir,
                       postprocessing=args.postprocessing)
    print(f"wrote {out}")
    return 0
