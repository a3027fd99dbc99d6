"""nnU-Net trainers: volume-aware Dice (dual / selective-ln / configurable), the small-lesion
comparators (blob, CC-DiceCE, CATMIL) and a budget baseline.

Plain nnU-Net finds these classes through ``nnUNet_extTrainer`` (set it to
``vadice nnunet-path``). nnU-Net imports this file by path as a top-level
module, so everything here uses absolute ``vadice`` imports, and classes that
must pickle into data-loader workers live in :mod:`vadice.nnunet.datasets` and
:mod:`vadice.nnunet.augmentation`.

- ``nnUNetTrainerBudget``: nnU-Net's nnUNetTrainer, loss untouched; only the
  schedule and seed can be set (options below). For short baseline runs;
  full-length baselines use nnU-Net's own ``nnUNetTrainer``.
- ``nnUNetTrainerVADual`` (VA on labels 1 and 2), ``nnUNetTrainerVASelectiveLN``
  (VA on label 2 only): fixed presets of :mod:`vadice.losses`.
- ``nnUNetTrainerVA``: VA options from the options file's ``va`` object, else
  ``vadice_va.json`` next to the plans; defaults to the dual preset.
- ``nnUNetTrainerLesions``: the base of every trainer whose loss needs lesion ids;
  the comparator trainers built on it (blob, CC-DiceCE, CATMIL) live in
  :mod:`vadice.nnunet.comparator_trainers`.

Options (schedule, seed, torch threads, warm start, ...) come from the one JSON file that
``VADICE_TRAINER_OPTIONS`` names (:mod:`vadice.nnunet.trainer_options`), read once in
``__init__`` (the warm start is loaded in ``initialize``); without it, nnU-Net's defaults.
A trainer copies the options it trained with into its output folder (``vadice_trainer_options.json``).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from vadice.losses import PRESETS, WEIGHTINGS, VolumeAwareDiceCELoss, median_lesion_volumes
from vadice.losses.fp_components import FalsePositiveComponentLoss, WithFalsePositiveTerm
from vadice.nnunet.augmentation import lesion_training_transforms
from vadice.nnunet.datasets import lesion_dataset_class
from vadice.nnunet.lesion_cache import lesion_folder, load_lesion_table, preprocess_regions
from vadice.nnunet.lesion_loss import DeepSupervisionLesionLoss, LesionLoss
from vadice.nnunet.trainer_options import (
    BUDGET_OPTIONS,
    OPTIONS_FILE,
    TrainerOptions,
    from_environment,
    read_va,
    write,
)

# Two different files that happen to share a name (kept: existing runs and docs use it):
VA_OPTIONS_FILE = "vadice_va.json"  # input: VA options next to the plans, read by nnUNetTrainerVA
VA_RECORD_FILE = "vadice_va.json"   # output: what a VA trainer trained with, in the fold's output folder


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices).

    nnU-Net's single-threaded augmenter (``nnUNet_n_proc_DA=0``) draws from
    the global NumPy/torch generators, so runs repeat; its multi-process
    augmenter seeds its workers itself and does not.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class nnUNetTrainerBudget(nnUNetTrainer):
    """nnU-Net's trainer with the schedule and seed taken from the options file; loss untouched."""

    # the options of vadice.nnunet.trainer_options this trainer reads; it refuses a file that sets others
    vadice_option_names: tuple[str, ...] = BUDGET_OPTIONS

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        options, self.vadice_options_file = from_environment()
        unread = [name for name in options.given() if name not in self.vadice_option_names]
        if unread:
            raise ValueError(f"{self.vadice_options_file}: {', '.join(unread)}: not an option of "
                             f"{type(self).__name__} (it reads {', '.join(self.vadice_option_names)})")
        self._use_options(options)

    def _use_options(self, options: TrainerOptions) -> None:
        """Apply the options read in ``__init__`` (a subclass applies its own after these)."""
        self.vadice_options = options
        if options.epochs is not None:
            self.num_epochs = options.epochs
        if options.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = options.iterations_per_epoch
        if options.val_iterations is not None:
            self.num_val_iterations_per_epoch = options.val_iterations
        if options.seed is not None:
            seed_everything(options.seed + self.local_rank)
        self.vadice_seed = options.seed
        if options.torch_threads is not None and self.device.type == "cpu":
            # nnUNetv2_train sets one torch thread per core on CPU before building the trainer; on a
            # machine shared with other jobs that oversubscribes the cores, so the trainer may lower it.
            torch.set_num_threads(options.torch_threads)
        # Test-time mirroring multiplies the final validation's inference by up to 8; short
        # budgets (CPU demo, GPU smoke run) switch it off for every set-up alike.
        self.vadice_val_mirroring = options.val_mirroring
        self.print_to_log_file(
            f"vadice schedule: {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations, "
            f"{self.num_val_iterations_per_epoch} validation iterations, seed {options.seed}"
            + ("" if self.vadice_val_mirroring else ", final validation without test-time mirroring"))
        if self.vadice_options_file is not None:
            self.print_to_log_file(f"vadice trainer options ({self.vadice_options_file}): {options.to_json()}")

    def initialize(self):
        super().initialize()
        self._record_options()
        if self.vadice_options.warm_start is not None:
            self._load_warm_start(Path(self.vadice_options.warm_start))

    def _record_options(self) -> None:
        """Copy the options file into the output folder (unless it is that file): what this run trained with."""
        if self.vadice_options_file is None or self.local_rank != 0 or self.output_folder is None:
            return
        record = Path(self.output_folder) / OPTIONS_FILE
        if not (record.is_file() and record.samefile(self.vadice_options_file)):
            write(record, self.vadice_options)

    def _load_warm_start(self, path: Path) -> None:
        """Every network weight from ``path`` (segmentation heads included), optimiser and schedule fresh.

        nnU-Net's own ``-pretrained_weights`` re-initialises the final 1x1 segmentation layers (it is
        meant for transfer between label sets); a common baseline that several set-ups continue from
        must keep them, or each set-up would first relearn its output layer. A resumed run (``--c``)
        loads its own checkpoint after this and so continues from where it stopped.
        """
        if not path.is_file():
            raise FileNotFoundError(f"warm_start {path}: no such checkpoint file ({self.vadice_options_file})")
        saved = torch.load(path, map_location=self.device, weights_only=False)
        weights = saved.get("network_weights") if isinstance(saved, dict) else None
        if weights is None:
            raise ValueError(f"warm_start {path}: not an nnU-Net checkpoint (no 'network_weights')")
        net = self.network.module if self.is_ddp else self.network
        net = getattr(net, "_orig_mod", net)  # torch.compile wraps the module
        net.load_state_dict(weights, strict=True)  # another architecture fails here, naming the keys
        self.print_to_log_file(f"vadice warm start: all network weights from {path}")

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.vadice_val_mirroring:
            return super().perform_actual_validation(save_probabilities)
        # nnU-Net reads the axes when it builds the validation predictor; restore them
        # afterwards so checkpoints keep nnU-Net's own setting for later inference.
        axes = self.inference_allowed_mirroring_axes
        self.inference_allowed_mirroring_axes = None
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes


