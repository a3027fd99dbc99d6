"""What the tests that plan, train or predict through nnU-Net share: its root variables kept out of the tests' way
(nnU-Net reads them at import time and would otherwise write into the caller's folders), and a tiny raw dataset
whose cases are one sliding-window tile each, so that a training's final validation costs seconds."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")


@contextmanager
def nnunet_roots(env: dict[str, str] | None = None):
    """Unset nnU-Net's roots, set ``env`` for the block, and restore the caller's values afterwards."""
    env = env or {}
    saved = {k: os.environ.pop(k) for k in NNUNET_VARS if k in os.environ}
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


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
