"""vadice.nnunet.paths, .plan, .train: paths, dataset resolution, plan presets, errors; a slow train/resume/predict run."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from vadice.io import InputError
from vadice import registry
from vadice.nnunet import inference, paths, trainer_dir
from vadice.nnunet import plan as nnplan
from vadice.nnunet import train as nntrain
from vadice.nnunet.planners import PLANNERS, vadiceCPUSmallPlanner

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")
TINY_ID = 987
TINY_SHAPE = (16, 32, 32)  # (z, y, x): one sliding-window tile, so validation/prediction stay cheap


def write_tiny_dataset(raw_root: Path, dataset_id: int = TINY_ID, n_cases: int = 5, seed: int = 0,
                       shape=TINY_SHAPE) -> Path:
    """nnU-Net raw dataset: a GTVp blob (1) and two small nodes (2) per case on noise."""
    rng = np.random.default_rng(seed)
    folder = raw_root / f"Dataset{dataset_id:03d}_Tiny"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    zz, yy, xx = np.indices(shape)
    for i in range(n_cases):
        seg = np.zeros(shape, np.uint8)
        c = np.array(shape) // 2 + rng.integers(-2, 3, 3)
        seg[((zz - c[0]) * 1.5) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 16] = 1
        for _ in range(2):
            n = (rng.integers(3, shape[0] - 3), rng.integers(4, shape[1] - 4), rng.integers(3, 8))
            seg[((zz - n[0]) * 1.5) ** 2 + (yy - n[1]) ** 2 + (xx - n[2]) ** 2 <= 4] = 2
        img = (rng.normal(0, 1, shape) + 3.0 * (seg == 1) + 2.0 * (seg == 2) + 10).astype(np.float32)
        for arr, path in ((img, folder / "imagesTr" / f"tiny{i:02d}_0000.nii.gz"),
                          (seg, folder / "labelsTr" / f"tiny{i:02d}.nii.gz")):
            image = sitk.GetImageFromArray(arr)
            image.SetSpacing((1.0, 1.0, 1.5))
            sitk.WriteImage(image, str(path))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": {"background": 0, "GTVp": 1, "GTVn": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return folder


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in NNUNET_VARS + ("VADICE_TRAINER_OPTIONS",):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Tiny dataset planned with cpu-small (fingerprint sampling lowered: only CT normalisation uses it)."""
    root = tmp_path_factory.mktemp("nnunet")
    folder = write_tiny_dataset(root / "nnUNet_raw")
    saved = {k: os.environ.pop(k) for k in NNUNET_VARS if k in os.environ}
    try:
        result = nnplan.plan(folder, preset="cpu-small", num_processes=1, progress=False,
                             fingerprint_samples=100_000)
    finally:
        os.environ.update(saved)
    return root, folder, result


# ------------------------------------------------------------------------------------ paths, datasets


def test_resolve_paths_options_override_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env_raw"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "env_results"))
    roots = paths.resolve_paths(raw=tmp_path / "opt_raw")
    assert roots.raw == tmp_path / "opt_raw"
    assert roots.results == tmp_path / "env_results"
    assert roots.preprocessed is None
    with pytest.raises(InputError, match=r"^nnUNet_preprocessed is not set: export nnUNet_preprocessed=DIR"):
        roots.require("preprocessed")
    assert roots.env() == {"nnUNet_raw": str(tmp_path / "opt_raw"), "nnUNet_results": str(tmp_path / "env_results")}


def test_resolve_dataset_by_id_name_and_path(tmp_path, monkeypatch):
    folder = write_tiny_dataset(tmp_path / "nnUNet_raw", n_cases=1)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    by_id = paths.resolve_dataset(TINY_ID)
    assert (by_id.id, by_id.name) == (TINY_ID, folder.name)
    assert paths.resolve_dataset(str(TINY_ID)) == by_id
    assert paths.resolve_dataset(folder.name) == by_id
    monkeypatch.delenv("nnUNet_raw")
    by_path = paths.resolve_dataset(folder)
    assert (by_path.id, by_path.name) == (TINY_ID, folder.name)
    # a parent called nnUNet_raw gives the conventional siblings when the variables are unset
    assert by_path.paths == paths.NNUNetPaths(tmp_path / "nnUNet_raw", tmp_path / "nnUNet_preprocessed",
                                               tmp_path / "nnUNet_results")
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "elsewhere"))
    assert paths.resolve_dataset(str(folder)).paths.results == tmp_path / "elsewhere"