def expand_va_options(given: dict | None) -> dict:
    """Options of :class:`nnUNetTrainerVA` from the VA options given (``None``: the dual preset's defaults).

    Keys (all optional, checked by :func:`vadice.nnunet.trainer_options.check_va`): ``preset`` ("dual",
    "selective-ln", "baseline"), ``weighting`` ("bounded", the loss's defaults, or "equal-mass": no
    clipping; see :data:`vadice.losses.WEIGHTINGS`), ``va_labels``, ``gamma``,
    ``mode`` ("mass"/"absolute"), ``v_ref`` (mm³, number or {label: mm³};
    absolute mode defaults to the median lesion volume per label over the
    fold's training cases), ``v_min_mm3``, ``r_min``, ``r_max`` (null =
    unbounded). Explicit keys override the weighting's values.
    """
    raw = given or {}
    weighting = raw.get("weighting")
    # a named weighting is spelled out, so the run's record says which bounds were used
    options = {**PRESETS[raw.get("preset", "dual")], **(WEIGHTINGS[weighting] if weighting else {}),
               **{k: v for k, v in raw.items() if k not in ("preset", "weighting")}}
    if isinstance(options.get("v_ref"), dict):
        options["v_ref"] = {int(k): v for k, v in options["v_ref"].items()}
    if "va_labels" in options:
        options["va_labels"] = tuple(options["va_labels"])
    return options


