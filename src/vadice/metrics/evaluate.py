"""Case-level and folder-level evaluation: all metrics for every label, written atomically.

``evaluate_case`` works on arrays; ``evaluate_folders`` pairs ``<case>.nii.gz``
files of a truth and a prediction folder, checks them (integrity, labels,
spacing), resamples predictions whose grid differs only in size/origin/direction
onto the truth grid (nearest neighbour, as HNTS-MRG does), evaluates the cases
(optionally in parallel) and writes ``cases.csv``, ``lesions.csv`` and
``summary.json``. Every error is raised before anything is written. Reading and
pairing the files is :mod:`vadice.metrics.pairs`.

(Just over 500 lines: about 40 of them are ``CONVENTIONS``, the definitions written
into every ``summary.json``, kept beside the code they describe.)
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vadice import __version__
from vadice.io import InputError, check_out_dir, csv_text, json_clean, write_dir_atomically
from vadice.lesions import check_connectivity, check_spacing
from vadice.registry import LABELS
from vadice.metrics.lesionwise import (
    DEFAULT_SIZE_BINS_ML,
    LesionMatch,
    check_bins,
    check_label_maps,
    match_lesions,
    parse_match,
    pooled_rate,
    size_stratified_sensitivity,
)
from vadice.metrics.overlap import Overlap, dscagg
from vadice.metrics.pairs import load_pair, pair_cases
from vadice.metrics.surface import (
    HD_MODES,
    label_surface_distances,
    metrics_from_distances,
    separated_boxes,
)

OUTPUT_FILES = ("cases.csv", "lesions.csv", "summary.json")
TOOL_TAG = "vadice evaluate"

CASE_COLUMNS = (
    "case", "label", "dsc", "sds", "msd", "hd95", "gt_volume_ml", "pred_volume_ml", "intersection_ml",
    "n_gt_lesions", "n_gt_detected", "n_pred_lesions", "n_pred_matched",
)
LESION_COLUMNS = ("case", "label", "source", "lesion_id", "volume_ml", "detected", "lesion_dsc")

CONVENTIONS = {
    "dsc": "2|A∩B|/(|A|+|B|). Both empty: NaN (undefined), excluded from mean/median and counted in "
           "excluded.both_empty. One side empty: 0.",
    "dscagg": "HNTS-MRG: 2·Σ|A∩B| / Σ(|A|+|B|) over all cases, physical volumes (mm³). A case without the "
              "structure in truth and prediction adds nothing; a false positive on such a case enters the "
              "denominator. Structure absent everywhere: NaN (0/0). dscagg_mean is the mean over labels.",
    "surfaces": "Surfels on the voxel-corner grid weighted by marching-cubes area (DeepMind surface-distance "
                "definition; MONAI use_subvoxels=True); spacing in array axis order; distances by KD-tree.",
    "sds": "Surface Dice at tolerance τ: (truth surface area within τ of prediction + predicted surface area "
           "within τ of truth) / total area. Both empty: NaN, excluded. One side empty: 0.",
    "msd": "Mean symmetric surface distance: area-weighted mean of both directed distance sets pooled.",
    "hd95": "directed (default): max of the two directed area-weighted 95th percentiles; pooled: 95th "
            "percentile of both sets pooled (can hide a distant false positive).",
    "empty_distances": "MSD/HD95 with one side empty are undefined: NaN with distance_flag gt_empty/pred_empty, "
                       "excluded from means and counted in excluded.gt_empty_only / excluded.pred_empty_only. "
                       "With empty_distance_penalty set they take that value instead, are included in means and "
                       "counted in penalised.gt_empty_only / penalised.pred_empty_only (excluded counts 0). Both "
                       "empty: NaN, flag both_empty, always excluded.",
    "lesions": "Connected components per label. Truth lesion detected if a predicted component of the same "
               "label overlaps it (any overlap; or IoU >= t with match iou:t). Predicted component matched "
               "likewise. Sensitivity = detected/truth lesions, precision = matched/predicted components, "
               "pooled over cases; NaN when the denominator is 0. Lesion Dice: with the union of same-label "
               "components overlapping the lesion (0 if none).",
    "size_bins": "Truth lesions binned by volume in ml: [0,e0), [e0,e1), ..., [e_last, inf).",
    "missing_predictions": "With allow_missing, a missing prediction is evaluated as an empty mask and "
                           "listed in missing_predictions.",
    "csv": "NaN is written as an empty field.",
}


# --------------------------------------------------------------------------------------------
# case level


@dataclass(frozen=True)
class LabelResult:
    """All metrics of one label in one case.

    Attributes:
      name, value: label name and value.
      overlap: voxel counts and voxel volume.
      sds: surface Dice per tolerance (mm -> value).
      msd, hd95: mm (NaN when undefined, see ``distance_flag``).
      distance_flag: ``""``, ``"gt_empty"``, ``"pred_empty"`` or ``"both_empty"``.
      lesions: lesion-wise result.
    """

    name: str
    value: int
    overlap: Overlap
    sds: dict
    msd: float
    hd95: float
    distance_flag: str
    lesions: LesionMatch

    @property
    def dsc(self) -> float:
        return self.overlap.dsc

    def row(self) -> dict:
        """Fields of this label's ``cases.csv`` row (without ``case``)."""
        tols = list(self.sds)
        row = {
            "label": self.name,
            "dsc": self.dsc,
            "sds": self.sds[tols[0]] if tols else float("nan"),
            "msd": self.msd,
            "hd95": self.hd95,
            "gt_volume_ml": self.overlap.gt_mm3 / 1000.0,
            "pred_volume_ml": self.overlap.pred_mm3 / 1000.0,
            "intersection_ml": self.overlap.intersection_mm3 / 1000.0,
            "n_gt_lesions": self.lesions.n_gt,
            "n_gt_detected": self.lesions.n_gt_detected,
            "n_pred_lesions": self.lesions.n_pred,
            "n_pred_matched": self.lesions.n_pred_matched,
        }
        for t in tols:
            row[f"sds_{t:g}mm"] = self.sds[t]
        row.update(
            label_value=self.value,
            lesion_sensitivity=self.lesions.sensitivity,
            lesion_precision=self.lesions.precision,
            gt_voxels=self.overlap.gt_voxels,
            pred_voxels=self.overlap.pred_voxels,
            intersection_voxels=self.overlap.intersection_voxels,
            distance_flag=self.distance_flag,
        )
        return row


