"""Fast checks of the experiment layer: argument errors, unit parsing, run-folder guards."""

from __future__ import annotations

import json

import pytest

from vadice.cli import main
from vadice.experiment import Experiment, ExperimentSettings, Unit, parse_unit
from vadice.io import InputError


def test_parse_unit():
    s = ExperimentSettings(dataset="1", folds=(0, 1, 2), seeds=(0, 1))
    assert parse_unit("dual:2", s) == [Unit("dual", 2, 0), Unit("dual", 2, 1)]
    assert parse_unit("baseline:0:1", s) == [Unit("baseline", 0, 1)]
    for bad, msg in (("dual", "SETUP:FOLD"), ("nope:1", "SETUP:FOLD"), ("dual:7", "not among --folds"),
                     ("dual:x", "integer"), ("dual:1:5", "not among --seeds")):
        with pytest.raises(InputError, match=msg):
            parse_unit(bad, s)


def test_units_enumerate_setups_folds_seeds():
    s = ExperimentSettings(dataset="1", folds=(0, 1), seeds=(3, 4))
    units = s.units()
    assert len(units) == 12 and len(set(units)) == 12
    assert units[0] == Unit("baseline", 0, 3)


def test_open_refuses_bad_settings(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="baseline"):
        Experiment.open(tmp_path / "r", ExperimentSettings(dataset="1", setups=("dual", "baseline")))
    with pytest.raises(InputError, match="unknown set-up"):
        Experiment.open(tmp_path / "r", ExperimentSettings(dataset="1", setups=("baseline", "focal")))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        Experiment.open(tmp_path / "file", ExperimentSettings(dataset="1"))
    from vadice.nnunet.paths import DatasetRef, NNUNetPaths

    monkeypatch.setattr("vadice.nnunet.paths.resolve_dataset", lambda d: DatasetRef(1, "Dataset001_X", NNUNetPaths()))
    run = tmp_path / "r2"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"settings": ExperimentSettings(dataset="1").fixed()}))
    Experiment.open(run, ExperimentSettings(dataset="1"))
    with pytest.raises(InputError, match="seeds"):
        Experiment.open(run, ExperimentSettings(dataset="1", seeds=(0, 1)))


@pytest.mark.parametrize("args, expect", [
    (["experiment", "1", "--out", "X", "--folds", "0,a"], "--folds must be comma-separated integers"),
    (["experiment", "1", "--out", "X", "--seeds", "0,0"], "duplicates"),
    (["experiment", "1", "--out", "X", "--iterations", "0"], "--iterations must be >= 1"),
    (["experiment", "1", "--out", "X", "--unit", "dual:0", "--collect"], "exclude each other"),
    (["report", "NOWHERE"], "NOWHERE: folder does not exist"),
    (["report", "."], "not an experiment run folder"),
])
def test_cli_usage_errors(args, expect, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "X").exists()


def test_wrong_preset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "1", "--out", "x", "--preset", "resenc-xxl"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_unknown_dataset(tmp_path, monkeypatch, capsys):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
        (tmp_path / var).mkdir()
    assert main(["experiment", "424", "--out", str(tmp_path / "run"), "--preset", "cpu-small", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "424" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