class nnUNetTrainerLesions(nnUNetTrainerBudget):
    """Base of every trainer whose loss needs whole-case lesion ids (VA, blob, CC-DiceCE, CATMIL).

    Carries the lesion-id map of :func:`vadice.nnunet.lesion_cache.preprocess_instances`
    through nnU-Net's data loader and augmentation as a second target channel
    (with ``region_maps``, the per-label Voronoi cells of
    :func:`~vadice.nnunet.lesion_cache.preprocess_regions` as further channels),
    verifies the ids against nnU-Net's segmentations (SHA-256), wraps the loss
    for deep supervision (:mod:`vadice.nnunet.lesion_loss`) and hands it each
    batch's maps around nnU-Net's own train/validation steps, which run unchanged. A subclass provides
    :meth:`_lesion_loss` (the loss of one scale), :meth:`loss_inputs` (which
    maps the loss takes) and the record written to ``provenance_file``.
    """

    region_maps: bool = False             # stack the per-label Voronoi cells after the ids
    provenance_file: str = "vadice_loss.json"
    provenance_what: str = "loss"         # for the resume error message
    provenance_keys: tuple[str, ...] = ("trainer", "options", "connectivity")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self._vadice_continuing = bool(plans.get("continue_training", False))
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise NotImplementedError(f"{type(self).__name__} does not support cascaded configurations")
        if self.label_manager.has_regions:
            raise NotImplementedError(f"{type(self).__name__} needs integer labels, not region-based training")
        self._lesion_folder = (lesion_folder(self.preprocessed_dataset_folder_base,
                                             self.configuration_manager.data_identifier)
                               if self.preprocessed_dataset_folder_base is not None else None)
        self._lesion_volumes = None   # (N cases, Kmax+1) float32 on the device
        self._lesion_rows = None      # case -> row

    # -------------------------------------------------------------- lesion table

    def _load_lesion_table(self):
        table = load_lesion_table(self._lesion_folder)
        tr_keys, val_keys = self.do_split()
        cases = sorted(set(tr_keys) | set(val_keys))
        volumes, rows = table.padded(cases)
        table.verify_sources(self.preprocessed_dataset_folder, cases)
        if self.region_maps:
            # once per case, cached next to the ids and keyed on their hash: a no-op after the first run
            preprocess_regions(self._lesion_folder, cases)
        self._lesion_volumes = torch.from_numpy(volumes).to(self.device)
        self._lesion_rows = rows
        return table

    def _lesion_loss(self, table) -> torch.nn.Module:
        raise NotImplementedError

    def _deep_supervision_weights(self) -> np.ndarray:
        weights = np.array([1 / (2 ** i) for i in range(len(self._get_deep_supervision_scales()))])
        if self.is_ddp and not self._do_i_compile():
            weights[-1] = 1e-6  # nnU-Net's workaround: DDP complains about unused parameters at weight 0
        else:
            weights[-1] = 0
        return weights / weights.sum()

    def _build_loss(self):
        table = self._load_lesion_table()
        loss = self._lesion_loss(table)
        if self.enable_deep_supervision:
            loss = DeepSupervisionLesionLoss(loss, self._deep_supervision_weights())
        else:
            loss = LesionLoss(loss)
        self._write_provenance(table)
        return loss

    def _provenance_record(self, table) -> dict:
        raise NotImplementedError

    def _write_provenance(self, table) -> None:
        record = self._provenance_record(table)
        if self.local_rank != 0 or self.output_folder is None:
            return
        path = Path(self.output_folder) / self.provenance_file
        if self._vadice_continuing and path.is_file():
            old = json.loads(path.read_text())
            changed = sorted(k for k in self.provenance_keys if old.get(k) != record[k])
            if changed:
                raise RuntimeError(f"{path}: resuming with different {self.provenance_what} settings "
                                   f"({', '.join(changed)}); was {[old.get(k) for k in changed]}, "
                                   f"now {[record[k] for k in changed]}")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)

    # ------------------------------------------------------------------- data

    def initialize(self):
        super().initialize()
        self.dataset_class = lesion_dataset_class(self.dataset_class, regions=self.region_maps)

    @classmethod
    def get_training_transforms(cls, *args, **kwargs):
        # nnU-Net calls this through ``self``; super() reaches the next class in the MRO, so a lesion trainer
        # combined with an augmentation variant (e.g. nnUNetTrainer_DASegOrd0) swaps that variant's transform.
        extra = len(kwargs.get("foreground_labels") or ()) if cls.region_maps else 0
        return lesion_training_transforms(super().get_training_transforms(*args, **kwargs), extra_maps=extra)

    def lesion_maps(self, batch: dict):
        """Splits ``batch['target']`` into labels, lesion ids and the extra maps (Voronoi cells).

        Returns:
          ``(labels, ids, extra)``: lists per deep-supervision scale (or tensors
          without deep supervision) of (B, 1, *S), (B, 1, *S) and (B, L, *S)
          (L = 0 without ``region_maps``), on the CPU.
        """
        target = batch["target"]
        first = target[0] if isinstance(target, list) else target
        if first.shape[1] < 2 or (first.shape[1] > 2) != self.region_maps:
            raise RuntimeError(f"expected label and lesion-id channels{' and Voronoi cells' if self.region_maps else ''}"
                               f", got {first.shape[1]} target channels")
        split = lambda t: (t[:, :1], t[:, 1:2], t[:, 2:])  # noqa: E731
        if isinstance(target, list):
            return tuple(map(list, zip(*(split(t) for t in target))))
        return split(target)

    def lesion_inputs(self, batch: dict):
        """Splits ``batch['target']`` into labels and lesion ids; looks up the batch's volume table.

        Returns:
          ``(labels, ids, volumes)``: labels and ids as lists per deep-supervision
          scale (or tensors without deep supervision), (B, 1, *S) each, on the
          CPU; volumes a (B, Kmax+1) float32 tensor in mm³ on the device.
        """
        labels, ids, _ = self.lesion_maps(batch)
        return labels, ids, self._batch_rows(self._lesion_volumes, batch)

    def _batch_rows(self, table: torch.Tensor, batch: dict) -> torch.Tensor:
        rows = torch.as_tensor([self._lesion_rows[k] for k in batch["keys"]], dtype=torch.long)
        return table[rows.to(table.device, non_blocking=True)]

    def loss_inputs(self, batch: dict) -> tuple:
        """``(labels, inputs)``: the plain targets and the keyword arguments bound to the loss."""
        labels, ids, volumes = self.lesion_inputs(batch)
        return labels, {"instances": ids, "volumes": volumes}

    def _to_device(self, value):
        if isinstance(value, list):
            return [v.to(self.device, non_blocking=True) for v in value]
        return value.to(self.device, non_blocking=True)

    def _step_with_lesion_maps(self, step, batch: dict) -> dict:
        # nnU-Net's own step runs unchanged (AMP, grad scaler, clipping, pseudo Dice) on the 1-channel
        # labels; the loss object, the same one all training, gets the batch's maps for its duration.
        labels, inputs = self.loss_inputs(batch)
        with self.loss.batch_inputs(**{k: self._to_device(v) for k, v in inputs.items()}):
            return step({**batch, "target": labels})

    def train_step(self, batch: dict) -> dict:
        return self._step_with_lesion_maps(super().train_step, batch)

    def validation_step(self, batch: dict) -> dict:
        return self._step_with_lesion_maps(super().validation_step, batch)


