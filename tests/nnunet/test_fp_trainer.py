"""nnUNetTrainerVADualFP: VA dual + the false-positive component term, on real nnU-Net batches and end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from test_comparator_trainers import train_and_predict  # noqa: E402
from test_trainers import _trainer, lesions, nnunet_env, use_options  # noqa: E402,F401

TRAINER = "nnUNetTrainerVADualFP"


def test_registered_and_found_by_nnunet(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from vadice.nnunet import trainer_dir, trainers
    from vadice.registry import SETUPS as REGISTERED

    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_dir()))
    from vadice.registry import SETUPS as KNOWN_SETUPS, STUDY_SETUPS as SETUPS
    from vadice.report.html import training_loss

    assert REGISTERED["dual-fp"].trainer == TRAINER
    assert recursive_find_trainer_class_by_name(TRAINER) is trainers.nnUNetTrainerVADualFP
    assert "dual-fp" in KNOWN_SETUPS and "dual-fp" not in SETUPS and "false-positive" in training_loss("dual-fp")


def test_loss_is_va_dual_plus_the_term_at_every_scale(nnunet_env, lesions, monkeypatch, tmp_path):
    from vadice.losses import VolumeAwareDiceCELoss
    from vadice.losses.fp_components import FalsePositiveComponentLoss, WithFalsePositiveTerm
    from vadice.nnunet.lesion_loss import DeepSupervisionLesionLoss

    use_options(monkeypatch, tmp_path, seed=3)
    tr = _trainer(nnunet_env, TRAINER, patch=(12, 24, 24))
    tr.initialize()
    assert isinstance(tr.loss, DeepSupervisionLesionLoss)
    inner = tr.loss.loss
    assert isinstance(inner, WithFalsePositiveTerm) and isinstance(inner.main, VolumeAwareDiceCELoss)
    assert inner.fp.labels == (1, 2) and inner.weight == 1.0
    record = json.loads((Path(tr.output_folder) / "vadice_va.json").read_text())
    assert record["trainer"] == TRAINER and record["fp_term"] == {"weight": 1.0, "labels": [1, 2],
                                                                   "connectivity": record["connectivity"]}

    # The bound loss on a real batch equals VA dual's plus the weighted per-scale term, computed apart.
    batch = next(tr.get_dataloaders()[0])
    labels, inputs = tr.loss_inputs(batch)
    tr.network.eval()
    with torch.no_grad():
        outputs = tr.network(batch["data"])
        got = tr.loss(outputs, labels, **inputs)
        fp = FalsePositiveComponentLoss(labels=(1, 2), connectivity=record["connectivity"])
        expected = sum(w * (inner.main(o, t, i, inputs["volumes"]) + fp(o, t))
                       for w, o, t, i in zip(tr.loss.weights, outputs, labels, inputs["instances"]) if w != 0)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    tr.network.train()
    out = tr.train_step(batch)
    assert np.isfinite(out["loss"])


def test_resuming_with_another_fp_weight_is_refused(nnunet_env, lesions):
    from vadice.nnunet import trainers

    _trainer(nnunet_env, TRAINER).initialize()

    class nnUNetTrainerVADualFP(trainers.nnUNetTrainerVADualFP):  # same name, same folder, other weight
        fp_weight = 0.5

    tr = _trainer(nnunet_env, nnUNetTrainerVADualFP, continuing=True)
    with pytest.raises(RuntimeError, match=r"resuming with different VA settings \(fp_term\)"):
        tr.initialize()


@pytest.mark.slow
def test_nnunet_trains_and_predicts_with_the_fp_trainer(nnunet_env, lesions, tmp_path):
    out, pred = train_and_predict(nnunet_env, tmp_path, TRAINER)
    assert "fp_term" in json.loads((out / "vadice_va.json").read_text())
    assert pred.shape == (16, 56, 56) and set(np.unique(pred).tolist()) <= {0, 1, 2}
