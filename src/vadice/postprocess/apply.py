"""Post-processing: remove predicted components smaller than a per-label minimum volume.

This module holds only the *application* and the post-processing file: it
imports ``io`` and ``lesions`` and nothing above them, so ``vadice.predict``
can apply a fitted file. *Fitting* the minimum volumes needs the lesion-wise
metrics and lives in :mod:`vadice.postprocess.fit`.

A component is a connected component of one label exactly as
:func:`vadice.lesions.label_components` defines a lesion (the evaluation uses
the same function), so "a component of 40 mm³" means the same thing here, in
``vadice evaluate`` and in the loss preprocessing. A component is kept when its
volume is >= the label's minimum (to a relative 1e-9, so that 10 voxels of
0.5 mm³ count as exactly 5 mm³ despite floating point), removed (set to 0)
otherwise. Labels without a minimum, and minimum 0, are never touched.

The file (JSON, see :func:`PostProcessing.to_json`) records the case ids the
minimum volumes were fitted on; applying it to one of those cases is refused,
because any score measured there would be optimistic.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from vadice.io import InputError, json_clean, read_mask, write_text
from vadice.lesions import check_connectivity, check_spacing, label_components

TOOL = "vadice postprocess"
FILE_VERSION = 1
# Candidate minimum volumes in mm³, fixed before any result was looked at: 0 (nothing removed) and a roughly
# logarithmic ladder up to 500 mm³ = 0.5 ml, the upper edge of the smallest evaluation size bin. A GTVn node
# of 0.1 ml is 100 mm³, so the top of the grid can already delete real small nodes: the objective, not the
# grid, has to say whether that pays.
DEFAULT_GRID_MM3 = (0.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)
_REL_TOL = 1e-9
# A model zip (``vadice export-model --postprocessing``) carries its file under this name in the model folder;
# ``vadice predict --postprocessing bundled`` reads it from there.
BUNDLED_NAME = "vadice_postprocessing.json"
BUNDLED = "bundled"


def resolve_postprocessing(value: str | os.PathLike | None, model_dir: str | os.PathLike) -> Path | None:
    """The post-processing file meant by a ``--postprocessing`` value: a path, or ``bundled`` (the model's own).

    Raises:
      InputError: ``bundled`` for a model folder that carries no post-processing file.
    """
    if value is None:
        return None
    if str(value) != BUNDLED:
        return Path(value)
    path = Path(model_dir) / BUNDLED_NAME
    if not path.is_file():
        raise InputError(model_dir, f"--postprocessing {BUNDLED}: this model carries no {BUNDLED_NAME} "
                         "(it was exported without --postprocessing)")
    return path


def _check_thresholds(min_volume_mm3: Mapping[int, float]) -> dict[int, float]:
    out = {}
    for label, v in dict(min_volume_mm3).items():
        if isinstance(label, bool) or int(label) != label or not 1 <= int(label) <= 255:
            raise ValueError(f"label must be an integer in 1..255, got {label!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(v) or v < 0:
            raise ValueError(f"minimum volume of label {label} must be a finite number of mm³ >= 0, got {v!r}")
        out[int(label)] = float(v)
    return out


def remove_small_components(
    mask: np.ndarray,
    spacing: Sequence[float],
    min_volume_mm3: Mapping[int, float],
    connectivity: int = 26,
) -> np.ndarray:
    """Remove every component of label ``l`` whose volume is below ``min_volume_mm3[l]``.

    Args:
      mask: integer label map, 3-D (z, y, x).
      spacing: voxel spacing in mm, array axis order.
      min_volume_mm3: ``{label: minimum volume in mm³}``; labels not listed,
        and minimum 0, are kept as they are.
      connectivity: 6, 18 or 26, as for lesions (default 26, the evaluation's).

    Returns:
      a new label map of the same shape and dtype (``mask`` is not modified).

    Raises:
      ValueError: non-integer or non-3-D mask, bad spacing, connectivity,
        label or minimum volume.
    """
    mask = np.asarray(mask)
    if mask.dtype.kind not in "iub":
        raise ValueError(f"mask must hold integer labels, got dtype {mask.dtype}")
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D, got shape {mask.shape}")
    spacing = check_spacing(spacing, 3)
    connectivity = check_connectivity(connectivity)
    thresholds = {l: v for l, v in _check_thresholds(min_volume_mm3).items() if v > 0}
    out = mask.copy()
    if not thresholds:
        return out
    # Only the box around the labels being filtered is labelled: a component never leaves that box, and
    # cc3d on a full 512x512x80 volume costs more than everything else here.
    sel = np.isin(mask, np.asarray(sorted(thresholds), dtype=mask.dtype))
    if not sel.any():
        return out
    box = []
    for ax in range(3):
        hit = np.flatnonzero(sel.any(axis=tuple(a for a in range(3) if a != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    box = tuple(box)
    crop = out[box]
    instances, component_label = label_components(crop, thresholds, connectivity)
    volume = np.bincount(instances.reshape(-1), minlength=component_label.size) * float(np.prod(spacing))
    limit = np.array([thresholds.get(int(l), 0.0) for l in component_label])
    drop = volume < limit * (1 - _REL_TOL)
    drop[0] = False
    crop[drop[instances]] = 0
    return out


@dataclass(frozen=True)
class PostProcessing:
    """A fitted post-processing: per-label minimum component volumes and what they were fitted on.

    Attributes:
      labels: ``{name: value}`` of the labels the file speaks about.
      min_volume_mm3: ``{label value: minimum volume in mm³}`` (0 = keep everything).
      connectivity: component connectivity (6, 18 or 26).
      cases: the case ids whose predictions the minimum volumes were fitted on;
        applying the file to any of them is refused.
      grid_mm3: the candidate minimum volumes that were tried.
      objective: the objective that chose among them (see docs/postprocessing.md).
      match: the lesion match rule the objective was computed with.
      source: where the predictions and truth came from (model folder, run, folds, gt folder).
      details: fitting record (per-label scores per candidate, cross-validation); free-form.
    """

    labels: dict
    min_volume_mm3: dict
    connectivity: int = 26
    cases: tuple = ()
    grid_mm3: tuple = DEFAULT_GRID_MM3
    objective: str = "f1"
    match: str = "overlap"
    source: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    def apply(self, mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """:func:`remove_small_components` with this file's minimum volumes and connectivity."""
        return remove_small_components(mask, spacing, self.min_volume_mm3, self.connectivity)

    def seen(self, cases: Iterable[str]) -> list[str]:
        """The ones among ``cases`` that this file was fitted on, sorted."""
        fitted = set(self.cases)
        return sorted(c for c in cases if c in fitted)

    def refuse_seen(self, cases: Iterable[str], path: str | os.PathLike | None) -> None:
        """Raise unless none of ``cases`` was among the fitting cases.

        Raises:
          InputError: naming ``path`` (the post-processing file), the count and
            the first cases.
        """
        seen = self.seen(cases)
        if seen:
            names = ", ".join(seen[:5]) + (f" (+{len(seen) - 5} more)" if len(seen) > 5 else "")
            raise InputError(path, f"was fitted on {len(seen)} of these case(s): {names}; applying it there would "
                             "make any score on them optimistic (use cases it did not see)")

    def fitted_elsewhere(self, model_dir: str | os.PathLike) -> str | None:
        """The model folder the file was fitted for, when it is not ``model_dir`` (else ``None``).

        Legal (a model copied elsewhere) but worth a warning: the volumes suit the model they were fitted on.
        """
        fitted_for = self.source.get("model_dir")
        if fitted_for and Path(fitted_for).resolve() != Path(model_dir).resolve():
            return str(fitted_for)
        return None

    def to_json(self) -> dict:
        """The file's content (strict JSON types)."""
        from vadice import __version__

        names = {v: n for n, v in self.labels.items()}
        return {
            "tool": TOOL,
            "version": FILE_VERSION,
            "vadice": __version__,
            "labels": dict(self.labels),
            "min_volume_mm3": {names.get(l, str(l)): v for l, v in sorted(self.min_volume_mm3.items())},
            "connectivity": self.connectivity,
            "rule": "remove a component of a label when its volume (voxels x voxel volume) is below the "
                    "label's min_volume_mm3; components as vadice.lesions.label_components",
            "candidate_grid_mm3": list(self.grid_mm3),
            "objective": self.objective,
            "match": self.match,
            "fitted_on": {"n_cases": len(self.cases), "cases": list(self.cases)},
            "source": dict(self.source),
            "details": json_clean(self.details),
        }


def save_postprocessing(pp: PostProcessing, path: str | os.PathLike) -> Path:
    """Write ``pp`` to ``path`` atomically (an earlier post-processing file there is replaced).

    Raises:
      InputError: ``path`` is a folder, or an existing file that is not a post-processing file.
    """
    text = json.dumps(pp.to_json(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    return write_text(check_out_file(path), text)


def check_out_file(path: str | os.PathLike) -> Path:
    """Refuse a post-processing output path that is a folder or someone else's file.

    Raises:
      InputError: as :func:`save_postprocessing`.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; --out needs a file name such as pp.json")
    if path.exists():
        try:
            ours = json.loads(path.read_text(encoding="utf-8")).get("tool") == TOOL
        except (OSError, ValueError, AttributeError, UnicodeDecodeError):
            ours = False
        if not ours:
            raise InputError(path, "exists and is not a vadice post-processing file (refusing to overwrite)")
    return path


def load_postprocessing(path: str | os.PathLike) -> PostProcessing:
    """Read and check a post-processing file.

    Raises:
      InputError: missing or unreadable file, not JSON, not a vadice
        post-processing file, another file version, or a bad field (named).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "post-processing file not found" if not path.exists() else "not a regular file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "not a text file (expected a vadice post-processing JSON)") from None
    except ValueError as exc:
        raise InputError(path, f"not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        raise InputError(path, "not a vadice post-processing file (no \"tool\": \"vadice postprocess\")")
    if data.get("version") != FILE_VERSION:
        raise InputError(path, f"post-processing file version {data.get('version')!r}; this vadice reads "
                         f"version {FILE_VERSION}")

    def bad(what: str):
        return InputError(path, f"bad post-processing file: {what}")

    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels or not all(
            isinstance(n, str) and n and isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 255
            for n, v in labels.items()) or len(set(labels.values())) != len(labels):
        raise bad("'labels' must map names to distinct integers in 1..255")
    volumes = data.get("min_volume_mm3")
    if not isinstance(volumes, dict) or set(volumes) != set(labels):
        raise bad(f"'min_volume_mm3' must give one value for each label ({', '.join(labels)})")
    try:
        thresholds = _check_thresholds({labels[n]: v for n, v in volumes.items()})
    except ValueError as exc:
        raise bad(f"'min_volume_mm3': {exc}") from None
    connectivity = data.get("connectivity")
    if connectivity not in (6, 18, 26) or isinstance(connectivity, bool):
        raise bad(f"'connectivity' must be 6, 18 or 26, got {connectivity!r}")
    fitted = data.get("fitted_on")
    cases = fitted.get("cases") if isinstance(fitted, dict) else None
    # An empty list is legal only in a hand-written file; a missing one is not: the guard against scoring
    # on fitting cases depends on it.
    if not isinstance(cases, list) or not all(isinstance(c, str) and c for c in cases):
        raise bad("'fitted_on.cases' must be the list of case ids the file was fitted on")
    grid = data.get("candidate_grid_mm3", list(DEFAULT_GRID_MM3))
    if not isinstance(grid, list) or not all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in grid):
        raise bad("'candidate_grid_mm3' must be a list of numbers")
    return PostProcessing(
        labels=dict(labels), min_volume_mm3=thresholds, connectivity=int(connectivity), cases=tuple(cases),
        grid_mm3=tuple(float(g) for g in grid), objective=str(data.get("objective", "")),
        match=str(data.get("match", "overlap")), source=dict(data.get("source") or {}),
        details=dict(data.get("details") or {}),
    )


def apply_to_file(pp: PostProcessing, src: str | os.PathLike, dst: str | os.PathLike) -> np.ndarray:
    """Post-process the label map ``src`` into ``dst``, keeping its exact header geometry and voxel type.

    ``dst`` may equal ``src``; it is written atomically.

    Returns:
      the post-processed label map (z, y, x).

    Raises:
      InputError: unreadable ``src`` or labels outside 0..255.
    """
    import SimpleITK as sitk

    from vadice.io import write_sitk

    labels, geom = read_mask(src, allowed_labels=None)
    filtered = pp.apply(labels, geom.spacing_zyx)
    # Through SimpleITK with CopyInformation: the output header equals the input's (origin, direction,
    # spacing) bit for bit, and the voxel type stays what nnU-Net wrote.
    image = sitk.ReadImage(str(src))
    out = sitk.GetImageFromArray(filtered.astype(sitk.GetArrayViewFromImage(image).dtype, copy=False))
    out.CopyInformation(image)
    write_sitk(out, dst)
    return filtered


def apply_to_folder(pp: PostProcessing, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                    pp_path: str | os.PathLike | None = None) -> list[Path]:
    """Post-process every ``<case>.nii[.gz]`` label map of ``input_dir`` into a new folder ``output_dir``.

    The cases are checked against the file's fitting cases first; the folder is
    built under a temporary name and renamed into place only when every case is
    done, so a failure leaves no ``output_dir``.

    Returns:
      the written label maps.

    Raises:
      InputError: missing or empty input folder, ``output_dir`` exists, a case
        the file was fitted on (naming ``pp_path``), an unreadable label map.
    """
    from vadice.io import atomic_dir, is_nifti, strip_nifti_suffix

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found" if not input_dir.exists() else "not a folder")
    files = {strip_nifti_suffix(p.name): p for p in sorted(input_dir.iterdir())
             if p.is_file() and not p.name.startswith(".") and is_nifti(p.name)}
    if not files:
        raise InputError(input_dir, "no label maps (<case>.nii.gz) in the input folder")
    if output_dir.exists():
        raise InputError(output_dir, "output folder exists (refusing to mix with earlier files; choose a new one)")
    pp.refuse_seen(files, pp_path)
    written = []
    with atomic_dir(output_dir) as tmp:
        for case, path in files.items():
            apply_to_file(pp, path, tmp / path.name)
            written.append(output_dir / path.name)
    return written
