"""``vadice plan``: nnU-Net's fingerprint, planning and preprocessing, plus vadice's lesion maps, resumable.

:func:`plan` records what it did for which raw data in ``vadice_plan_state.json``
(in the preprocessed dataset folder), so a rerun skips finished steps and redoes
everything downstream of a change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vadice.io import InputError, sha256_file, write_text
from vadice import registry
from vadice.nnunet.paths import CONFIGURATION, quiet_stdout, registry_lookup, resolve_dataset, temporary_environ

log = logging.getLogger(__name__)

PLAN_STATE_FILE = "vadice_plan_state.json"


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


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


def load_state(folder: Path) -> dict:
    """The plan state of a preprocessed dataset folder (``{}`` when there is none or it is unreadable)."""
    path = folder / PLAN_STATE_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_state(folder: Path, state: dict) -> None:
    write_text(folder / PLAN_STATE_FILE, json.dumps(state, indent=2, sort_keys=True))


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
    spec = registry_lookup(registry.preset, preset)
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

    from vadice.nnunet.lesion_cache import preprocess_instances
    from vadice.nnunet.planners import planner_class

    state = load_state(pre_dir)
    signature = _raw_signature(raw_dir)
    if state.get("raw_signature") != signature:
        state = {"raw_signature": signature}
    state.setdefault("plans", {})
    state.setdefault("preprocessed", {})
    steps = []
    env = {"nnUNet_raw": str(ref.paths.require("raw")), "nnUNet_preprocessed": str(ref.paths.require("preprocessed"))}
    with temporary_environ(env):
        fingerprint_file = pre_dir / "dataset_fingerprint.json"
        if (not fingerprint_file.is_file() or state.get("fingerprint") != sha256_file(fingerprint_file)
                or state.get("fingerprint_samples") != fingerprint_samples):
            log.info("%s: checking and fingerprinting the raw data", ref.name)
            with quiet_stdout(log_file):
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
            with quiet_stdout(log_file), temporary_environ(planner_env):
                plan_experiment_dataset(ref.id, experiment_planner_class=planner_class(spec.name))
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
            with quiet_stdout(log_file):
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
            with quiet_stdout(log_file):
                preprocess_instances(pre_dir, configuration=configuration, plans_identifier=spec.plans_identifier,
                                     num_processes=num_processes, progress=progress)
            done["instances"] = spec.plans_identifier
            _save_state(pre_dir, state)
            steps.append("instances")

    return PlanResult(ref.id, ref.name, spec.plans_identifier, configuration, pre_dir, sha256_file(plans_file),
                      tuple(steps), log_file)

