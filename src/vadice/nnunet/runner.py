"""Plan, train and predict through nnU-Net v2, with its own folders, names and entry points.

What this module adds to plain nnU-Net:

* Paths: ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` come from
  explicit options first, then the environment; a missing one is a one-line error.
* Datasets may be named by id (``101``), name (``Dataset101_HNTS``) or the path of
  the raw dataset folder. A path sets ``nnUNet_raw`` to its parent; when that parent
  is called ``nnUNet_raw`` and the other two variables are unset, the siblings
  ``nnUNet_preprocessed`` / ``nnUNet_results`` are used.
* :func:`plan` is resumable: ``vadice_plan_state.json`` in the preprocessed dataset
  folder records what was done for which raw data, so a rerun skips finished steps
  and redoes everything downstream of a change.
* :func:`train` runs ``nnUNetv2_train``'s entry point in a subprocess with the
  environment our trainers need, logs its output, shows epochs as a progress bar,
  refuses to overwrite or silently redo finished work, and reports the equivalent
  plain nnU-Net command.
* :func:`predict` uses ``nnUNetPredictor`` without any postprocessing (nnU-Net's
  optional "keep largest component" would delete true multifocal nodes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from vadice.io import InputError, is_nifti, sha256_file, write_text
from vadice.nnunet import BUDGET_TRAINER, THREADS_ENV, TRAINER_FOR_LOSS, trainer_dir
from vadice.nnunet.planners import PRESETS, get_preset

log = logging.getLogger(__name__)

CONFIGURATION = "3d_fullres"
BASELINE_TRAINER = TRAINER_FOR_LOSS["baseline"]  # nnU-Net's own, unmodified
LOSSES = tuple(TRAINER_FOR_LOSS)
DEVICES = ("cuda", "cpu", "mps")
PLAN_STATE_FILE = "vadice_plan_state.json"
TRAIN_SETTINGS_FILE = "vadice_train.json"
SPLITS_FILE = "splits_final.json"  # nnU-Net's cross-validation folds, in the preprocessed dataset folder
DEFAULT_FOLDS = 5  # nnU-Net's split when no splits file exists yet
BUDGET_ENV = ("VADICE_EPOCHS", "VADICE_ITERS_PER_EPOCH", "VADICE_VAL_ITERS", "VADICE_SEED", "VADICE_VAL_MIRRORING",
              "VADICE_WARM_START")

_PATH_VARS = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
_DATASET_NAME = re.compile(r"^Dataset(\d{3})_\S+$")
# nnU-Net prints "<timestamp>: Epoch N" when epoch N starts and "<timestamp>: Epoch time: X s" when it ends
_EPOCH_LINE = re.compile(r"(?:^|: )Epoch (\d+)\s*$")
_EPOCH_END = re.compile(r"(?:^|: )Epoch time: ")
# After the last epoch nnU-Net says "Training done.", then predicts each validation case ("predicting <case>")
_TRAINING_DONE = re.compile(r"(?:^|: )Training done\.")
_SPLIT_LINE = re.compile(r"This split has \d+ training and (\d+) validation cases")
_VALIDATION_CASE = re.compile(r"(?:^|: )predicting (\S+)\s*$")
# The training subprocess: nnU-Net's `nnUNetv2_train` entry point via train_entry() below.
_TRAIN_ENTRY = "from vadice.nnunet.runner import train_entry; train_entry()"


class NNUNetError(RuntimeError):
    """nnU-Net failed while running (not bad input). ``str(err)`` is one line naming the log."""


# --------------------------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class NNUNetPaths:
    """The three nnU-Net roots; ``None`` where neither an option nor the environment gives one."""

    raw: Path | None = None
    preprocessed: Path | None = None
    results: Path | None = None

    def require(self, which: str) -> Path:
        """Return root ``which`` ('raw', 'preprocessed' or 'results').

        Raises:
            InputError: the root is not set.
        """
        value = getattr(self, which)
        if value is None:
            var = _PATH_VARS[which]
            raise InputError(None, f"{var} is not set: export {var}=DIR (see docs/training.md) or pass --{which} DIR")
        return value

    def env(self) -> dict[str, str]:
        return {_PATH_VARS[k]: str(v) for k in _PATH_VARS if (v := getattr(self, k)) is not None}


def resolve_paths(raw=None, preprocessed=None, results=None) -> NNUNetPaths:
    """nnU-Net roots from the arguments, falling back to the ``nnUNet_*`` environment variables."""
    def pick(value, var):
        value = value if value is not None else os.environ.get(var) or None
        return None if value is None else Path(value).expanduser().absolute()

    return NNUNetPaths(pick(raw, "nnUNet_raw"), pick(preprocessed, "nnUNet_preprocessed"),
                       pick(results, "nnUNet_results"))


@dataclass(frozen=True)
class DatasetRef:
    id: int
    name: str
    paths: NNUNetPaths

    @property
    def raw_dir(self) -> Path:
        return self.paths.require("raw") / self.name

    @property
    def preprocessed_dir(self) -> Path:
        return self.paths.require("preprocessed") / self.name


def resolve_dataset(dataset: int | str | os.PathLike, *, raw=None, preprocessed=None, results=None) -> DatasetRef:
    """Resolve a dataset given as id, ``DatasetXXX_Name`` or raw dataset folder.

    Args:
        dataset: ``101`` / ``"101"``; ``"Dataset101_HNTS"``; or a path (anything with a
            path separator, or an existing directory) to ``.../nnUNet_raw/Dataset101_HNTS``.
        raw, preprocessed, results: roots overriding the ``nnUNet_*`` environment variables.

    Returns:
        The id, the full name and the roots to use (a path argument sets ``raw`` to its
        parent, and, if that parent is named ``nnUNet_raw``, defaults the unset other
        two to its ``nnUNet_preprocessed`` / ``nnUNet_results`` siblings).

    Raises:
        InputError: malformed name, path that is no nnU-Net raw dataset, or an id/name
            not found under any configured root.
    """
    text = os.fspath(dataset) if isinstance(dataset, os.PathLike) else str(dataset)
    as_path = Path(text).expanduser()
    if isinstance(dataset, os.PathLike) or os.sep in text or (os.altsep and os.altsep in text) or as_path.is_dir():
        folder = as_path.absolute()
        if not folder.is_dir():
            raise InputError(folder, "dataset folder does not exist")
        match = _DATASET_NAME.match(folder.name)
        if not match or not (folder / "dataset.json").is_file():
            raise InputError(folder, "not an nnU-Net raw dataset folder (expected DatasetXXX_Name/ with dataset.json)")
        root = folder.parent
        env = resolve_paths(None, preprocessed, results)
        if root.name == "nnUNet_raw":
            env = NNUNetPaths(root, env.preprocessed or root.parent / "nnUNet_preprocessed",
                              env.results or root.parent / "nnUNet_results")
        else:
            env = NNUNetPaths(root, env.preprocessed, env.results)
        return DatasetRef(int(match.group(1)), folder.name, env)

    paths = resolve_paths(raw, preprocessed, results)
    match = _DATASET_NAME.match(text)
    if match:
        return DatasetRef(int(match.group(1)), text, paths)
    if not text.isdigit():
        raise InputError(None, f"dataset {text!r}: expected an id (e.g. 101), a name like Dataset101_HNTS "
                               "or the path of a raw dataset folder")
    dataset_id = int(text)
    if not 0 < dataset_id < 1000:
        raise InputError(None, f"dataset id {dataset_id}: nnU-Net ids have 1 to 3 digits")
    prefix = f"Dataset{dataset_id:03d}_"
    names, searched = set(), []
    for which in ("raw", "preprocessed", "results"):
        root = getattr(paths, which)
        if root is None:
            continue
        searched.append(f"{_PATH_VARS[which]}={root}")
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    if not searched:
        paths.require("raw")
    if not names:
        raise InputError(None, f"unknown dataset {dataset_id}: no {prefix}* folder in {', '.join(searched)}")
    if len(names) > 1:
        raise InputError(None, f"dataset id {dataset_id} is ambiguous: {', '.join(sorted(names))}")
    return DatasetRef(dataset_id, names.pop(), paths)


# --------------------------------------------------------------------------------------- environment


def trainer_path() -> Path:
    """The directory nnU-Net must search for vadice's trainers (``nnUNet_extTrainer``)."""
    return Path(trainer_dir())


