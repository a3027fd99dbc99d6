"""`vadice nnunet-path`, `vadice plan`, `vadice train`: wiring, output and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vadice.cli import main
from vadice import registry
from vadice.nnunet import plan as nnplan
from vadice.nnunet import train as nntrain
from vadice.nnunet import trainer_dir
from vadice.nnunet.paths import NNUNetError

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in NNUNET_VARS:
        monkeypatch.delenv(var, raising=False)


def _raw_dataset(root: Path, dataset_id: int = 42) -> Path:
    folder = root / "nnUNet_raw" / f"Dataset{dataset_id:03d}_Cli"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": {"background": 0, "GTVp": 1, "GTVn": 2},
        "numTraining": 0, "file_ending": ".nii.gz"}))
    return folder


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_choices_come_from_the_registry(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(registry.SETUPS) + "}" in text
    assert "{" + ",".join(registry.PRESETS) + "}" in text and "{" + ",".join(registry.DEVICES) + "}" in text


def test_nnunet_path_prints_trainer_dir(capsys):
    assert main(["nnunet-path"]) == 0
    out = capsys.readouterr().out.strip()
    assert Path(out) == trainer_dir() and (Path(out) / "vadice_trainers.py").is_file()


def test_nnunet_path_export_keeps_existing_value(capsys, tmp_path):
    assert main(["nnunet-path", "--export"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("export nnUNet_extTrainer=")
    # evaluate it in a real shell, with and without a previous value
    for previous, expected in ((None, str(trainer_dir())), ("/x/y", f"{trainer_dir()}{os.pathsep}/x/y")):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if previous:
            env["nnUNet_extTrainer"] = previous
        shown = subprocess.run(["sh", "-c", f'{line}; printf %s "$nnUNet_extTrainer"'], env=env,
                               capture_output=True, text=True, check=True).stdout
        assert shown == expected


@pytest.mark.parametrize("argv", [
    ["plan", "42", "--preset", "resenc-l"],
    ["train", "42", "--loss", "focal", "--fold", "0"],
    ["train", "42", "--loss", "dual", "--fold", "first"],
    ["train", "42", "--loss", "dual", "--fold", "0", "--device", "tpu"],
    ["train", "42", "--loss", "dual", "--fold", "0", "--iterations", "0"],
    ["train", "42", "--loss", "dual"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_train_before_plan_says_what_to_run(tmp_path, capsys):
    folder = _raw_dataset(tmp_path)
    assert main(["train", str(folder), "--loss", "dual", "--fold", "0", "--preset", "cpu-small",
                 "--device", "cpu"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("vadice train: error: ")
    assert f"run `vadice plan {folder} --preset cpu-small` first" in line


def test_unknown_dataset_and_unset_root_are_one_line_errors(tmp_path, capsys, monkeypatch):
    assert main(["train", "42", "--loss", "baseline", "--fold", "0", "--device", "cpu"]) == 2
    assert "nnUNet_raw is not set" in _one_error_line(capsys)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert main(["plan", "42"]) == 2
    assert "unknown dataset 42: no Dataset042_* folder in nnUNet_raw=" in _one_error_line(capsys)


def test_train_on_missing_cuda_is_one_line_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    folder = _raw_dataset(tmp_path)
    assert main(["train", str(folder), "--loss", "baseline", "--fold", "all"]) == 2
    assert "--device cuda: CUDA is not available" in _one_error_line(capsys)


def _fake_result(tmp_path, skipped=False) -> nntrain.TrainResult:
    fold_dir = tmp_path / "m" / "fold_0"
    return nntrain.TrainResult(42, "Dataset042_Cli", "dual", "nnUNetTrainerVADual", "vadiceCPUSmallPlans",
                               "3d_fullres", 0, fold_dir.parent, fold_dir, fold_dir / "checkpoint_final.pth",
                               "nnUNetv2_train 42 3d_fullres 0 -tr nnUNetTrainerVADual", fold_dir / "vadice_train.log",
                               skipped=skipped, seconds=12.0)


def test_train_passes_options_and_prints_plain_command(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_train(dataset, **kwargs):
        seen.update(kwargs, dataset=dataset)
        return _fake_result(tmp_path)

    monkeypatch.setattr(nntrain, "train", fake_train)
    assert main(["-q", "train", "42", "--loss", "dual", "--fold", "all", "--preset", "cpu-small", "--device", "cpu",
                 "--iterations", "20", "--epochs", "2", "--val-iterations", "1", "--seed", "3", "--resume",
                 "--no-val-mirroring", "--results", str(tmp_path / "r"), "--warm-start", "w.pth"]) == 0
    assert seen == dict(dataset="42", loss="dual", fold="all", preset="cpu-small", device="cpu", iterations=20,
                        epochs=2, val_iterations=1, seed=3, resume=True, num_gpus=1, results_dir=str(tmp_path / "r"),
                        log_file=None, progress=False, echo=False, raw=None, preprocessed=None, threads=None,
                        val_mirroring=False, warm_start="w.pth")
    out = capsys.readouterr().out
    assert "nnUNetv2_train 42 3d_fullres 0 -tr nnUNetTrainerVADual" in out
    assert "checkpoint_final.pth" in out


def test_train_failure_is_one_line_exit_1(monkeypatch, capsys):
    def failing(dataset, **kwargs):
        raise NNUNetError("nnU-Net training failed (exit code 1): RuntimeError: boom; full log: /x/log")

    monkeypatch.setattr(nntrain, "train", failing)
    assert main(["train", "42", "--loss", "baseline", "--fold", "0", "--device", "cpu"]) == 1
    assert _one_error_line(capsys) == ("vadice train: error: nnU-Net training failed (exit code 1): "
                                       "RuntimeError: boom; full log: /x/log")


def test_plan_passes_options(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_plan(dataset, **kwargs):
        seen.update(kwargs, dataset=dataset)
        return nnplan.PlanResult(42, "Dataset042_Cli", "vadiceCPUSmallPlans", "3d_fullres", tmp_path, "0" * 64,
                                 (), tmp_path / "vadice_plan.log")

    monkeypatch.setattr(nnplan, "plan", fake_plan)
    assert main(["plan", "Dataset042_Cli", "--preset", "cpu-small", "--num-processes", "3", "--no-verify"]) == 0
    assert seen == dict(dataset="Dataset042_Cli", preset="cpu-small", num_processes=3, verify=False, progress=True,
                        raw=None, preprocessed=None)
    assert "nothing to do" in capsys.readouterr().out


def _planned_dataset(tmp_path: Path) -> Path:
    """A raw dataset with cpu-small plans and a (empty) preprocessed folder: enough for `vadice train`'s checks."""
    folder = _raw_dataset(tmp_path)
    pre = tmp_path / "nnUNet_preprocessed" / folder.name
    (pre / "nnUNetPlans_3d_fullres").mkdir(parents=True)
    (pre / "vadiceCPUSmallPlans.json").write_text(json.dumps(
        {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}))
    return folder