@dataclass(frozen=True)
class CaseResult:
    """Result of :func:`evaluate_case`: one :class:`LabelResult` per label name."""

    case: str
    spacing: tuple
    labels: dict
    prediction_missing: bool = False
    resampled: bool = False

    def rows(self) -> list[dict]:
        out = []
        for res in self.labels.values():
            row = {"case": self.case, **res.row(), "prediction_missing": int(self.prediction_missing),
                   "resampled": int(self.resampled)}
            out.append(row)
        return out

    def lesion_rows(self) -> list[dict]:
        out = []
        for res in self.labels.values():
            les = res.lesions
            for source, vol, flag, dsc in (("gt", les.gt_volume_ml, les.gt_detected, les.gt_dsc),
                                           ("pred", les.pred_volume_ml, les.pred_matched, les.pred_dsc)):
                for k in range(vol.size):
                    out.append({"case": self.case, "label": res.name, "source": source, "lesion_id": k + 1,
                                "volume_ml": float(vol[k]), "detected": int(flag[k]),
                                "lesion_dsc": float(dsc[k])})
        return out


def check_labels(labels: Mapping[str, int]) -> dict[str, int]:
    """Validate a ``{name: value}`` label mapping (non-empty, unique names/values in 1..255)."""
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"labels must be a non-empty mapping name -> value, got {labels!r}")
    out = {}
    for name, value in labels.items():
        if not str(name) or not str(name).isprintable() or "," in str(name) or "=" in str(name):
            raise ValueError(f"bad label name {name!r}")
        if isinstance(value, bool) or int(value) != value or not 1 <= int(value) <= 255:
            raise ValueError(f"label value of {name!r} must be an integer in 1..255, got {value!r}")
        out[str(name)] = int(value)
    if len(set(out.values())) != len(out):
        raise ValueError(f"label values must be unique, got {out}")
    return out


def check_tolerances(tolerances: Sequence[float]) -> tuple[float, ...]:
    if isinstance(tolerances, (int, float)):
        tolerances = (tolerances,)
    tols = []
    for t in tolerances:
        t = float(t)
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"SDS tolerance must be a finite number of mm >= 0, got {t}")
        if t not in tols:
            tols.append(t)
    if not tols:
        raise ValueError("at least one SDS tolerance is needed")
    return tuple(tols)