class nnUNetTrainerVA(nnUNetTrainerLesions):
    """nnU-Net trainer with the volume-aware Dice + CE loss on whole-case lesion volumes.

    Requires :func:`vadice.nnunet.lesion_cache.preprocess_instances` to have run
    for the plans and configuration. Options: see :func:`expand_va_options`.
    """

    va_preset: str | None = None  # fixed preset in subclasses; None: read the options file
    provenance_file = VA_RECORD_FILE
    provenance_what = "VA"
    provenance_keys = ("trainer", "options", "v_ref_mm3", "connectivity")

    @property
    def vadice_option_names(self) -> tuple[str, ...]:
        return BUDGET_OPTIONS + (("va",) if self.va_preset is None else ())

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.va_options, self.va_options_source = self._read_options()
        self.va_v_ref = None
        self.print_to_log_file(f"vadice VA loss options ({self.va_options_source}): {self.va_options}")

    # ------------------------------------------------------------------ options

    def _read_options(self) -> tuple[dict, str]:
        if self.va_preset is not None:
            return dict(PRESETS[self.va_preset]), f"preset {self.va_preset}"
        if self.vadice_options.va is not None:
            return expand_va_options(self.vadice_options.va), str(self.vadice_options_file)
        if self.preprocessed_dataset_folder_base is not None:
            candidate = Path(self.preprocessed_dataset_folder_base) / VA_OPTIONS_FILE
            if candidate.is_file():
                return expand_va_options(read_va(candidate)), str(candidate)
        return expand_va_options(None), "defaults (dual preset)"

    # -------------------------------------------------------------- lesion table

    def _load_lesion_table(self):
        table = super()._load_lesion_table()
        if self.va_options.get("mode") == "absolute" and self.va_options.get("v_ref") is None:
            tr_keys, _ = self.do_split()
            labels = self.va_options["va_labels"]
            medians = median_lesion_volumes(table.lesion_tables(tr_keys), labels, allow_missing=True)
            missing = [l for l, v in medians.items() if v is None]
            if missing:
                raise ValueError(f"absolute mode: no lesion of label(s) {missing} in the training cases of fold "
                                 f"{self.fold}, so no reference volume; set v_ref in the VA options")
            self.va_v_ref = medians
        else:
            self.va_v_ref = self.va_options.get("v_ref")
        return table

    def _lesion_loss(self, table):
        kwargs = {k: v for k, v in self.va_options.items() if k != "v_ref"}
        loss = VolumeAwareDiceCELoss(
            weight_ce=1, weight_dice=1, ignore_label=self.label_manager.ignore_label,
            batch_dice=self.configuration_manager.batch_dice, do_bg=False, smooth=1e-5, ddp=self.is_ddp,
            v_ref=self.va_v_ref, check_values=False, **kwargs)
        # check_values=False: its range checks cost host syncs per deep-supervision scale, and the data
        # pipeline already guarantees them (labels from nnU-Net, ids consistent with labels, table per case).
        if self._do_i_compile():
            # as nnU-Net: compile the Dice part only; it sees tensors only (ids and volume table)
            loss.dc = torch.compile(loss.dc)
        return loss

    def _provenance_record(self, table) -> dict:
        return {
            "trainer": type(self).__name__,
            "options_source": self.va_options_source,
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.va_options.items()
                        if k != "v_ref"},
            "v_ref_mm3": ({str(k): v for k, v in self.va_v_ref.items()} if isinstance(self.va_v_ref, dict)
                          else self.va_v_ref),
            "batch_dice": bool(self.configuration_manager.batch_dice),
            "lesion_folder": str(self._lesion_folder),
            "connectivity": table.connectivity,
        }