def test_resolve_dataset_path_outside_nnunet_raw_sets_only_raw(tmp_path):
    folder = write_tiny_dataset(tmp_path / "mydata", n_cases=1)
    ref = paths.resolve_dataset(folder)
    assert ref.paths.raw == tmp_path / "mydata"
    assert ref.paths.preprocessed is None and ref.paths.results is None


@pytest.mark.parametrize("dataset, message", [
    (123, r"^unknown dataset 123: no Dataset123_\* folder in nnUNet_raw="),
    ("Task05_Foo", r"expected an id \(e\.g\. 101\), a name like Dataset101_HNTS"),
    ("1000", r"nnU-Net ids have 1 to 3 digits"),
])
def test_resolve_dataset_errors(tmp_path, monkeypatch, dataset, message):
    (tmp_path / "raw").mkdir()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    with pytest.raises(InputError, match=message):
        paths.resolve_dataset(dataset)


def test_resolve_dataset_needs_a_root_or_a_dataset_folder(tmp_path):
    with pytest.raises(InputError, match=r"^nnUNet_raw is not set"):
        paths.resolve_dataset(5)
    not_dataset = tmp_path / "Dataset005_X"
    not_dataset.mkdir()
    with pytest.raises(InputError, match="not an nnU-Net raw dataset folder"):
        paths.resolve_dataset(not_dataset)
    with pytest.raises(InputError, match="dataset folder does not exist"):
        paths.resolve_dataset(tmp_path / "nope" / "Dataset006_Y")


