"""Inference with a trained nnU-Net model folder: load the model once, predict any number of cases.

:class:`Predictor` builds nnU-Net's ``nnUNetPredictor`` and loads each fold's
checkpoint once; :meth:`Predictor.predict_case` then runs nnU-Net's own
preprocessing, sliding window, fold ensemble and export for one case. No
postprocessing is applied (nnU-Net's optional "keep largest component" would
delete true multifocal nodes). Every check of a model folder (plans, dataset,
checkpoints, channels) and of the grouping of input files into channels lives
here: :func:`check_model`, :func:`group_channels`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vadice import registry
from vadice.io import InputError, is_nifti, strip_nifti_suffix
from vadice.nnunet.paths import NNUNetError, check_device, quiet_stdout, temporary_environ, with_ext_trainer

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_MODEL_HINT = "pass the Trainer__Plans__configuration folder"


@dataclass(frozen=True)
class ModelInfo:
    """What a checked model folder offers.

    Attributes:
      model_dir: the ``<trainer>__<plans>__<configuration>`` folder.
      folds: the folds to ensemble (ints, or ``("all",)``).
      checkpoint: checkpoint file name inside each ``fold_<f>``.
      n_channels: input channels the model expects (dataset.json ``channel_names``).
      file_ending: the dataset's image ending (``.nii.gz``).
    """

    model_dir: Path
    folds: tuple[int | str, ...]
    checkpoint: str
    n_channels: int
    file_ending: str

    def checkpoint_files(self) -> list[Path]:
        """Each fold's checkpoint file, in fold order."""
        return [self.model_dir / f"fold_{f}" / self.checkpoint for f in self.folds]


def check_model(model_dir: str | os.PathLike, folds: str | int | Iterable[int | str] = (0,),
                checkpoint: str = "checkpoint_final.pth") -> ModelInfo:
    """Check a trained nnU-Net model folder without loading it (cheap: no torch).

    Args:
      model_dir: ``<trainer>__<plans>__<configuration>`` folder with plans.json, dataset.json
        and ``fold_<f>/<checkpoint>``.
      folds: folds to ensemble (see :func:`vadice.registry.parse_folds`).
      checkpoint: checkpoint file name inside each fold folder.

    Returns:
      ModelInfo.

    Raises:
      InputError: not a model folder, bad folds, a missing checkpoint, no channel names.
    """
    model_dir = Path(model_dir)
    folds = _parse_folds(folds)
    if not (model_dir / "plans.json").is_file():
        raise InputError(model_dir, f"not a trained nnU-Net model folder (plans.json missing); {_MODEL_HINT}")
    dataset = _dataset_json(model_dir)
    info = ModelInfo(model_dir, folds, checkpoint, _n_channels(model_dir, dataset),
                     dataset.get("file_ending", ".nii.gz"))
    for path in info.checkpoint_files():
        if not path.is_file():
            raise InputError(path, "checkpoint not found (training unfinished, or wrong --folds?)")
    return info


def model_channels(model_dir: str | os.PathLike) -> int:
    """Number of input channels a trained nnU-Net model expects (from its dataset.json).

    Raises:
      InputError: no readable dataset.json, or one without channel names.
    """
    return _n_channels(Path(model_dir), _dataset_json(Path(model_dir)))


def _dataset_json(model_dir: Path) -> dict:
    path = model_dir / "dataset.json"
    if not path.is_file():
        raise InputError(model_dir, f"not a trained nnU-Net model folder (dataset.json missing); {_MODEL_HINT}")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InputError(path, "not readable JSON") from None


def _n_channels(model_dir: Path, dataset: dict) -> int:
    names = dataset.get("channel_names") or dataset.get("modality")
    if not names:
        raise InputError(model_dir / "dataset.json", "dataset.json has no channel_names")
    return len(names)


def _parse_folds(folds) -> tuple[int | str, ...]:
    try:
        return registry.parse_folds(folds, "folds")
    except ValueError as exc:
        raise InputError(None, str(exc)) from None