def _fake_training(monkeypatch) -> dict:
    """Replace nnU-Net's training subprocess; returns what it was given (argv, env, total_epochs)."""
    seen = {}

    def fake_run(argv, env, log_path, total_epochs, progress, echo, desc):
        seen.update(argv=argv, env=env, total_epochs=total_epochs)
        (log_path.parent / "checkpoint_final.pth").write_bytes(b"w")
        return 0, ""

    monkeypatch.setattr(nntrain, "_run_logged", fake_run)
    return seen


def test_warm_start_demo_names_the_shipped_weights_from_any_folder(monkeypatch, tmp_path, capsys):
    """`--warm-start demo` trains from src/vadice/demo_weights/baseline_fold0.pth, whatever the working folder."""
    import hashlib

    import vadice
    from vadice.nnunet.trainer_options import read

    shipped = Path(vadice.__file__).parent / "demo_weights" / "baseline_fold0.pth"
    recorded = json.loads(shipped.with_suffix(".json").read_text())["sha256"]
    folder = _planned_dataset(tmp_path)
    seen = _fake_training(monkeypatch)
    monkeypatch.chdir(tmp_path)  # no src/vadice/demo_weights below the working folder
    assert main(["-q", "train", str(folder), "--loss", "baseline", "--fold", "0", "--preset", "cpu-small",
                 "--device", "cpu", "--warm-start", "demo", "--results", str(tmp_path / "res")]) == 0
    used = Path(read(seen["env"]["VADICE_TRAINER_OPTIONS"]).warm_start)
    assert used.resolve() == shipped.resolve()
    assert hashlib.sha256(used.read_bytes()).hexdigest() == recorded
    settings = json.loads((tmp_path / "res" / folder.name / "nnUNetTrainerBudget__vadiceCPUSmallPlans__3d_fullres"
                           / "fold_0" / "vadice_train.json").read_text())
    assert settings["warm_start_sha256"] == recorded
    assert settings["budget"] == {}


