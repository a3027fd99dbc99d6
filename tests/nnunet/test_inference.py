"""vadice.nnunet.inference: model checks, channel grouping, a Predictor that loads each fold once, probabilities.

The Predictor tests use a real nnU-Net model folder without training it: the tiny dataset of
test_plan_train.py planned with cpu-small, and two folds of randomly initialised networks built by
nnU-Net's own trainer class (seconds, not the minutes a training takes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tiny_nnunet import nnunet_roots, write_tiny_dataset  # tests/ is on sys.path under pytest (its conftest.py)

from vadice.io import InputError
from vadice.nnunet import inference

# ----------------------------------------------------------------------------------- cheap checks


def _model_folder(tmp_path: Path, channels: int = 1) -> Path:
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    names = {str(c): f"T2_{c}" for c in range(channels)}
    (model / "dataset.json").write_text(json.dumps({"channel_names": names, "file_ending": ".nii.gz"}))
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return model


def test_check_model_reads_channels_and_folds(tmp_path):
    info = inference.check_model(_model_folder(tmp_path, channels=2), "0")
    assert (info.n_channels, info.folds, info.file_ending) == (2, (0,), ".nii.gz")
    assert info.checkpoint_files() == [tmp_path / "model" / "fold_0" / "checkpoint_final.pth"]
    assert inference.model_channels(tmp_path / "model") == 2


@pytest.mark.parametrize("damage, folds, message", [
    ("plans.json", (0,), r"not a trained nnU-Net model folder \(plans.json missing\)"),
    ("dataset.json", (0,), r"not a trained nnU-Net model folder \(dataset.json missing\)"),
    (None, (0, 1), r"fold_1/checkpoint_final.pth: checkpoint not found"),
    (None, "0,x", "folds must be comma-separated integers or 'all'"),
    (None, (), "folds is empty"),
])
def test_check_model_errors(tmp_path, damage, folds, message):
    model = _model_folder(tmp_path)
    if damage:
        (model / damage).unlink()
    with pytest.raises(InputError, match=message):
        inference.check_model(model, folds)


def test_group_channels_orders_channels_and_checks_them(tmp_path):
    files = [tmp_path / n for n in ("b_0001.nii.gz", "a_0000.nii.gz", "b_0000.nii.gz", "a_0001.nii.gz")]
    grouped = inference.group_channels(files, 2)
    assert grouped == {"a": (tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"),
                       "b": (tmp_path / "b_0000.nii.gz", tmp_path / "b_0001.nii.gz")}
    with pytest.raises(InputError, match=r"case 'a': missing channel\(s\) \[1\] \(model has 2\)"):
        inference.group_channels(files[1:3], 2)
    # plain names only for one-channel models
    assert inference.group_channels([tmp_path / "scan.nii"], 1) == {"scan": (tmp_path / "scan.nii",)}
    with pytest.raises(InputError, match=r"scan.nii.gz: the model needs 2 channels"):
        inference.group_channels([tmp_path / "scan.nii.gz"], 2)
    with pytest.raises(InputError, match="notes_0000.txt: not a NIfTI file"):
        inference.group_channels([tmp_path / "notes_0000.txt"], 1)
    with pytest.raises(InputError, match="duplicate input for case 'a' channel 0"):
        inference.group_channels([tmp_path / "a_0000.nii.gz", tmp_path / "a_0000.nii"], 1)


def test_folder_predict_errors(tmp_path):
    model = _model_folder(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    with pytest.raises(InputError, match="no .nii.gz images in the input folder"):
        inference.predict(model, inputs, tmp_path / "out")
    (inputs / "scan_0000.nii.gz").write_bytes(b"")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="output path exists and is a file"):
        inference.predict(model, inputs, tmp_path / "file")


# --------------------------------------------------------------------- a real (untrained) model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """nnU-Net model folder ``nnUNetTrainer__vadiceCPUSmallPlans__3d_fullres`` with folds 0 and 1 (random weights)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from vadice.nnunet.plan import plan

    root = tmp_path_factory.mktemp("predictor")
    folder = write_tiny_dataset(root / "nnUNet_raw", dataset_id=985, n_cases=2)
    with nnunet_roots():
        result = plan(folder, preset="cpu-small", num_processes=1, progress=False, fingerprint_samples=10_000)
    model = root / "nnUNetTrainer__vadiceCPUSmallPlans__3d_fullres"
    model.mkdir()
    shutil.copyfile(result.preprocessed_folder / f"{result.plans_identifier}.json", model / "plans.json")
    shutil.copyfile(folder / "dataset.json", model / "dataset.json")
    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    for fold in (0, 1):
        torch.manual_seed(fold)
        network = nnUNetTrainer.build_network_architecture(plans, plans.get_configuration("3d_fullres"), 1, 3,
                                                           enable_deep_supervision=False)
        (model / f"fold_{fold}").mkdir()
        torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   model / f"fold_{fold}" / "checkpoint_final.pth")
    return model


