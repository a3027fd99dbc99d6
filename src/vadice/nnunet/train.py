"""``vadice train``: one set-up and fold through nnU-Net's ``nnUNetv2_train``, in a subprocess.

:func:`train` runs nnU-Net's own entry point with the environment vadice's
trainers need, logs its output, shows epochs as a progress bar, refuses to
overwrite or silently redo finished work, and reports the equivalent plain
nnU-Net command. The trainer behind each set-up comes from
:mod:`vadice.registry`. The budget, seed, threads and warm start reach vadice's
trainers through one options file in the fold folder
(``vadice_trainer_options.json``, :mod:`vadice.nnunet.trainer_options`), whose
path the subprocess gets in ``VADICE_TRAINER_OPTIONS``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Sequence

from vadice import registry
from vadice.io import InputError, sha256_file, write_text
from vadice.nnunet.paths import (
    CONFIGURATION,
    DatasetRef,
    NNUNetError,
    build_env,
    check_device,
    registry_lookup,
    resolve_dataset,
)
from vadice.nnunet.plan import load_state
from vadice.nnunet.trainer_options import OPTIONS_ENV, OPTIONS_FILE, TrainerOptions, write as write_options

log = logging.getLogger(__name__)

BASELINE_TRAINER = registry.setup("baseline").trainer  # nnU-Net's own, unmodified
TRAIN_SETTINGS_FILE = "vadice_train.json"
SPLITS_FILE = "splits_final.json"  # nnU-Net's cross-validation folds, in the preprocessed dataset folder
DEFAULT_FOLDS = 5  # nnU-Net's split when no splits file exists yet
# warm_start="demo" (`vadice train --warm-start demo`): the demo's common baseline, shipped inside the package
WARM_START_DEMO = "demo"
DEMO_WEIGHTS = Path(str(resources.files("vadice") / "demo_weights" / "baseline_fold0.pth"))

# nnU-Net prints "<timestamp>: Epoch N" when epoch N starts and "<timestamp>: Epoch time: X s" when it ends
_EPOCH_LINE = re.compile(r"(?:^|: )Epoch (\d+)\s*$")
_EPOCH_END = re.compile(r"(?:^|: )Epoch time: ")
# After the last epoch nnU-Net says "Training done.", then predicts each validation case ("predicting <case>")
_TRAINING_DONE = re.compile(r"(?:^|: )Training done\.")
_SPLIT_LINE = re.compile(r"This split has \d+ training and (\d+) validation cases")
_VALIDATION_CASE = re.compile(r"(?:^|: )predicting (\S+)\s*$")
# The training subprocess: nnU-Net's `nnUNetv2_train` entry point via train_entry() below.
_TRAIN_ENTRY = "from vadice.nnunet.train import train_entry; train_entry()"


def train_entry() -> None:
    """nnU-Net's ``nnUNetv2_train`` entry point, run in the training subprocess, unchanged.

    nnU-Net finds vadice's trainers through ``nnUNet_extTrainer`` (set by
    :func:`build_env`); the torch thread count is a trainer option
    (``torch_threads`` in the options file), so nothing is patched.
    """
    import nnunetv2.run.run_training as rt

    sys.argv[0] = "nnUNetv2_train"
    rt.run_training_entry()


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
    """The nnU-Net trainer of set-up ``loss``; nnUNetTrainerBudget for a baseline with a budget.

    Raises:
        InputError: unknown set-up.
    """
    setup = registry_lookup(registry.setup, loss)
    if setup.name == "baseline" and budget:
        return registry.BUDGET_TRAINER
    return setup.trainer


def resolve_warm_start(warm_start: str | os.PathLike) -> Path:
    """The checkpoint a warm start names: a file, or ``"demo"`` for the demo's shipped common baseline.

    Args:
        warm_start: a checkpoint path, or :data:`WARM_START_DEMO` (wherever vadice is installed).

    Returns:
        The absolute checkpoint path.

    Raises:
        InputError: no such file (for ``"demo"``: an installation without the demo weights).
    """
    if str(warm_start) == WARM_START_DEMO:
        if not DEMO_WEIGHTS.is_file():
            raise InputError(DEMO_WEIGHTS, "warm start 'demo': the shipped demo weights are missing; reinstall vadice")
        return DEMO_WEIGHTS
    path = Path(warm_start).resolve()
    if not path.is_file():
        raise InputError(path, "warm start: no such checkpoint file")
    return path


def _positive(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(None, f"{name} must be a positive integer, got {value!r}")
    return value


def budget_options(iterations: int | None = None, epochs: int | None = None, val_iterations: int | None = None,
                   seed: int | None = None, val_mirroring: bool = True) -> TrainerOptions:
    """Map a training budget onto the options of vadice's trainers.

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
    per_epoch = None
    if iterations is not None:
        epochs = epochs or 1
        if iterations % epochs:
            raise InputError(None, f"iterations ({iterations}) must be a multiple of epochs ({epochs})")
        per_epoch = iterations // epochs
    return TrainerOptions(epochs=epochs, iterations_per_epoch=per_epoch, val_iterations=val_iterations, seed=seed,
                          val_mirroring=bool(val_mirroring))