def check_options(labels: Mapping[str, int], tolerances: Sequence[float], connectivity: int, match: str,
                  hd_mode: str) -> tuple[dict[str, int], tuple[float, ...], int]:
    """Validate the evaluation options shared by :func:`evaluate_case` and :func:`evaluate_folders`.

    Returns:
      normalised ``(labels, tolerances, connectivity)``.

    Raises:
      ValueError: naming the bad option.
    """
    labels = check_labels(labels)
    tolerances = check_tolerances(tolerances)
    connectivity = check_connectivity(connectivity)
    parse_match(match)
    if hd_mode not in HD_MODES:
        raise ValueError(f"hd_mode must be one of {HD_MODES}, got {hd_mode!r}")
    return labels, tolerances, connectivity


def evaluate_case(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[str, int] = LABELS,
    tolerances: Sequence[float] = (2.0,),
    connectivity: int = 26,
    match: str = "overlap",
    hd_mode: str = "directed",
    empty_distance_penalty: float | None = None,
    case: str = "",
) -> CaseResult:
    """All metrics of one case for every label.

    Args:
      gt, pred: unsigned integer label maps of the same 3-D shape (z, y, x);
        values not in ``labels`` are treated as background.
      spacing: voxel spacing in mm, array axis order.
      labels: ``{name: value}``.
      tolerances: SDS tolerances in mm; the first is the headline ``sds``.
      connectivity: 6, 18 or 26 for lesions.
      match: ``"overlap"`` or ``"iou:<t>"``.
      hd_mode: ``"directed"`` or ``"pooled"``.
      empty_distance_penalty: if set, MSD/HD95 value (mm) used when exactly one
        side is empty (the flag is kept); None leaves them NaN.
      case: case name carried into the result.

    Returns:
      :class:`CaseResult`.

    Raises:
      TypeError: non-array or non-integer label maps.
      ValueError: shape mismatch, bad spacing, labels, tolerances, connectivity,
        match rule or hd_mode.
    """
    check_label_maps(gt, pred, kinds="ub")
    spacing = check_spacing(spacing, 3)
    labels, tolerances, connectivity = check_options(labels, tolerances, connectivity, match, hd_mode)
    if empty_distance_penalty is not None and not (math.isfinite(empty_distance_penalty)
                                                   and empty_distance_penalty >= 0):
        raise ValueError(f"empty_distance_penalty must be a finite number >= 0, got {empty_distance_penalty}")

    # Groups of non-zero voxels (any label, either map) separated by empty planes, found once: overlaps,
    # surfaces and lesions of every label are computed on these boxes only, so neither the image size nor a
    # distant false positive makes any step work on the space between structures.
    boxes = separated_boxes(gt, pred)
    lesions = match_lesions(gt, pred, spacing, labels.values(), connectivity, match, boxes=boxes)
    voxel_mm3 = float(np.prod(spacing))
    results = {}
    for name, value in labels.items():
        counts = np.zeros(3, np.int64)
        for box in boxes:
            a, b = gt[box] == value, pred[box] == value
            counts += (np.count_nonzero(a), np.count_nonzero(b), np.count_nonzero(a & b))
        ov = Overlap(int(counts[0]), int(counts[1]), int(counts[2]), voxel_mm3)
        sd = label_surface_distances(gt, pred, value, spacing, boxes)
        surf = metrics_from_distances(sd, tolerances, hd_mode)
        msd, hd95 = surf["msd"], surf["hd95"]
        if empty_distance_penalty is not None and surf["flag"] in ("gt_empty", "pred_empty"):
            msd = hd95 = float(empty_distance_penalty)
        results[name] = LabelResult(name, value, ov, surf["sds"], msd, hd95, surf["flag"], lesions[value])
    return CaseResult(case=case, spacing=spacing, labels=results)


# --------------------------------------------------------------------------------------------
# folder level


@dataclass(frozen=True)
class _Job:
    case: str
    gt_path: Path
    pred_path: Path | None
    options: dict = field(default_factory=dict)
    strict_geometry: bool = False


