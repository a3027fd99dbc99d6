"""``vadice predict``."""

from __future__ import annotations

import argparse

from vadice import registry
from vadice.cli.options import add_device, add_postprocessing, parse_folds, parse_output_types


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment NIfTI images with a trained model (label maps + PNG overlays)",
        description="Segment every case of IN_DIR with a trained nnU-Net model. Inputs are <case>_0000.nii.gz\n"
        "(... _000N for multi-channel models) or plain <case>.nii.gz for one-channel models. Outputs\n"
        "<case>.nii.gz with the input's exact size, spacing, origin and direction, and <case>_overlay.png\n"
        "(GTVp/GTVn contours on the slice of largest tumour burden). No component is removed unless\n"
        "--postprocessing names a fitted file (small components below its per-label minimum volumes).\n"
        "Each finished case is moved into OUT_DIR and recorded in OUT_DIR/.vadice_predict.json: an\n"
        "interrupted run keeps its finished cases, and rerunning it with the same settings predicts only\n"
        "the missing ones. A file in OUT_DIR that vadice predict did not write with these settings is\n"
        "never replaced unless --overwrite is given.",
        epilog="examples:\n"
        "  vadice predict -i scans/ -o seg/ -m runs/task1 --setup dual --folds 0,1,2,3,4 --device cuda\n"
        "  vadice predict -i scans/ -o seg/ -m demo_out/run --setup dual --folds 0 --device cpu --disable-tta\n"
        "  vadice predict -i scans/ -o seg/ -m MODEL_DIR --folds 0   # MODEL_DIR: Trainer__Plans__3d_fullres\n"
        "Rerunning the same command after an interruption predicts only the missing cases.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", "--input", required=True, metavar="IN_DIR",
                   help="folder of NIfTI or .mha images, or a folder with a DICOM MR series")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for label maps and overlays")
    p.add_argument("-m", "--model", required=True, metavar="MODEL_DIR",
                   help="trained model folder (Trainer__Plans__configuration) or an experiment run folder with --setup")
    p.add_argument("--setup", choices=tuple(registry.SETUPS),
                   help="with an experiment run folder: which set-up's model (seed from --seed)")
    p.add_argument("--seed", type=int, default=0, help="with an experiment run folder: which seed (default 0)")
    p.add_argument("--folds", default="0", help="comma-separated folds to ensemble, or 'all' (default 0)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    p.add_argument("--no-overlays", action="store_true", help="skip the PNG overlays")
    p.add_argument("--disable-tta", action="store_true",
                   help="no test-time mirroring (nnU-Net's default is on: up to 8 network passes per tile); "
                        "about 6x faster on a CPU (docs/experiment.md), usually slightly less accurate")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in OUT_DIR that vadice predict did not write with these settings")
    add_postprocessing(p)
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>.npz: the class probabilities (key 'probabilities', C x Z x Y x X float16, "
                        "as nnUNetv2_predict --save_probabilities lays them out; docs/nnunet.md)")
    # DICOM / .mha input and DICOM outputs (vadice.dicom, docs/clinic.md); -m also takes a model zip.
    p.add_argument("--output-type", default="nifti",
                   help="comma-separated nifti,rtstruct,seg (default nifti; rtstruct/seg need a DICOM series "
                        "as -i; the NIfTI label map is always written)")
    p.add_argument("--series", metavar="UID", help="with a DICOM folder holding several series: which one")
    add_device(p, default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    import tempfile

    from vadice.cli import UsageError
    from vadice.dicom.export import refuse_existing_dicom, write_dicom_outputs
    from vadice.dicom.staging import stage_predict_input
    from vadice.models import resolve_model
    from vadice.predict import predict

    dicom_types = [t for t in parse_output_types(args.output_type) if t != "nifti"]  # NIfTI is always written
    folds = parse_folds(args.folds)
    model = resolve_model(args.model, args.setup, args.seed)
    with tempfile.TemporaryDirectory(prefix="vadice-input-") as tmp:
        staged = stage_predict_input(args.input, tmp, args.series)  # a DICOM folder or .mha -> NIfTI
        if staged.series is None and dicom_types:
            raise UsageError("--output-type rtstruct/seg needs a DICOM MR series folder as -i")
        if staged.series is not None:  # refuse before inference, not after minutes of it
            refuse_existing_dicom(args.output, staged.case, dicom_types, args.overwrite)
        result = predict(staged.folder, args.output, model, folds=folds, device=args.device,
                         overlays=not args.no_overlays, checkpoint=args.checkpoint, progress=not args.quiet,
                         tta=not args.disable_tta, overwrite=args.overwrite, postprocessing=args.postprocessing,
                         save_probabilities=args.save_probabilities)
    skipped = f" ({len(result.skipped)} already there from an earlier run)" if result.skipped else ""
    print(f"wrote {len(result.written)} label map(s) to {args.output}{skipped}")
    if staged.series is not None and dicom_types:
        from pathlib import Path

        labels = Path(args.output) / f"{staged.case}.nii.gz"
        for path in write_dicom_outputs(staged.series, labels, args.output, staged.case, dicom_types, args.overwrite):
            print(f"wrote {path}")
    return 0
