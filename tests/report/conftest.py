"""Evaluation folders and a comparison made by `vadice evaluate` / `vadice compare` themselves, plus training logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vadice.io import Geometry, write_nifti
from vadice.report.comparison import compare_folders
from vadice.metrics.evaluate import evaluate_folders

GEOMETRY = Geometry(size=(24, 24, 8), spacing=(0.8, 0.8, 3.0), origin=(0, 0, 0),
                    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))


def truth(case: int) -> np.ndarray:
    """A primary tumour, a large node and (odd cases) a small node."""
    gt = np.zeros((8, 24, 24), np.uint8)
    gt[2:6, 4:12, 4:12] = 1
    gt[3:5, 15:19, 15:19] = 2
    if case % 2:
        gt[4, 2:4, 18:21] = 2  # 6 voxels x 1.92 mm3 = 0.012 ml
    return gt


def write_cohort(root: Path, setups=("baseline", "dual", "selective-ln"), seeds=(0, 1), n_cases=4,
                 drop_nodes=None) -> dict:
    """Truth + predictions per set-up and seed, evaluated; returns {setup: {seed: evaluation folder}}.

    ``drop_nodes(setup, seed, case) -> bool`` removes every GTVn voxel of that prediction.
    """
    rng = np.random.default_rng(7)
    gt_dir = root / "gt"
    for c in range(n_cases):
        write_nifti(truth(c), GEOMETRY, gt_dir / f"case_{c:03d}.nii.gz")
    evaluations = {}
    for si, setup in enumerate(setups):
        for seed in seeds:
            pred_dir = root / "pred" / setup / f"seed_{seed}"
            for c in range(n_cases):
                p = np.roll(truth(c), int(rng.integers(0, 2 + si)), axis=2)
                if drop_nodes is not None and drop_nodes(setup, seed, c):
                    p[p == 2] = 0
                write_nifti(p, GEOMETRY, pred_dir / f"case_{c:03d}.nii.gz")
            out = root / "eval" / setup / f"seed_{seed}"
            evaluate_folders(gt_dir, pred_dir, out, progress=False)
            evaluations.setdefault(setup, {})[seed] = out
    return evaluations


TRAINING_LOG = """
#######################################################################
Please cite the following paper when using nnU-Net:
#######################################################################

2025-01-01 10:00:00.000000: do_dummy_2d_data_aug: False
2025-01-01 10:00:01.000000: 
2025-01-01 10:00:01.000001: Epoch 0 
2025-01-01 10:00:01.000002: Current learning rate: 0.01 
2025-01-01 10:00:05.000000: train_loss -0.1234 
2025-01-01 10:00:05.000001: val_loss -0.2 
2025-01-01 10:00:05.000002: Pseudo dice [np.float32(0.5), np.float32(0.25)] 
2025-01-01 10:00:05.000003: Epoch time: 4.1 s 
2025-01-01 10:00:05.000004: Yayy! New best EMA pseudo Dice: 0.375 
2025-01-01 10:00:06.000000: 
2025-01-01 10:00:06.000001: Epoch 1 
2025-01-01 10:00:06.000002: Current learning rate: 0.00536 
2025-01-01 10:00:09.000000: train_loss -0.3 
2025-01-01 10:00:09.000001: val_loss nan 
2025-01-01 10:00:09.000002: Pseudo dice [0.6, nan] 
2025-01-01 10:00:09.000003: Epoch time: 3.0 s 
"""


@pytest.fixture
def run_dir(tmp_path):
    """Three set-ups x two seeds, evaluated and compared by vadice, and training logs."""
    setups = ["baseline", "dual", "selective-ln"]
    evaluations = write_cohort(tmp_path, setups)
    compare_folders([[evaluations[s][seed] for seed in (0, 1)] for s in setups], setups, tmp_path / "cmp", n_boot=100)
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    logs = {}
    for setup in setups:
        p = tmp_path / "train" / setup / "fold_0" / "training_log_2025_1_1_10_00_00.txt"
        p.parent.mkdir(parents=True)
        p.write_text(TRAINING_LOG)
        logs[setup] = [("fold 0, seed 0", p)]
    return {"tmp": tmp_path, "setups": setups, "evaluations": evaluations, "comparison": comparison,
            "logs": logs}


@pytest.fixture
def fakes():
    """The writers above, for tests that build their own folders (conftest is not importable)."""
    from types import SimpleNamespace

    return SimpleNamespace(write_cohort=write_cohort, training_log=TRAINING_LOG)
