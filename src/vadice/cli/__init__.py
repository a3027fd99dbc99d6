"""The ``vadice`` command line: argument parsing, progress and exit codes only.

Each command group lives in its own module exposing ``register(subparsers)``;
a command sets ``func`` (taking the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from vadice import __version__
from vadice.io import InputError

# Order here is the order in `vadice --help`.
COMMAND_MODULES = (
    "vadice.cli.data",        # synth, convert, stats
    "vadice.cli.nnunet",      # nnunet-path, plan, train
    "vadice.cli.predict",     # predict
    "vadice.cli.postprocess",  # postprocess fit, postprocess apply
    "vadice.cli.evaluate",    # evaluate, compare
    "vadice.cli.froc",        # froc
    "vadice.cli.experiment",  # experiment, report, demo
    "vadice.cli.dicom",       # import-rtstruct, export-rtstruct, gc-predict, export-model
)


class UsageError(Exception):
    """Wrong combination of arguments; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vadice",
        description="Volume-aware Dice training and evaluation for head-and-neck GTVp/GTVn segmentation on MRI.",
    )
    parser.add_argument("--version", action="version", version=f"vadice {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        # No skipping: a listed module that does not import is a typo or a broken install, and dropping its
        # commands silently would hide it until a user asks for one of them.
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # Only vadice's own messages at INFO: libraries log to the root logger too (nnU-Net's distutils
    # copy_file says "copying A -> B" for every label during `plan`).
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("vadice").setLevel(level)
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # "NumExpr defaulting to N threads" on every import
    # nnU-Net's trainer lookup imports timm, whose import-time use of torch.jit.interface warns on every
    # predict; it says nothing about the user's run.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
    try:
        return int(args.func(args) or 0)
    except (InputError, UsageError, FileExistsError) as exc:
        print(f"vadice {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vadice {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
