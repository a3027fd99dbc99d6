"""The comparator trainers (blob, CC-DiceCE, CATMIL) on real nnU-Net batches, and trained through nnU-Net."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

# the tiny planned dataset and its lesion ids, built once for this module (fixtures of test_trainers)
from test_trainers import DATASET_ID, NAME, _trainer, lesions, nnunet_env, use_options  # noqa: E402,F401

COMPARATORS = {"blob": "nnUNetTrainerBlob", "cc-dicece": "nnUNetTrainerCCDiceCE", "catmil": "nnUNetTrainerCATMIL"}


def test_registered_for_the_cli_and_found_by_nnunet(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from vadice.nnunet import comparator_trainers, trainer_dir, trainers
    from vadice.registry import SETUPS

    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_dir()))
    for loss, name in COMPARATORS.items():
        assert SETUPS[loss].trainer == name and SETUPS[loss].needs_lesion_ids
        assert recursive_find_trainer_class_by_name(name) is getattr(comparator_trainers, name)
        assert issubclass(getattr(comparator_trainers, name), trainers.nnUNetTrainerLesions)
    assert issubclass(trainers.nnUNetTrainerVA, trainers.nnUNetTrainerLesions)


def test_every_loss_is_an_experiment_setup_with_a_report_label():
    from vadice.registry import SETUPS as KNOWN_SETUPS, STUDY_SETUPS as SETUPS
    from vadice.report.html import training_loss

    assert SETUPS == ("baseline", "dual", "selective-ln")  # the default study is unchanged
    for loss in ("baseline", "dual", "selective-ln", *COMPARATORS):
        assert loss in KNOWN_SETUPS and KNOWN_SETUPS[loss].trainer and "trainer" not in training_loss(loss)


@pytest.mark.parametrize("loss", sorted(COMPARATORS))
def test_train_step_on_a_real_batch(nnunet_env, lesions, monkeypatch, tmp_path, loss):
    from vadice.losses import BlobDiceCELoss, CATMILLoss, CCDiceCELoss
    from vadice.nnunet.lesion_loss import DeepSupervisionLesionLoss

    use_options(monkeypatch, tmp_path, seed=4)
    tr = _trainer(nnunet_env, COMPARATORS[loss], patch=(12, 24, 24))
    tr.initialize()
    assert isinstance(tr.loss, DeepSupervisionLesionLoss)
    assert isinstance(tr.loss.loss, {"blob": BlobDiceCELoss, "cc-dicece": CCDiceCELoss, "catmil": CATMILLoss}[loss])
    record = json.loads((Path(tr.output_folder) / "vadice_loss.json").read_text())
    assert record["trainer"] == COMPARATORS[loss] and record["loss"] == loss
    batch = next(tr.get_dataloaders()[0])
    labels, inputs = tr.loss_inputs(batch)
    assert len(labels) == len(tr._get_deep_supervision_scales()) and labels[0].shape[1] == 1
    before = [p.detach().clone() for p in tr.network.parameters()]
    out = tr.train_step(batch)
    assert np.isfinite(out["loss"])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, tr.network.parameters()))
    val = tr.validation_step(next(tr.get_dataloaders()[1]))
    assert np.isfinite(val["loss"]) and val["tp_hard"].shape == (2,)


def test_cc_regions_are_computed_once_and_ride_with_the_ids(nnunet_env, lesions, monkeypatch, tmp_path):
    from vadice.nnunet.lesion_cache import REGION_SUFFIX

    use_options(monkeypatch, tmp_path, seed=5)
    tr = _trainer(nnunet_env, "nnUNetTrainerCCDiceCE", patch=(12, 24, 24))
    tr.initialize()
    files = {p.name: p.stat().st_mtime_ns for p in lesions.glob(f"*{REGION_SUFFIX}")}
    assert len(files) == 5
    _trainer(nnunet_env, "nnUNetTrainerCCDiceCE").initialize()  # cached: nothing recomputed
    assert {p.name: p.stat().st_mtime_ns for p in lesions.glob(f"*{REGION_SUFFIX}")} == files
    table = json.loads((lesions / "lesions.json").read_text())["cases"]
    dl, _ = tr.get_dataloaders()
    agree = total = 0
    for _ in range(3):
        batch = next(dl)
        labels, ids, regions = tr.lesion_maps(batch)
        assert regions[0].shape[1] == 2 and regions[-1].shape[2:] == labels[-1].shape[2:]
        for b, case in enumerate(batch["keys"]):
            lesion_label = {int(k): v["label"] for k, v in table[case]["lesions"].items()}
            for j, c in enumerate((1, 2)):
                cells = set(torch.unique(regions[0][b, j]).tolist()) - {0}
                # every cell is a lesion of that label of this case (cells of the other label never leak in)
                assert all(lesion_label.get(k) == c for k in cells)
                own = (ids[0][b, 0] > 0) & (labels[0][b, 0] == c)
                agree += (regions[0][b, j][own] == ids[0][b, 0][own]).sum().item()
                total += own.sum().item()
        assert np.isfinite(tr.train_step(batch)["loss"])
    # a lesion voxel lies in its own lesion's cell (ids and cells sampled alike; only the border shell
    # where ids are reconciled with the interpolated labels may differ)
    assert total > 0 and agree / total > 0.9


def test_catmil_warm_up_follows_the_epoch_and_uses_case_sizes(nnunet_env, lesions, monkeypatch, tmp_path):
    use_options(monkeypatch, tmp_path, catmil_warmup_epochs=4)
    tr = _trainer(nnunet_env, "nnUNetTrainerCATMIL", patch=(12, 24, 24))
    tr.initialize()
    loss = tr.loss.loss
    assert loss.warmup_epochs == 4 and loss.cat_weight == 0
    tr.current_epoch = 2
    tr.on_train_epoch_start()
    assert loss.epoch == 2 and loss.cat_weight == pytest.approx(0.05)
    table = json.loads((lesions / "lesions.json").read_text())["cases"]
    batch = next(tr.get_dataloaders()[0])
    _, inputs = tr.loss_inputs(batch)
    for b, case in enumerate(batch["keys"]):
        for k, les in table[case]["lesions"].items():
            assert inputs["sizes"][b, int(k)].item() == les["voxels"]


def test_resuming_with_other_comparator_options_is_refused(nnunet_env, lesions):
    from vadice.nnunet import comparator_trainers

    _trainer(nnunet_env, "nnUNetTrainerBlob").initialize()

    class nnUNetTrainerBlob(comparator_trainers.nnUNetTrainerBlob):  # same name, same output folder, nodes only
        loss_options = {**comparator_trainers.nnUNetTrainerBlob.loss_options, "blob_labels": (2,)}

    tr = _trainer(nnunet_env, nnUNetTrainerBlob, continuing=True)
    with pytest.raises(RuntimeError, match=r"resuming with different loss settings \(options\)"):
        tr.initialize()


def test_deep_supervision_wrapper_checks_every_list_length():
    from vadice.losses import BlobDiceCELoss
    from vadice.nnunet.lesion_loss import DeepSupervisionLesionLoss

    loss = DeepSupervisionLesionLoss(BlobDiceCELoss(), [0.5, 0.5])
    outs = [torch.randn(1, 3, 4, 4, 4), torch.randn(1, 3, 2, 2, 2)]
    targets = [torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 2, 2, 2)]
    with pytest.raises(ValueError, match="2 outputs, 2 targets, 1 instances, 2 weights"):
        loss(outs, targets, instances=[torch.zeros(1, 1, 4, 4, 4)])
    value = loss(outs, targets, instances=[torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 2, 2, 2)])
    assert torch.isfinite(value)


def train_and_predict(nnunet_env, tmp_path, trainer: str):
    """Plain nnUNetv2_train (2 iterations) then nnUNetv2_predict with ``trainer`` found through nnUNet_extTrainer.

    Returns ``(fold folder, predicted label map of case01)``.
    """
    from vadice.io import read_mask
    from vadice.nnunet import trainer_dir
    from vadice.nnunet.trainer_options import TrainerOptions, write

    binary = Path(sys.executable).parent
    options = write(tmp_path / "options.json", TrainerOptions(epochs=1, iterations_per_epoch=2, val_iterations=1,
                                                              seed=0, val_mirroring=False, torch_threads=1))
    env = {**os.environ, "nnUNet_extTrainer": str(trainer_dir()), "VADICE_TRAINER_OPTIONS": str(options),
           "nnUNet_n_proc_DA": "0", "nnUNet_results": str(tmp_path / "res")}

    def run(cmd):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)  # loaded 2-core runners
        assert res.returncode == 0, f"{cmd[0]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"

    run([str(binary / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-p", nnunet_env["plans_id"],
         "-tr", trainer, "-device", "cpu"])
    out = tmp_path / "res" / NAME / f"{trainer}__{nnunet_env['plans_id']}__3d_fullres" / "fold_0"
    assert (out / "checkpoint_final.pth").is_file()
    (tmp_path / "in").mkdir()
    image = nnunet_env["root"] / "raw" / NAME / "imagesTr" / "case01_0000.nii.gz"
    (tmp_path / "in" / image.name).symlink_to(image)
    run([str(binary / "nnUNetv2_predict"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "pred"),
         "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-p", nnunet_env["plans_id"], "-tr", trainer,
         "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
    pred, _ = read_mask(tmp_path / "pred" / "case01.nii.gz")
    return out, pred


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(COMPARATORS))
def test_nnunet_trains_and_predicts_with_the_comparator(nnunet_env, lesions, tmp_path, loss):
    """Plain nnUNetv2_train / nnUNetv2_predict with the trainer found through nnUNet_extTrainer."""
    out, pred = train_and_predict(nnunet_env, tmp_path, COMPARATORS[loss])
    assert json.loads((out / "vadice_loss.json").read_text())["loss"] == loss
    logs = "".join(p.read_text() for p in out.glob("training_log_*.txt"))
    assert "vadice schedule: 1 epochs x 2 iterations, 1 validation iterations, seed 0" in logs
    assert pred.shape == (16, 56, 56) and set(np.unique(pred).tolist()) <= {0, 1, 2}
