"""What a new user meets first: wrong preset, invalid folds, refused experiment starts, missing folders.

Each bad input must give one `vadice <command>: error: ...` line on stderr, a non-zero exit code,
and leave nothing behind (no run folder, no nnU-Net results folder).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from vadice.cli import main
from vadice.io import InputError
from vadice.nnunet import train as nnunet_train
from vadice.registry import PRESETS

from tiny_nnunet import NNUNET_VARS  # tests/ is on sys.path under pytest (its conftest.py)

DATA_ID = "vadice_data"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in NNUNET_VARS:
        monkeypatch.delenv(var, raising=False)


def _one_error_line(capsys, command: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"vadice {command}: error: "), err[0]
    return err[0]


@pytest.fixture
def roots(tmp_path, monkeypatch) -> dict[str, Path]:
    """A raw dataset 42 and its preprocessed folder holding cpu-small plans (what `plan --preset cpu-small` leaves)."""
    roots = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    raw = roots["nnUNet_raw"] / "Dataset042_First"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "file_ending": ".nii.gz",
                                                  "labels": {"background": 0, "GTVp": 1, "GTVn": 2},
                                                  "numTraining": 0}))
    pre = roots["nnUNet_preprocessed"] / "Dataset042_First"
    (pre / DATA_ID).mkdir(parents=True)
    plans = {"configurations": {"3d_fullres": {"data_identifier": DATA_ID}}}
    (pre / f"{PRESETS['cpu-small'].plans_identifier}.json").write_text(json.dumps(plans))
    for k, v in roots.items():
        monkeypatch.setenv(k, str(v))
    return roots


def _nothing_trained(roots) -> bool:
    return not roots["nnUNet_results"].exists()


def test_train_with_the_default_preset_after_a_cpu_small_plan_names_cpu_small(roots, capsys):
    assert main(["train", "42", "--loss", "baseline", "--fold", "0", "--device", "cpu"]) == 2
    line = _one_error_line(capsys, "train")
    assert "no resenc-m plans" in line and "--preset cpu-small" in line
    assert _nothing_trained(roots)


def test_train_without_any_plans_says_run_plan(roots, capsys):
    (roots["nnUNet_preprocessed"] / "Dataset042_First" / f"{PRESETS['cpu-small'].plans_identifier}.json").unlink()
    assert main(["train", "42", "--loss", "baseline", "--fold", "0", "--device", "cpu"]) == 2
    line = _one_error_line(capsys, "train")
    assert "vadice plan 42 --preset resenc-m" in line and "--preset cpu-small" not in line


def test_help_of_train_and_experiment_says_the_preset_default(capsys):
    for command in ("train", "experiment"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        preset_help = text.split("options:", 1)[1].split("--preset", 1)[1].split(" --", 1)[0]
        assert "resenc-m" in preset_help and "default" in preset_help, (command, preset_help)


@pytest.mark.parametrize("fold, splits, message", [
    ("7", None, "fold 7 does not exist: nnU-Net's default split has folds 0-4"),
    ("5", None, "fold 5 does not exist"),
    ("3", 3, "splits_final.json has folds 0-2"),
])
def test_train_refuses_a_fold_outside_the_split(roots, capsys, fold, splits, message):
    pre = roots["nnUNet_preprocessed"] / "Dataset042_First"
    if splits is not None:
        (pre / "splits_final.json").write_text(json.dumps([{"train": [], "val": []}] * splits))
    assert main(["train", "42", "--loss", "baseline", "--fold", fold, "--device", "cpu", "--preset",
                 "cpu-small"]) == 2
    assert message in _one_error_line(capsys, "train")
    assert _nothing_trained(roots)


def test_check_folds_accepts_the_split_and_all(tmp_path):
    nnunet_train.check_folds((0, 4, "all"), None)
    nnunet_train.check_folds((0, 4), tmp_path)  # no splits file yet: nnU-Net's 5 folds
    (tmp_path / "splits_final.json").write_text(json.dumps([{}] * 10))
    nnunet_train.check_folds((9,), tmp_path)
    with pytest.raises(InputError, match="folds 0-9"):
        nnunet_train.check_folds((10,), tmp_path)
    (tmp_path / "splits_final.json").write_text("{broken")
    with pytest.raises(InputError, match="splits file"):
        nnunet_train.check_folds((0,), tmp_path)


@pytest.mark.parametrize("extra, message", [
    (["--folds", "0,9"], "fold 9 does not exist"),
    (["--unit", "bogus:0"], "--unit 'bogus:0'"),
    (["--unit", "dual:3"], "not among --folds"),
    (["--collect"], "no experiment run here"),
])
def test_refused_experiment_leaves_no_run_folder(roots, tmp_path, capsys, extra, message):
    run = tmp_path / "runs" / "new"
    args = ["experiment", "42", "--out", str(run), "--preset", "cpu-small", "--device", "cpu", "--folds", "0,1"]
    assert main(args + extra) == 2
    assert message in _one_error_line(capsys, "experiment")
    assert not run.exists() and not (tmp_path / "runs").exists()
    assert _nothing_trained(roots)


def test_collect_lists_the_units_still_missing_on_stderr(roots, tmp_path, capsys):
    from vadice.experiment import ExperimentSettings

    run = tmp_path / "run"
    run.mkdir()
    settings = ExperimentSettings(dataset="42", preset="cpu-small", folds=(0,), setups=("baseline", "dual"),
                                  device="cpu")
    (run / "manifest.json").write_text(json.dumps({"settings": settings.fixed()}))
    before = sorted(p.name for p in run.iterdir())
    assert main(["experiment", "42", "--out", str(run), "--preset", "cpu-small", "--device", "cpu", "--folds", "0",
                 "--setups", "baseline,dual", "--collect", "--no-probabilities"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert "2 unit(s) not finished" in line and "--unit baseline:0:0 --unit dual:0:0" in line
    assert sorted(p.name for p in run.iterdir()) == before


def test_report_on_a_missing_folder_says_it_does_not_exist(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert _one_error_line(capsys, "report").endswith("nowhere: folder does not exist")


def test_experiment_whose_planning_fails_leaves_no_run_folder(roots, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["-q", "experiment", "42", "--out", str(run), "--preset", "cpu-small", "--device", "cpu",
                 "--folds", "0"]) == 2  # the raw dataset has no images: nnU-Net rejects it
    assert "imagesTr: no training images" in _one_error_line(capsys, "experiment")
    assert not run.exists()


# --------------------------------------------------------------------------- train: what runs after 100 %

NNUNET_TAIL = """2026-11-30 07:57:45.620597: This split has 4 training and 2 validation cases.
2026-11-30 07:57:45.904595: Epoch 0
2026-11-30 07:57:48.576968: Epoch time: 2.67 s
2026-11-30 07:57:50.214318: Training done.
2026-11-30 07:57:50.246447: This split has 4 training and 2 validation cases.
2026-11-30 07:57:50.246500: predicting HNTS_139_preRT
2026-11-30 07:57:50.269023: HNTS_139_preRT, shape torch.Size([1, 39, 128, 128]), rank 0
2026-11-30 07:58:21.143854: predicting HNTS_167_preRT
2026-11-30 07:58:55.820902: Validation complete
"""


def test_train_announces_the_final_validation_case_by_case(tmp_path, caplog):
    # nnU-Net's real log lines (vadice_train.log of a cpu-small run), replayed by a child process
    script = tmp_path / "fake_nnunet.py"
    script.write_text(f"print({NNUNET_TAIL!r}, end='')\n")
    import sys

    with caplog.at_level(logging.INFO, logger="vadice.nnunet.train"):
        rc, _ = nnunet_train._run_logged([sys.executable, str(script)], dict(os.environ), tmp_path / "log.txt", 1,
                                   False, False, "dual fold 0")
    assert rc == 0
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["dual fold 0: training done; running nnU-Net's final validation (2 cases)...",
                     "dual fold 0: final validation: case 1 of 2 (HNTS_139_preRT)",
                     "dual fold 0: final validation: case 2 of 2 (HNTS_167_preRT)"]
    assert (tmp_path / "log.txt").read_text().endswith(NNUNET_TAIL)


def test_train_prints_the_plain_command_once(roots, monkeypatch, capsys, caplog):
    def fake_run(argv, env, log_path, total_epochs, progress, echo, desc):
        (log_path.parent / "checkpoint_final.pth").write_bytes(b"w")
        return 0, ""

    monkeypatch.setattr(nnunet_train, "_run_logged", fake_run)
    with caplog.at_level(logging.INFO):
        assert main(["train", "42", "--loss", "baseline", "--fold", "0", "--device", "cpu", "--preset",
                     "cpu-small"]) == 0
    out = capsys.readouterr()
    shown = out.out + out.err + "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert shown.count("nnUNetv2_train 42 3d_fullres 0") == 1, shown


# --------------------------------------------------------------------------- logging, stats

def test_library_chatter_on_the_root_logger_stays_hidden(tmp_path):
    # nnU-Net's preprocessing copies labels with distutils' copy_file, which logs "copying A -> B" at INFO on the
    # root logger: `vadice plan` printed one such line per case.
    src = tmp_path / "a.txt"
    src.write_text("x")
    code = (
        "import logging, sys\n"
        "from vadice import cli\n"
        "from vadice.cli import nnunet\n"
        "def fake(args):\n"
        "    from setuptools._distutils.file_util import copy_file\n"
        f"    copy_file({str(src)!r}, {str(tmp_path / 'b.txt')!r})\n"
        "    logging.getLogger('vadice.nnunet.train').info('vadice progress line')\n"
        "    import warnings\n"  # what importing timm through nnU-Net's trainer lookup says on every predict
        "    warnings.warn('`torch.jit.interface` is deprecated. Please use `torch.compile` instead.', FutureWarning)\n"
        "    return 0\n"
        "nnunet.cmd_nnunet_path = fake\n"
        "sys.exit(cli.main(sys.argv[1:] + ['nnunet-path']))\n")
    import subprocess
    import sys

    for flags, chatter in (([], False), (["-v"], True)):
        res = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "vadice progress line" in res.stderr
        assert ("copying" in res.stderr) is chatter, res.stderr
        assert "jit.interface" not in res.stderr
        (tmp_path / "b.txt").unlink()


def _bad_mask_dataset(root: Path, bad: dict[str, bytes]) -> Path:
    """nnU-Net raw dataset 43 with two valid masks and the given broken files."""
    import numpy as np

    from vadice.io import Geometry, write_nifti

    folder = root / "nnUNet_raw" / "Dataset043_Stats"
    geom = Geometry((8, 8, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1:3, 2:4, 2:4] = 1
    for case in ("ok1", "ok2"):
        write_nifti(mask, geom, folder / "labelsTr" / f"{case}.nii.gz")
    for name, data in bad.items():
        (folder / "labelsTr" / name).write_bytes(data)
    (folder / "dataset.json").write_text("{}")
    return folder


def test_stats_names_every_bad_mask_after_the_bar(tmp_path, capsys, monkeypatch):
    bad = {f"bad{i}.nii.gz": b"\x1f\x8b\x08\x00garbage" for i in range(5)}
    folder = _bad_mask_dataset(tmp_path, bad)
    monkeypatch.chdir(tmp_path)
    assert main(["stats", str(folder), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("vadice stats: error: 5 of 7 masks are invalid: ")  # on its own line, after the bar
    assert all(f"bad{i}.nii.gz" in line for i in range(3)) and "and 2 more" in line
    assert not (tmp_path / "vadice_stats").exists()


def test_stats_takes_a_dataset_id_like_plan(tmp_path, capsys, monkeypatch):
    folder = _bad_mask_dataset(tmp_path, {})
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "stats", "43"]) == 0
    stats = json.loads((tmp_path / "vadice_stats" / folder.name / "lesion_stats.json").read_text())
    assert stats["source"] == str(folder.resolve()) and stats["groups"]["labelsTr"]["n_cases"] == 2
    assert main(["-q", "stats", "44"]) == 2
    assert "unknown dataset 44" in _one_error_line(capsys, "stats")


# --------------------------------------------------------------------------- --help examples

def _commands(parser, path=("vadice",)):
    """``(path, subparser)`` of every command and sub-command (``vadice postprocess fit`` too)."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def _example_lines(text: str) -> list[str]:
    """The ``vadice ...`` lines after the first "example(s)" line, comments cut, backslash continuations joined."""
    lines = text.replace("\\\n", " ").splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().lower().startswith("example")), len(lines))
    found = []
    for line in lines[start:]:
        line = line.strip()
        if line.lower().startswith("example"):
            line = line.split(":", 1)[1].strip()
        if line.startswith("vadice "):
            found.append(" ".join(line.split("  #")[0].split()))
    return found


def test_every_command_help_has_an_example_that_parses():
    import shlex

    from vadice.cli import build_parser

    parser = build_parser()
    commands = dict(_commands(parser))
    assert {("vadice", c) for c in ("synth", "convert", "stats", "nnunet-path", "plan", "train", "predict",
                                    "evaluate", "compare", "experiment", "report", "demo", "import-rtstruct",
                                    "export-rtstruct", "gc-predict", "export-model")} <= set(commands)
    assert ("vadice", "postprocess", "fit") in commands
    for path, sub in commands.items():
        examples = _example_lines(sub.format_help())
        assert examples, f"`{' '.join(path)} --help` has no example"
        # Every example the command was given is shown whole, on its own line (none wrapped or lost).
        assert examples == _example_lines(sub.epilog or ""), f"`{' '.join(path)} --help` cuts its examples"
        for line in examples:
            argv = shlex.split(line)
            assert tuple(argv[:len(path)]) == path, f"`{' '.join(path)} --help` shows another command: {line}"
            try:
                parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"help example does not parse: {line}")
