"""Prediction: NIfTI in, label maps out with the input's exact geometry, plus overlays.

nnU-Net does the inference (one :class:`vadice.nnunet.inference.Predictor` for
all cases: the model is loaded once); this layer checks the inputs first (so a
bad file fails before minutes of inference, with its name), verifies that every
output has the geometry of its input, optionally keeps the class probabilities,
and moves outputs into place atomically. No post-processing by default ("keep the largest
component" would delete all but one metastatic node); with a fitted
post-processing file (``vadice.postprocess``) components below a per-label
minimum volume are removed before the label map is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vadice.io import (
    InputError,
    check_output_dir,
    read_mask,
    read_nifti,
    sha256_file,
    write_text,
)

from vadice.nnunet import inference  # import-light: torch and nnunetv2 load when a Predictor is built
from vadice.nnunet.inference import model_channels  # noqa: F401  (re-exported for vadice.cli.dicom)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseInput:
    case: str
    channels: tuple[Path, ...]  # ordered _0000, _0001, ...


def collect_inputs(input_dir: str | os.PathLike, n_channels: int) -> list[CaseInput]:
    """Group the NIfTI files of ``input_dir`` into cases and check them.

    Files named ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``… follow nnU-Net's
    convention; for one-channel models plain ``<case>.nii.gz`` works too
    (:func:`vadice.nnunet.inference.group_channels`).

    Raises:
      InputError: missing folder, no NIfTI files, a non-NIfTI file, missing or
        extra channels, unreadable or non-3-D files, channels on different grids.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found")
    files = sorted(p for p in input_dir.iterdir() if not p.name.startswith("."))
    if not files:
        raise InputError(input_dir, "input folder is empty")
    for path in files:
        if path.is_dir():
            raise InputError(path, "unexpected sub-folder in the input folder")
    cases = [CaseInput(case, channels) for case, channels in inference.group_channels(files, n_channels).items()]
    for item in cases:
        reference = None
        for path in item.channels:
            _, geom = read_nifti(path)
            if reference is None:
                reference = geom
            elif diffs := reference.differences(geom):
                raise InputError(path, "channel grid differs from channel 0: " + "; ".join(diffs))
    return cases


MANIFEST = ".vadice_predict.json"
PROBABILITIES_SUFFIX = ".npz"  # <case>.npz, key "probabilities", as nnUNetv2_predict --save_probabilities
PROBABILITIES_DTYPE = np.float16
_TOOL = "vadice predict"


@dataclass(frozen=True)
class PredictResult:
    written: tuple[Path, ...]  # label maps written by this run
    skipped: tuple[Path, ...]  # label maps an earlier run with the same settings had already written


def prediction_settings(model_dir: str | os.PathLike, folds: Sequence[int | str], checkpoint: str,
                        tta: bool, postprocessing: str | os.PathLike | None = None) -> dict:
    """What makes two predict runs interchangeable: model, checkpoints (by content), folds, mirroring,
    and the post-processing file (by content) when there is one."""
    model_dir = Path(model_dir).resolve()
    settings = {"model_dir": str(model_dir), "folds": [str(f) for f in folds], "checkpoint": checkpoint,
                "checkpoint_sha256": [sha256_file(model_dir / f"fold_{f}" / checkpoint) for f in folds],
                "tta": bool(tta)}
    if postprocessing is not None:  # absent otherwise, so that earlier records still match
        settings["postprocessing_sha256"] = sha256_file(postprocessing)
    return settings


def output_names(case: str, overlays: bool, probabilities: bool = False) -> tuple[str, ...]:
    """Files a case puts into the output folder: the label map first, then the overlay and the probabilities."""
    return ((f"{case}.nii.gz",) + ((f"{case}_overlay.png",) if overlays else ())
            + ((f"{case}{PROBABILITIES_SUFFIX}",) if probabilities else ()))


def read_manifest(output_dir: Path, overwrite: bool = False) -> dict | None:
    """The record of earlier predict runs into ``output_dir`` (None when there is none).

    Raises:
      InputError: a file of that name that is not a vadice predict record, unless ``overwrite``.
    """
    path = output_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("tool") != _TOOL or not isinstance(manifest.get("cases"), dict):
            raise ValueError
        return manifest
    except (ValueError, AttributeError, OSError, UnicodeDecodeError):
        if overwrite:
            return None
        raise InputError(path, "exists and is not a vadice predict record; pass --overwrite to replace it, "
                         "or choose another -o") from None


