"""The one place for vadice's named things: set-ups, plan presets, devices, labels and folds.

Every other module asks this one instead of keeping its own list, so adding a
set-up or a label is a change in one file. Floor 1: it imports nothing of
vadice and nothing heavy (the CLI reads it before torch is imported).

- :data:`SETUPS`: every training set-up (the nnU-Net trainer behind it, what
  it trains with, whether it needs vadice's lesion ids);
  :data:`STUDY_SETUPS` the default study's three.
- :data:`PRESETS`: plan presets by name (nnU-Net's planner classes live in
  :mod:`vadice.nnunet.planners`, which maps these names to them).
- :data:`DEVICES`, :data:`LABELS`, :data:`NODE_LABEL`, :data:`TUMOUR_LABEL`.
- :func:`parse_folds`: the one reading of a fold list ("0,1,2" or "all").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Setup:
    """A training set-up.

    Attributes:
      name: what users type (``--loss``, ``--setups``).
      trainer: the nnU-Net trainer class that implements it.
      loss: what it trains with, in words (the report's training table).
      needs_lesion_ids: whether training reads vadice's lesion-id maps (``vadice plan`` writes them).
      description: one line for ``--help`` and the docs.
    """

    name: str
    trainer: str
    loss: str
    needs_lesion_ids: bool
    description: str


_SETUP_LIST = (
    Setup("baseline", "nnUNetTrainer", "Dice + cross-entropy", False,
          "nnU-Net's own trainer and loss, unchanged"),
    Setup("dual", "nnUNetTrainerVADual", "VA Dice + cross-entropy", True,
          "volume-aware Dice on GTVp and GTVn"),
    Setup("selective-ln", "nnUNetTrainerVASelectiveLN", "VA Dice + cross-entropy", True,
          "volume-aware Dice on GTVn only"),
    # comparators of the small-lesion bench (docs/losses.md)
    Setup("blob", "nnUNetTrainerBlob", "blob loss (2 Dice+CE + 1 per-lesion Dice+CE)", True,
          "blob loss (Kofler et al. 2023)"),
    Setup("cc-dicece", "nnUNetTrainerCCDiceCE", "Dice+CE + per-lesion Voronoi-cell Dice+CE", True,
          "CC-DiceCE: connected-component Dice+CE over Voronoi cells"),
    Setup("catmil", "nnUNetTrainerCATMIL", "Dice+CE + component-adaptive Tversky + MIL", True,
          "component-adaptive Tversky + multiple-instance learning"),
    # a loss-side precision lever: VA dual + the false-positive component term (docs/losses.md)
    Setup("dual-fp", "nnUNetTrainerVADualFP", "VA Dice + cross-entropy + false-positive component term", True,
          "dual + a penalty on predicted components that touch no lesion"),
)
SETUPS: dict[str, Setup] = {s.name: s for s in _SETUP_LIST}
STUDY_SETUPS: tuple[str, ...] = ("baseline", "dual", "selective-ln")

# nnU-Net's own trainer with only the schedule and seed settable: short baseline runs (warm starts).
BUDGET_TRAINER = "nnUNetTrainerBudget"


@dataclass(frozen=True)
class PresetInfo:
    """A plan preset: its name, nnU-Net's plans identifier, and one line of description."""

    name: str
    plans_identifier: str
    description: str


PRESETS: dict[str, PresetInfo] = {
    "resenc-m": PresetInfo("resenc-m", "nnUNetResEncUNetMPlans",
                           "nnU-Net ResEnc M planner, unchanged (GPU; the study's network)"),
    "cpu-small": PresetInfo("cpu-small", "vadiceCPUSmallPlans",
                            "ResEnc planning at 8..80 features, patch <= 32x64x64, batch 2 (CPU demo/tests; "
                            "not ResEnc M)"),
}

DEVICES: tuple[str, ...] = ("cuda", "cpu", "mps")

# HNTS-MRG's labels: name -> value in the label maps.
LABELS: dict[str, int] = {"GTVp": 1, "GTVn": 2}
TUMOUR_LABEL = "GTVp"
NODE_LABEL = "GTVn"


def setup(name: str) -> Setup:
    """The set-up called ``name``.

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    try:
        return SETUPS[name]
    except KeyError:
        raise ValueError(f"unknown set-up {name!r}; choose one of {', '.join(SETUPS)}") from None


def preset(name: str) -> PresetInfo:
    """The plan preset called ``name``.

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown plan preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def check_device(name: str) -> str:
    """Return ``name`` if it is a known device.

    Raises:
      ValueError: unknown device.
    """
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    return name


def parse_folds(folds: str | int | Iterable[int | str], what: str = "--folds") -> tuple[int | str, ...]:
    """Read a fold list: ``"0,1,2"``, ``"all"``, an int, or an iterable of ints / ``"all"``.

    Args:
      folds: the folds as typed or as a sequence.
      what: how to name the option in errors.

    Returns:
      ``("all",)`` or a tuple of distinct non-negative ints, in the order given.

    Raises:
      ValueError: empty, not integers, negative, duplicated, or ``all`` mixed with numbers.
    """
    if isinstance(folds, str):
        parts = [p.strip() for p in folds.split(",") if p.strip()]
    elif isinstance(folds, int):
        parts = [folds]
    else:
        parts = list(folds)
    if not parts:
        raise ValueError(f"{what} is empty")
    if any(str(p) == "all" for p in parts):
        if len(parts) != 1:
            raise ValueError(f"{what}: 'all' cannot be mixed with fold numbers, got {folds!r}")
        return ("all",)
    try:
        values = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be comma-separated integers or 'all', got {folds!r}") from None
    if any(v < 0 for v in values):
        raise ValueError(f"{what} must be >= 0, got {folds!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has duplicates: {folds!r}")
    return values
