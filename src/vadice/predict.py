"""Prediction: NIfTI in, label maps out with the input's exact geometry, plus overlays.

nnU-Net does the inference (``vadice.nnunet.runner.predict``); this layer checks
the inputs first (so a bad file fails before minutes of inference, with its
name), maps plain ``<case>.nii.gz`` inputs onto nnU-Net's channel naming,
verifies that every output has the geometry of its input, and moves outputs
into place atomically. No post-processing: "keep the largest component" would
delete all but one metastatic node.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vadice.io import (
    InputError,
    check_output_dir,
    is_nifti,
    read_mask,
    read_nifti,
    strip_nifti_suffix,
)

log = logging.getLogger(__name__)

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseInput:
    case: str
    channels: tuple[Path, ...]  # ordered _0000, _0001, ...


def model_channels(model_dir: str | os.PathLike) -> int:
    """Number of input channels a trained nnU-Net model expects (from its dataset.json)."""
    model_dir = Path(model_dir)
    path = model_dir / "dataset.json"
    if not path.is_file():
        raise InputError(model_dir, "not a trained nnU-Net model folder (no dataset.json); "
                         "pass the Trainer__Plans__configuration folder")
    info = json.loads(path.read_text())
    names = info.get("channel_names") or info.get("modality")
    if not names:
        raise InputError(path, "dataset.json has no channel_names")
    return len(names)


def collect_inputs(input_dir: str | os.PathLike, n_channels: int) -> list[CaseInput]:
    """Group the NIfTI files of ``input_dir`` into cases and check them.

    Files named ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``… follow nnU-Net's
    convention; for one-channel models plain ``<case>.nii.gz`` works too.

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
    grouped: dict[str, dict[int, Path]] = {}
    for path in files:
        if path.is_dir():
            raise InputError(path, "unexpected sub-folder in the input folder")
        if not is_nifti(path):
            raise InputError(path, "not a NIfTI file (expected .nii or .nii.gz)")
        stem = strip_nifti_suffix(path.name)
        match = _CHANNEL.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if match is None and n_channels != 1:
            raise InputError(path, f"the model needs {n_channels} channels: name inputs <case>_0000.nii.gz … "
                             f"<case>_{n_channels - 1:04d}.nii.gz")
        if channel in grouped.setdefault(case, {}):
            raise InputError(path, f"duplicate input for case {case!r} channel {channel}")
        grouped[case][channel] = path
    cases = []
    for case, channels in sorted(grouped.items()):
        expected = list(range(n_channels))
        if sorted(channels) != expected:
            missing = sorted(set(expected) - set(channels))
            extra = sorted(set(channels) - set(expected))
            what = f"missing channel(s) {missing}" if missing else f"unexpected channel(s) {extra}"
            raise InputError(next(iter(channels.values())), f"case {case!r}: {what} (model has {n_channels})")
        cases.append(CaseInput(case, tuple(channels[c] for c in expected)))
    for item in cases:
        reference = None
        for path in item.channels:
            _, geom = read_nifti(path)
            if reference is None:
                reference = geom
            elif diffs := reference.differences(geom):
                raise InputError(path, "channel grid differs from channel 0: " + "; ".join(diffs))
    return cases


def predict(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    folds: Sequence[int | str] = (0,),
    device: str = "cpu",
    overlays: bool = True,
    checkpoint: str = "checkpoint_final.pth",
    progress: bool = True,
) -> list[Path]:
    """Segment every case of ``input_dir`` with a trained model.

    Args:
      input_dir: NIfTI inputs (see :func:`collect_inputs`).
      output_dir: receives ``<case>.nii.gz`` label maps (same size, spacing,
        origin and direction as the input) and ``<case>_overlay.png``.
      model_dir: nnU-Net model folder (``Trainer__Plans__configuration``).
      folds: folds to ensemble.
      device: ``cpu``, ``cuda`` or ``mps``.
      overlays: write a PNG overlay per case.

    Returns:
      Paths of the written label maps.

    Raises:
      InputError: bad inputs, model folder or output path.
    """
    from vadice.nnunet import runner  # heavy: imports torch and nnunetv2

    output_dir = check_output_dir(output_dir)
    n_channels = model_channels(model_dir)
    for fold in folds:
        fold_dir = Path(model_dir) / f"fold_{fold}"
        if not (fold_dir / checkpoint).is_file():
            raise InputError(fold_dir / checkpoint, "checkpoint not found (training unfinished or wrong --folds)")
    cases = collect_inputs(input_dir, n_channels)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vadice-predict-", dir=output_dir) as tmp:
        staged, raw_out = Path(tmp) / "in", Path(tmp) / "out"
        staged.mkdir()
        for item in cases:
            for c, src in enumerate(item.channels):
                target = staged / f"{item.case}_{c:04d}.nii.gz"
                if str(src).endswith(".gz"):
                    os.symlink(src.resolve(), target)
                else:  # nnU-Net models read their dataset's ending (.nii.gz); recompress, geometry kept
                    import SimpleITK as sitk

                    sitk.WriteImage(sitk.ReadImage(str(src)), str(target), useCompression=True)
        runner.predict(model_dir, staged, raw_out, folds=tuple(folds), device=device,
                       checkpoint=checkpoint, progress=progress)
        written = []
        for item in cases:
            produced = raw_out / f"{item.case}.nii.gz"
            if not produced.is_file():
                raise InputError(produced, "nnU-Net produced no prediction for this case")
            labels, geom = read_mask(produced, allowed_labels=None)
            image, ref = read_nifti(item.channels[0])
            if diffs := ref.differences(geom, atol=1e-3):
                raise InputError(produced, "prediction geometry differs from input: " + "; ".join(diffs))
            if overlays:
                from vadice.report.overlay import overlay_png

                overlay_png(image, labels, ref.spacing_zyx, output_dir / f"{item.case}_overlay.png",
                            title=item.case)
            final = output_dir / f"{item.case}.nii.gz"
            os.replace(produced, final)
            written.append(final)
    log.info("wrote %d prediction(s) to %s", len(written), output_dir)
    return written

