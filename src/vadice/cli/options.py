"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse

from vadice import registry
from vadice.cli import UsageError
from vadice.dicom.export import DICOM_OUTPUT_TYPES

OUTPUT_TYPES = ("nifti", *DICOM_OUTPUT_TYPES)


def add_device(parser: argparse.ArgumentParser, default: str = "cuda") -> None:
    parser.add_argument("--device", choices=registry.DEVICES, default=default,
                        help=f"where to run the network (default {default})")


def add_postprocessing(parser: argparse.ArgumentParser) -> None:
    """``--postprocessing``, as ``vadice predict`` and ``vadice gc-predict`` take it."""
    parser.add_argument("--postprocessing", metavar="PP_JSON",
                        help="remove components below the per-label minimum volumes of this file (`vadice "
                             "postprocess fit`, docs/postprocessing.md), or of the model's own with 'bundled' (a zip "
                             "from `vadice export-model --postprocessing`); refused for the cases it was fitted on; "
                             "default: nothing removed")


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{what} is empty")
    if len(set(values)) != len(values):
        raise UsageError(f"{what} has duplicates: {text!r}")
    return values


def parse_folds(text: str) -> tuple[int | str, ...]:
    """``--folds`` read by :func:`vadice.registry.parse_folds`; its refusal becomes a UsageError."""
    try:
        return registry.parse_folds(text, "--folds")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_output_types(text: str, allowed: tuple[str, ...] = OUTPUT_TYPES) -> tuple[str, ...]:
    """``--output-type``: ``'nifti,rtstruct'`` -> ``('nifti', 'rtstruct')``; raises UsageError on unknown or empty."""
    types = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    if not types or any(t not in allowed for t in types):
        raise UsageError(f"--output-type must be a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return types


class ExamplesFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that an epilog starting with "example" keeps its lines.

    Descriptions are still wrapped to the terminal; example commands stay whole, one per line.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