def _run_job(job: _Job):
    """Worker entry point. Returns the result, or ("error", path, problem): InputError does not pickle."""
    try:
        opts = job.options
        gt, pred, geom, resampled = load_pair(job.gt_path, job.pred_path, list(opts["labels"].values()),
                                              job.strict_geometry)
        res = evaluate_case(gt, pred, geom.spacing_zyx, case=job.case, **opts)
        return CaseResult(res.case, res.spacing, res.labels, prediction_missing=job.pred_path is None,
                          resampled=resampled)
    except InputError as exc:
        return ("error", str(exc.path) if exc.path else None, exc.problem)


def _nanstat(values: Sequence[float], fn) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(fn(arr)) if arr.size else float("nan")


def summarize(results: Sequence[CaseResult], labels: Mapping[str, int], tolerances: Sequence[float],
              size_bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML) -> dict:
    """Cohort summary per label (see docs/evaluation.md for the keys)."""
    out = {}
    for name, value in labels.items():
        rs = [r.labels[name] for r in results]
        flags = [r.distance_flag for r in rs]
        dsc = [r.dsc for r in rs]
        sds_t = {t: [r.sds[t] for r in rs] for t in tolerances}
        msd = [r.msd for r in rs]
        hd = [r.hd95 for r in rs]
        gt_vol = np.concatenate([r.lesions.gt_volume_ml for r in rs]) if rs else np.zeros(0)
        gt_det = np.concatenate([r.lesions.gt_detected for r in rs]) if rs else np.zeros(0, bool)
        n_gt = sum(r.lesions.n_gt for r in rs)
        n_det = sum(r.lesions.n_gt_detected for r in rs)
        n_pred = sum(r.lesions.n_pred for r in rs)
        n_match = sum(r.lesions.n_pred_matched for r in rs)
        agg = dscagg([r.overlap.intersection_mm3 for r in rs], [r.overlap.gt_mm3 for r in rs],
                     [r.overlap.pred_mm3 for r in rs])
        first = tolerances[0]
        out[name] = {
            "label_value": value,
            "n_cases": len(rs),
            "dscagg": agg,
            "dscagg_note": "" if not math.isnan(agg) else "structure absent from every truth and prediction (0/0)",
            "dsc_mean": _nanstat(dsc, np.mean),
            "dsc_median": _nanstat(dsc, np.median),
            "n_dsc": int(np.count_nonzero(~np.isnan(dsc))) if rs else 0,
            "sds_mean": _nanstat(sds_t[first], np.mean),
            "sds_median": _nanstat(sds_t[first], np.median),
            "sds_mean_by_tolerance": {f"{t:g}": _nanstat(v, np.mean) for t, v in sds_t.items()},
            "msd_mean": _nanstat(msd, np.mean),
            "msd_median": _nanstat(msd, np.median),
            "hd95_mean": _nanstat(hd, np.mean),
            "hd95_median": _nanstat(hd, np.median),
            "n_distance": int(np.count_nonzero(~np.isnan(hd))) if rs else 0,
            # With empty_distance_penalty one-side-empty distances are finite: penalised and included, not excluded.
            "excluded": {
                "both_empty": flags.count("both_empty"),
                "gt_empty_only": sum(f == "gt_empty" and math.isnan(h) for f, h in zip(flags, hd)),
                "pred_empty_only": sum(f == "pred_empty" and math.isnan(h) for f, h in zip(flags, hd)),
            },
            "penalised": {
                "gt_empty_only": sum(f == "gt_empty" and not math.isnan(h) for f, h in zip(flags, hd)),
                "pred_empty_only": sum(f == "pred_empty" and not math.isnan(h) for f, h in zip(flags, hd)),
            },
            "lesion_sensitivity": float(pooled_rate(n_det, n_gt)),
            "lesion_precision": float(pooled_rate(n_match, n_pred)),
            "n_gt_lesions": n_gt,
            "n_gt_detected": n_det,
            "n_pred_lesions": n_pred,
            "n_pred_matched": n_match,
            "size_stratified_sensitivity": size_stratified_sensitivity(gt_vol, gt_det, size_bins_ml),
        }
    return out


