"""bench/va_study.py --tiny run seed by seed, as on machines that keep nothing but the repository: each seed's
piece in an emptied study folder, exported; then every piece restored into an emptied folder and combined.

Marked ``recipe`` (``make test-recipes``); its own file so that pytest-xdist runs it beside the other recipes."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from unittest import mock

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import va_study  # noqa: E402


@pytest.mark.slow
@pytest.mark.recipe
def test_va_study_tiny_seed_by_seed_pieces_combine(tmp_path, capsys):
    out, state = tmp_path / "va", tmp_path / "state"
    for seed in va_study.TINY["seeds"]:
        shutil.rmtree(out, ignore_errors=True)
        with mock.patch.dict(os.environ):
            assert va_study.main(["--out", str(out), "--tiny", "-q", "--seed", str(seed), "--state", str(state)]) == 0
        assert not (out / "study.md").exists()
        piece = json.loads((state / f"seed_{seed}" / "piece.json").read_text())
        assert piece["seed"] == seed and piece["out"] == str(out.resolve())
        assert piece["packages"] == va_study.installed_packages()
        assert not [f for f in piece["files"] if f.endswith((".pth", ".pkl"))]
    printed = capsys.readouterr().out
    assert "piece finished" in printed and "GTVn" not in printed  # a piece shows no result

    shutil.rmtree(out)
    with mock.patch.dict(os.environ):
        assert va_study.main(["--out", str(out), "--tiny", "-q", "--state", str(state)]) == 0
    assert not list(out.rglob("*.pth"))  # nothing trained
    text = (out / "study.md").read_text()
    assert "run seed by seed, one piece per seed" in text and text.count("min |") == len(va_study.TINY["seeds"])
    for heading in ("## A. Primary: post-processed arms against baseline+pp, test set (4 patients)",
                    "## C. Matched operating points", "| GTVn | lesion_sensitivity <1 ml |"):
        assert heading in text
    assert (out / "run" / "report_test.html").is_file()