# vadice_train.json records the budget under the names of the environment variables that carried it before
# the options file, values as strings: runs recorded by older versions resume. Record name -> option.
_RECORDED_BUDGET = {"VADICE_EPOCHS": "epochs", "VADICE_ITERS_PER_EPOCH": "iterations_per_epoch",
                    "VADICE_VAL_ITERS": "val_iterations", "VADICE_SEED": "seed"}


def budget_record(options: TrainerOptions) -> dict[str, str]:
    """The ``budget`` of ``vadice_train.json``: the schedule, seed and mirroring of ``options`` (threads and the
    warm start are not in it; the warm start is recorded by its SHA-256)."""
    record = {name: str(getattr(options, key)) for name, key in _RECORDED_BUDGET.items()
              if getattr(options, key) is not None}
    if not options.val_mirroring:
        record["VADICE_VAL_MIRRORING"] = "0"
    return record


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
                  resume: bool, env: dict[str, str], configuration: str = CONFIGURATION,
                  save_probabilities: bool = False) -> str:
    """The ``nnUNetv2_train`` command line (with its environment) equivalent to a :func:`train` call."""
    names = ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"]
    if trainer != BASELINE_TRAINER:
        names.append("nnUNet_extTrainer")
    if device != "cuda":
        names += ["nnUNet_compile", "nnUNet_n_proc_DA"]
    names.append(OPTIONS_ENV)
    words = [f"{k}={shlex.quote(env[k])}" for k in names if k in env]
    words += ["nnUNetv2_train", str(ref.id), configuration, str(fold), "-tr", trainer, "-p", plans_identifier,
              "-device", device]
    if num_gpus > 1:
        words += ["-num_gpus", str(num_gpus)]
    if resume:
        words.append("--c")
    if save_probabilities:
        words.append("--npz")
    return " ".join(words)