def versions(dists: Sequence[str] = ("numpy", "scipy", "connected-components-3d", "SimpleITK", "nibabel",
                                      "scikit-image")) -> dict:
    """vadice's version and those of ``dists`` (None where not installed): the one version record."""
    out = {"vadice": __version__}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    labels: Mapping[str, int] = LABELS,
    tolerances: Sequence[float] = (2.0,),
    connectivity: int = 26,
    match: str = "overlap",
    hd_mode: str = "directed",
    workers: int = 1,
    allow_missing: bool = False,
    progress: bool = True,
    size_bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML,
    empty_distance_penalty: float | None = None,
    strict_geometry: bool = False,
) -> dict:
    """Evaluate every ``<case>.nii[.gz]`` of ``pred_dir`` against ``gt_dir``.

    Args:
      gt_dir, pred_dir: folders of label maps named ``<case>.nii.gz``.
      out_dir: output folder (new, empty, or an earlier ``vadice evaluate``
        folder, which is replaced atomically); None writes nothing.
      labels, tolerances, connectivity, match, hd_mode, empty_distance_penalty:
        as :func:`evaluate_case`.
      workers: processes (results are identical to a serial run).
      allow_missing: evaluate missing predictions as empty masks.
      progress: tqdm bar over cases.
      size_bins_ml: inner edges of the size bins for stratified sensitivity.
      strict_geometry: refuse a prediction whose grid differs from the truth's
        in size, origin or direction instead of resampling it (listed in
        ``resampled_predictions`` otherwise).

    Returns:
      the summary dict written to ``summary.json`` (NaN as float NaN).

    Raises:
      InputError: any file problem (one line naming the file); nothing is
        written then.
      ValueError: bad options.
    """
    from tqdm.auto import tqdm

    labels, tolerances, connectivity = check_options(labels, tolerances, connectivity, match, hd_mode)
    bins = check_bins(size_bins_ml)
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if out_dir is not None:
        check_out_dir(out_dir, "summary.json", TOOL_TAG, OUTPUT_FILES)
    pairs = pair_cases(gt_dir, pred_dir, allow_missing)
    opts = dict(labels=labels, tolerances=tolerances, connectivity=connectivity, match=match,
                hd_mode=hd_mode, empty_distance_penalty=empty_distance_penalty)
    jobs = [_Job(c, g, p, opts, bool(strict_geometry)) for c, g, p in pairs]

    results: dict[str, CaseResult] = {}
    bar = tqdm(total=len(jobs), desc="evaluate", unit="case", disable=not progress)

    def take(out):
        if isinstance(out, tuple):
            raise InputError(out[1], out[2])
        results[out.case] = out
        bar.update(1)

    try:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                take(_run_job(job))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                futures = [pool.submit(_run_job, job) for job in jobs]
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        try:
                            take(fut.result())
                        except BaseException:
                            for f in pending:
                                f.cancel()
                            raise
    finally:
        bar.close()

    ordered = [results[c] for c, _, _ in pairs]
    per_label = summarize(ordered, labels, tolerances, bins)
    aggs = [v["dscagg"] for v in per_label.values()]
    summary = {
        "tool": TOOL_TAG,
        "n_cases": len(ordered),
        "dscagg_mean": float(np.mean(aggs)) if not any(math.isnan(a) for a in aggs) else float("nan"),
        "labels": per_label,
        "cases": [r.case for r in ordered],
        "missing_predictions": [r.case for r in ordered if r.prediction_missing],
        "resampled_predictions": [r.case for r in ordered if r.resampled],
        "settings": {
            "labels": labels,
            "tolerances_mm": list(tolerances),
            "connectivity": connectivity,
            "match": match,
            "hd_mode": hd_mode,
            "hd_percentile": 95.0,
            "size_bins_ml": bins,
            "empty_distance_penalty": empty_distance_penalty,
            "allow_missing": bool(allow_missing),
            "strict_geometry": bool(strict_geometry),
            "gt_dir": str(Path(gt_dir).absolute()),
            "pred_dir": str(Path(pred_dir).absolute()),
            "versions": versions(),
        },
        "conventions": CONVENTIONS,
    }
    if out_dir is not None:
        case_rows = [row for r in ordered for row in r.rows()]
        extra = [k for k in (case_rows[0] if case_rows else {}) if k not in CASE_COLUMNS]
        files = {
            "cases.csv": csv_text(case_rows, list(CASE_COLUMNS) + extra),
            "lesions.csv": csv_text([row for r in ordered for row in r.lesion_rows()], LESION_COLUMNS),
            "summary.json": json.dumps(json_clean(summary), indent=2, ensure_ascii=False) + "\n",
        }
        write_dir_atomically(out_dir, files)
    return summary