def test_resolve_dataset_ambiguous_id(tmp_path, monkeypatch):
    for name in ("Dataset007_A", "Dataset007_B"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    with pytest.raises(InputError, match="ambiguous: Dataset007_A, Dataset007_B"):
        paths.resolve_dataset(7)


# ---------------------------------------------------------------------------------------- environment


def test_build_env_for_cpu(tmp_path):
    other = str(tmp_path / "other_trainers")
    base = {"nnUNet_extTrainer": other, "VADICE_TRAINER_OPTIONS": "/stale.json", "PATH": "/bin"}
    env = paths.build_env(paths.NNUNetPaths(tmp_path / "r", tmp_path / "p", tmp_path / "o"), "cpu",
                           tmp_path / "options.json", base=base)
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [str(trainer_dir()), other]
    assert env["nnUNet_raw"] == str(tmp_path / "r") and env["nnUNet_results"] == str(tmp_path / "o")
    assert env["nnUNet_compile"] == "f" and env["nnUNet_n_proc_DA"] == "0"
    assert env["VADICE_TRAINER_OPTIONS"] == str(tmp_path / "options.json") and env["PATH"] == "/bin"
    assert 1 <= int(env["nnUNet_def_n_proc"]) <= 8
    # idempotent: our directory is not added twice; an inherited options file never leaks into a run
    again = paths.build_env(paths.NNUNetPaths(), "cpu", base=env)
    assert again["nnUNet_extTrainer"] == env["nnUNet_extTrainer"] and "VADICE_TRAINER_OPTIONS" not in again


def test_build_env_for_cuda_keeps_nnunet_defaults():
    env = paths.build_env(paths.NNUNetPaths(), "cuda", base={"nnUNet_n_proc_DA": "12"})
    assert "nnUNet_compile" not in env and env["nnUNet_n_proc_DA"] == "12"


@pytest.mark.parametrize("kwargs, options, recorded", [
    ({}, {}, {}),
    ({"iterations": 2}, {"epochs": 1, "iterations_per_epoch": 2}, {"VADICE_EPOCHS": "1", "VADICE_ITERS_PER_EPOCH": "2"}),
    ({"iterations": 300, "epochs": 3}, {"epochs": 3, "iterations_per_epoch": 100},
     {"VADICE_EPOCHS": "3", "VADICE_ITERS_PER_EPOCH": "100"}),
    ({"epochs": 5}, {"epochs": 5}, {"VADICE_EPOCHS": "5"}),
    ({"val_iterations": 1, "seed": 0}, {"val_iterations": 1, "seed": 0}, {"VADICE_VAL_ITERS": "1", "VADICE_SEED": "0"}),
    ({"val_mirroring": False}, {"val_mirroring": False}, {"VADICE_VAL_MIRRORING": "0"}),
])
def test_budget_options_and_their_record(kwargs, options, recorded):
    """The budget as trainer options, and as vadice_train.json records it (the names older versions wrote)."""
    made = nntrain.budget_options(**kwargs)
    assert made.to_json() == options
    assert nntrain.budget_record(made) == recorded
    # threads and the warm start are not part of the recorded budget
    assert nntrain.budget_record(replace(made, torch_threads=1, warm_start="/w.pth")) == recorded


@pytest.mark.parametrize("kwargs, message", [
    ({"iterations": 10, "epochs": 3}, r"iterations \(10\) must be a multiple of epochs \(3\)"),
    ({"iterations": 0}, "iterations must be a positive integer"),
    ({"epochs": 1.5}, "epochs must be a positive integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_budget_options_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        nntrain.budget_options(**kwargs)


def test_trainer_for_each_setup_comes_from_the_registry():
    assert nntrain._trainer_for("baseline", False) == "nnUNetTrainer"  # nnU-Net's own, unmodified
    assert nntrain._trainer_for("baseline", True) == "nnUNetTrainerBudget"
    assert nntrain._trainer_for("dual", True) == nntrain._trainer_for("dual", False) == "nnUNetTrainerVADual"
    assert nntrain._trainer_for("selective-ln", False) == "nnUNetTrainerVASelectiveLN"
    with pytest.raises(InputError, match="unknown set-up 'focal'"):
        nntrain._trainer_for("focal", False)


def test_plain_command_lists_what_plain_nnunet_needs(tmp_path):
    ref = paths.DatasetRef(12, "Dataset012_X", paths.NNUNetPaths(tmp_path / "r", tmp_path / "p", tmp_path / "o"))
    env = paths.build_env(ref.paths, "cpu", tmp_path / "o" / "vadice_trainer_options.json", base={})
    cmd = nntrain.plain_command(ref, "nnUNetTrainerVADual", "vadiceCPUSmallPlans", 0, "cpu", 1, True, env)
    assert cmd.endswith("nnUNetv2_train 12 3d_fullres 0 -tr nnUNetTrainerVADual -p vadiceCPUSmallPlans "
                        "-device cpu --c")
    for word in (f"nnUNet_extTrainer={trainer_dir()}", "nnUNet_compile=f",
                 f"VADICE_TRAINER_OPTIONS={tmp_path / 'o' / 'vadice_trainer_options.json'}",
                 f"nnUNet_results={tmp_path / 'o'}"):
        assert word in cmd
    gpu = nntrain.plain_command(ref, "nnUNetTrainer", "nnUNetResEncUNetMPlans", "all", "cuda", 4, False,
                               paths.build_env(ref.paths, "cuda", base={}))
    assert gpu.endswith("nnUNetv2_train 12 3d_fullres all -tr nnUNetTrainer -p nnUNetResEncUNetMPlans "
                        "-device cuda -num_gpus 4")
    assert "nnUNet_extTrainer" not in gpu and "nnUNet_compile" not in gpu and "VADICE" not in gpu


def test_epoch_lines_are_recognised():
    assert nntrain._EPOCH_LINE.search("2026-11-27 07:34:35.364602: Epoch 12").group(1) == "12"
    assert nntrain._EPOCH_LINE.search("Epoch 0").group(1) == "0"
    assert nntrain._EPOCH_LINE.search("2026-11-27 07:35:01.314418: Epoch time: 25.95 s") is None
    assert nntrain._EPOCH_END.search("2026-11-27 07:35:01.314418: Epoch time: 25.95 s")


@pytest.mark.parametrize("module", [paths, nnplan, nntrain, inference])
def test_nothing_patched_in_nnunet_or_torch(module):
    """The training entry and the predictor use nnU-Net's own lookup and torch's own thread setting."""
    import nnunetv2.inference.predict_from_raw_data as pfr
    import nnunetv2.run.run_training as rt
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    source = Path(module.__file__).read_text()
    assert "setattr(" not in source and "recursive_find_trainer_class_by_name" not in source
    assert not hasattr(module, "find_trainer_class")
    assert rt.recursive_find_trainer_class_by_name is recursive_find_trainer_class_by_name
    assert pfr.recursive_find_trainer_class_by_name is recursive_find_trainer_class_by_name
    assert torch.set_num_threads.__module__ == "torch"


def test_raw_signature_changes_with_content(tmp_path):
    folder = write_tiny_dataset(tmp_path / "raw", n_cases=1)
    before = nnplan._raw_signature(folder)
    assert nnplan._raw_signature(folder) == before
    (folder / "labelsTr" / "tiny00.nii.gz").write_bytes(b"changed")
    assert nnplan._raw_signature(folder) != before


# ----------------------------------------------------------------------------------------- bad inputs


def test_plan_errors(tmp_path, monkeypatch):
    folder = write_tiny_dataset(tmp_path / "data", n_cases=1)
    with pytest.raises(InputError, match="unknown plan preset 'resenc-xl'"):
        nnplan.plan(folder, preset="resenc-xl")
    with pytest.raises(InputError, match=r"^nnUNet_preprocessed is not set"):
        nnplan.plan(folder, preset="cpu-small")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "data"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    with pytest.raises(InputError, match="unknown dataset 321"):
        nnplan.plan(321)
    with pytest.raises(InputError, match="dataset.json missing"):
        nnplan.plan("Dataset322_Missing")


def test_plan_rejects_a_dataset_nnunet_rejects(tmp_path):
    folder = write_tiny_dataset(tmp_path / "nnUNet_raw", n_cases=2)
    (folder / "labelsTr" / "tiny01.nii.gz").unlink()
    with pytest.raises(InputError, match=r"Dataset987_Tiny: nnU-Net rejected the dataset: "):
        nnplan.plan(folder, preset="cpu-small", num_processes=1, progress=False)


def test_plan_works_with_augmentation_workers_set_to_zero(tmp_path, monkeypatch):
    # nnU-Net's planner would call torch.set_num_threads(0); the value is the user's, for training
    folder = write_tiny_dataset(tmp_path / "nnUNet_raw", n_cases=2)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    result = nnplan.plan(folder, preset="cpu-small", num_processes=1, progress=False, fingerprint_samples=10_000)
    assert "plan" in result.steps_run
    assert os.environ["nnUNet_n_proc_DA"] == "0"


def test_train_before_plan_says_run_plan(tmp_path):
    folder = write_tiny_dataset(tmp_path / "nnUNet_raw", n_cases=1)
    with pytest.raises(InputError, match=r"vadiceCPUSmallPlans\.json: no cpu-small plans for Dataset987_Tiny: "
                                         r"run `vadice plan .* --preset cpu-small` first"):
        nntrain.train(folder, "baseline", 0, preset="cpu-small", device="cpu")


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "focal"}, "unknown set-up 'focal'"),
    ({"preset": "small"}, "unknown plan preset 'small'"),
    ({"fold": "first"}, "fold must be comma-separated integers or 'all'"),
    ({"fold": -1}, "fold must be >= 0"),
    ({"fold": "0,1"}, "train takes one fold at a time"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"num_gpus": 2}, "multi-GPU training .* needs --device cuda"),
    ({"iterations": 5, "epochs": 2}, "must be a multiple of epochs"),
    ({"threads": 0}, "threads must be a positive integer"),
])
def test_train_argument_errors(tmp_path, kwargs, message):
    folder = write_tiny_dataset(tmp_path / "nnUNet_raw", n_cases=1)
    args = {"loss": "baseline", "fold": 0, "preset": "cpu-small", "device": "cpu", **kwargs}
    with pytest.raises(InputError, match=message):
        nntrain.train(folder, **args)


