"""`vadice evaluate` on a prediction of another grid size: resampled with a warning, or refused when strict."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from vadice.cli import main
from vadice.io import Geometry, write_nifti

SPACING = (1.0, 1.0, 2.0)
EYE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def folders(tmp_path):
    """Truth of 8 slices; case 'short' predicted on a grid two slices short (same spacing and origin)."""
    gt = np.zeros((8, 12, 12), np.uint8)
    gt[1:4, 3:7, 3:7] = 1
    gt[2:3, 8:10, 8:10] = 2
    for case in ("short", "same"):
        write_nifti(gt, Geometry((12, 12, 8), SPACING, (0.0, 0.0, 0.0), EYE), tmp_path / "gt" / f"{case}.nii.gz")
    write_nifti(gt[:6], Geometry((12, 12, 6), SPACING, (0.0, 0.0, 0.0), EYE), tmp_path / "pred" / "short.nii.gz")
    write_nifti(gt, Geometry((12, 12, 8), SPACING, (0.0, 0.0, 0.0), EYE), tmp_path / "pred" / "same.nii.gz")
    return tmp_path


def test_resampled_prediction_is_warned_counted_and_listed(folders, capsys):
    out = folders / "eval"
    assert main(["-q", "evaluate", "--gt", str(folders / "gt"), "--pred", str(folders / "pred"),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "1 prediction(s)" in warning[0] and "short" in warning[0]
    assert "--strict-geometry" in warning[0]
    assert "resampled predictions: 1" in captured.out.splitlines()[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resampled_predictions"] == ["short"] and summary["settings"]["strict_geometry"] is False
    rows = {(r["case"], r["label"]): r for r in csv.DictReader(open(out / "cases.csv"))}
    assert rows[("short", "GTVp")]["resampled"] == "1" and rows[("same", "GTVp")]["resampled"] == "0"


def test_same_grids_give_no_warning(folders, capsys):
    (folders / "pred" / "short.nii.gz").unlink()
    (folders / "gt" / "short.nii.gz").unlink()
    assert main(["-q", "evaluate", "--gt", str(folders / "gt"), "--pred", str(folders / "pred"),
                 "--out", str(folders / "eval")]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "resampled" not in captured.out


def test_strict_geometry_refuses_with_one_line_and_writes_nothing(folders, capsys):
    out = folders / "eval"
    assert main(["-q", "evaluate", "--gt", str(folders / "gt"), "--pred", str(folders / "pred"),
                 "--out", str(out), "--strict-geometry"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vadice evaluate: error: ")
    assert "short.nii.gz" in err[0] and "size (12, 12, 6) != (12, 12, 8)" in err[0]
    assert "--strict-geometry" in err[0]
    assert not out.exists()
