#!/usr/bin/env python
"""Prediction speed: one nnU-Net predictor per case (vadice before the Predictor) against one per set.

Builds the demo's cohort (``vadice synth --size neck``: 30 cases, seed 0) and its cpu-small plans,
wraps the shipped demo weights (``src/vadice/demo_weights/baseline_fold0.pth``) as an nnU-Net model
folder, and predicts the first ``--cases`` pre-RT images twice in the same run:

1. the old way, emulated: a new :class:`vadice.nnunet.inference.Predictor` for every case (nnU-Net's
   predictor rebuilt and every fold's checkpoint reloaded per case, as ``runner.predict`` did when
   ``vadice predict`` called it once per case);
2. one Predictor for the whole set.

Both write every label map (nnU-Net's own writer); the label maps must be identical. It prints the
seconds per case of each arm and their ratio, then the size of the ``--save-probabilities`` files of a
few cases (``vadice predict`` itself, float16 ``np.savez_compressed``).

Usage:
    nice -n 10 .venv/bin/python bench/predict_speed.py --work /tmp/predict_speed [--cases 20] [--tta] \
        [--tile-step-size 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path


def model_from_demo_weights(work: Path) -> tuple[Path, Path]:
    """The demo cohort planned with cpu-small and the shipped weights as a model folder; returns (model, images)."""
    import torch

    from vadice.data.hntsmrg import convert
    from vadice.data.synth import generate_cohort
    from vadice.demo import DEMO_CASES, DEMO_DATASET_ID, DEMO_NAME, DEMO_SEED, DEMO_SIZE, WEIGHTS_FILE, set_nnunet_roots
    from vadice.nnunet.plan import plan

    roots = set_nnunet_roots(work)
    if not (work / "cohort" / "cohort.json").is_file():
        generate_cohort(work / "cohort", DEMO_CASES, DEMO_SEED, size=DEMO_SIZE, progress=False)
    raw = convert(work / "cohort", task=1, dataset_id=DEMO_DATASET_ID, out=roots["nnUNet_raw"], name=DEMO_NAME,
                  progress=False)
    planned = plan(DEMO_DATASET_ID, preset="cpu-small", fingerprint_samples=1_000_000, progress=False)
    model = work / "model" / "nnUNetTrainer__vadiceCPUSmallPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(planned.preprocessed_folder / f"{planned.plans_identifier}.json", model / "plans.json")
    shutil.copyfile(raw / "dataset.json", model / "dataset.json")
    weights = torch.load(WEIGHTS_FILE, map_location="cpu", weights_only=False)["network_weights"]
    # what nnU-Net's predictor reads of a checkpoint: weights, trainer (network builder), configuration
    torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               model / "fold_0" / "checkpoint_final.pth")
    return model, raw / "imagesTr"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="work folder (reused by a rerun)")
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--tta", action="store_true", help="test-time mirroring (8x the network passes)")
    p.add_argument("--tile-step-size", type=float, default=0.5,
                   help="sliding-window step as a fraction of the patch (nnU-Net's 0.5; 1.0: about 1/8 the tiles)")
    p.add_argument("--probability-cases", type=int, default=3, help="cases predicted with --save-probabilities")
    args = p.parse_args(argv)

    import numpy as np
    import SimpleITK as sitk

    from vadice.nnunet.inference import Predictor
    from vadice.predict import predict

    work = args.work.resolve()
    model, images = model_from_demo_weights(work)
    files = sorted(images.glob("*_0000.nii.gz"))[: args.cases]
    out = {arm: work / arm for arm in ("per_case", "per_set")}
    for folder in out.values():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()

    def name(f: Path) -> str:
        return f.name.replace("_0000.nii.gz", ".nii.gz")

    per_case = []
    for f in files:  # the old way: a predictor (and every checkpoint) per case
        t = time.perf_counter()
        Predictor(model, (0,), "cpu", args.tta, tile_step_size=args.tile_step_size).predict_case(
            [f], out["per_case"] / name(f))
        per_case.append(time.perf_counter() - t)
        print(f"per case {name(f)}: {per_case[-1]:.2f} s", flush=True)  # partial results survive a timeout
    t = time.perf_counter()
    predictor = Predictor(model, (0,), "cpu", args.tta, tile_step_size=args.tile_step_size)
    load = time.perf_counter() - t
    print(f"one predictor: load {load:.2f} s", flush=True)
    per_set = []
    for f in files:
        t = time.perf_counter()
        predictor.predict_case([f], out["per_set"] / name(f))
        per_set.append(time.perf_counter() - t)
        print(f"one predictor {name(f)}: {per_set[-1]:.2f} s", flush=True)
    for f in files:
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(out[arm] / name(f)))) for arm in ("per_case", "per_set"))
        assert np.array_equal(a, b), f"{name(f)}: the two arms disagree"
    old, new = sum(per_case), load + sum(per_set)
    n = len(files)
    shape = sitk.ReadImage(str(files[0])).GetSize()
    print(f"{n} cases of the neck cohort (first case {shape[0]}x{shape[1]}x{shape[2]} voxels), cpu-small, "
          f"1 fold, tta {'on' if args.tta else 'off'}, tile step {args.tile_step_size}, torch threads {__import__('torch').get_num_threads()}")
    print(f"predictor per case: {old / n:.2f} s/case (median {statistics.median(per_case):.2f} s)")
    print(f"one predictor:      {new / n:.2f} s/case (load {load:.2f} s once, then median "
          f"{statistics.median(per_set):.2f} s/case)")
    print(f"ratio (per case / one): {old / new:.2f}")

    pdir = work / "probabilities"
    shutil.rmtree(pdir, ignore_errors=True)
    sub = work / "probability_inputs"
    shutil.rmtree(sub, ignore_errors=True)
    sub.mkdir()
    for f in files[: args.probability_cases]:
        os.symlink(f, sub / f.name)
    predict(sub, pdir, model, folds=(0,), overlays=False, tta=args.tta, progress=False, save_probabilities=True)
    # (vadice predict runs nnU-Net's default tile step, 0.5; the probabilities' size does not depend on it)
    npz = sorted(pdir.glob("*.npz"))
    sizes = [p.stat().st_size / 2**20 for p in npz]
    with np.load(npz[0]) as z:
        probs = z["probabilities"]
    label_mb = statistics.mean(p.stat().st_size / 2**20 for p in pdir.glob("*.nii.gz"))
    print(f"--save-probabilities: {statistics.mean(sizes):.2f} MiB per case (float16, compressed; "
          f"{probs.shape} = {probs.nbytes / 2**20:.1f} MiB raw float16, {probs.size * 4 / 2**20:.1f} MiB as "
          f"nnU-Net's float32) next to {label_mb:.3f} MiB per label map")
    print(json.dumps({"cases": n, "per_case_s": round(old / n, 3), "one_predictor_s": round(new / n, 3),
                      "load_s": round(load, 3), "ratio": round(old / new, 3),
                      "npz_mib_per_case": round(statistics.mean(sizes), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
