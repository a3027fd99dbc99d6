"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse

from vadice.cli import UsageError


def add_device(parser: argparse.ArgumentParser, default: str = "cuda") -> None:
    parser.add_argument("--device", choices=("cuda", "cpu", "mps"), default=default,
                        help=f"where to run the network (default {default})")


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


def parse_folds(text: str) -> tuple:
    return ("all",) if text.strip() == "all" else parse_int_list(text, "--folds")


class ExamplesFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that an epilog starting with "example" keeps its lines.

    Descriptions are still wrapped to the terminal; example commands stay whole, one per line.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
