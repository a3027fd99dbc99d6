"""nnU-Net integration (the only part of vadice that imports nnunetv2).

Kept import-light on purpose: ``vadice nnunet-path`` and the CLI must not pay
for importing torch/nnunetv2. Import the submodules for the real work:
``vadice.nnunet.instances`` (lesion preprocessing) and
``vadice.nnunet.trainers`` (the trainers nnU-Net finds via ``nnUNet_extTrainer``).
"""

from __future__ import annotations

from pathlib import Path

# Which nnU-Net trainer implements each loss preset (see docs/nnunet.md).
TRAINER_FOR_LOSS = {
    "baseline": "nnUNetTrainer",
    "dual": "nnUNetTrainerVADual",
    "selective-ln": "nnUNetTrainerVASelectiveLN",
    # comparators of the small-lesion bench (docs/losses.md)
    "blob": "nnUNetTrainerBlob",
    "cc-dicece": "nnUNetTrainerCCDiceCE",
    "catmil": "nnUNetTrainerCATMIL",
    # a loss-side precision lever: VA dual + the false-positive component term (docs/losses.md)
    "dual-fp": "nnUNetTrainerVADualFP",
}
# nnU-Net's own trainer with only the schedule and seed settable: short baseline runs.
BUDGET_TRAINER = "nnUNetTrainerBudget"
# Volume-aware trainer whose options come from a JSON file (VADICE_VA_CONFIG or vadice_va.json).
GENERIC_VA_TRAINER = "nnUNetTrainerVA"
VA_TRAINERS = ("nnUNetTrainerVA", "nnUNetTrainerVADual", "nnUNetTrainerVASelectiveLN", "nnUNetTrainerVADualFP")
# Trainers that need vadice's lesion ids (preprocess_instances) besides nnU-Net's data.
COMPARATOR_TRAINERS = ("nnUNetTrainerBlob", "nnUNetTrainerCCDiceCE", "nnUNetTrainerCATMIL")
# Torch CPU threads of the training process, read by the vadice trainers (nnUNetv2_train sets one per core).
THREADS_ENV = "VADICE_TORCH_THREADS"


def trainer_dir() -> Path:
    """Directory to put in ``nnUNet_extTrainer`` so plain nnU-Net finds the vadice trainers.

    It holds one module that re-exports the classes of :mod:`vadice.nnunet.trainers`,
    and nothing else: nnU-Net imports every module of that folder as a top-level
    module, in every process that looks a trainer up (``-num_gpus`` workers,
    ``nnUNetv2_predict``), and gets vadice's own classes, not copies.
    """
    return Path(__file__).resolve().parent / "nnunet_path"
