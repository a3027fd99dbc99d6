"""Fitting the post-processing minimum component volumes on cross-validation predictions.

For each label, the minimum component volume is chosen from a fixed candidate
grid (:data:`vadice.postprocess.apply.DEFAULT_GRID_MM3`) by an objective computed
with the evaluation's own lesion matching (:func:`match_lesions` on the
post-processed prediction, exactly what ``vadice evaluate`` would count), pooled
over the fitting cases.

Objectives (fixed before any result was looked at; docs/postprocessing.md):
  ``f1`` (default): lesion F1 = 2·S·P/(S+P), S = pooled lesion sensitivity,
    P = pooled lesion precision. It counts a lost true lesion and a kept false
    positive on one scale, and needs no tolerance chosen by the user.
  ``precision@sens-drop:D``: the highest precision among candidates whose
    pooled sensitivity is at least the unfiltered sensitivity minus D (an
    absolute drop, e.g. 0.02), for studies where sensitivity is the endpoint.
Ties go to the smallest minimum volume (the least removal). A label without
truth lesions in the fitting cases gets 0 (nothing removed): there is nothing
to fit on.

Cross-validation: with predictions of several folds, the minimum volumes used
on fold k's cases are fitted on the other folds' cases only; the out-of-fold
counts before and after are recorded, and they are the honest estimate of what
the post-processing does. The file for new data is then fitted on all folds,
and records every case id it saw.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vadice.io import InputError, sha256_file
from vadice.lesions import check_connectivity
from vadice.metrics.lesionwise import check_label_maps, match_lesions, parse_match
from vadice.metrics.surface import bounding_box
from vadice.postprocess.apply import DEFAULT_GRID_MM3, PostProcessing, remove_small_components
from vadice.registry import LABELS

DEFAULT_OBJECTIVE = "f1"
_COUNTS = ("n_gt", "n_gt_detected", "n_pred", "n_pred_matched")


def parse_objective(objective: str) -> tuple[str, float | None]:
    """``"f1"`` -> ``("f1", None)``; ``"precision@sens-drop:0.02"`` -> ``("precision", 0.02)``.

    Raises:
      ValueError: anything else, or a drop outside [0, 1].
    """
    text = str(objective).strip().lower()
    if text == "f1":
        return "f1", None
    prefix = "precision@sens-drop:"
    if text.startswith(prefix):
        try:
            drop = float(text[len(prefix):])
        except ValueError:
            drop = float("nan")
        if not 0 <= drop <= 1:
            raise ValueError(f"sensitivity drop must be in [0, 1], got {objective!r}")
        return "precision", drop
    raise ValueError(f"objective must be 'f1' or 'precision@sens-drop:<D>', got {objective!r}")


def check_grid(grid: Sequence[float]) -> tuple[float, ...]:
    """Candidate minimum volumes: finite, >= 0, strictly increasing, starting at 0 (the no-op).

    Raises:
      ValueError: otherwise.
    """
    values = tuple(float(g) for g in grid)
    if (not values or values[0] != 0 or any(not math.isfinite(v) or v < 0 for v in values)
            or any(b <= a for a, b in zip(values, values[1:]))):
        raise ValueError(f"candidate grid must be increasing finite mm³ values starting at 0, got {list(grid)}")
    return values


def lesion_scores(counts: np.ndarray) -> dict:
    """Pooled sensitivity, precision and F1 from ``(n_gt, n_gt_detected, n_pred, n_pred_matched)``.

    Sensitivity and precision are NaN when their denominator is 0 (as in
    ``vadice evaluate``); F1 is 0 when either is 0 or NaN with truth lesions
    present (nothing found, or everything removed), NaN without truth lesions.
    """
    n_gt, n_det, n_pred, n_match = (int(c) for c in counts)
    s = n_det / n_gt if n_gt else float("nan")
    p = n_match / n_pred if n_pred else float("nan")
    if not n_gt:
        f1 = float("nan")
    elif math.isnan(p) or s + p == 0:
        f1 = 0.0
    else:
        f1 = 2 * s * p / (s + p)
    return {"n_gt": n_gt, "n_gt_detected": n_det, "n_pred": n_pred, "n_pred_matched": n_match,
            "sensitivity": s, "precision": p, "f1": f1}


def choose(pooled: np.ndarray, grid: Sequence[float], objective: str = DEFAULT_OBJECTIVE) -> int:
    """Index into ``grid`` of the best candidate for one label.

    Args:
      pooled: ``(len(grid), 4)`` counts per candidate, pooled over the fitting cases.
      grid: the candidate minimum volumes (``grid[0] == 0``).
      objective: see :func:`parse_objective`.

    Returns:
      the index of the best candidate; the smallest on ties, 0 when the
      fitting cases hold no truth lesion.
    """
    kind, drop = parse_objective(objective)
    scores = [lesion_scores(row) for row in pooled]
    if not scores or scores[0]["n_gt"] == 0:
        return 0
    if kind == "f1":
        values = [sc["f1"] for sc in scores]
    else:
        floor = scores[0]["sensitivity"] - drop - 1e-12
        # Precision NaN (everything removed) never wins; candidates losing too much sensitivity are out.
        values = [sc["precision"] if sc["sensitivity"] >= floor and not math.isnan(sc["precision"]) else -1.0
                  for sc in scores]
    best = max(values)
    return next(i for i, v in enumerate(values) if v >= best - 1e-12)


@dataclass(frozen=True)
class FitTable:
    """Lesion counts of every case, label and candidate minimum volume.

    Attributes:
      cases: case ids, in row order.
      labels: ``{name: value}``.
      grid: candidate minimum volumes (mm³).
      counts: int array ``(cases, labels, candidates, 4)`` of
        ``(n_gt, n_gt_detected, n_pred, n_pred_matched)``.
    """

    cases: tuple
    labels: dict
    grid: tuple
    counts: np.ndarray

    def pooled(self, cases: Sequence[str]) -> np.ndarray:
        """Counts summed over ``cases``: ``(labels, candidates, 4)``."""
        index = {c: i for i, c in enumerate(self.cases)}
        rows = [index[c] for c in cases]
        return self.counts[rows].sum(axis=0)


def count_case(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float], labels: Mapping[str, int],
               grid: Sequence[float], connectivity: int = 26, match: str = "overlap") -> np.ndarray:
    """Lesion counts of one case for every label and candidate minimum volume.

    Each candidate is applied with :func:`vadice.postprocess.remove_small_components` and scored with
    :func:`vadice.metrics.lesionwise.match_lesions`: the same two functions as ``vadice predict
    --postprocessing`` followed by ``vadice evaluate``.

    Returns:
      int array ``(labels, candidates, 4)``.
    """
    check_label_maps(gt, pred, kinds="ub")
    values = list(labels.values())
    out = np.zeros((len(values), len(grid), 4), np.int64)
    # Lesions, components and matches all lie inside the box of both masks' voxels: work on that crop,
    # as evaluate_case does, instead of labelling a 512x512x80 volume seven times.
    boxes = [b for b in (bounding_box(gt), bounding_box(pred)) if b is not None]
    if not boxes:
        return out
    box = tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3))
    gt, pred = gt[box], pred[box]
    for j, v in enumerate(grid):
        filtered = remove_small_components(pred, spacing, {l: v for l in values}, connectivity)
        res = match_lesions(gt, filtered, spacing, values, connectivity, match)
        for i, l in enumerate(values):
            m = res[l]
            out[i, j] = (m.n_gt, m.n_gt_detected, m.n_pred, m.n_pred_matched)
    return out


def score_cases(pairs: Sequence[tuple[str, Path, Path]], labels: Mapping[str, int] = LABELS,
                grid: Sequence[float] = DEFAULT_GRID_MM3, connectivity: int = 26, match: str = "overlap",
                progress: bool = False) -> FitTable:
    """Read every (truth, prediction) pair once and count lesions for each candidate.

    Files are read and checked as ``vadice evaluate`` reads them
    (:func:`vadice.metrics.pairs.load_pair`: labels, spacing, resampling onto
    the truth grid).

    Raises:
      InputError: a bad file, naming it.
    """
    from tqdm.auto import tqdm

    from vadice.metrics.pairs import load_pair

    grid = check_grid(grid)
    counts = np.zeros((len(pairs), len(labels), len(grid), 4), np.int64)
    for k, (case, gt_path, pred_path) in enumerate(tqdm(pairs, desc="postprocess fit", unit="case",
                                                        disable=not progress)):
        gt, pred, geom, _ = load_pair(Path(gt_path), Path(pred_path), list(labels.values()))
        counts[k] = count_case(gt, pred, geom.spacing_zyx, labels, grid, connectivity, match)
    return FitTable(tuple(c for c, _, _ in pairs), dict(labels), grid, counts)


def _fit_labels(table: FitTable, cases: Sequence[str], objective: str) -> dict[int, int]:
    """``{label value: index into the grid}`` fitted on ``cases`` only."""
    pooled = table.pooled(cases)
    return {v: choose(pooled[i], table.grid, objective) for i, v in enumerate(table.labels.values())}


def cross_validate(table: FitTable, folds: Mapping[str, Sequence[str]], objective: str = DEFAULT_OBJECTIVE) -> dict:
    """Out-of-fold effect of the post-processing: fold k's minimum volumes fitted on the other folds only.

    Args:
      table: counts of every case of every fold.
      folds: ``{fold: case ids}``; at least two folds, disjoint.
      objective: see :func:`parse_objective`.

    Returns:
      ``{"folds": {fold: {"fitted_on_folds", "fitted_on_cases", "min_volume_mm3"}},
      "out_of_fold": {label name: {"before": scores, "after": scores}}}``.
    """
    names = list(table.labels)
    per_fold, before, after = {}, np.zeros((len(names), 4), np.int64), np.zeros((len(names), 4), np.int64)
    for fold, held_out in folds.items():
        train = [c for f, cs in folds.items() if f != fold for c in cs]
        picks = _fit_labels(table, train, objective)
        per_fold[str(fold)] = {
            "fitted_on_folds": [str(f) for f in folds if f != fold],
            "fitted_on_cases": sorted(train),
            "evaluated_cases": sorted(held_out),
            "min_volume_mm3": {n: table.grid[picks[table.labels[n]]] for n in names},
        }
        pooled = table.pooled(held_out)
        for i, n in enumerate(names):
            before[i] += pooled[i, 0]
            after[i] += pooled[i, picks[table.labels[n]]]
    return {"folds": per_fold,
            "out_of_fold": {n: {"before": lesion_scores(before[i]), "after": lesion_scores(after[i])}
                            for i, n in enumerate(names)}}


def fit_postprocessing(
    folds: Mapping[str, Mapping[str, Path]],
    gt_dir: str | os.PathLike,
    labels: Mapping[str, int] = LABELS,
    grid: Sequence[float] = DEFAULT_GRID_MM3,
    objective: str = DEFAULT_OBJECTIVE,
    connectivity: int = 26,
    match: str = "overlap",
    source: Mapping | None = None,
    progress: bool = False,
) -> PostProcessing:
    """Fit per-label minimum component volumes on predictions of held-out cases.

    Args:
      folds: ``{fold: {case: prediction path}}`` (see :func:`validation_folds`);
        one group is allowed (no cross-validation then).
      gt_dir: folder of truth label maps ``<case>.nii.gz``.
      labels: ``{name: value}``.
      grid: candidate minimum volumes in mm³, increasing, starting at 0.
      objective: ``"f1"`` or ``"precision@sens-drop:<D>"``.
      connectivity: component connectivity, the evaluation's (26 by default).
      match: lesion match rule, as ``vadice evaluate --match``.
      source: provenance recorded in the file.
      progress: a progress bar over cases.

    Returns:
      a :class:`PostProcessing` fitted on all cases, recording them, with the
      per-candidate scores and (with two or more folds) the cross-validation.

    Raises:
      InputError: no cases, a case in two folds, a missing truth file, bad files; test-set cases of an
        experiment run (:func:`refuse_test_set`).
      ValueError: bad labels, grid, objective, connectivity or match rule.
    """
    from vadice.metrics.evaluate import check_labels

    labels = check_labels(labels)
    grid = check_grid(grid)
    parse_objective(objective)
    connectivity = check_connectivity(connectivity)
    parse_match(match)
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise InputError(gt_dir, "truth folder not found")
    owner: dict[str, str] = {}
    for fold, cases in folds.items():
        for case in cases:
            if case in owner:
                raise InputError(cases[case], f"case {case!r} is in fold {owner[case]} and fold {fold}: "
                                 "folds must be disjoint")
            owner[case] = str(fold)
    if not owner:
        raise InputError(None, "no predictions to fit on")
    pairs = []
    for case in sorted(owner):
        gt = _truth_file(gt_dir, case)
        pairs.append((case, gt, folds[_key(folds, owner[case])][case]))
    refuse_test_set(gt_dir, pairs)
    table = score_cases(pairs, labels, grid, connectivity, match, progress)
    fold_cases = {str(f): sorted(cs) for f, cs in folds.items()}
    picks = _fit_labels(table, table.cases, objective)
    pooled = table.pooled(table.cases)
    details = {
        "in_sample": {n: [{"min_volume_mm3": g, **lesion_scores(pooled[i, j])} for j, g in enumerate(grid)]
                      for i, n in enumerate(labels)},
        "in_sample_note": "scores of every candidate on the fitting cases themselves: optimistic for the chosen "
                          "one; the honest estimate is cross_validation.out_of_fold",
        "cross_validation": (cross_validate(table, fold_cases, objective) if len(fold_cases) > 1 else None),
    }
    if details["cross_validation"] is None:
        details["cross_validation_note"] = ("one group of predictions: no cross-validation; evaluate on other "
                                            "cases than fitted_on.cases")
    src = {"folds": fold_cases, "gt_dir": str(gt_dir.absolute()), **dict(source or {})}
    return PostProcessing(labels=labels, min_volume_mm3={v: grid[picks[v]] for v in labels.values()},
                          connectivity=connectivity, cases=table.cases, grid_mm3=grid, objective=objective,
                          match=match, source=src, details=details)


# What ``vadice experiment --test-set`` records in RUN_DIR/manifest.json (vadice.testset): the run's test-set
# folders (relative to the run folder), its case names and the SHA-256 of each case's truth label map.
RUN_MANIFEST = "manifest.json"
TEST_SET_KEY = "test_set"


def _run_test_set(path: Path, cache: dict) -> tuple[Path, dict] | None:
    """The experiment run folder enclosing ``path`` whose manifest records a test set, with that record."""
    for folder in [path, *path.parents]:
        if folder not in cache:
            record = None
            try:
                manifest = json.loads((folder / RUN_MANIFEST).read_text())
                record = manifest.get(TEST_SET_KEY) if isinstance(manifest, dict) else None
            except (OSError, ValueError, UnicodeDecodeError):
                pass
            cache[folder] = record if isinstance(record, dict) else None
        if cache[folder] is not None:
            return folder, cache[folder]
    return None


def refuse_test_set(gt_dir: str | os.PathLike, pairs: Sequence[tuple[str, Path, Path]]) -> None:
    """Refuse to fit on an experiment's test set (``vadice experiment --test-set``).

    Looks for an experiment run folder above the truth folder and above every prediction (its
    ``manifest.json`` records the test set). Refused: a truth folder or prediction inside the run's
    test-set folders (``test_set/``, ``predictions_test/``), and a case whose truth label map is,
    by name and content (SHA-256), one of the run's test-set truths (a copy elsewhere in the run).
    Names alone do not decide: a second synthetic cohort reuses the first one's case ids.

    Raises:
      InputError: naming the offending file and the run.
    """
    cache: dict = {}
    hashes: dict[Path, str] = {}
    places = [Path(gt_dir)] + [Path(pred).parent for _, _, pred in pairs]
    for place in dict.fromkeys(p.resolve() for p in places):
        found = _run_test_set(place, cache)
        if found is None:
            continue
        run_dir, record = found
        for rel in record.get("folders", ()):
            if place == run_dir / rel or (run_dir / rel) in place.parents:
                raise InputError(place, f"is part of the test set of experiment run {run_dir}: the test set is "
                                 "for the final evaluation only, never for fitting post-processing")
        truths = record.get("truth_sha256", {})
        for case, gt, _ in pairs:
            if case in truths:
                digest = hashes.setdefault(gt, sha256_file(gt))
                if digest == truths[case]:
                    raise InputError(gt, f"is the truth of test-set case {case!r} of experiment run {run_dir}: "
                                     "the test set is for the final evaluation only, never for fitting "
                                     "post-processing")


def _key(folds: Mapping, name: str):
    return next(f for f in folds if str(f) == name)


def _truth_file(gt_dir: Path, case: str) -> Path:
    for ending in (".nii.gz", ".nii"):
        path = gt_dir / f"{case}{ending}"
        if path.is_file():
            return path
    raise InputError(gt_dir / f"{case}.nii.gz", "truth label map of a predicted case is missing")


def validation_folds(source: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """Predictions of held-out cases, grouped by fold.

    Args:
      source: an nnU-Net model folder (``Trainer__Plans__configuration``) whose
        ``fold_<k>/validation/`` hold nnU-Net's exports of each fold's held-out
        cases; or a plain folder of ``<case>.nii.gz`` predictions (one group,
        e.g. predictions of cases a model was not trained on).

    Returns:
      ``{fold: {case: path}}`` (``{"all": ...}`` for a plain folder).

    Raises:
      InputError: missing folder, no predictions, or a fold folder without validation predictions.
    """
    from vadice.metrics.pairs import list_cases

    source = Path(source)
    if not source.is_dir():
        raise InputError(source, "folder not found" if not source.exists() else "not a folder")
    fold_dirs = sorted((p for p in source.glob("fold_*") if p.is_dir()), key=lambda p: p.name)
    if fold_dirs:
        folds = {}
        for fold_dir in fold_dirs:
            validation = fold_dir / "validation"
            cases = list_cases(validation) if validation.is_dir() else {}
            if not cases:
                raise InputError(validation, "no validation predictions (training unfinished?)")
            folds[fold_dir.name[len("fold_"):]] = cases
        return folds
    cases = list_cases(source)
    if not cases:
        raise InputError(source, "neither an nnU-Net model folder (fold_<k>/validation/) nor a folder of "
                         "<case>.nii.gz predictions")
    return {"all": cases}


def default_truth_dir(model_dir: str | os.PathLike) -> Path | None:
    """The truth labels of a model folder's dataset, from nnU-Net's environment, if they can be found.

    ``$nnUNet_preprocessed/<Dataset>/gt_segmentations`` (nnU-Net's own copy of the
    training labels), then ``$nnUNet_raw/<Dataset>/labelsTr``; ``<Dataset>`` is the
    model folder's parent's name (nnU-Net's results layout).
    """
    dataset = Path(model_dir).resolve().parent.name
    if not dataset.startswith("Dataset"):
        return None
    for var, sub in (("nnUNet_preprocessed", "gt_segmentations"), ("nnUNet_raw", "labelsTr")):
        root = os.environ.get(var)
        if root and (Path(root) / dataset / sub).is_dir():
            return Path(root) / dataset / sub
    return None


def write_cross_validated(pp: PostProcessing, folds: Mapping[str, Mapping[str, Path]],
                          out_dir: str | os.PathLike) -> list[Path]:
    """Write every case's prediction post-processed with *its fold's* cross-validated minimum volumes.

    The result is the out-of-fold prediction folder of "model + post-processing":
    ``vadice evaluate`` and ``vadice compare`` then score it like any set-up, and
    its lesion counts equal ``details.cross_validation.out_of_fold``. Each fold's
    volumes are applied through a :class:`PostProcessing` listing only the other
    folds' cases, whose :meth:`~PostProcessing.refuse_seen` guard runs before the
    fold is written.

    Args:
      pp: the result of :func:`fit_postprocessing` on ``folds`` (two or more folds).
      folds: the same ``{fold: {case: prediction path}}``.
      out_dir: new folder; built under a temporary name, renamed when complete.

    Returns:
      the written label maps.

    Raises:
      InputError: ``pp`` has no cross-validation, or its folds differ from ``folds``;
        ``out_dir`` exists.
    """
    from vadice.io import atomic_dir
    from vadice.postprocess import apply_to_file

    cv = pp.details.get("cross_validation")
    out_dir = Path(out_dir)
    if not cv:
        raise InputError(out_dir, "no cross-validation to write: the predictions came in one group (one fold)")
    if sorted(cv["folds"]) != sorted(str(f) for f in folds):
        raise InputError(out_dir, "the folds differ from those the post-processing was fitted on")
    if out_dir.exists():
        raise InputError(out_dir, "exists; choose a new folder for the cross-validated predictions")
    written = []
    with atomic_dir(out_dir) as tmp:
        for fold, cases in folds.items():
            record = cv["folds"][str(fold)]
            fold_pp = PostProcessing(labels=pp.labels, connectivity=pp.connectivity,
                                     cases=tuple(record["fitted_on_cases"]),
                                     min_volume_mm3={pp.labels[n]: v for n, v in record["min_volume_mm3"].items()})
            fold_pp.refuse_seen(cases, out_dir)
            for case, path in cases.items():
                apply_to_file(fold_pp, path, tmp / f"{case}.nii.gz")
                written.append(out_dir / f"{case}.nii.gz")
    return written
