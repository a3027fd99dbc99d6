"""End to end through nnU-Net's own commands: plan, label lesions, train each trainer 2 iterations, predict.

A hand-made 16x56x56 dataset instead of the synthetic HNTS-like cohort: nnU-Net's
final validation (sliding window with 8-fold mirroring) after each training
dominates the run time, and the cohort's 48x128x128 cases would not fit the
5-minute budget on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from vadice.io import Geometry, write_nifti  # noqa: E402

pytestmark = pytest.mark.slow

DATASET_ID = 988
NAME = f"Dataset{DATASET_ID:03d}_VadiceE2E"
BIN = Path(sys.executable).parent

def _blob(shape, center, radii):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1


def _write_dataset(raw: Path, n_cases: int = 5, shape=(16, 56, 56), seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    folder = raw / NAME
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    geo = Geometry(size=tuple(reversed(shape)), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                   direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    for i in range(n_cases):
        lab = np.zeros(shape, np.uint8)
        lab[_blob(shape, (8, 28, 18), (4, 9, 8))] = 1
        for _ in range(3):
            r = rng.uniform(1.5, 4.5)
            c = (rng.integers(4, shape[0] - 4), rng.integers(8, shape[1] - 8), rng.integers(32, shape[2] - 6))
            lab[_blob(shape, c, (max(r / 2, 1.0), r, r)) & (lab == 0)] = 2
        img = rng.normal(100, 10, shape).astype(np.float32) + 60 * (lab == 1) + 40 * (lab == 2)
        write_nifti(img, geo, folder / "imagesTr" / f"case{i:02d}_0000.nii.gz")
        write_nifti(lab, geo, folder / "labelsTr" / f"case{i:02d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": {"background": 0, "GTVp": 1, "GTVn": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return folder


def _run(cmd, env, timeout=240):
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_plan_train_each_trainer_and_predict(tmp_path):
    from vadice.nnunet import trainer_dir
    from vadice.registry import BUDGET_TRAINER, SETUPS

    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    _write_dataset(raw)
    # the trainer options file as a user writes it by hand (docs/nnunet.md)
    options = tmp_path / "options.json"
    options.write_text('{"epochs": 1, "iterations_per_epoch": 2, "val_iterations": 1, "seed": 0}\n')
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "nnUNet_extTrainer": str(trainer_dir()), "nnUNet_compile": "f", "nnUNet_def_n_proc": "1",
           "VADICE_TRAINER_OPTIONS": str(options), "OMP_NUM_THREADS": "2"}

    # planning: vadice's CPU preset (reduced width, labelled as such) plus lesion labelling
    script = ("import sys; from vadice.nnunet.plan import plan; "
              f"r = plan({DATASET_ID}, preset='cpu-small', num_processes=1, progress=False, "
              "fingerprint_samples=10000); print(r.plans_identifier)")
    plans_id = _run([sys.executable, "-c", script], env, timeout=300).stdout.strip().splitlines()[-1]
    lesion_table = pre / NAME / "vadice_lesions" / "nnUNetPlans_3d_fullres" / "lesions.json"
    assert lesion_table.is_file()
    assert plans_id != "nnUNetResEncUNetMPlans"  # a reduced network must not carry ResEnc M's name

    env["nnUNet_n_proc_DA"] = "0"
    trainers = [BUDGET_TRAINER, SETUPS["dual"].trainer, SETUPS["selective-ln"].trainer]
    shell_env = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"}
    for trainer in trainers:
        # a fresh shell, as a user types it: nothing but nnU-Net's command and `vadice nnunet-path`
        _run(["sh", "-c", f'nnUNet_extTrainer="$("{BIN / "vadice"}" nnunet-path)" exec "{BIN / "nnUNetv2_train"}" '
                          f'{DATASET_ID} 3d_fullres 0 -p {plans_id} -tr {trainer} -device cpu'], shell_env)
        out = res / NAME / f"{trainer}__{plans_id}__3d_fullres" / "fold_0"
        assert (out / "checkpoint_final.pth").is_file()
        logs = "".join(p.read_text() for p in out.glob("training_log_*.txt"))
        assert "vadice schedule: 1 epochs x 2 iterations, 1 validation iterations, seed 0" in logs
        assert json.loads((out / "vadice_trainer_options.json").read_text()) == json.loads(options.read_text())
        if trainer != BUDGET_TRAINER:
            record = json.loads((out / "vadice_va.json").read_text())
            assert record["trainer"] == trainer
            assert record["options"]["va_labels"] == ([1, 2] if trainer.endswith("Dual") else [2])

    # inference with a VA-trained model through nnU-Net's predictor (finds the trainer by name)
    images = raw / NAME / "imagesTr"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "case00_0000.nii.gz").symlink_to(images / "case00_0000.nii.gz")
    _run([str(BIN / "nnUNetv2_predict"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "pred"),
          "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-p", plans_id, "-tr", SETUPS["dual"].trainer,
          "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    from vadice.io import read_mask

    pred, geo = read_mask(tmp_path / "pred" / "case00.nii.gz")
    assert pred.shape == (16, 56, 56) and set(np.unique(pred)) <= {0, 1, 2}