def _ours(path: Path, record: dict | None) -> bool:
    return record is not None and path.is_file() and record["files"].get(path.name) == sha256_file(path)


def plan_cases(cases: Sequence[CaseInput], output_dir: Path, settings: dict, overlays: bool, overwrite: bool = False,
               probabilities: bool = False) -> tuple[list[tuple[CaseInput, list[str]]], list[CaseInput], dict]:
    """Split cases into those to predict and those an earlier run already finished; check collisions.

    A case is finished when the manifest records it under the same settings and
    input checksums and each of its output files still has the recorded checksum.
    An existing output file may only be replaced when the manifest records it,
    unchanged, under the same settings (a run stopped between two files of a case,
    or an input changed since), or with ``overwrite``. With ``probabilities``, a
    case finished without its ``<case>.npz`` (an earlier run without them) is
    predicted again, so the rerun produces the missing files.

    Returns:
      ``(todo, done, manifest)``: cases to predict with their input checksums,
      finished cases, and the manifest to continue.

    Raises:
      InputError: an output file that this tool did not write with these settings,
        naming the first one and the count.
    """
    manifest = read_manifest(output_dir, overwrite)
    if manifest is None or manifest.get("settings") != settings:
        manifest = {"tool": _TOOL, "settings": settings, "cases": {}}
    todo, done, collisions = [], [], []
    for item in cases:
        inputs = [sha256_file(p) for p in item.channels]
        record = manifest["cases"].get(item.case)
        paths = [output_dir / name for name in output_names(item.case, overlays, probabilities)]
        if record is not None and record.get("inputs") == inputs and all(_ours(p, record) for p in paths):
            done.append(item)
            continue
        todo.append((item, inputs))
        collisions += [p for p in paths if (p.exists() or p.is_symlink()) and not _ours(p, record)]
    if collisions and not overwrite:
        many = len(collisions) > 1
        raise InputError(collisions[0], "exists and was not written by vadice predict with these settings"
                         + (f" (first of {len(collisions)} such files)" if many else "")
                         + f"; pass --overwrite to replace {'them' if many else 'it'}, or choose another -o")
    return todo, done, manifest


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


