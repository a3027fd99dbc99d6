"""The options of vadice's nnU-Net trainers: one JSON file, named by ``VADICE_TRAINER_OPTIONS``.

nnU-Net builds a trainer from its class name alone, so options reach it from outside the command line;
vadice's trainers take them from one documented file (docs/nnunet.md), and nothing else. Without
the variable they run with nnU-Net's defaults. ``vadice train`` writes the file into the fold folder
and sets the variable; plain ``nnUNetv2_train`` users do the same by hand::

    {"epochs": 3, "iterations_per_epoch": 30, "val_iterations": 3, "seed": 0, "val_mirroring": false}

Every key is optional (absent or ``null``: nnU-Net's default):

- ``epochs``, ``iterations_per_epoch``, ``val_iterations`` (integers >= 1): nnU-Net's ``num_epochs`` (1000),
  ``num_iterations_per_epoch`` (250), ``num_val_iterations_per_epoch`` (50);
- ``seed`` (integer >= 0): seeds Python, NumPy and torch (plus the DDP rank);
- ``val_mirroring`` (true/false, default true): false runs the final validation without test-time mirroring;
- ``torch_threads`` (integer >= 1): torch CPU threads of the training process (``-device cpu`` only);
- ``warm_start`` (a path): an nnU-Net checkpoint whose network weights, segmentation heads included, a new
  training starts from;
- ``catmil_warmup_epochs`` (integer >= 0): warm-up length of CATMIL's Tversky weight (nnUNetTrainerCATMIL only);
- ``va`` (an object; nnUNetTrainerVA only): the VA loss options, keys :data:`VA_OPTION_KEYS`, the format of the
  ``vadice_va.json`` that nnUNetTrainerVA reads next to the plans when the options file has no ``va``.
  They are an object of their own because ``null`` means something there (``r_min``/``r_max``: unbounded).

A trainer refuses options it would not use (``va`` for nnUNetTrainerVADual, say).

Import-light: no torch and no nnunetv2 at import time (``vadice train`` writes the file).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from numbers import Real
from pathlib import Path
from typing import Any, Mapping

from vadice.io import write_text

OPTIONS_ENV = "VADICE_TRAINER_OPTIONS"
OPTIONS_FILE = "vadice_trainer_options.json"  # written by `vadice train`; a trainer's copy is its record
VA_OPTION_KEYS = ("preset", "weighting", "va_labels", "gamma", "mode", "v_ref", "v_min_mm3", "r_min", "r_max")
# The options every vadice trainer reads; ``catmil_warmup_epochs`` and ``va`` belong to one trainer each.
BUDGET_OPTIONS = ("epochs", "iterations_per_epoch", "val_iterations", "seed", "val_mirroring", "torch_threads",
                  "warm_start")


class _Invalid(ValueError):
    """One option's problem, ``"<key>: <problem>"``; :func:`read` puts the file in front."""


