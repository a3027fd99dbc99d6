"""nnU-Net integration (the only part of vadice that imports nnunetv2).

Kept import-light on purpose: ``vadice nnunet-path`` and the CLI must not pay
for importing torch/nnunetv2. The submodules, by job:

- :mod:`~vadice.nnunet.paths`: nnU-Net's roots, dataset names, subprocess environment, devices;
- :mod:`~vadice.nnunet.plan`: planning and preprocessing (resumable);
- :mod:`~vadice.nnunet.train`: training in a subprocess (budget, log, resume checks);
- :mod:`~vadice.nnunet.trainer_options`: the one options file of vadice's trainers (``VADICE_TRAINER_OPTIONS``);
- :mod:`~vadice.nnunet.inference`: :class:`~vadice.nnunet.inference.Predictor`, a model loaded once;
- :mod:`~vadice.nnunet.lesion_cache`: whole-case lesion ids labelled once per case, and the
  :class:`~vadice.nnunet.lesion_cache.LesionTable` every reader of ``lesions.json`` goes through;
- :mod:`~vadice.nnunet.planners`, :mod:`~vadice.nnunet.trainers`, :mod:`~vadice.nnunet.comparator_trainers`,
  :mod:`~vadice.nnunet.lesion_loss`, :mod:`~vadice.nnunet.datasets`,
  :mod:`~vadice.nnunet.augmentation`: the classes nnU-Net runs (plan presets, trainers found via
  ``nnUNet_extTrainer``, datasets and the spatial transform that carry the lesion ids).
"""

from __future__ import annotations

from pathlib import Path

# Trainer names live in vadice.registry (SETUPS, BUDGET_TRAINER). The volume-aware trainers, for tests and docs:
VA_TRAINERS = ("nnUNetTrainerVA", "nnUNetTrainerVADual", "nnUNetTrainerVASelectiveLN", "nnUNetTrainerVADualFP")


def trainer_dir() -> Path:
    """Directory to put in ``nnUNet_extTrainer`` so plain nnU-Net finds the vadice trainers.

    It holds one module that re-exports the classes of :mod:`vadice.nnunet.trainers`,
    and nothing else: nnU-Net imports every module of that folder as a top-level
    module, in every process that looks a trainer up (``-num_gpus`` workers,
    ``nnUNetv2_predict``), and gets vadice's own classes, not copies.
    """
    return Path(__file__).resolve().parent / "nnunet_path"