def predict(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    folds: Sequence[int | str] = (0,),
    device: str = "cpu",
    overlays: bool = True,
    checkpoint: str = "checkpoint_final.pth",
    progress: bool = True,
    tta: bool = True,
    overwrite: bool = False,
    postprocessing: str | os.PathLike | None = None,
    save_probabilities: bool = False,
    progress_bar: str | None = None,
) -> PredictResult:
    """Segment every case of ``input_dir`` with a trained model, one case at a time.

    Each finished case is moved into ``output_dir`` atomically and recorded in
    ``output_dir/.vadice_predict.json`` (settings, input and output checksums),
    so an interrupted run keeps its finished cases and a rerun with the same
    settings predicts only the missing ones. A file in ``output_dir`` that this
    tool did not write with the same settings is never replaced unless
    ``overwrite``.

    Args:
      input_dir: NIfTI inputs (see :func:`collect_inputs`).
      output_dir: receives ``<case>.nii.gz`` label maps (same size, spacing,
        origin and direction as the input) and ``<case>_overlay.png``.
      model_dir: nnU-Net model folder (``Trainer__Plans__configuration``).
      folds: folds to ensemble.
      device: ``cpu``, ``cuda`` or ``mps``.
      overlays: write a PNG overlay per case.
      checkpoint: checkpoint file name in each fold folder.
      progress: log "case k of n" lines with an estimate of the time left.
      tta: nnU-Net's test-time mirroring (up to 8 network passes per tile).
      overwrite: replace output files written by someone else or with other settings.
      postprocessing: a post-processing file (``vadice postprocess fit``): remove
        components below its per-label minimum volumes. Refused for cases it was
        fitted on. ``"bundled"``: the file a model zip carries
        (``vadice export-model --postprocessing``).
      save_probabilities: also write ``<case>.npz`` (key ``probabilities``: the softmax,
        C×Z×Y×X float16, background first; the layout of ``nnUNetv2_predict
        --save_probabilities``, docs/nnunet.md). Probabilities are never post-processed.
      progress_bar: with ``progress``, a tqdm bar with this description over the cases to predict
        instead of the "case k of n" log lines (the experiment's test set).

    Returns:
      PredictResult: label maps written now, and those skipped as already done.

    Raises:
      InputError: bad inputs, model folder or output path; an output file this
        tool did not write with these settings (without ``overwrite``); a bad
        post-processing file, or one fitted on an input case; ``"bundled"`` for a
        model without one.
    """
    output_dir = check_output_dir(output_dir)
    model = inference.check_model(model_dir, folds, checkpoint)  # every model check, before any inference
    cases = collect_inputs(input_dir, model.n_channels)
    pp = None
    if postprocessing is not None:  # checked before minutes of inference, like the inputs
        from vadice.postprocess import load_postprocessing, resolve_postprocessing

        postprocessing = resolve_postprocessing(postprocessing, model_dir)
        pp = load_postprocessing(postprocessing)
        pp.refuse_seen([c.case for c in cases], postprocessing)
        bundled = Path(postprocessing).resolve().parent == Path(model_dir).resolve()  # checked at export
        if not bundled and (fitted_for := pp.fitted_elsewhere(model_dir)):
            log.warning("%s was fitted on predictions of %s, not of %s", postprocessing, fitted_for, model_dir)
    else:
        from vadice.postprocess import BUNDLED_NAME

        if (Path(model_dir) / BUNDLED_NAME).is_file():  # never applied unasked, as nnU-Net's postprocessing.pkl
            log.info("this model carries a fitted post-processing file (%s), not applied: add --postprocessing "
                     "bundled to apply it", BUNDLED_NAME)
    settings = prediction_settings(model_dir, model.folds, checkpoint, tta, postprocessing)
    created = not output_dir.exists()
    todo, done, manifest = plan_cases(cases, output_dir, settings, overlays, overwrite, save_probabilities)
    if done:
        log.info("%d case(s) already predicted into %s with these settings: skipped", len(done), output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        # one model for every case: nnU-Net's predictor and each fold's checkpoint are loaded once
        predictor = inference.Predictor(model_dir, model.folds, device, tta, checkpoint) if todo else None
        start = time.monotonic()
        bar = None
        if progress and progress_bar is not None and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=progress_bar, unit="case")
        for k, (item, inputs) in enumerate(todo, 1):
            if progress and bar is None:
                eta = ("" if k == 1 else
                       f", about {_duration((time.monotonic() - start) / (k - 1) * (len(todo) - k + 1))} left")
                log.info("case %d of %d: %s%s", k, len(todo), item.case, eta)
            written.append(_predict_case(predictor, item, inputs, output_dir, manifest, overlays=overlays,
                                         postprocessing=pp, probabilities=save_probabilities))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
    except BaseException:
        if created and not written:  # nothing finished: leave no folder behind
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    log.debug("wrote %d prediction(s) to %s", len(written), output_dir)
    return PredictResult(tuple(written), tuple(output_dir / f"{c.case}.nii.gz" for c in done))


def _predict_case(predictor, item: CaseInput, inputs: list[str], output_dir: Path, manifest: dict, *,
                  overlays: bool, postprocessing=None, probabilities: bool = False) -> Path:
    """Predict one case into a private temporary folder, record it, then move its files into place."""
    with tempfile.TemporaryDirectory(prefix=".vadice-predict-", dir=output_dir) as tmp:
        ready = Path(tmp)
        names = output_names(item.case, overlays, probabilities)
        produced = ready / names[0]
        prediction = predictor.predict_case(item.channels, produced, probabilities=probabilities)
        if not produced.is_file():
            raise InputError(produced, "nnU-Net produced no prediction for this case")
        labels, geom = read_mask(produced, allowed_labels=None)
        image, ref = read_nifti(item.channels[0])
        if diffs := ref.differences(geom, atol=1e-3):
            raise InputError(produced, "prediction geometry differs from input: " + "; ".join(diffs))
        if postprocessing is not None:
            from vadice.postprocess import apply_to_file

            labels = apply_to_file(postprocessing, produced, produced)
        if overlays:
            from vadice.overlay import overlay_png

            overlay_png(image, labels, ref.spacing_zyx, ready / names[1], title=item.case)
        if probabilities:
            # nnU-Net's layout (C x Z x Y x X, key "probabilities"), stored compactly: docs/nnunet.md
            np.savez_compressed(ready / names[-1],
                                probabilities=prediction.probabilities.astype(PROBABILITIES_DTYPE))
        # Record before moving: a run stopped between the moves finds its own files, not foreign ones.
        manifest["cases"][item.case] = {"inputs": inputs, "files": {n: sha256_file(ready / n) for n in names}}
        write_text(output_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        for name in names:
            os.replace(ready / name, output_dir / name)
    return output_dir / names[0]