def test_train_on_cuda_without_cuda_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    folder = write_tiny_dataset(tmp_path / "nnUNet_raw", n_cases=1)
    with pytest.raises(InputError, match="--device cuda: CUDA is not available"):
        nntrain.train(folder, "dual", 0, preset="cpu-small", device="cuda")


# ------------------------------------------------------------------------------------ cpu-small plans


def test_presets_are_honestly_named():
    """Each preset's plans identifier is the name its planner writes; only ResEnc M's planner writes ResEnc M's."""
    import inspect

    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
        nnUNetPlannerResEncM,
    )

    def written_name(planner):
        return inspect.signature(planner.__init__).parameters["plans_name"].default

    assert PLANNERS["resenc-m"] is nnUNetPlannerResEncM
    assert set(PLANNERS) == set(registry.PRESETS)
    for name, preset in registry.PRESETS.items():
        assert written_name(PLANNERS[name]) == preset.plans_identifier
    resenc_name = written_name(nnUNetPlannerResEncM)
    assert [p.name for p in registry.PRESETS.values() if p.plans_identifier == resenc_name] == ["resenc-m"]


def test_cpu_small_plan(planned):
    root, folder, result = planned
    assert result.plans_identifier == "vadiceCPUSmallPlans"
    assert result.steps_run == ("fingerprint", "plan", "preprocess", "instances")
    assert result.preprocessed_folder == root / "nnUNet_preprocessed" / folder.name
    plans_file = result.preprocessed_folder / "vadiceCPUSmallPlans.json"
    plans = json.loads(plans_file.read_text())
    assert plans["plans_name"] == "vadiceCPUSmallPlans"
    assert plans["experiment_planner_used"] == "vadiceCPUSmallPlanner"
    conf = plans["configurations"]["3d_fullres"]
    arch = conf["architecture"]
    assert arch["network_class_name"].endswith("ResidualEncoderUNet")
    features = arch["arch_kwargs"]["features_per_stage"]
    assert features[0] == 8 and max(features) <= 80
    assert features == [min(80, 8 * 2 ** i) for i in range(len(features))]
    assert conf["batch_size"] == 2
    assert np.prod(conf["patch_size"]) <= 32 * 64 * 64
    assert all(p <= m for p, m in zip(conf["patch_size"], conf["median_image_size_in_voxels"]))
    import hashlib
    assert result.plans_sha256 == hashlib.sha256(plans_file.read_bytes()).hexdigest()
    # lesion preprocessing for the VA trainers ran on every case
    from vadice.nnunet.lesion_cache import lesion_folder

    lesions = lesion_folder(result.preprocessed_folder, conf["data_identifier"])
    table = json.loads((lesions / "lesions.json").read_text())
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (folder / "imagesTr").iterdir())
    assert sorted(table["cases"]) == cases
    assert all((lesions / f"{c}_inst.b2nd").is_file() for c in cases)
    assert (result.preprocessed_folder / "gt_segmentations" / f"{cases[0]}.nii.gz").is_file()


