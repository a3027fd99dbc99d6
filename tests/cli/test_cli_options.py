"""Argument helpers of the command modules (vadice.cli.options)."""

from __future__ import annotations

import argparse

import pytest

from vadice.cli import UsageError, main
from vadice.cli.options import add_device, parse_folds, parse_output_types


@pytest.mark.parametrize("text, expected", [("0", (0,)), ("3, 1", (3, 1)), (" all ", ("all",))])
def test_folds_are_read(text, expected):
    assert parse_folds(text) == expected


@pytest.mark.parametrize("text, says", [("0,a", "--folds must be comma-separated integers or 'all', got '0,a'"),
                                        ("1,1", "--folds has duplicates"), ("-1", "--folds must be >= 0"),
                                        ("all,0", "'all' cannot be mixed"), (" , ", "--folds is empty")])
def test_bad_folds_are_a_usage_error(text, says):
    with pytest.raises(UsageError, match=says):
        parse_folds(text)


def test_bad_folds_on_the_command_line_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", str(tmp_path),
                 "--folds", "0,0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["vadice predict: error: --folds has duplicates: '0,0'"]


def test_devices_are_cuda_cpu_mps():
    parser = argparse.ArgumentParser()
    add_device(parser, default="cpu")
    assert parser.parse_args([]).device == "cpu" and parser.parse_args(["--device", "mps"]).device == "mps"
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "tpu"])


def test_output_types_keep_order_drop_repeats_and_refuse_unknown():
    assert parse_output_types(" SEG,nifti, seg ") == ("seg", "nifti")
    for bad in ("", "rtstruct,pdf"):
        with pytest.raises(UsageError, match="--output-type must be a comma-separated subset of nifti,rtstruct,seg"):
            parse_output_types(bad)
    with pytest.raises(UsageError, match="subset of rtstruct,seg"):
        parse_output_types("nifti", ("rtstruct", "seg"))
