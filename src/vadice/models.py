"""Which trained model a command means, and which of its folds are there.

Every command that takes a model (``predict``, ``gc-predict``, ``export-model``,
``postprocess fit``) resolves it with :func:`resolve_model`: a
``Trainer__Plans__configuration`` folder, a model zip (``vadice export-model``
or ``nnUNetv2_export_model_to_zip``; unpacked once into a cache keyed by its
content), or an experiment run folder plus a set-up and seed. Every listing of
a model's finished folds is :func:`available_folds`. No nnU-Net import here:
file handling only (``vadice.sharing`` writes the zips).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path, PurePosixPath

from vadice.io import InputError, atomic_dir


def resolve_model(path: str | os.PathLike, setup: str | None = None, seed: int = 0) -> Path:
    """The trained model folder that ``path`` (and, for a run folder, ``setup`` and ``seed``) names.

    Args:
      path: a ``Trainer__Plans__configuration`` folder, a model ``.zip``, or an experiment run folder.
      setup: with a run folder: which set-up's model (required there, refused elsewhere).
      seed: with a run folder: which seed.

    Returns:
      The model folder (for a zip: the folder inside its unpacked copy).

    Raises:
      InputError: not found, a run folder without ``setup`` or without a finished unit for it, ``setup`` given
        for a model folder or zip, a bad zip.
    """
    path = Path(path)
    if path.suffix.lower() == ".zip":
        if setup is not None:
            raise InputError(path, "--setup only applies to an experiment run folder, not to a model zip")
        return model_from_zip(path)
    # Run folders are the experiment's layout (units/<setup>__fold<k>__seed<s>.json); it reads them.
    from vadice.experiment import model_dir_from

    return model_dir_from(path, setup, seed)


def _fold_key(fold: str) -> tuple[bool, int]:
    return (not fold.isdigit(), int(fold) if fold.isdigit() else 0)


def available_folds(model_dir: str | os.PathLike, checkpoint: str = "checkpoint_final.pth") -> tuple[int | str, ...]:
    """The folds of a model folder that hold ``checkpoint``: numbered ones in numeric order, then ``"all"``.

    Args:
      model_dir: ``Trainer__Plans__configuration`` folder.
      checkpoint: checkpoint file name in each ``fold_<f>`` folder.

    Returns:
      Fold numbers as ints (``fold_10`` after ``fold_2``), ``fold_all`` as ``"all"``.

    Raises:
      InputError: no fold holds the checkpoint.
    """
    model_dir = Path(model_dir)
    found = [p.name[len("fold_"):] for p in model_dir.glob("fold_*") if (p / checkpoint).is_file()]
    if not found:
        raise InputError(model_dir, f"no fold_*/{checkpoint} in this model folder")
    return tuple(int(f) if f.isdigit() else f for f in sorted(found, key=_fold_key))


def _cache_root() -> Path:
    return Path(os.environ.get("VADICE_CACHE") or Path.home() / ".cache" / "vadice") / "models"


def model_from_zip(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Unpack a model zip once (keyed by its SHA-256) and return its model folder.

    Args:
      path: zip written by ``vadice export-model`` or ``nnUNetv2_export_model_to_zip``.
      cache: where unpacked models live (default ``$VADICE_CACHE/models`` or ``~/.cache/vadice/models``).

    Returns:
      The ``Trainer__Plans__configuration`` folder inside the unpacked zip.

    Raises:
      InputError: not a zip, unsafe member paths, or not exactly one model folder inside.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model zip not found")
    if not zipfile.is_zipfile(path):
        raise InputError(path, "not a zip file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    target = Path(cache) if cache is not None else _cache_root()
    target = target / digest
    if not target.is_dir():
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                parts = PurePosixPath(member).parts
                if member.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                    raise InputError(path, f"unsafe path in zip: {member!r}")
            try:
                with atomic_dir(target) as tmp:
                    zf.extractall(tmp)
            except FileExistsError:  # another process unpacked it meanwhile
                pass
    models = sorted({p.parent for p in target.rglob("plans.json") if (p.parent / "dataset.json").is_file()})
    if len(models) != 1:
        raise InputError(path, f"expected one model folder (with dataset.json and plans.json) inside, "
                         f"found {len(models)}")
    return models[0]
