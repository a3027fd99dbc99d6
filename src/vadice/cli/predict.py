"""``vadice predict``."""

from __future__ import annotations

import argparse

from vadice.cli.options import add_device, parse_folds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment NIfTI images with a trained model (label maps + PNG overlays)",
        description="Segment every case of IN_DIR with a trained nnU-Net model. Inputs are <case>_0000.nii.gz\n"
        "(... _000N for multi-channel models) or plain <case>.nii.gz for one-channel models. Outputs\n"
        "<case>.nii.gz with the input's exact size, spacing, origin and direction, and <case>_overlay.png\n"
        "(GTVp/GTVn contours on the slice of largest tumour burden). No component is ever removed.\n"
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
    p.add_argument("-i", "--input", required=True, metavar="IN_DIR", help="folder of NIfTI images")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for label maps and overlays")
    p.add_argument("-m", "--model", required=True, metavar="MODEL_DIR",
                   help="trained model folder (Trainer__Plans__configuration) or an experiment run folder with --setup")
    p.add_argument("--setup", choices=("baseline", "dual", "selective-ln"),
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
    add_device(p, default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    from vadice.experiment import model_dir_from
    from vadice.predict import predict

    model = model_dir_from(args.model, args.setup, args.seed)
    result = predict(args.input, args.output, model, folds=parse_folds(args.folds), device=args.device,
                     overlays=not args.no_overlays, checkpoint=args.checkpoint, progress=not args.quiet,
                     tta=not args.disable_tta, overwrite=args.overwrite)
    skipped = f" ({len(result.skipped)} already there from an earlier run)" if result.skipped else ""
    print(f"wrote {len(result.written)} label map(s) to {args.output}{skipped}")
    return 0
