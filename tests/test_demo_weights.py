"""The demo's shipped common-baseline checkpoint: used only for its own cohort, only if intact, never on seen cases."""

from __future__ import annotations

import hashlib
import json

import pytest

from vadice.demo import DEMO_SIZE, check_held_out, shipped_weights
from vadice.io import InputError


def _provenance(tmp_path, payload=b"weights", **overrides):
    weights = tmp_path / "w.pth"
    weights.write_bytes(payload)
    info = {"cohort": {"cases": 30, "seed": 0, "size": DEMO_SIZE}, "sha256": hashlib.sha256(b"weights").hexdigest(),
            "train_cases": ["HNTS_002_preRT", "HNTS_005_preRT"]}
    info.update(overrides)
    prov = tmp_path / "w.json"
    prov.write_text(json.dumps(info))
    return weights, prov


def test_weights_serve_only_their_own_cohort(tmp_path):
    weights, prov = _provenance(tmp_path)
    assert shipped_weights(30, 0, weights, prov) == weights
    assert shipped_weights(31, 0, weights, prov) is None
    assert shipped_weights(30, 1, weights, prov) is None


def test_missing_files_mean_no_shipped_weights(tmp_path):
    assert shipped_weights(30, 0, tmp_path / "none.pth", tmp_path / "none.json") is None


def test_altered_weights_are_refused(tmp_path):
    weights, prov = _provenance(tmp_path, payload=b"weightz")
    with pytest.raises(InputError, match="SHA-256"):
        shipped_weights(30, 0, weights, prov)


def test_held_out_case_among_training_cases_is_refused(tmp_path):
    _, prov = _provenance(tmp_path)
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["HNTS_002_preRT"], "val": ["HNTS_005_preRT"]}]))
    with pytest.raises(InputError, match="HNTS_005_preRT"):
        check_held_out(pre, 0, prov)
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["HNTS_002_preRT"], "val": ["HNTS_009_preRT"]}]))
    assert check_held_out(pre, 0, prov) == ["HNTS_009_preRT"]


def test_no_split_yet_is_an_error_not_a_pass(tmp_path):
    _, prov = _provenance(tmp_path)
    with pytest.raises(InputError, match="no split"):
        check_held_out(tmp_path, 0, prov)