def test_plan_again_skips_finished_steps(planned):
    _, folder, first = planned
    again = nnplan.plan(folder, preset="cpu-small", num_processes=1, progress=False, fingerprint_samples=100_000)
    assert again.steps_run == ()
    assert again.plans_sha256 == first.plans_sha256


def test_plan_ignores_rewritten_dataset_json_and_converter_files(planned):
    """A converter re-run rewrites dataset.json (same content) and its own manifest: no re-planning."""
    _, folder, first = planned
    (folder / "dataset.json").write_text((folder / "dataset.json").read_text())
    (folder / "vadice_convert.json").write_text("{}")
    try:
        again = nnplan.plan(folder, preset="cpu-small", num_processes=1, progress=False,
                            fingerprint_samples=100_000)
        assert again.steps_run == ()
    finally:
        (folder / "vadice_convert.json").unlink()


def test_cpu_small_patch_cap_keeps_nnunet_aspect_logic(planned, tmp_path):
    """An HNTS-like fingerprint (75x512x512 at 2x0.5x0.5 mm) planned with cpu-small: narrow, small patch."""
    root, folder, _ = planned
    raw = tmp_path / "nnUNet_raw" / "Dataset988_HNTSLike"
    shutil.copytree(folder, raw)
    pre = tmp_path / "nnUNet_preprocessed" / raw.name
    pre.mkdir(parents=True)
    fingerprint = json.loads((root / "nnUNet_preprocessed" / folder.name / "dataset_fingerprint.json").read_text())
    n = len(fingerprint["spacings"])
    fingerprint["spacings"] = [[2.0, 0.5, 0.5]] * n
    fingerprint["shapes_after_crop"] = [[75, 512, 512]] * n
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    env = {"nnUNet_raw": str(raw.parent), "nnUNet_preprocessed": str(pre.parent)}
    with paths.temporary_environ(env), paths.quiet_stdout(None):
        planner = vadiceCPUSmallPlanner(988)
        plans = planner.plan_experiment()
    conf = plans["configurations"]["3d_fullres"]
    patch = conf["patch_size"]
    assert np.prod(patch) <= 32 * 64 * 64
    # nnU-Net shrinks whichever axis covers the largest fraction of the median shape, so the patch keeps
    # roughly the image's proportions (in voxels) instead of a fixed cube
    fractions = [p / m for p, m in zip(patch, (75, 512, 512))]
    assert max(fractions) / min(fractions) < 1.5
    features = conf["architecture"]["arch_kwargs"]["features_per_stage"]
    assert features[0] == 8 and max(features) == 80
    assert conf["batch_size"] == 2
    assert planner.static_estimate_VRAM_usage((64, 128, 128), 1, 3, conf["architecture"]["network_class_name"],
                                              conf["architecture"]["arch_kwargs"],
                                              conf["architecture"]["_kw_requires_import"]) == float("inf")