def _integer(minimum: int):
    def check(key: str, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise _Invalid(f"{key}: must be an integer >= {minimum} (or null), got {value!r}")
    return check


def _boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _Invalid(f"{key}: must be true or false, got {value!r}")


def _path(key: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise _Invalid(f"{key}: must be a file path (or null), got {value!r}")


def _number(key: str, value: Any, minimum: float, strict: bool) -> None:
    ok = (not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
          and (value > minimum if strict else value >= minimum))
    if not ok:
        raise _Invalid(f"{key}: must be a finite number {'>' if strict else '>='} {minimum}, got {value!r}")


def _choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise _Invalid(f"{key}: must be one of {sorted(choices)}, got {value!r}")


def check_va(va: Any, prefix: str = "va.") -> None:
    """Validate VA loss options (the keys of :data:`VA_OPTION_KEYS`, each on its own; the loss checks how they
    combine). Imports :mod:`vadice.losses` (torch) for the preset and weighting names.

    Raises:
      ValueError: ``"<prefix><key>: <problem>"``, one line.
    """
    from vadice.losses.va_dice import MODES, PRESETS, WEIGHTINGS

    if not isinstance(va, Mapping):
        raise _Invalid(f"{prefix.rstrip('.') or 'VA options'}: must be a JSON object, got {va!r}")
    for key, value in va.items():
        name = f"{prefix}{key}"
        if key not in VA_OPTION_KEYS:
            raise _Invalid(f"{name}: unknown VA option; known: {', '.join(VA_OPTION_KEYS)}")
        if key == "preset":
            _choice(name, value, PRESETS)
        elif key == "weighting":
            _choice(name, value, WEIGHTINGS)
        elif key == "mode":
            _choice(name, value, MODES)
        elif key == "va_labels":
            if not isinstance(value, (list, tuple)) or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
                raise _Invalid(f"{name}: must be a list of foreground labels (integers >= 1), got {value!r}")
        elif key == "gamma":
            _number(name, value, 0, strict=False)
        elif key == "v_min_mm3":
            _number(name, value, 0, strict=True)
        elif key in ("r_min", "r_max"):
            if value is not None:
                _number(name, value, 0, strict=True)
        elif key == "v_ref" and isinstance(value, Mapping):
            for label, volume in value.items():
                if not str(label).isdigit() or int(label) < 1:
                    raise _Invalid(f"{name}: labels must be integers >= 1, got {label!r}")
                _number(f"{name}[{label}]", volume, 0, strict=True)
        elif key == "v_ref" and value is not None:
            _number(name, value, 0, strict=True)


_CHECKS = {
    "epochs": _integer(1), "iterations_per_epoch": _integer(1), "val_iterations": _integer(1),
    "seed": _integer(0), "val_mirroring": _boolean, "torch_threads": _integer(1), "warm_start": _path,
    "catmil_warmup_epochs": _integer(0), "va": lambda key, value: value is None or check_va(value, f"{key}."),
}


@dataclass(frozen=True)
class TrainerOptions:
    """What a vadice trainer can be told from outside (the module docstring says what each option does).

    ``None`` (and ``val_mirroring=True``) is nnU-Net's default. ``va`` holds only the VA options given.

    Raises:
      ValueError: an invalid value, ``"<key>: <problem>"``.
    """

    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations: int | None = None
    seed: int | None = None
    val_mirroring: bool = True
    torch_threads: int | None = None
    warm_start: str | None = None
    catmil_warmup_epochs: int | None = None
    va: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self):
        for f in fields(self):
            _CHECKS[f.name](f.name, getattr(self, f.name))
        if self.va is not None:
            object.__setattr__(self, "va", dict(self.va))

    def given(self) -> tuple[str, ...]:
        """The options that differ from nnU-Net's defaults, in the order of the fields."""
        default = TrainerOptions()
        return tuple(f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name))

    def to_json(self) -> dict[str, Any]:
        """The options given, as :func:`write` stores them."""
        return {name: getattr(self, name) for name in self.given()}


def _load_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON in ``path``; an unreadable file is a one-line ValueError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read {what} ({' '.join(str(exc).split())})") from None


def read(path: str | os.PathLike) -> TrainerOptions:
    """The options in ``path``.

    Raises:
      ValueError: an unreadable file, not a JSON object, an unknown key, or a bad value; one line naming the file
        and the key.
    """
    raw = _load_json(path, "trainer options")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: trainer options must be a JSON object, got {type(raw).__name__}")
    known = [f.name for f in fields(TrainerOptions)]
    for key in raw:
        if key not in known:
            raise ValueError(f"{path}: {key}: unknown trainer option; known: {', '.join(known)}")
    if raw.get("val_mirroring", True) is None:
        raw = {**raw, "val_mirroring": True}
    try:
        return TrainerOptions(**raw)
    except _Invalid as exc:
        raise ValueError(f"{path}: {exc}") from None


def read_va(path: str | os.PathLike) -> dict[str, Any]:
    """VA loss options alone, from a JSON object of :data:`VA_OPTION_KEYS` (``vadice_va.json`` beside the plans).

    Raises:
      ValueError: one line naming the file and the key.
    """
    raw = _load_json(path, "VA options")
    try:
        check_va(raw, prefix="")
    except _Invalid as exc:
        raise ValueError(f"{path}: {exc}") from None
    return raw


def write(path: str | os.PathLike, options: TrainerOptions) -> Path:
    """Store ``options`` in ``path`` (atomically); :func:`read` gives them back."""
    return write_text(path, json.dumps(options.to_json(), indent=1) + "\n")


def from_environment(environ: Mapping[str, str] | None = None) -> tuple[TrainerOptions, Path | None]:
    """The options of the file ``VADICE_TRAINER_OPTIONS`` names, and that file; unset: defaults and ``None``."""
    name = (os.environ if environ is None else environ).get(OPTIONS_ENV, "").strip()
    if not name:
        return TrainerOptions(), None
    return read(name), Path(name)