def train(dataset, loss: str = "baseline", fold: int | str = 0, preset: str = "resenc-m", device: str = "cuda",
          iterations: int | None = None, epochs: int | None = None, val_iterations: int | None = None,
          seed: int | None = None, resume: bool = False, num_gpus: int = 1, results_dir=None,
          log_file=None, progress: bool = True, echo: bool = False, *, raw=None,
          preprocessed=None, threads: int | None = None, val_mirroring: bool = True,
          warm_start=None, save_probabilities: bool = False) -> TrainResult:
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
        loss: a set-up of :data:`vadice.registry.SETUPS`: 'baseline', 'dual', 'selective-ln',
            'blob', 'cc-dicece', 'catmil' or 'dual-fp'.
        fold: 0-4 (nnU-Net 5-fold split, or splits_final.json) or 'all'.
        preset: plans preset used by :func:`plan`.
        device: 'cuda', 'cpu' or 'mps'.
        iterations, epochs, val_iterations, seed, val_mirroring: budget (see :func:`budget_options`).
        resume: continue an interrupted run from its latest checkpoint.
        num_gpus: nnU-Net DDP training on this many GPUs (``-num_gpus``).
        results_dir: overrides ``nnUNet_results`` (one per seed/budget keeps runs apart).
        log_file: where the subprocess output goes (default ``<fold_dir>/vadice_train.log``, appended).
        progress: tqdm bar over epochs.
        echo: also copy nnU-Net's output to stderr.
        raw, preprocessed: roots overriding ``nnUNet_raw`` / ``nnUNet_preprocessed``.
        threads: torch CPU threads in the training process (default: nnU-Net's, one per
            core); 1 is much faster on a machine shared with other jobs. A trainer option
            (``torch_threads``) of vadice's trainers: with it, the baseline runs
            ``nnUNetTrainerBudget`` (nnU-Net's trainer, loss untouched).
        warm_start: ``"demo"`` (the demo's shipped common baseline, :data:`DEMO_WEIGHTS`) or an nnU-Net
            checkpoint whose network weights (segmentation heads included)
            a new training starts from, with a fresh optimiser and schedule (our trainers'
            ``warm_start`` option; the baseline then runs as nnUNetTrainerBudget). Recorded by
            SHA-256 in ``vadice_train.json``; a resumed run continues from its own checkpoint.
        save_probabilities: nnU-Net's ``--npz``: the final validation also writes ``<case>.npz`` (key
            ``probabilities``, float32 C×Z×Y×X) and ``<case>.pkl`` beside each held-out label map. Not a
            training setting (the model is the same), so not recorded in ``vadice_train.json``.

    Returns:
        TrainResult.

    Raises:
        InputError: bad arguments, unknown dataset, missing plans, unavailable device,
            a fold folder holding another run.
        NNUNetError: nnU-Net failed; the message names the log file.
    """
    spec = registry_lookup(registry.preset, preset)
    folds = registry_lookup(lambda f: registry.parse_folds(f, "fold"), fold)
    if len(folds) != 1:
        raise InputError(None, f"train takes one fold at a time, got {fold!r}")
    fold = folds[0]
    options = budget_options(iterations, epochs, val_iterations, seed, val_mirroring)
    if warm_start is not None:
        warm_start = resolve_warm_start(warm_start)
    options = replace(options, warm_start=None if warm_start is None else str(warm_start),
                      torch_threads=_positive("threads", threads))
    trainer = _trainer_for(loss, bool(options.given()))
    if not isinstance(num_gpus, int) or isinstance(num_gpus, bool):
        raise InputError(None, f"num_gpus must be an integer, got {num_gpus!r}")
    ref = resolve_dataset(dataset, raw=raw, preprocessed=preprocessed, results=results_dir)
    check_device(device, num_gpus)

    pre_dir = ref.preprocessed_dir
    plans_file = pre_dir / f"{spec.plans_identifier}.json"
    hint = f"run `vadice plan {dataset} --preset {spec.name}` first"
    if not plans_file.is_file():
        planned = [name for name, other in registry.PRESETS.items()
                   if (pre_dir / f"{other.plans_identifier}.json").is_file()]
        if planned:  # e.g. a CPU user who planned cpu-small and left --preset at its default
            raise InputError(plans_file, f"no {spec.name} plans for {ref.name}, but {', '.join(planned)} plans "
                             f"exist: pass --preset {planned[0]}, or {hint}")
        raise InputError(plans_file, f"no {spec.name} plans for {ref.name}: {hint}")
    plans = json.loads(plans_file.read_text())
    conf = plans.get("configurations", {}).get(CONFIGURATION)
    if conf is None:
        raise InputError(plans_file, f"no {CONFIGURATION} configuration in the plans")
    done = load_state(pre_dir).get("preprocessed", {}).get(conf["data_identifier"], {})
    lesions_missing = registry.setup(loss).needs_lesion_ids and not done.get("instances")
    if not (pre_dir / conf["data_identifier"]).is_dir() or lesions_missing:
        raise InputError(pre_dir / conf["data_identifier"], f"preprocessing is missing or unfinished: {hint}")
    check_folds((fold,), pre_dir)

    results_root = ref.paths.require("results")
    model_dir = results_root / ref.name / f"{trainer}__{spec.plans_identifier}__{CONFIGURATION}"
    fold_dir = model_dir / f"fold_{fold}"
    log_path = Path(log_file) if log_file is not None else fold_dir / "vadice_train.log"
    settings = {"trainer": trainer, "plans": spec.plans_identifier, "plans_sha256": sha256_file(plans_file),
                "configuration": CONFIGURATION, "fold": fold, "budget": budget_record(options)}
    if warm_start is not None:
        # The path may differ between machines; the content defines the run.
        settings["warm_start_sha256"] = sha256_file(warm_start)
    options_file = fold_dir / OPTIONS_FILE if options.given() else None
    env = build_env(ref.paths, device, options_file)
    command = plain_command(ref, trainer, spec.plans_identifier, fold, device, num_gpus, resume, env,
                            save_probabilities=save_probabilities)

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
    if options_file is not None:
        write_options(options_file, options)
    argv = [sys.executable, "-c", _TRAIN_ENTRY, str(ref.id), CONFIGURATION, str(fold), "-tr", trainer,
            "-p", spec.plans_identifier, "-device", device]
    if num_gpus > 1:
        argv += ["-num_gpus", str(num_gpus)]
    if resume:
        argv.append("--c")
    if save_probabilities:
        argv.append("--npz")
    total_epochs = options.epochs or 1000  # nnU-Net's default schedule: 1000 epochs
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

