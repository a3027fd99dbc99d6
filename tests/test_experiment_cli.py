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


def _git(repo, *args):
    import subprocess

    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_code_version_of_a_git_checkout(tmp_path):
    from vadice.provenance import code_version

    pkg = tmp_path / "repo" / "src" / "vadice"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("x = 1\n")
    _git(tmp_path / "repo", "init", "-q")
    _git(tmp_path / "repo", "add", "-A")
    _git(tmp_path / "repo", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(tmp_path / "repo", "rev-parse", "HEAD")
    assert code_version(pkg) == {"commit": head, "dirty": False}
    (pkg / "new.py").write_text("")  # untracked: not part of the code version
    assert code_version(pkg) == {"commit": head, "dirty": False}
    (pkg / "m.py").write_text("x = 2\n")
    assert code_version(pkg) == {"commit": head, "dirty": True}
    # a folder inside some other repository is not vadice's checkout; no repository at all: unknown
    (tmp_path / "repo" / "other").mkdir()
    assert code_version(tmp_path / "repo" / "other") == {"commit": None, "dirty": None}
    (tmp_path / "plain").mkdir()
    assert code_version(tmp_path / "plain") == {"commit": None, "dirty": None}


def test_code_change_rule():
    from vadice.provenance import code_change

    a, b = {"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": False}
    assert code_change(a, dict(a)) is None
    assert code_change(a, b) == f"started on {'a' * 12}, now {'b' * 12}"
    assert code_change(a, {**a, "dirty": True}) == f"started on {'a' * 12}, now {'a' * 12} (dirty)"
    assert code_change({"commit": None, "dirty": None}, b) is None and code_change(a, {"commit": None}) is None
    assert code_change(None, b) is None


def _fake_run(tmp_path, monkeypatch):
    """A run folder whose 'training' writes one validation prediction (nnU-Net is not called)."""
    from types import SimpleNamespace

    from vadice.nnunet.paths import DatasetRef, NNUNetPaths

    monkeypatch.setattr("vadice.nnunet.paths.resolve_dataset", lambda d: DatasetRef(1, "Dataset001_X", NNUNetPaths()))

    def train(self, loss, fold, seed, iterations, epochs, results_dir, log_name, warm_start=None, probabilities=False):
        fold_dir = results_dir / log_name
        (fold_dir / "validation").mkdir(parents=True, exist_ok=True)
        (fold_dir / "validation" / "c1.nii.gz").write_bytes(b"x")
        (fold_dir / "ckpt.pth").write_bytes(log_name.encode())
        return SimpleNamespace(fold_dir=fold_dir, model_dir=results_dir, checkpoint=fold_dir / "ckpt.pth",
                               command=["train"], settings={"warm_start_sha256": "w"})

    monkeypatch.setattr(Experiment, "_train", train)
    return ExperimentSettings(dataset="1", folds=(0,), seeds=(0,), setups=("baseline", "dual"), device="cpu")


def _open(run, settings, version, monkeypatch, **kw):
    monkeypatch.setattr("vadice.experiment.code_version", lambda: dict(version))
    exp = Experiment.open(run, settings, progress=False, **kw)
    exp.plan = type("Plan", (), {"plans_identifier": "p", "plans_sha256": "s", "configuration": "3d_fullres"})()
    return exp


def test_a_run_keeps_one_code_version_unless_allowed(tmp_path, monkeypatch, capsys):
    from vadice.report.html import code_versions

    settings = _fake_run(tmp_path, monkeypatch)
    run = tmp_path / "run"
    v1, v2 = {"commit": "1" * 40, "dirty": False}, {"commit": "1" * 40, "dirty": True}
    _open(run, settings, v1, monkeypatch).run_units([Unit("baseline", 0, 0)])
    marker = json.loads((run / "units" / "baseline__fold0__seed0.json").read_text())
    assert marker["code_version"] == v1 and marker["warm_start_sha256"] == "w"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["code_version"] == v1 and manifest["unit_code_versions"] == {"1" * 12: ["baseline__fold0__seed0"]}

    # uncommitted changes since the start: refused, one line naming the manifest and the way out
    with pytest.raises(InputError, match=r"manifest.json: run started on another code version \(started on "
                                         r"1{12}, now 1{12} \(dirty\)\).*--allow-code-change"):
        _open(run, settings, v2, monkeypatch)
    monkeypatch.setattr("vadice.experiment.code_version", lambda: dict(v2))
    assert main(["experiment", "1", "--out", str(run), "--setups", "baseline,dual", "--folds", "0",
                 "--collect", "--no-probabilities"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-code-change" in err
    assert main(["experiment", "1", "--out", str(run), "--setups", "baseline,dual", "--folds", "0",
                 "--collect", "--allow-code-change", "--no-probabilities"]) == 2
    assert "unit(s) not finished" in capsys.readouterr().err  # past the code check

    _open(run, settings, v2, monkeypatch, allow_code_change=True).run_units()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["code_version"] == v1  # the start is kept
    assert manifest["unit_code_versions"] == {"1" * 12: ["baseline__fold0__seed0"],
                                              "1" * 12 + " (dirty)": ["dual__fold0__seed0"]}
    line, warning = code_versions(manifest)
    assert line == f"{'1' * 12} (1 unit); {'1' * 12} (dirty) (1 unit)" and "2 code versions" in warning
    assert code_versions({"unit_code_versions": {"abc": ["u1", "u2"]}}) == ("abc (2 units)", None)


def test_an_unknown_code_version_is_recorded_as_null_and_never_refused(tmp_path, monkeypatch):
    settings = _fake_run(tmp_path, monkeypatch)
    run = tmp_path / "run"
    unknown = {"commit": None, "dirty": None}
    _open(run, settings, unknown, monkeypatch).run_units([Unit("baseline", 0, 0)])
    assert json.loads((run / "manifest.json").read_text())["code_version"] == unknown
    _open(run, settings, {"commit": "2" * 40, "dirty": False}, monkeypatch)  # nothing to compare: accepted


def test_seeds_sharing_a_warm_start_are_paired(tmp_path):
    from vadice.experiment import evaluation_warm_start

    run = tmp_path / "run"
    (run / "units").mkdir(parents=True)
    for setup, seed, sha in (("baseline", 0, "w0"), ("dual", 0, "w0"), ("baseline", 1, "w1"), ("dual", 1, None)):
        (run / "units" / f"{setup}__fold0__seed{seed}.json").write_text(json.dumps({"warm_start_sha256": sha}))
    ev = run / "evaluation"
    assert evaluation_warm_start(ev / "baseline" / "seed_0") == "fold 0: w0" == evaluation_warm_start(ev / "dual" / "seed_0")
    assert evaluation_warm_start(ev / "dual" / "seed_1") is None  # not recorded
    assert evaluation_warm_start(ev / "dual+pp" / "seed_0") == "fold 0: w0"  # a derived copy: the seed's units
    assert evaluation_warm_start(ev / "dual+pp" / "seed_1") is None  # ... which disagree
    assert evaluation_warm_start(tmp_path / "elsewhere" / "seed_0") is None


def test_code_changed_during_a_run_stops_before_the_next_unit(tmp_path, monkeypatch):
    settings = _fake_run(tmp_path, monkeypatch)
    v1, v2 = {"commit": "1" * 40, "dirty": False}, {"commit": "2" * 40, "dirty": False}
    current = dict(v1)
    train = Experiment._train

    def train_then_commit(self, *args, **kw):  # someone commits while the first unit trains
        result = train(self, *args, **kw)
        current.update(v2)
        return result

    monkeypatch.setattr(Experiment, "_train", train_then_commit)
    exp = _open(tmp_path / "run", settings, v1, monkeypatch)
    monkeypatch.setattr("vadice.experiment.code_version", lambda: dict(current))
    with pytest.raises(InputError, match=f"started on {'1' * 12}, now {'2' * 12}"):
        exp.run_units()
    assert [p.name for p in (tmp_path / "run" / "units").iterdir()] == ["baseline__fold0__seed0.json"]
    current.update(v1)
    exp.allow_code_change = True
    train_calls = []
    monkeypatch.setattr(Experiment, "_train", lambda self, *a, **k: (train_calls.append(1), train(self, *a, **k))[1])
    current.update(v2)
    exp.run_units()
    marker = json.loads((tmp_path / "run" / "units" / "dual__fold0__seed0.json").read_text())
    assert marker["code_version"] == v2 and len(train_calls) == 1