def train_entry() -> None:
    """nnU-Net's ``nnUNetv2_train`` entry point, run in the training subprocess, unchanged.

    nnU-Net finds vadice's trainers through ``nnUNet_extTrainer`` (set by
    :func:`build_env`); the torch thread count is a trainer option
    (``VADICE_TORCH_THREADS``, read by vadice's trainers), so nothing is patched.
    """
    import nnunetv2.run.run_training as rt

    sys.argv[0] = "nnUNetv2_train"
    rt.run_training_entry()


def _with_ext_trainer(existing: str | None) -> str:
    ours = str(trainer_path())
    parts = [p for p in (existing or "").split(os.pathsep) if p]
    return os.pathsep.join([ours] + [p for p in parts if os.path.abspath(p) != os.path.abspath(ours)])


def build_env(paths: NNUNetPaths, device: str = "cuda", budget: dict[str, str] | None = None,
              base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an nnU-Net subprocess.

    Sets the nnU-Net roots, puts vadice's trainer directory first in ``nnUNet_extTrainer``
    (keeping what was there), and on CPU/MPS says ``nnUNet_compile=f`` explicitly (nnU-Net
    2.8.1's trainer already skips compile there) and runs augmentation in the training process
    (``nnUNet_n_proc_DA=0``: worker processes only compete with torch for a few cores)
    unless the caller set it. ``nnUNet_def_n_proc`` (validation export workers, nnU-Net
    default 8) is capped at the CPU count. ``VADICE_*`` budget variables come only
    from ``budget``: inherited ones are dropped so a run is defined by its arguments.
    """
    env = dict(os.environ if base is None else base)
    for key in BUDGET_ENV:
        env.pop(key, None)
    env.update(paths.env())
    env["nnUNet_extTrainer"] = _with_ext_trainer(env.get("nnUNet_extTrainer"))
    if device != "cuda":
        env["nnUNet_compile"] = "f"
        env.setdefault("nnUNet_n_proc_DA", "0")
    env.setdefault("nnUNet_def_n_proc", str(max(1, min(8, os.cpu_count() or 1))))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(budget or {})
    return env


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Temporarily set environment variables (nnunetv2 reads its paths at call time)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_stdout(log_path: Path | None) -> Iterator[None]:
    """nnU-Net prints plans and chatter to stdout: keep it in a log file (or at debug level)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        text = buffer.getvalue()
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(text)
        elif text:
            log.debug("%s", text)


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanResult:
    dataset_id: int
    dataset_name: str
    plans_identifier: str
    configuration: str
    preprocessed_folder: Path  # nnUNet_preprocessed/DatasetXXX_Name
    plans_sha256: str
    steps_run: tuple[str, ...] = ()  # which of fingerprint/plan/preprocess/instances ran (empty: all were done)
    log_file: Path | None = None


def _raw_signature(raw_dir: Path) -> str:
    """Cheap change detector for what planning reads of a raw dataset.

    Training images and labels by name, size and modification time; dataset.json by
    content, because converters rewrite it (and their own bookkeeping files, which are
    ignored) on every run without changing it.
    """
    entries = []
    for sub in ("imagesTr", "labelsTr"):
        for path in sorted((raw_dir / sub).glob("*")):
            if path.is_file() and not path.name.startswith("."):
                st = path.stat()
                entries.append((f"{sub}/{path.name}", st.st_size, st.st_mtime_ns))
    dataset_json = raw_dir / "dataset.json"
    entries.append(("dataset.json", sha256_file(dataset_json) if dataset_json.is_file() else None))
    return _sha256_json(entries)


def _preprocessing_key(plans: dict, configuration: str) -> str:
    """Hash of the plan fields the preprocessed data depends on (not network, patch or batch)."""
    conf = plans["configurations"][configuration]
    keys = ("data_identifier", "preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
            "resampling_fn_data", "resampling_fn_seg", "resampling_fn_data_kwargs", "resampling_fn_seg_kwargs")
    return _sha256_json({
        "conf": {k: conf.get(k) for k in keys},
        "transpose_forward": plans.get("transpose_forward"),
        "image_reader_writer": plans.get("image_reader_writer"),
        "intensity": plans.get("foreground_intensity_properties_per_channel"),
    })


def _load_state(folder: Path) -> dict:
    path = folder / PLAN_STATE_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_state(folder: Path, state: dict) -> None:
    write_text(folder / PLAN_STATE_FILE, json.dumps(state, indent=2, sort_keys=True))


def _instances_preprocessor():
    from vadice.nnunet import instances  # owned by the trainers' package

    return instances.preprocess_instances


def plan(dataset, preset: str = "resenc-m", num_processes: int = 2, verify: bool = True, progress: bool = True,
         *, raw=None, preprocessed=None, configuration: str = CONFIGURATION,
         fingerprint_samples: int | None = None) -> PlanResult:
    """Fingerprint, plan and preprocess a raw dataset, then store lesion instance maps for the VA trainers.

    Equivalent to ``nnUNetv2_plan_and_preprocess -d ID -pl <planner> -c 3d_fullres
    --verify_dataset_integrity`` followed by vadice's lesion preprocessing. Each step is
    skipped when ``vadice_plan_state.json`` says it was done for the same raw data (names,
    sizes, modification times) and upstream results; any change redoes it and everything
    after it. The integrity check runs with the fingerprint step.

    Args:
        dataset: id, name or raw dataset folder (see :func:`resolve_dataset`).
        preset: 'resenc-m' (nnU-Net ResEnc M) or 'cpu-small' (see vadice.nnunet.planners).
        num_processes: worker processes for fingerprint, preprocessing and instances.
        verify: run nnU-Net's dataset integrity check before fingerprinting.
        progress: show nnU-Net's progress bars.
        raw, preprocessed: roots overriding ``nnUNet_raw`` / ``nnUNet_preprocessed``.
        configuration: nnU-Net configuration to preprocess (3d_fullres).
        fingerprint_samples: foreground intensities sampled for the fingerprint, over all
            cases (None: nnU-Net's 1e8, about 25 s on two cores whatever the dataset size).
            Only CT normalisation uses these statistics; MRI z-scores each image. Tests
            lower it.

    Returns:
        PlanResult; ``steps_run`` lists what this call actually did.

    Raises:
        InputError: unknown preset or dataset, unset roots, a raw dataset nnU-Net rejects.
    """
    try:
        spec = get_preset(preset)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    if num_processes < 1:
        raise InputError(None, f"num_processes must be >= 1, got {num_processes}")
    ref = resolve_dataset(dataset, raw=raw, preprocessed=preprocessed)
    raw_dir = ref.raw_dir
    if not (raw_dir / "dataset.json").is_file():
        raise InputError(raw_dir, "no nnU-Net raw dataset here (dataset.json missing)")
    images = raw_dir / "imagesTr"
    if not images.is_dir() or not any(p.is_file() and not p.name.startswith(".") for p in images.iterdir()):
        raise InputError(images, "no training images (nnU-Net needs imagesTr/<case>_0000.nii.gz files)")
    pre_dir = ref.preprocessed_dir
    pre_dir.mkdir(parents=True, exist_ok=True)
    log_file = pre_dir / "vadice_plan.log"

    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset, preprocess_dataset
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    state = _load_state(pre_dir)
    signature = _raw_signature(raw_dir)
    if state.get("raw_signature") != signature:
        state = {"raw_signature": signature}
    state.setdefault("plans", {})
    state.setdefault("preprocessed", {})
    steps = []
    env = {"nnUNet_raw": str(ref.paths.require("raw")), "nnUNet_preprocessed": str(ref.paths.require("preprocessed"))}
    with _environ(env):
        fingerprint_file = pre_dir / "dataset_fingerprint.json"
        if (not fingerprint_file.is_file() or state.get("fingerprint") != sha256_file(fingerprint_file)
                or state.get("fingerprint_samples") != fingerprint_samples):
            log.info("%s: checking and fingerprinting the raw data", ref.name)
            with _quiet_stdout(log_file):
                try:
                    if verify:
                        verify_dataset_integrity(str(raw_dir), num_processes)
                    extractor = DatasetFingerprintExtractor(ref.id, num_processes, verbose=False)
                    extractor.show_progress_bar = progress
                    if fingerprint_samples is not None:
                        extractor.num_foreground_voxels_for_intensitystats = fingerprint_samples
                    extractor.run(overwrite_existing=True)
                except (AssertionError, RuntimeError, FileNotFoundError, ValueError) as exc:
                    raise InputError(raw_dir, f"nnU-Net rejected the dataset: {_first_line(exc)}") from None
            state = {"raw_signature": signature, "fingerprint": sha256_file(fingerprint_file),
                     "fingerprint_samples": fingerprint_samples, "plans": {}, "preprocessed": {}}
            _save_state(pre_dir, state)
            steps.append("fingerprint")

        plans_file = pre_dir / f"{spec.plans_identifier}.json"
        entry = state["plans"].get(spec.plans_identifier, {})
        if (not plans_file.is_file() or entry.get("sha256") != sha256_file(plans_file)
                or entry.get("fingerprint") != state["fingerprint"]):
            log.info("%s: planning with preset %s", ref.name, spec.name)
            # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails at 0 — a value
            # users export for training without augmentation workers (and vadice's trainings use): plan with 1.
            planner_env = {"nnUNet_n_proc_DA": "1"} if os.environ.get("nnUNet_n_proc_DA", "").strip() == "0" else {}
            with _quiet_stdout(log_file), _environ(planner_env):
                plan_experiment_dataset(ref.id, experiment_planner_class=spec.planner)
            state["plans"][spec.plans_identifier] = {"preset": spec.name, "sha256": sha256_file(plans_file),
                                                     "fingerprint": state["fingerprint"]}
            _save_state(pre_dir, state)
            steps.append("plan")

        plans = json.loads(plans_file.read_text())
        if configuration not in plans["configurations"]:
            raise InputError(plans_file, f"nnU-Net planned no {configuration} configuration (2D data?)")
        data_identifier = plans["configurations"][configuration]["data_identifier"]
        key = _preprocessing_key(plans, configuration)
        done = state["preprocessed"].get(data_identifier, {})
        if done.get("key") != key or not (pre_dir / data_identifier).is_dir():
            log.info("%s: preprocessing %s", ref.name, configuration)
            # nnU-Net empties the folder first: until it finishes, nothing there counts as done
            state["preprocessed"].pop(data_identifier, None)
            _save_state(pre_dir, state)
            with _quiet_stdout(log_file):
                preprocess_dataset(ref.id, spec.plans_identifier, configurations=(configuration,),
                                   num_processes=[num_processes], verbose=False, show_progress_bar=progress)
            done = {"key": key, "instances": False}
            state["preprocessed"][data_identifier] = done
            _save_state(pre_dir, state)
            steps.append("preprocess")

        # Both presets share one data_identifier; the lesion table records the plans it was made
        # with, so switching preset relabels (cheap next to preprocessing).
        if done.get("instances") != spec.plans_identifier:
            log.info("%s: labelling lesions for the volume-aware trainers", ref.name)
            done["instances"] = None
            _save_state(pre_dir, state)
            with _quiet_stdout(log_file):
                _instances_preprocessor()(pre_dir, configuration=configuration,
                                          plans_identifier=spec.plans_identifier,
                                          num_processes=num_processes, progress=progress)
            done["instances"] = spec.plans_identifier
            _save_state(pre_dir, state)
            steps.append("instances")

    return PlanResult(ref.id, ref.name, spec.plans_identifier, configuration, pre_dir, sha256_file(plans_file),
                      tuple(steps), log_file)


# --------------------------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainResult:
    dataset_id: int
    dataset_name: str
    loss: str
    trainer: str
    plans_identifier: str
    configuration: str
    fold: int | str
    model_dir: Path  # nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>
    fold_dir: Path
    checkpoint: Path
    command: str  # the equivalent plain nnUNetv2_train command, with the environment it needs
    log_file: Path
    skipped: bool = False  # True: a finished run with the same settings was found, nothing was trained
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)


def _trainer_for(loss: str, budget: bool) -> str:
    if loss not in LOSSES:
        raise InputError(None, f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if loss == "baseline":
        return BUDGET_TRAINER if budget else BASELINE_TRAINER
    return TRAINER_FOR_LOSS[loss]


def _positive(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(None, f"{name} must be a positive integer, got {value!r}")
    return value


def budget_env(iterations: int | None = None, epochs: int | None = None, val_iterations: int | None = None,
               seed: int | None = None, val_mirroring: bool = True) -> dict[str, str]:
    """Map a training budget onto the ``VADICE_*`` variables our trainers read.

    ``iterations`` is the total number of training iterations: with ``epochs`` E it is
    split into E epochs of iterations/E (it must divide evenly); alone it is one epoch
    of ``iterations``. ``epochs`` alone keeps nnU-Net's 250 iterations per epoch.
    nnU-Net's learning-rate schedule (poly decay) is per epoch, so the split matters.
    ``val_mirroring=False`` skips test-time mirroring in the final validation (up to 8x
    faster inference; for short budgets, applied to every set-up alike).
    """
    iterations = _positive("iterations", iterations)
    epochs = _positive("epochs", epochs)
    val_iterations = _positive("val_iterations", val_iterations)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise InputError(None, f"seed must be a non-negative integer, got {seed!r}")
    env = {}
    if iterations is not None:
        n_epochs = epochs or 1
        if iterations % n_epochs:
            raise InputError(None, f"iterations ({iterations}) must be a multiple of epochs ({n_epochs})")
        env["VADICE_EPOCHS"] = str(n_epochs)
        env["VADICE_ITERS_PER_EPOCH"] = str(iterations // n_epochs)
    elif epochs is not None:
        env["VADICE_EPOCHS"] = str(epochs)
    if val_iterations is not None:
        env["VADICE_VAL_ITERS"] = str(val_iterations)
    if seed is not None:
        env["VADICE_SEED"] = str(seed)
    if not val_mirroring:
        env["VADICE_VAL_MIRRORING"] = "0"
    return env


def model_dir_for(dataset, loss: str, preset: str, budget: bool, results_dir=None) -> Path:
    """nnU-Net's output folder for a set-up: ``<results>/<DatasetXXX>/<trainer>__<plans>__3d_fullres``.

    ``budget`` says whether the run has an iteration/epoch/seed budget (selects
    nnUNetTrainerBudget instead of nnUNetTrainer for the baseline). Runs that differ only
    in budget or seed share this folder: give each its own ``results_dir``.
    """
    try:
        spec = get_preset(preset)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    ref = resolve_dataset(dataset, results=results_dir)
    trainer = _trainer_for(loss, budget)
    return ref.paths.require("results") / ref.name / f"{trainer}__{spec.plans_identifier}__{CONFIGURATION}"


def _check_device(device: str, num_gpus: int) -> None:
    if device not in DEVICES:
        raise InputError(None, f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"--device cuda: CUDA is not available (torch {torch.__version__}); "
                               "use --device cpu (slow; see docs/training.md)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise InputError(None, "--device mps: Apple MPS is not available on this machine; use --device cpu")
    if num_gpus < 1:
        raise InputError(None, f"num_gpus must be >= 1, got {num_gpus}")
    if num_gpus > 1:
        if device != "cuda":
            raise InputError(None, "multi-GPU training (num_gpus > 1) needs --device cuda")
        if torch.cuda.device_count() < num_gpus:
            raise InputError(None, f"num_gpus {num_gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")


def check_folds(folds: Sequence[int | str], preprocessed_dir: Path | None) -> None:
    """Refuse folds outside the dataset's cross-validation split.

    nnU-Net trains a fold beyond ``splits_final.json`` on a random 80:20 split
    instead, with one log line, so ``--fold 7`` would silently train something else.
    Without a splits file (nnU-Net writes it at the first training) its default
    5-fold split applies.

    Raises:
        InputError: a fold that is neither 'all' nor in the split; an unreadable splits file.
    """
    path = None if preprocessed_dir is None else Path(preprocessed_dir) / SPLITS_FILE
    if path is not None and path.is_file():
        try:
            n_folds = len(json.loads(path.read_text()))
        except (ValueError, TypeError):
            raise InputError(path, "not a readable nnU-Net splits file (a JSON list of folds)") from None
        source = f"{path} has"
    else:
        n_folds, source = DEFAULT_FOLDS, "nnU-Net's default split has"
    for fold in folds:
        if fold != "all" and not (isinstance(fold, int) and not isinstance(fold, bool) and 0 <= fold < n_folds):
            raise InputError(None, f"fold {fold} does not exist: {source} folds 0-{n_folds - 1} (or use 'all')")


def _finished(fold_dir: Path) -> bool:
    # nnU-Net writes checkpoint_final.pth, then runs the final validation; summary.json closes it.
    return (fold_dir / "checkpoint_final.pth").is_file() and (fold_dir / "validation" / "summary.json").is_file()


def _started(fold_dir: Path) -> bool:
    return any((fold_dir / name).is_file()
               for name in ("checkpoint_latest.pth", "checkpoint_final.pth", "checkpoint_best.pth"))


def plain_command(ref: DatasetRef, trainer: str, plans_identifier: str, fold, device: str, num_gpus: int,
                  resume: bool, env: dict[str, str], configuration: str = CONFIGURATION) -> str:
    """The ``nnUNetv2_train`` command line (with its environment) equivalent to a :func:`train` call."""
    names = ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"]
    if trainer != BASELINE_TRAINER:
        names.append("nnUNet_extTrainer")
    if device != "cuda":
        names += ["nnUNet_compile", "nnUNet_n_proc_DA"]
    names += [k for k in BUDGET_ENV if k in env]
    words = [f"{k}={shlex.quote(env[k])}" for k in names if k in env]
    words += ["nnUNetv2_train", str(ref.id), configuration, str(fold), "-tr", trainer, "-p", plans_identifier,
              "-device", device]
    if num_gpus > 1:
        words += ["-num_gpus", str(num_gpus)]
    if resume:
        words.append("--c")
    return " ".join(words)


def train(dataset, loss: str = "baseline", fold: int | str = 0, preset: str = "resenc-m", device: str = "cuda",
          iterations: int | None = None, epochs: int | None = None, val_iterations: int | None = None,
          seed: int | None = None, resume: bool = False, num_gpus: int = 1, results_dir=None,
          log_file=None, progress: bool = True, echo: bool = False, *, raw=None,
          preprocessed=None, threads: int | None = None, val_mirroring: bool = True,
          warm_start=None) -> TrainResult:
    """Train one set-up and fold through nnU-Net's own ``nnUNetv2_train`` entry point.

    The trainer is nnU-Net's ``nnUNetTrainer`` for the baseline without a budget,
    ``nnUNetTrainerBudget`` for the baseline with any of iterations/epochs/
    val_iterations/seed, vadice's VA trainer for 'dual' / 'selective-ln' and its
    comparator trainers for 'blob' / 'cc-dicece' / 'catmil', and VA dual with the false-positive
    component term for 'dual-fp' (docs/losses.md).

    A fold folder holding a finished run (checkpoint_final.pth and the final
    validation's summary.json) trained with the same settings is not retrained: the
    call returns it with ``skipped=True``. A started but unfinished run needs
    ``resume=True`` (nnU-Net's ``--c``); without it the call refuses rather than
    overwrite it. The settings are stored in ``vadice_train.json`` in the fold folder.

    Args:
        dataset: id, name or raw dataset folder (see :func:`resolve_dataset`).
        loss: a key of ``TRAINER_FOR_LOSS``: 'baseline', 'dual', 'selective-ln',
            'blob', 'cc-dicece', 'catmil' or 'dual-fp'.
        fold: 0-4 (nnU-Net 5-fold split, or splits_final.json) or 'all'.
        preset: plans preset used by :func:`plan`.
        device: 'cuda', 'cpu' or 'mps'.
        iterations, epochs, val_iterations, seed, val_mirroring: budget (see :func:`budget_env`).
        resume: continue an interrupted run from its latest checkpoint.
        num_gpus: nnU-Net DDP training on this many GPUs (``-num_gpus``).
        results_dir: overrides ``nnUNet_results`` (one per seed/budget keeps runs apart).
        log_file: where the subprocess output goes (default ``<fold_dir>/vadice_train.log``, appended).
        progress: tqdm bar over epochs.
        echo: also copy nnU-Net's output to stderr.
        raw, preprocessed: roots overriding ``nnUNet_raw`` / ``nnUNet_preprocessed``.
        threads: torch CPU threads in the training process (default: nnU-Net's, one per
            core); 1 is much faster on a machine shared with other jobs. A trainer option
            (``VADICE_TORCH_THREADS``) of vadice's trainers: with it, the baseline runs
            ``nnUNetTrainerBudget`` (nnU-Net's trainer, loss untouched).
        warm_start: an nnU-Net checkpoint whose network weights (segmentation heads included)
            a new training starts from, with a fresh optimiser and schedule (our trainers'
            ``VADICE_WARM_START``; the baseline then runs as nnUNetTrainerBudget). Recorded by
            SHA-256 in ``vadice_train.json``; a resumed run continues from its own checkpoint.

    Returns:
        TrainResult.

    Raises:
        InputError: bad arguments, unknown dataset, missing plans, unavailable device,
            a fold folder holding another run.
        NNUNetError: nnU-Net failed; the message names the log file.
    """
    try:
        spec = get_preset(preset)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    if not (fold == "all" or (isinstance(fold, int) and not isinstance(fold, bool) and fold >= 0)):
        if isinstance(fold, str) and fold.isdigit():
            fold = int(fold)
        else:
            raise InputError(None, f"fold must be a non-negative integer or 'all', got {fold!r}")
    budget = budget_env(iterations, epochs, val_iterations, seed, val_mirroring)
    if warm_start is not None:
        warm_start = Path(warm_start).resolve()
        if not warm_start.is_file():
            raise InputError(warm_start, "warm start: no such checkpoint file")
        budget["VADICE_WARM_START"] = str(warm_start)
    threads = _positive("threads", threads)
    trainer = _trainer_for(loss, bool(budget) or threads is not None)
    if not isinstance(num_gpus, int) or isinstance(num_gpus, bool):
        raise InputError(None, f"num_gpus must be an integer, got {num_gpus!r}")
    ref = resolve_dataset(dataset, raw=raw, preprocessed=preprocessed, results=results_dir)
    _check_device(device, num_gpus)

    pre_dir = ref.preprocessed_dir
    plans_file = pre_dir / f"{spec.plans_identifier}.json"
    hint = f"run `vadice plan {dataset} --preset {spec.name}` first"
    if not plans_file.is_file():
        planned = [name for name, other in PRESETS.items() if (pre_dir / f"{other.plans_identifier}.json").is_file()]
        if planned:  # e.g. a CPU user who planned cpu-small and left --preset at its default
            raise InputError(plans_file, f"no {spec.name} plans for {ref.name}, but {', '.join(planned)} plans "
                             f"exist: pass --preset {planned[0]}, or {hint}")
        raise InputError(plans_file, f"no {spec.name} plans for {ref.name}: {hint}")
    plans = json.loads(plans_file.read_text())
    conf = plans.get("configurations", {}).get(CONFIGURATION)
    if conf is None:
        raise InputError(plans_file, f"no {CONFIGURATION} configuration in the plans")
    done = _load_state(pre_dir).get("preprocessed", {}).get(conf["data_identifier"], {})
    if not (pre_dir / conf["data_identifier"]).is_dir() or (loss != "baseline" and not done.get("instances")):
        raise InputError(pre_dir / conf["data_identifier"], f"preprocessing is missing or unfinished: {hint}")
    check_folds((fold,), pre_dir)

    results_root = ref.paths.require("results")
    model_dir = results_root / ref.name / f"{trainer}__{spec.plans_identifier}__{CONFIGURATION}"
    fold_dir = model_dir / f"fold_{fold}"
    log_path = Path(log_file) if log_file is not None else fold_dir / "vadice_train.log"
    settings = {"trainer": trainer, "plans": spec.plans_identifier, "plans_sha256": sha256_file(plans_file),
                "configuration": CONFIGURATION, "fold": fold, "budget": budget}
    if warm_start is not None:
        # The path may differ between machines; the content defines the run.
        settings["budget"] = {k: v for k, v in budget.items() if k != "VADICE_WARM_START"}
        settings["warm_start_sha256"] = sha256_file(warm_start)
    env = build_env(ref.paths, device, budget)
    env.pop(THREADS_ENV, None)
    if threads is not None:
        env[THREADS_ENV] = str(threads)
    command = plain_command(ref, trainer, spec.plans_identifier, fold, device, num_gpus, resume, env)

    recorded_path = fold_dir / TRAIN_SETTINGS_FILE
    recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else None
    if recorded is not None and recorded != settings:
        raise InputError(fold_dir, f"holds a run with other settings ({_settings_diff(recorded, settings)}); "
                                   "use another --results folder or delete this one")
    result = dict(dataset_id=ref.id, dataset_name=ref.name, loss=loss, trainer=trainer,
                  plans_identifier=spec.plans_identifier, configuration=CONFIGURATION, fold=fold,
                  model_dir=model_dir, fold_dir=fold_dir, checkpoint=fold_dir / "checkpoint_final.pth",
                  command=command, log_file=log_path, settings=settings)
    if _finished(fold_dir):
        log.debug("%s: already trained (%s); skipping", fold_dir, "settings match" if recorded else
                 "no vadice_train.json: trained outside vadice")
        return TrainResult(**result, skipped=True)
    if _started(fold_dir) and not resume:
        raise InputError(fold_dir, "holds an unfinished run: pass --resume to continue it, or delete the folder "
                                   "to start again")

    fold_dir.mkdir(parents=True, exist_ok=True)
    write_text(recorded_path, json.dumps(settings, indent=2, sort_keys=True))
    argv = [sys.executable, "-c", _TRAIN_ENTRY, str(ref.id), CONFIGURATION, str(fold), "-tr", trainer,
            "-p", spec.plans_identifier, "-device", device]
    if num_gpus > 1:
        argv += ["-num_gpus", str(num_gpus)]
    if resume:
        argv.append("--c")
    total_epochs = int(budget.get("VADICE_EPOCHS", 1000))  # nnU-Net's default schedule: 1000 epochs
    log.info("training %s fold %s with %s; nnU-Net's output: %s", ref.name, fold, trainer, log_path)
    log.debug("equivalent plain nnU-Net command:\n  %s", command)  # the caller prints it with the result
    start = time.monotonic()
    rc, last = _run_logged(argv, env, log_path, total_epochs, progress, echo, f"{loss} fold {fold}")
    seconds = time.monotonic() - start
    if rc != 0:
        raise NNUNetError(f"nnU-Net training failed (exit code {rc}): {last}; full log: {log_path}")
    if not (fold_dir / "checkpoint_final.pth").is_file():
        raise NNUNetError(f"nnU-Net training ended without {fold_dir / 'checkpoint_final.pth'}; full log: {log_path}")
    return TrainResult(**result, seconds=seconds)


def _settings_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def _run_logged(argv: list[str], env: dict[str, str], log_path: Path, total_epochs: int | None, progress: bool,
                echo: bool, desc: str) -> tuple[int, str]:
    """Run ``argv``, appending its output to ``log_path``; tqdm over nnU-Net's epoch lines.

    After the last epoch, nnU-Net's final validation (minutes on a CPU) is announced
    and each validation case logged as "final validation: case k of n".

    Returns the exit code and the last line that looks like an error (else the last line).
    """
    from tqdm import tqdm

    log_path.parent.mkdir(parents=True, exist_ok=True)
    last_line, last_error = "", ""
    n_validation, validating, validated = None, False, 0
    with open(log_path, "a", encoding="utf-8") as fh, \
            tqdm(total=total_epochs, desc=desc, unit="epoch", disable=not progress, leave=False) as bar:
        fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        fh.flush()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, errors="replace")
        try:
            for line in proc.stdout:
                fh.write(line)
                if echo:
                    sys.stderr.write(line)
                stripped = line.strip()
                if stripped:
                    last_line = stripped
                    if re.match(r"^\w*(Error|Exception)\b", stripped) or stripped.startswith("AssertionError"):
                        last_error = stripped
                match = _EPOCH_LINE.search(stripped)
                if match and int(match.group(1)) > bar.n:  # a resumed run starts past epoch 0
                    bar.update(int(match.group(1)) - bar.n)
                elif _EPOCH_END.search(stripped):
                    bar.update(1)
                elif split := _SPLIT_LINE.search(stripped):
                    n_validation = int(split.group(1))
                elif _TRAINING_DONE.search(stripped):
                    bar.close()
                    validating = True
                    cases = "" if n_validation is None else f" ({n_validation} cases)"
                    log.info("%s: training done; running nnU-Net's final validation%s...", desc, cases)
                elif validating and (case := _VALIDATION_CASE.search(stripped)):
                    validated += 1
                    log.info("%s: final validation: case %d of %s (%s)", desc, validated,
                             n_validation if n_validation is not None else "?", case.group(1))
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return rc, (last_error or last_line)[:300]


# ------------------------------------------------------------------------------------------- predict


def _group_inputs(inputs: Sequence[Path], n_channels: int, file_ending: str) -> dict[str, list[str]]:
    """Files named ``<case>_XXXX<ending>`` -> {case: [channel files in order]}."""
    cases: dict[str, dict[int, Path]] = {}
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    for path in inputs:
        match = pattern.match(path.name)
        if not match:
            raise InputError(path, f"input name must be <case>_XXXX{file_ending} (nnU-Net channel naming, "
                                   "e.g. case_0000.nii.gz)")
        cases.setdefault(match.group(1), {})[int(match.group(2))] = path
    out = {}
    for case, channels in sorted(cases.items()):
        if sorted(channels) != list(range(n_channels)):
            raise InputError(next(iter(channels.values())),
                             f"case {case!r} has channels {sorted(channels)}; the model expects "
                             f"{list(range(n_channels))}")
        out[case] = [str(channels[c]) for c in range(n_channels)]
    return out


def predict(model_dir, input_dir_or_files, output_dir, folds: Iterable[int | str] = (0,), device: str = "cpu",
            checkpoint: str = "checkpoint_final.pth", num_processes: int = 1, progress: bool = True,
            use_mirroring: bool = True, tile_step_size: float = 0.5) -> list[Path]:
    """Predict label maps with a trained nnU-Net model folder (ours or nnU-Net's trainers).

    No postprocessing is applied (nnU-Net's "keep largest component" would delete
    true multifocal lymph nodes). nnU-Net writes each output with its input's spacing,
    origin and direction. Outputs are first written to a temporary sibling folder and
    then moved into ``output_dir`` as ``<case>.nii.gz``, so an interrupted call leaves
    no partial files there.

    Args:
        model_dir: ``<trainer>__<plans>__<configuration>`` folder (with plans.json,
            dataset.json and fold_<f>/<checkpoint>).
        input_dir_or_files: a folder of ``<case>_0000.nii.gz`` (one file per channel)
            or a list of such files.
        output_dir: folder for ``<case>.nii.gz`` (created; must not be a file).
        folds: folds to ensemble (softmax average).
        device: 'cpu', 'cuda' or 'mps'.
        checkpoint: checkpoint file name inside each fold folder.
        num_processes: >1 uses nnU-Net's multi-process pre/post-processing; 1 runs in-process.
        progress: nnU-Net's progress bar over sliding-window tiles.
        use_mirroring: test-time mirroring, as nnU-Net does by default.
        tile_step_size: sliding-window step as a fraction of the patch (nnU-Net default 0.5).

    Returns:
        The written label map paths, sorted by case.

    Raises:
        InputError: missing model files, bad inputs, output path that is a file.
    """
    model_dir = Path(model_dir)
    if isinstance(folds, (str, int)):
        folds = [folds]
    try:
        folds = [f if f == "all" else int(f) for f in folds]
    except (TypeError, ValueError):
        raise InputError(None, f"folds must be integers or 'all', got {folds!r}") from None
    if not folds:
        raise InputError(None, "no folds given")
    for name in ("plans.json", "dataset.json"):
        if not (model_dir / name).is_file():
            raise InputError(model_dir, f"not an nnU-Net model folder ({name} missing)")
    for f in folds:
        ckpt = model_dir / f"fold_{f}" / checkpoint
        if not ckpt.is_file():
            raise InputError(ckpt, "checkpoint missing (training unfinished, or wrong fold?)")
    if device not in DEVICES:
        raise InputError(None, f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    _check_device(device, 1)
    if not 0 < tile_step_size <= 1:
        raise InputError(None, f"tile_step_size must be in (0, 1], got {tile_step_size}")

    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    file_ending = dataset_json.get("file_ending", ".nii.gz")
    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    if isinstance(input_dir_or_files, (str, os.PathLike)):
        source = Path(input_dir_or_files)
        if not source.is_dir():
            raise InputError(source, "input folder does not exist")
        files = sorted(p for p in source.iterdir() if p.is_file() and p.name.endswith(file_ending))
        if not files:
            raise InputError(source, f"no {file_ending} images in the input folder")
    else:
        files = [Path(p) for p in input_dir_or_files]
        if not files:
            raise InputError(None, "no input files given")
    for path in files:
        if not path.is_file():
            raise InputError(path, "input file does not exist")
        if not is_nifti(path) and file_ending in (".nii.gz", ".nii"):
            raise InputError(path, "not a NIfTI file (.nii or .nii.gz)")
    cases = _group_inputs(files, n_channels, file_ending)

    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(output_dir, "output path exists and is a file, not a directory")
    output_dir.mkdir(parents=True, exist_ok=True)

    import torch

    import nnunetv2.inference.predict_from_raw_data as pfr

    tmp = Path(tempfile.mkdtemp(prefix=".vadice_predict.", dir=output_dir.parent))
    env = {"nnUNet_extTrainer": _with_ext_trainer(os.environ.get("nnUNet_extTrainer"))}
    try:
        with _environ(env), _quiet_stdout(None):
            predictor = pfr.nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True,
                                        use_mirroring=use_mirroring, perform_everything_on_device=device == "cuda",
                                        device=torch.device(device), verbose=False, verbose_preprocessing=False,
                                        allow_tqdm=progress)
            predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=tuple(folds),
                                                           checkpoint_name=checkpoint)
            lists = [cases[c] for c in cases]
            outputs = [str(tmp / c) for c in cases]
            if num_processes > 1:
                predictor.predict_from_files(lists, outputs, save_probabilities=False, overwrite=True,
                                             num_processes_preprocessing=num_processes,
                                             num_processes_segmentation_export=num_processes)
            else:
                predictor.predict_from_files_sequential(lists, outputs, save_probabilities=False, overwrite=True)
        written = []
        for case in cases:
            produced = tmp / f"{case}{file_ending}"
            if not produced.is_file():
                raise NNUNetError(f"nnU-Net wrote no prediction for case {case!r}")
            final = output_dir / f"{case}{file_ending}"
            os.replace(produced, final)
            written.append(final)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