@pytest.fixture
def cases(tmp_path) -> Path:
    """Three one-channel cases on different grids (20x28x24 voxels, oblique one included)."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for k in range(3):
        image = sitk.GetImageFromArray((rng.normal(0, 1, (12 + 4 * k, 28, 24)) + 10).astype(np.float32))
        image.SetSpacing((1.0, 1.1, 1.5))
        if k == 2:
            c, s = np.cos(0.3), np.sin(0.3)
            image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(image, str(folder / f"c{k}_0000.nii.gz"))
    return folder


def test_predict_loads_each_fold_checkpoint_once_for_all_cases(model, cases, tmp_path, monkeypatch):
    import torch

    from vadice.predict import predict

    loads: list[str] = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        loads.append(Path(f).parent.name)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    result = predict(cases, tmp_path / "out", model, folds=(0, 1), overlays=False, tta=False, progress=False)
    assert len(result.written) == 3
    assert sorted(loads) == ["fold_0", "fold_1"]  # once per fold, not once per fold and case


def test_saved_probabilities_have_nnunets_layout_and_reproduce_the_label_map(model, cases, tmp_path):
    """Our <case>.npz against what nnU-Net's own predictor writes with save_probabilities=True."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from vadice.predict import MANIFEST, predict

    out = tmp_path / "ours"
    predict(cases, out, model, folds=(0, 1), overlays=False, tta=False, progress=False, save_probabilities=True)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    nn = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                         allow_tqdm=False)
    nn.initialize_from_trained_model_folder(str(model), use_folds=(0, 1))
    nn.predict_from_files_sequential(str(cases), str(theirs), save_probabilities=True)
    recorded = json.loads((out / MANIFEST).read_text())["cases"]
    for k in range(3):
        with np.load(out / f"c{k}.npz") as npz:
            assert list(npz) == ["probabilities"]
            ours = npz["probabilities"]
        reference = np.load(theirs / f"c{k}.npz")["probabilities"]
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"c{k}.nii.gz")))
        assert ours.dtype == np.float16 and ours.shape == reference.shape == (3, *labels.shape)
        np.testing.assert_allclose(ours.astype(np.float32), reference, atol=1e-3)  # float16: 2^-11 relative
        assert np.array_equal(labels, sitk.GetArrayFromImage(sitk.ReadImage(str(theirs / f"c{k}.nii.gz"))))
        assert len(np.unique(labels)) > 1  # random weights: a mixed map, so the argmax check has teeth
        # argmax over C is the label map; float16 rounding is monotonic, so only ties can differ
        top = ours.max(axis=0)
        unique = (ours == top).sum(axis=0) == 1
        assert unique.mean() > 0.9
        assert np.array_equal(ours.argmax(axis=0)[unique], labels[unique])
        assert np.all(np.take_along_axis(ours, labels[None].astype(np.int64), 0)[0] == top)
        assert f"c{k}.npz" in recorded[f"c{k}"]["files"]