def test_unfinished_run_needs_resume_and_other_settings_are_refused(planned, tmp_path):
    root, folder, _ = planned
    results = tmp_path / "results"
    # the folder train() reports for this run (TrainResult.model_dir); nnUNetTrainerBudget: a budgeted baseline
    model = results / folder.name / "nnUNetTrainerBudget__vadiceCPUSmallPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_latest.pth").write_bytes(b"")
    with pytest.raises(InputError, match="holds an unfinished run: pass --resume"):
        nntrain.train(folder, "baseline", 0, preset="cpu-small", device="cpu", iterations=2, results_dir=results)
    (model / "fold_0" / nntrain.TRAIN_SETTINGS_FILE).write_text(json.dumps({"trainer": "nnUNetTrainerBudget"}))
    with pytest.raises(InputError, match="holds a run with other settings"):
        nntrain.train(folder, "baseline", 0, preset="cpu-small", device="cpu", iterations=2, results_dir=results,
                     resume=True)


# ------------------------------------------------------------------------- train, resume, predict (slow)


def _oblique_copy(src: Path, dst: Path) -> sitk.Image:
    image = sitk.ReadImage(str(src))
    c, s = np.cos(np.pi / 7), np.sin(np.pi / 7)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetSpacing((0.9, 1.1, 1.6))
    sitk.WriteImage(image, str(dst))
    return image


@pytest.mark.slow
def test_train_resume_and_predict_keep_geometry(planned, tmp_path):
    root, folder, _ = planned
    results = tmp_path / "results"
    kwargs = dict(preset="cpu-small", device="cpu", iterations=2, val_iterations=1, seed=0,
                  results_dir=results, progress=False, resume=True, threads=1)
    first = nntrain.train(folder, "baseline", 0, **kwargs)
    assert not first.skipped
    assert first.trainer == "nnUNetTrainerBudget"
    assert first.checkpoint.is_file() and (first.fold_dir / "validation" / "summary.json").is_file()
    assert first.model_dir == results / folder.name / "nnUNetTrainerBudget__vadiceCPUSmallPlans__3d_fullres"
    assert first.command.endswith(f"nnUNetv2_train {TINY_ID} 3d_fullres 0 -tr nnUNetTrainerBudget "
                                  "-p vadiceCPUSmallPlans -device cpu --c")
    options_file = first.fold_dir / "vadice_trainer_options.json"
    assert f"VADICE_TRAINER_OPTIONS={options_file}" in first.command
    assert json.loads(options_file.read_text()) == {"epochs": 1, "iterations_per_epoch": 2, "val_iterations": 1,
                                                    "seed": 0, "torch_threads": 1}
    assert json.loads((first.fold_dir / "vadice_train.json").read_text())["budget"] == {
        "VADICE_EPOCHS": "1", "VADICE_ITERS_PER_EPOCH": "2", "VADICE_VAL_ITERS": "1", "VADICE_SEED": "0"}
    log_text = first.log_file.read_text()
    assert "Epoch 0" in log_text and "1 epochs x 2 iterations" in log_text

    second = nntrain.train(folder, "baseline", 0, **kwargs)
    assert second.skipped and second.checkpoint == first.checkpoint
    with pytest.raises(InputError, match="holds a run with other settings"):
        nntrain.train(folder, "baseline", 0, **{**kwargs, "iterations": 4})

    inputs = tmp_path / "in"
    inputs.mkdir()
    source = sorted((folder / "imagesTr").iterdir())[0]
    oblique = _oblique_copy(source, inputs / "oblique_0000.nii.gz")
    out = tmp_path / "pred"
    written = inference.predict(first.model_dir, inputs, out, folds=(0,), device="cpu", progress=False,
                             use_mirroring=False)
    assert written == [out / "oblique.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["oblique.nii.gz"]  # nnU-Net's json files stay out
    assert not list(tmp_path.glob(".vadice_predict.*"))
    pred = sitk.ReadImage(str(written[0]))
    assert pred.GetSize() == oblique.GetSize()
    np.testing.assert_allclose(pred.GetSpacing(), oblique.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(pred.GetOrigin(), oblique.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(pred.GetDirection(), oblique.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
