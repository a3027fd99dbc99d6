"""``vadice predict``."""

from __future__ import annotations

import argparse

from vadice.cli.options import add_device, parse_folds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment NIfTI images with a trained model (label maps + PNG overlays)",
        description="Segment every case of IN_DIR with a trained nnU-Net model. Inputs are <case>_0000.nii.gz "
        "(… _000N for multi-channel models) or plain <case>.nii.gz for one-channel models. Outputs "
        "<case>.nii.gz with the input's exact size, spacing, origin and direction, and <case>_overlay.png "
        "(GTVp/GTVn contours on the slice of largest tumour burden). No component is ever removed.",
        epilog="example: vadice predict -i scans/ -o seg/ -m runs/demo/nnUNet_results/seed_0/"
        "Dataset990_Demo/nnUNetTrainerVADual__vadiceCPUSmallPlans__3d_fullres --folds 0 --device cpu",
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
    add_device(p, default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    from vadice.experiment import model_dir_from
    from vadice.predict import predict

    model = model_dir_from(args.model, args.setup, args.seed)
    written = predict(args.input, args.output, model, folds=parse_folds(args.folds), device=args.device,
                      overlays=not args.no_overlays, checkpoint=args.checkpoint, progress=not args.quiet)
    print(f"wrote {len(written)} label map(s) to {args.output}")
    return 0