def test_a_run_recorded_by_an_older_version_resumes(monkeypatch, tmp_path):
    """vadice_train.json as versions before the trainer options file wrote it (the budget as the VADICE_*
    variables, values as strings) still matches the same arguments: the run resumes, its record unchanged."""
    import vadice
    from vadice.io import sha256_file
    from vadice.nnunet.trainer_options import TrainerOptions, read

    folder = _planned_dataset(tmp_path)
    plans = tmp_path / "nnUNet_preprocessed" / folder.name / "vadiceCPUSmallPlans.json"
    shipped = Path(vadice.__file__).parent / "demo_weights" / "baseline_fold0.pth"
    fold_dir = tmp_path / "res" / folder.name / "nnUNetTrainerBudget__vadiceCPUSmallPlans__3d_fullres" / "fold_0"
    fold_dir.mkdir(parents=True)
    old_record = (
        '{\n  "budget": {\n    "VADICE_EPOCHS": "2",\n    "VADICE_ITERS_PER_EPOCH": "10",\n    "VADICE_SEED": "3",'
        '\n    "VADICE_VAL_ITERS": "1",\n    "VADICE_VAL_MIRRORING": "0"\n  },\n  "configuration": "3d_fullres",'
        '\n  "fold": 0,\n  "plans": "vadiceCPUSmallPlans",\n  "plans_sha256": "%s",\n  "trainer": "nnUNetTrainerBudget",'
        '\n  "warm_start_sha256": "%s"\n}' % (sha256_file(plans), sha256_file(shipped)))
    (fold_dir / "vadice_train.json").write_text(old_record)
    (fold_dir / "checkpoint_latest.pth").write_bytes(b"x")  # interrupted
    seen = _fake_training(monkeypatch)
    args = ["-q", "train", str(folder), "--loss", "baseline", "--fold", "0", "--preset", "cpu-small", "--device",
            "cpu", "--iterations", "20", "--epochs", "2", "--val-iterations", "1", "--no-val-mirroring",
            "--warm-start", "demo", "--threads", "1", "--results", str(tmp_path / "res"), "--resume"]
    assert main(args + ["--seed", "4"]) == 2 and not seen  # another seed is another run: refused
    assert main(args + ["--seed", "3"]) == 0
    assert "--c" in seen["argv"] and seen["total_epochs"] == 2
    assert (fold_dir / "vadice_train.json").read_text() == old_record
    options = fold_dir / "vadice_trainer_options.json"
    assert seen["env"]["VADICE_TRAINER_OPTIONS"] == str(options)
    assert read(options) == TrainerOptions(epochs=2, iterations_per_epoch=10, val_iterations=1, seed=3,
                                           val_mirroring=False, torch_threads=1, warm_start=str(shipped.resolve()))


def test_train_drops_an_inherited_options_file(monkeypatch, tmp_path):
    folder = _planned_dataset(tmp_path)
    seen = _fake_training(monkeypatch)
    monkeypatch.setenv("VADICE_TRAINER_OPTIONS", str(tmp_path / "stale.json"))
    assert main(["-q", "train", str(folder), "--loss", "baseline", "--fold", "0", "--preset", "cpu-small",
                 "--device", "cpu", "--results", str(tmp_path / "res")]) == 0
    assert "VADICE_TRAINER_OPTIONS" not in seen["env"] and seen["total_epochs"] == 1000
    assert not list((tmp_path / "res").rglob("vadice_trainer_options.json"))


def test_warm_start_that_is_no_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _raw_dataset(tmp_path)
    assert main(["train", str(folder), "--loss", "baseline", "--fold", "0", "--device", "cpu",
                 "--warm-start", "demo.pth"]) == 2
    assert "demo.pth: warm start: no such checkpoint file" in _one_error_line(capsys)
