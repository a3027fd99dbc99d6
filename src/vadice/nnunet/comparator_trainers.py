"""nnU-Net trainers for the comparator losses of the small-lesion bench (docs/losses.md).

``nnUNetTrainerBlob``, ``nnUNetTrainerCCDiceCE`` and ``nnUNetTrainerCATMIL`` run
blob loss, CC-DiceCE and CATMIL on the lesion-id plumbing of
:class:`vadice.nnunet.trainers.nnUNetTrainerLesions`. Plain nnU-Net finds them,
like the VA trainers, through ``nnUNet_extTrainer`` (``vadice nnunet-path``).
"""

from __future__ import annotations

import torch

from vadice.losses import BlobDiceCELoss, CATMILLoss, CCDiceCELoss
from vadice.nnunet.trainer_options import BUDGET_OPTIONS, TrainerOptions
from vadice.nnunet.trainers import nnUNetTrainerLesions


class _ComparatorTrainer(nnUNetTrainerLesions):
    """A lesion-id trainer whose loss is one of :mod:`vadice.losses`'s comparators.

    Options are the class attribute ``loss_options`` (subclass to change them, e.g.
    restrict the component term to GTVn); they are recorded in ``vadice_loss.json``
    and a resumed run must have the same.
    """

    loss_name: str = ""
    loss_options: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_ignore_label:
            raise NotImplementedError(f"{type(self).__name__} does not support an ignore label")
        self.print_to_log_file(f"vadice {self.loss_name} loss options: {self.loss_options}")

    def _common_options(self) -> dict:
        return {"batch_dice": bool(self.configuration_manager.batch_dice), "ddp": self.is_ddp}

    def _provenance_record(self, table) -> dict:
        return {
            "trainer": type(self).__name__,
            "loss": self.loss_name,
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.loss_options.items()},
            "batch_dice": bool(self.configuration_manager.batch_dice),
            "lesion_folder": str(self._lesion_folder),
            "connectivity": table.connectivity,
        }


class nnUNetTrainerBlob(_ComparatorTrainer):
    """blob loss (Kofler et al. 2022): 2 · nnU-Net's Dice+CE + 1 · mean per-lesion Dice+CE, other lesions masked."""

    loss_name = "blob"
    loss_options = {"alpha": 2.0, "beta": 1.0, "blob_labels": None}

    def _lesion_loss(self, table):
        return BlobDiceCELoss(**self.loss_options, **self._common_options())

    def loss_inputs(self, batch: dict) -> tuple:
        labels, ids, _ = self.lesion_maps(batch)
        return labels, {"instances": ids}


class nnUNetTrainerCCDiceCE(_ComparatorTrainer):
    """CC-DiceCE (arXiv 2511.17146): Dice+CE plus mean Dice+CE inside each lesion's Voronoi cell.

    The cells are computed once per case (:func:`vadice.nnunet.lesion_cache.preprocess_regions`,
    cached and keyed on the id map's hash) and ride through augmentation as extra target
    channels after the ids, one per label.
    """

    loss_name = "cc-dicece"
    region_maps = True
    loss_options = {"lambda_cc": 1.0, "cc_labels": None}

    def _lesion_loss(self, table):
        labels = tuple(int(l) for l in self.label_manager.foreground_labels)
        if tuple(table.labels) != labels:
            raise ValueError(f"lesion table labels {table.labels} differ from the dataset's foreground labels "
                             f"{labels}: rerun preprocess_instances")
        return CCDiceCELoss(region_labels=labels, **self.loss_options, **self._common_options())

    def loss_inputs(self, batch: dict) -> tuple:
        labels, _, regions = self.lesion_maps(batch)
        return labels, {"regions": regions}


class nnUNetTrainerCATMIL(_ComparatorTrainer):
    """Component-adaptive Tversky + MIL (arXiv 2604.08015) on top of nnU-Net's Dice+CE.

    Lesion weights use whole-case voxel counts from the lesion table. The Tversky weight
    warms up linearly over ``warmup_epochs`` (paper: 50; the trainer option ``catmil_warmup_epochs``
    overrides it, e.g. for short budgets); the trainer sets the epoch at each epoch start.
    """

    loss_name = "catmil"
    loss_options = {"lambda_cat": 0.1, "lambda_mil": 0.2, "warmup_epochs": 50, "catmil_labels": None}

    vadice_option_names = BUDGET_OPTIONS + ("catmil_warmup_epochs",)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._lesion_sizes = None

    def _use_options(self, options: TrainerOptions) -> None:
        super()._use_options(options)
        if options.catmil_warmup_epochs is not None:
            self.loss_options = {**self.loss_options, "warmup_epochs": options.catmil_warmup_epochs}

    def _load_lesion_table(self):
        table = super()._load_lesion_table()
        sizes, _ = table.padded(list(self._lesion_rows), "voxels")  # rows in the order of the volume table
        self._lesion_sizes = torch.from_numpy(sizes).to(self.device)
        return table

    def _lesion_loss(self, table):
        return CATMILLoss(**self.loss_options, **self._common_options())

    def loss_inputs(self, batch: dict) -> tuple:
        labels, ids, _ = self.lesion_maps(batch)
        return labels, {"instances": ids, "sizes": self._batch_rows(self._lesion_sizes, batch)}

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.loss.set_epoch(int(self.current_epoch))
