"""Shareable models: a trained model folder (or an experiment run's set-up) as one zip.

The zip uses nnU-Net's own model-zip layout (``nnUNetv2_export_model_to_zip``):
``<Dataset>/<Trainer__Plans__configuration>/{dataset.json, plans.json,
dataset_fingerprint.json, fold_<f>/{checkpoint_final.pth, debug.json,
progress.png, validation/summary.json}}``, so ``nnUNetv2_install_pretrained_model_from_zip``
installs it too (plain nnU-Net then needs ``nnUNet_extTrainer=$(vadice nnunet-path)``
for vadice's trainers). vadice adds ``vadice_model.json`` (version, folds,
checkpoint SHA-256), from an experiment run its ``manifest.json`` (the
settings) and ``comparison.json`` (the evaluation summary), and, when given, a
fitted post-processing file as ``vadice_postprocessing.json`` (applied by
``vadice predict --postprocessing bundled``), all inside the model folder.
:func:`vadice.models.resolve_model` (``model_from_zip``) reads such a zip back. No nnU-Net import here: this
is file handling only.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from vadice import __version__
from vadice.io import InputError, atomic_file, sha256_file
from vadice.models import available_folds
from vadice.postprocess import BUNDLED_NAME, load_postprocessing

log = logging.getLogger(__name__)

MODEL_FILES = ("dataset.json", "plans.json", "dataset_fingerprint.json")
FOLD_EXTRAS = ("debug.json", "progress.png", "validation/summary.json")
INFO_NAME = "vadice_model.json"


def _fold_names(model_dir: Path, folds: Sequence[int | str] | None, checkpoint: str) -> list[str]:
    names = [f"fold_{f}" for f in (available_folds(model_dir, checkpoint) if folds is None else folds)]
    for name in names:
        if not (model_dir / name / checkpoint).is_file():
            raise InputError(model_dir / name / checkpoint, "checkpoint not found")
    return names


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike, folds: Sequence[int | str] | None = None,
                 checkpoint: str = "checkpoint_final.pth", run_dir: str | os.PathLike | None = None,
                 postprocessing: str | os.PathLike | None = None) -> Path:
    """Write a trained model folder as a zip (atomically).

    Args:
      model_dir: ``Trainer__Plans__configuration`` folder.
      out: the zip to write.
      folds: folds to include (default: every fold with ``checkpoint``).
      checkpoint: checkpoint file name in each fold.
      run_dir: the experiment run folder the model came from, if any: its
        ``manifest.json`` and ``comparison/comparison.json`` go in too.
      postprocessing: a file from ``vadice postprocess fit`` to ship with the model (checked first; a
        warning when it was fitted on another model folder).

    Returns:
      ``out``.

    Raises:
      InputError: not a model folder, missing checkpoints, a bad post-processing file.
    """
    model_dir = Path(model_dir)
    for name in MODEL_FILES[:2]:
        if not (model_dir / name).is_file():
            raise InputError(model_dir, f"not a trained nnU-Net model folder (no {name})")
    fold_names = _fold_names(model_dir, folds, checkpoint)
    pp = None if postprocessing is None else load_postprocessing(postprocessing)
    if pp is not None and (fitted_for := pp.fitted_elsewhere(model_dir)):
        log.warning("%s was fitted on predictions of %s, not of %s", postprocessing, fitted_for, model_dir)
    dataset = model_dir.parent.name if model_dir.parent.name.startswith("Dataset") else "Dataset000_vadice"
    prefix = PurePosixPath(dataset, model_dir.name)
    info = {"vadice_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model_dir.name, "dataset": dataset, "checkpoint": checkpoint,
            "folds": [n[len("fold_"):] for n in fold_names],
            "checkpoint_sha256": {n: sha256_file(model_dir / n / checkpoint) for n in fold_names}}
    with atomic_file(out, suffix=".part.zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in MODEL_FILES:
            if (model_dir / name).is_file():
                zf.write(model_dir / name, str(prefix / name))
        for fold in fold_names:
            zf.write(model_dir / fold / checkpoint, str(prefix / fold / checkpoint))
            for extra in FOLD_EXTRAS:
                if (model_dir / fold / extra).is_file():
                    zf.write(model_dir / fold / extra, str(prefix / fold / extra))
        if run_dir is not None:
            for rel in ("manifest.json", "comparison/comparison.json"):
                if (Path(run_dir) / rel).is_file():
                    zf.write(Path(run_dir) / rel, str(prefix / "vadice_run" / PurePosixPath(rel).name))
                    info.setdefault("run_files", []).append(f"vadice_run/{PurePosixPath(rel).name}")
        if pp is not None:
            zf.write(postprocessing, str(prefix / BUNDLED_NAME))
            info["postprocessing"] = {"file": BUNDLED_NAME, "sha256": sha256_file(postprocessing),
                                      "min_volume_mm3": pp.to_json()["min_volume_mm3"],
                                      "fitted_on_cases": len(pp.cases)}
        zf.writestr(str(prefix / INFO_NAME), json.dumps(info, indent=2))
    log.info("wrote %s (%s, folds %s)", out, model_dir.name, ",".join(info["folds"]))
    return Path(out)
