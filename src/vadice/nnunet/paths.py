"""nnU-Net's folders and environment: roots, dataset names, the subprocess environment, devices.

* ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` come from
  explicit options first, then the environment; a missing one is a one-line error.
* Datasets may be named by id (``101``), name (``Dataset101_HNTS``) or the path of
  the raw dataset folder. A path sets ``nnUNet_raw`` to its parent; when that parent
  is called ``nnUNet_raw`` and the other two variables are unset, the siblings
  ``nnUNet_preprocessed`` / ``nnUNet_results`` are used.

Import-light (no torch, no nnunetv2 at import time): ``vadice data`` resolves
dataset names through it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from vadice import registry
from vadice.io import InputError
from vadice.nnunet import trainer_dir
from vadice.nnunet.trainer_options import OPTIONS_ENV

log = logging.getLogger(__name__)
T = TypeVar("T")

CONFIGURATION = "3d_fullres"

_PATH_VARS = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
_DATASET_NAME = re.compile(r"^Dataset(\d{3})_\S+$")


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


def with_ext_trainer(existing: str | None) -> str:
    """``nnUNet_extTrainer`` with vadice's trainer folder first, keeping the folders ``existing`` names."""
    ours = str(trainer_dir())
    parts = [p for p in (existing or "").split(os.pathsep) if p]
    return os.pathsep.join([ours] + [p for p in parts if os.path.abspath(p) != os.path.abspath(ours)])


def build_env(paths: NNUNetPaths, device: str = "cuda", options_file: str | os.PathLike | None = None,
              base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an nnU-Net subprocess.

    Sets the nnU-Net roots, puts vadice's trainer directory first in ``nnUNet_extTrainer``
    (keeping what was there), and on CPU/MPS says ``nnUNet_compile=f`` explicitly (nnU-Net
    2.8.1's trainer already skips compile there) and runs augmentation in the training process
    (``nnUNet_n_proc_DA=0``: worker processes only compete with torch for a few cores)
    unless the caller set it. ``nnUNet_def_n_proc`` (validation export workers, nnU-Net
    default 8) is capped at the CPU count. ``VADICE_TRAINER_OPTIONS`` (vadice's trainer options
    file, :mod:`vadice.nnunet.trainer_options`) comes only from ``options_file``: an inherited one
    is dropped so a run is defined by its arguments.
    """
    env = dict(os.environ if base is None else base)
    env.pop(OPTIONS_ENV, None)
    env.update(paths.env())
    env["nnUNet_extTrainer"] = with_ext_trainer(env.get("nnUNet_extTrainer"))
    if device != "cuda":
        env["nnUNet_compile"] = "f"
        env.setdefault("nnUNet_n_proc_DA", "0")
    env.setdefault("nnUNet_def_n_proc", str(max(1, min(8, os.cpu_count() or 1))))
    env["PYTHONUNBUFFERED"] = "1"
    if options_file is not None:
        env[OPTIONS_ENV] = str(options_file)
    return env


@contextlib.contextmanager
def temporary_environ(values: dict[str, str]) -> Iterator[None]:
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
def quiet_stdout(log_path: Path | None) -> Iterator[None]:
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


def registry_lookup(lookup: Callable[[Any], T], name: Any) -> T:
    """Ask :mod:`vadice.registry` for ``name``; its ``ValueError`` becomes a one-line :class:`InputError`.

    Args:
        lookup: a registry function (``registry.setup``, ``registry.preset``, ``registry.check_device`` ...).
        name: what the user gave.

    Returns:
        What ``lookup`` returns.

    Raises:
        InputError: the registry does not know ``name``.
    """
    try:
        return lookup(name)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None


def check_device(device: str, num_gpus: int = 1) -> None:
    """Refuse a device this machine does not have, before nnU-Net fails on it.

    Args:
        device: 'cuda', 'cpu' or 'mps' (:data:`vadice.registry.DEVICES`).
        num_gpus: GPUs a training run asks for (> 1 needs that many CUDA devices).

    Raises:
        InputError: unknown or unavailable device, or too few GPUs.
    """
    registry_lookup(registry.check_device, device)
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