class nnUNetTrainerVADual(nnUNetTrainerVA):
    """VA Dice on both labels (GTVp 1 and GTVn 2), mass mode, gamma 1: the "dual mask" set-up."""

    va_preset = "dual"


class nnUNetTrainerVASelectiveLN(nnUNetTrainerVA):
    """VA Dice on lymph nodes only (label 2): the "selective LN mask" set-up."""

    va_preset = "selective-ln"


# ------------------------------------------------------------------------------------------
# a loss-side precision lever (docs/losses.md)


class nnUNetTrainerVADualFP(nnUNetTrainerVADual):
    """VA dual plus the false-positive component term: every predicted component that touches no truth of its
    label costs its mean probability (:class:`vadice.losses.fp_components.FalsePositiveComponentLoss`).

    The term is added at each deep-supervision scale with that scale's weight, over every foreground label,
    with the lesion table's connectivity; its weight is ``fp_weight`` (1 by default; subclass to change it).
    """

    fp_weight: float = 1.0
    provenance_keys = nnUNetTrainerVADual.provenance_keys + ("fp_term",)

    def _fp_options(self, table) -> dict:
        return {"weight": float(self.fp_weight), "labels": [int(l) for l in self.label_manager.foreground_labels],
                "connectivity": int(table.connectivity)}

    def _lesion_loss(self, table):
        opts = self._fp_options(table)
        fp = FalsePositiveComponentLoss(labels=opts["labels"], connectivity=opts["connectivity"])
        return WithFalsePositiveTerm(super()._lesion_loss(table), fp, weight=opts["weight"])

    def _provenance_record(self, table) -> dict:
        return {**super()._provenance_record(table), "fp_term": self._fp_options(table)}
