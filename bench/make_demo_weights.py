#!/usr/bin/env python
"""Make the demo's shipped common-baseline checkpoint (src/vadice/demo_weights/), or export an existing run.

The recipe (what the shipped files were made with; `vadice demo --from-scratch` trains its first stage):

    vadice synth cohort --cases 30 --seed 0 --size neck
    vadice convert cohort --task 1 --dataset-id 990 --name VadiceDemo
    vadice plan 990 --preset cpu-small          # the demo plans with fingerprint_samples=1e6 (same plans)
    vadice train 990 --loss baseline --fold 0 --preset cpu-small --device cpu \
        --iterations 1500 --epochs 30 --val-iterations 5 --no-val-mirroring --seed 0 --threads 2
    # then nnU-Net's own continuation (--c) to 60, then to 100 epochs of 50 iterations (two runs of this):
    echo '{"epochs": 60, "iterations_per_epoch": 50, "val_iterations": 5, "seed": 0, "val_mirroring": false,
           "torch_threads": 2}' > options_60.json
    VADICE_TRAINER_OPTIONS=options_60.json nnUNet_extTrainer=$(vadice nnunet-path) nnUNet_compile=f \
        nnUNet_n_proc_DA=0 nnUNetv2_train 990 3d_fullres 0 -tr nnUNetTrainerBudget -p vadiceCPUSmallPlans \
        -device cpu --c

(The shipped files were made before the trainer options file existed, with the same values in the
environment variables VADICE_EPOCHS, ...; their baseline_fold0.json records those commands as run.)

Why stages: after 1500 iterations (30 epochs, learning rate decayed to 0) the network ranked the tumour
highest but still gave it probabilities below 0.1 (no voxel predicted); continuing with nnU-Net's --c
restarts the poly schedule at the continued epoch's rate, and the tumour crossed over. The staged
schedule is kept as it was run rather than re-run as one longer schedule.

Then the final checkpoint is reduced to its network weights (all that nnU-Net's -pretrained_weights
reads), written with its SHA-256, the fold-0 training and held-out cases, the final validation Dice
on the held-out cases, versions and the training logs.

Usage:
    .venv/bin/python bench/make_demo_weights.py --work /tmp/demo_weights          # train, then export
    .venv/bin/python bench/make_demo_weights.py --work /tmp/wb --export-only      # export a finished run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RECIPE = dict(iterations=1500, epochs=30, val_iterations=5, seed=0, threads=2, continued_to_epochs=(60, 100))


def train(work: Path) -> None:
    from vadice.data.hntsmrg import convert
    from vadice.data.synth import generate_cohort
    from vadice.demo import DEMO_CASES, DEMO_DATASET_ID, DEMO_NAME, DEMO_SEED, DEMO_SIZE, set_nnunet_roots
    from vadice.nnunet import trainer_dir
    from vadice.nnunet.plan import plan
    from vadice.nnunet.train import train as train_fold
    from vadice.nnunet.trainer_options import OPTIONS_ENV, TrainerOptions, write

    roots = set_nnunet_roots(work)
    generate_cohort(work / "cohort", DEMO_CASES, DEMO_SEED, size=DEMO_SIZE)
    convert(work / "cohort", task=1, dataset_id=DEMO_DATASET_ID, out=roots["nnUNet_raw"], name=DEMO_NAME)
    plan(DEMO_DATASET_ID, preset="cpu-small", fingerprint_samples=1_000_000)
    train_fold(DEMO_DATASET_ID, loss="baseline", fold=0, preset="cpu-small", device="cpu",
               iterations=RECIPE["iterations"], epochs=RECIPE["epochs"], val_iterations=RECIPE["val_iterations"],
               val_mirroring=False, seed=RECIPE["seed"], threads=RECIPE["threads"])
    per_epoch = RECIPE["iterations"] // RECIPE["epochs"]
    for epochs in RECIPE["continued_to_epochs"]:
        options = write(work / f"options_{epochs}.json", TrainerOptions(
            epochs=epochs, iterations_per_epoch=per_epoch, val_iterations=RECIPE["val_iterations"],
            seed=RECIPE["seed"], val_mirroring=False, torch_threads=RECIPE["threads"]))
        env = {**os.environ, "nnUNet_extTrainer": str(trainer_dir()), "nnUNet_compile": "f",
               "nnUNet_n_proc_DA": "0", OPTIONS_ENV: str(options)}
        subprocess.run([str(Path(sys.executable).with_name("nnUNetv2_train")), str(DEMO_DATASET_ID), "3d_fullres", "0",
                        "-tr", "nnUNetTrainerBudget", "-p", "vadiceCPUSmallPlans", "-device", "cpu", "--c"],
                       env=env, check=True)


def export(work: Path, dest: Path) -> dict:
    import torch

    from vadice.demo import DEMO_CASES, DEMO_DATASET_ID, DEMO_NAME, DEMO_SEED, DEMO_SIZE
    from vadice.io import sha256_file

    name = f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_NAME}"
    fold_dir = work / "nnUNet_results" / name / "nnUNetTrainerBudget__vadiceCPUSmallPlans__3d_fullres" / "fold_0"
    ckpt = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    splits = json.loads((work / "nnUNet_preprocessed" / name / "splits_final.json").read_text())[0]
    validation = json.loads((fold_dir / "validation" / "summary.json").read_text())
    train_settings = json.loads((fold_dir / "vadice_train.json").read_text())
    logs = sorted(fold_dir.glob("training_log_*.txt"))  # one per stage
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / "baseline_fold0.pth"
    torch.save({"network_weights": ckpt["network_weights"]}, weights)
    with open(dest / "baseline_fold0_training_log.txt", "w") as fh:
        for log in logs:
            fh.write(f"===== {log.name}\n")
            fh.write(log.read_text())
    info = {
        "what": "common baseline checkpoint the demo fine-tunes baseline, dual and selective-ln from",
        "cohort": {"cases": DEMO_CASES, "seed": DEMO_SEED, "size": DEMO_SIZE},
        "recipe": RECIPE,
        "commands": [
            "vadice synth cohort --cases 30 --seed 0 --size neck",
            "vadice convert cohort --task 1 --dataset-id 990 --name VadiceDemo",
            "vadice plan 990 --preset cpu-small",
            "vadice train 990 --loss baseline --fold 0 --preset cpu-small --device cpu --iterations 1500 "
            "--epochs 30 --val-iterations 5 --no-val-mirroring --seed 0 --threads 2",
            *[f"nnUNetv2_train 990 3d_fullres 0 -tr nnUNetTrainerBudget -p vadiceCPUSmallPlans -device cpu --c "
              f"(VADICE_TRAINER_OPTIONS=options_{e}.json: {{\"epochs\": {e}, \"iterations_per_epoch\": 50, "
              "\"val_iterations\": 5, \"seed\": 0, \"val_mirroring\": false, \"torch_threads\": 2}; "
              "nnUNet_n_proc_DA=0, nnUNet_compile=f)"
              for e in RECIPE["continued_to_epochs"]],
            "python bench/make_demo_weights.py --work WORK --export-only",
        ],
        "train_settings": train_settings,
        "train_cases": sorted(splits["train"]),
        "held_out_cases": sorted(splits["val"]),
        "held_out_dice_nnunet": {k: v.get("Dice") for k, v in validation.get("mean", {}).items()},
        "epochs_logged": ckpt.get("current_epoch"),
        "sha256": sha256_file(weights),
        "bytes": weights.stat().st_size,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "exported": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    (dest / "baseline_fold0.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="working folder (nnU-Net roots and cohort inside)")
    p.add_argument("--export-only", action="store_true", help="only export a finished run in --work")
    p.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "vadice" / "demo_weights")
    args = p.parse_args(argv)
    if not args.export_only:
        train(args.work.resolve())
    info = export(args.work.resolve(), args.dest)
    print(json.dumps({k: info[k] for k in ("sha256", "bytes", "held_out_dice_nnunet")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