def group_channels(files: Iterable[str | os.PathLike], n_channels: int) -> dict[str, tuple[Path, ...]]:
    """Group NIfTI files into cases, channels in order.

    Files named ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz`` … follow nnU-Net's
    convention; for one-channel models plain ``<case>.nii.gz`` works too.

    Args:
      files: the input files.
      n_channels: channels the model expects.

    Returns:
      ``{case: (channel 0 file, channel 1 file, ...)}``, sorted by case.

    Raises:
      InputError: a non-NIfTI file, a plain name for a multi-channel model, a duplicate,
        missing or extra channels.
    """
    grouped: dict[str, dict[int, Path]] = {}
    for path in map(Path, files):
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
    cases = {}
    expected = list(range(n_channels))
    for case, channels in sorted(grouped.items()):
        if sorted(channels) != expected:
            missing = sorted(set(expected) - set(channels))
            extra = sorted(set(channels) - set(expected))
            what = f"missing channel(s) {missing}" if missing else f"unexpected channel(s) {extra}"
            raise InputError(next(iter(channels.values())), f"case {case!r}: {what} (model has {n_channels})")
        cases[case] = tuple(channels[c] for c in expected)
    return cases


@dataclass(frozen=True)
class CasePrediction:
    """One case's prediction.

    Attributes:
      labels: the label map, in the numpy axis order of SimpleITK's ``GetArrayFromImage`` (z, y, x).
      probabilities: ``None``, or the softmax over C classes (background first), C×Z×Y×X float32, on
        the same grid: what ``nnUNetv2_predict --save_probabilities`` stores as ``probabilities``.
      written: the label map file, when one was asked for.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    written: Path | None


class Predictor:
    """A trained nnU-Net model loaded once (every fold's checkpoint), predicting case after case.

    Args:
      model_dir: ``<trainer>__<plans>__<configuration>`` folder (see :func:`check_model`).
      folds: folds to ensemble (softmax average, as nnU-Net does).
      device: 'cpu', 'cuda' or 'mps'.
      tta: nnU-Net's test-time mirroring (up to 8 network passes per tile).
      checkpoint: checkpoint file name inside each fold folder.
      tile_step_size: sliding-window step as a fraction of the patch (nnU-Net's default 0.5).
      progress: nnU-Net's progress bar over sliding-window tiles.

    Raises:
      InputError: a bad model folder, unavailable device or bad step size.
    """

    def __init__(self, model_dir: str | os.PathLike, folds: str | int | Iterable[int | str] = (0,),
                 device: str = "cpu", tta: bool = True, checkpoint: str = "checkpoint_final.pth",
                 tile_step_size: float = 0.5, progress: bool = False):
        self.info = check_model(model_dir, folds, checkpoint)
        check_device(device)
        if not 0 < tile_step_size <= 1:
            raise InputError(None, f"tile_step_size must be in (0, 1], got {tile_step_size}")
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        # nnU-Net looks the checkpoint's trainer class up by name, in its own package and nnUNet_extTrainer
        self._env = {"nnUNet_extTrainer": with_ext_trainer(os.environ.get("nnUNet_extTrainer"))}
        with temporary_environ(self._env), quiet_stdout(None):
            predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=tta,
                                        perform_everything_on_device=device == "cuda", device=torch.device(device),
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=progress)
            predictor.initialize_from_trained_model_folder(str(self.info.model_dir), use_folds=self.info.folds,
                                                           checkpoint_name=checkpoint)
        self._nnunet = predictor
        self._preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)

    def predict_case(self, files: Sequence[str | os.PathLike], output_file: str | os.PathLike | None = None,
                     probabilities: bool = False) -> CasePrediction:
        """Predict one case: nnU-Net's preprocessing, sliding window, fold ensemble and export.

        Args:
          files: the case's channel files, channel 0 first.
          output_file: write the label map here (nnU-Net's writer: the input's size, spacing, origin
            and direction), or None.
          probabilities: also return the softmax probabilities (see :class:`CasePrediction`).

        Returns:
          CasePrediction.

        Raises:
          InputError: a channel count the model does not take.
        """
        if len(files) != self.info.n_channels:
            raise InputError(Path(files[0]) if files else None,
                             f"{len(files)} channel file(s) given; the model expects {self.info.n_channels}")
        import torch
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        nn = self._nnunet
        with temporary_environ(self._env), quiet_stdout(None):
            # the path of nnUNetPredictor.predict_from_files_sequential, for one case and without its .pkl
            data, _, properties = self._preprocessor.run_case([str(f) for f in files], None, nn.plans_manager,
                                                              nn.configuration_manager, nn.dataset_json)
            logits = nn.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
            result = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, nn.plans_manager, nn.configuration_manager, nn.label_manager, properties,
                return_probabilities=probabilities)
        labels, probs = result if probabilities else (result, None)
        written = None
        if output_file is not None:
            written = Path(output_file)
            nn.plans_manager.image_reader_writer_class().write_seg(labels, str(written), properties)
        return CasePrediction(labels, probs, written)


def predict(model_dir, input_dir_or_files, output_dir, folds: Iterable[int | str] = (0,), device: str = "cpu",
            checkpoint: str = "checkpoint_final.pth", progress: bool = True, use_mirroring: bool = True,
            tile_step_size: float = 0.5) -> list[Path]:
    """Predict label maps for a folder or list of images with one :class:`Predictor`.

    Outputs are first written to a temporary sibling folder and then moved into
    ``output_dir`` as ``<case>.nii.gz``, so an interrupted call leaves no partial
    files there. (``vadice predict`` adds resume, overlays and post-processing:
    :func:`vadice.predict.predict`.)

    Args:
        model_dir: see :func:`check_model`.
        input_dir_or_files: a folder of ``<case>_0000.nii.gz`` (one file per channel;
            ``<case>.nii.gz`` for one-channel models) or a list of such files.
        output_dir: folder for ``<case>.nii.gz`` (created; must not be a file).
        folds, device, checkpoint, tile_step_size: see :class:`Predictor`.
        progress: nnU-Net's progress bar over sliding-window tiles.
        use_mirroring: test-time mirroring, as nnU-Net does by default.

    Returns:
        The written label map paths, sorted by case.

    Raises:
        InputError: missing model files, bad inputs, output path that is a file.
        NNUNetError: nnU-Net wrote no label map for a case.
    """
    info = check_model(model_dir, folds, checkpoint)
    if isinstance(input_dir_or_files, (str, os.PathLike)):
        source = Path(input_dir_or_files)
        if not source.is_dir():
            raise InputError(source, "input folder does not exist")
        files = sorted(p for p in source.iterdir() if p.is_file() and p.name.endswith(info.file_ending))
        if not files:
            raise InputError(source, f"no {info.file_ending} images in the input folder")
    else:
        files = [Path(p) for p in input_dir_or_files]
        if not files:
            raise InputError(None, "no input files given")
    for path in files:
        if not path.is_file():
            raise InputError(path, "input file does not exist")
    cases = group_channels(files, info.n_channels)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(output_dir, "output path exists and is a file, not a directory")
    predictor = Predictor(model_dir, info.folds, device, use_mirroring, checkpoint, tile_step_size, progress)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".vadice_predict.", dir=output_dir.parent))
    try:
        staged = [(tmp / f"{case}{info.file_ending}", output_dir / f"{case}{info.file_ending}") for case in cases]
        for channels, (produced, _) in zip(cases.values(), staged):
            predictor.predict_case(channels, produced)
            if not produced.is_file():
                raise NNUNetError(f"nnU-Net wrote no prediction for {produced.name}")
        for produced, final in staged:
            os.replace(produced, final)
        return [final for _, final in staged]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
