"""Operating points: lesion-level FROC curves, the CPM, and their comparison across runs.

Candidate extraction (one choice, used everywhere): the lesion candidates at a
threshold t are the connected components of ``p >= t``, for every t of a
threshold grid. This is what lowering (or raising) the segmentation threshold
of a model does, so a FROC point of a run is exactly the lesion-wise result of
that run at that threshold: a loss that gains small-node sensitivity at 0.5 can
be checked against the baseline's point at a lower threshold. The alternative
(components extracted once, each scored by its peak) fixes every candidate's
extent at the lowest threshold, which is not what any threshold of the model
would segment; that matters for an IoU rule. The price: between two thresholds
a component may split or merge, so the points need not be monotone, and the
curve is only as fine as the grid (see :func:`froc_curve`).

Matching is vadice's lesion-wise rule (:func:`vadice.metrics.lesionwise.match_lesions`,
default "overlap"): a truth lesion is detected at t when a component of
``p >= t`` matches it; an unmatched component is a false positive (FP).

False positives are counted per *patient*: FP components summed over all
cases of a patient, the total divided by the number of patients (a study may
hold a pre-RT and a mid-RT case per patient; by default each case is its own
patient). Sensitivity pools the truth lesions of the cohort.

The CPM (LUNA16's competition performance metric) is the mean sensitivity at
1/8, 1/4, 1/2, 1, 2, 4 and 8 FP per patient, read off the curve as LUNA16's
evaluation script does: the points (FP per patient, sensitivity), preceded by
the origin (a threshold above every probability: nothing predicted), are
linearly interpolated (``np.interp``); beyond the last point the curve stays at
its last sensitivity. LUNA16 evaluates ``np.interp`` on a grid of 10001 FP
rates and takes the grid point next to each rate; evaluating it at the rates
themselves differs from that by at most one grid step (0.0008 FP). Since a
threshold grid's points need not be monotone, the curve is the monotone upper
envelope: at each FP rate the best sensitivity of any point with no more FP
(equal to the points themselves on a monotone curve, as LUNA16's always is).

Folders (``vadice froc``: reading probability maps, writing ``froc.csv``,
``summary.json`` and ``counts.npz``) live in :mod:`vadice.metrics.froc_io`; the
comparison of set-ups at matched operating points in :mod:`vadice.metrics.froc_compare`.
(Just over 500 lines: this docstring, the one reading of the curve that every function
here shares, is 40 of them.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from vadice.lesions import check_spacing
from vadice.metrics.lesionwise import DEFAULT_SIZE_BINS_ML, check_bins, match_lesions, parse_match, size_bin_index
from vadice.stats import BootstrapCI, seed_verdict, two_level_bootstrap_ci

# 0.05, 0.10, ..., 0.95: 0.5 (nnU-Net's argmax point for two classes) is on the grid.
DEFAULT_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
CPM_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    """Thresholds as a float array, strictly increasing, each in (0, 1].

    Raises:
      ValueError: empty, not increasing, or a value outside (0, 1].
    """
    t = np.asarray([float(x) for x in thresholds], dtype=np.float64)
    if t.size == 0 or not np.all(np.isfinite(t)) or t.min() <= 0 or t.max() > 1 or np.any(np.diff(t) <= 0):
        raise ValueError(f"thresholds must be strictly increasing values in (0, 1], got {list(thresholds)}")
    return t


def check_rates(rates: Sequence[float]) -> np.ndarray:
    """FP-per-patient rates as a float array, each finite and > 0.

    Raises:
      ValueError: empty or a rate that is not a finite positive number.
    """
    r = np.asarray([float(x) for x in rates], dtype=np.float64).reshape(-1)
    if r.size == 0 or not np.all(np.isfinite(r)) or r.min() <= 0:
        raise ValueError(f"FP rates must be finite numbers > 0, got {list(rates)}")
    return r


@dataclass(frozen=True)
class CaseCounts:
    """Lesion counts of one label in one case at every threshold of a grid.

    Attributes:
      thresholds: (T,) increasing thresholds.
      gt_volume_ml: (L,) volume of each truth lesion.
      detected: (T, L) whether truth lesion l is detected at threshold t.
      n_pred: (T,) components of ``p >= t``.
      n_fp: (T,) of those, the ones that match no truth lesion.
    """

    thresholds: np.ndarray
    gt_volume_ml: np.ndarray
    detected: np.ndarray
    n_pred: np.ndarray
    n_fp: np.ndarray


def case_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    label: int,
    spacing: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    connectivity: int = 26,
    match: str = "overlap",
) -> CaseCounts:
    """Detected truth lesions and false-positive components of ``p >= t`` for every threshold t.

    t is rounded to the precision of ``prob`` before the comparison (float16 or
    float32 maps hold 0.9 as the nearest value they can, and that value passes 0.9).

    Args:
      prob: (Z, Y, X) probability of ``label``, values in [0, 1].
      gt: integer truth label map of the same shape (other labels are ignored).
      label: the label value whose lesions are counted.
      spacing: voxel spacing in mm, array axis order.
      thresholds: increasing thresholds in (0, 1].
      connectivity: 6, 18 or 26.
      match: lesion match rule, as :func:`vadice.metrics.lesionwise.parse_match`.

    Returns:
      :class:`CaseCounts`.

    Raises:
      TypeError: ``prob`` not a floating NumPy array, or ``gt`` not an integer one.
      ValueError: shapes differ, ``prob`` not 3-D, outside [0, 1] or not finite; label < 1; bad thresholds,
        spacing, connectivity or match rule.
    """
    if not isinstance(prob, np.ndarray) or prob.dtype.kind != "f":
        raise TypeError(f"prob must be a floating NumPy array, got {getattr(prob, 'dtype', type(prob).__name__)}")
    if prob.ndim != 3:
        raise ValueError(f"prob must be 3-D, got shape {prob.shape}")
    if getattr(gt, "shape", None) != prob.shape:
        raise ValueError(f"prob and gt shapes differ: {prob.shape} vs {getattr(gt, 'shape', None)}")
    if not np.all(np.isfinite(prob)) or prob.min() < 0 or prob.max() > 1:
        raise ValueError("prob must hold finite values in [0, 1]")
    t = check_thresholds(thresholds)
    spacing = check_spacing(spacing, 3)
    parse_match(match)
    label = int(label)
    if label < 1:
        raise ValueError(f"label must be a foreground value >= 1, got {label}")
    # t in the map's own precision: a float32 map's 0.9 is 0.89999998, and a plateau of "0.9" must pass 0.9.
    # Rounded so, a float16 map can be compared in float32 (NumPy compares float16 arrays slowly).
    work = np.float64 if prob.dtype.itemsize > 4 else np.float32
    t_map = np.asarray([prob.dtype.type(x) for x in t], work)
    # Every candidate lies in p >= t_min and every lesion of the label in gt == label: their bounding box holds
    # all components whole. Box and float32 together: 5.4 -> 2.3-3.0 s for 19 thresholds on a 75x512x512 case
    # whose candidates spread over the whole volume (faster still where they keep to the neck).
    box = _bounding_box((prob >= prob.dtype.type(t[0])) | (gt == label))
    prob, gt = prob[box].astype(work), gt[box]
    pred = np.empty(prob.shape, np.uint8)
    detected, n_pred, n_fp, volumes = [], [], [], None
    for thr in t_map:
        np.multiply(prob >= thr, label, out=pred, casting="unsafe")
        m = match_lesions(gt, pred, spacing, labels=(label,), connectivity=connectivity, match=match)[label]
        volumes = m.gt_volume_ml  # truth lesions are the same at every threshold, in the same order
        detected.append(m.gt_detected)
        n_pred.append(m.n_pred)
        n_fp.append(m.n_pred - m.n_pred_matched)
    return CaseCounts(t, volumes, np.stack(detected).astype(bool), np.asarray(n_pred, np.int64),
                      np.asarray(n_fp, np.int64))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Smallest box holding every True voxel of a 3-D mask (an empty box when there is none)."""
    out = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0))
    return tuple(out)


@dataclass(frozen=True)
class FrocCounts:
    """Per-patient lesion counts of one run and one label at every threshold: what FROC, CPM and their
    bootstrap need.

    Attributes:
      thresholds: (T,) increasing thresholds.
      patients: (n,) patient ids, sorted (two runs of one cohort list them alike).
      n_cases: cases pooled into the patients.
      n_gt: (n,) truth lesions per patient.
      tp: (T, n) detected truth lesions per patient.
      fp: (T, n) false-positive components per patient.
      n_pred: (T, n) predicted components per patient.
      bins_ml: inner size-bin edges (``lesionwise.size_bin_index``), by truth lesion volume.
      n_gt_bin: (B, n) truth lesions per size bin and patient, B = len(bins_ml) + 1.
      tp_bin: (B, T, n) detected truth lesions per size bin.
    """

    thresholds: np.ndarray
    patients: tuple[str, ...]
    n_cases: int
    n_gt: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pred: np.ndarray
    bins_ml: tuple[float, ...]
    n_gt_bin: np.ndarray
    tp_bin: np.ndarray


def pool_cases(
    cases: Mapping[str, CaseCounts],
    patient_of: Mapping[str, str] | None = None,
    bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML,
) -> FrocCounts:
    """Sum the counts of each patient's cases.

    Args:
      cases: ``{case id: CaseCounts}``, all on one threshold grid.
      patient_of: ``{case id: patient id}``; None: every case is its own patient.
      bins_ml: inner size-bin edges in ml.

    Returns:
      :class:`FrocCounts`.

    Raises:
      ValueError: no cases, different threshold grids, a case without a patient, bad bins.
    """
    if not cases:
        raise ValueError("no cases to pool")
    edges = tuple(check_bins(bins_ml))
    names = sorted(cases)
    t = cases[names[0]].thresholds
    for name in names:
        if not np.array_equal(cases[name].thresholds, t):
            raise ValueError(f"case {name!r} was counted on another threshold grid")
    patient_of = resolve_patients(names, patient_of)
    patients = tuple(sorted(set(patient_of.values())))
    col = {p: i for i, p in enumerate(patients)}
    n_bins, n = len(edges) + 1, len(patients)
    n_gt, n_gt_bin = np.zeros(n, np.int64), np.zeros((n_bins, n), np.int64)
    tp, fp, n_pred = (np.zeros((t.size, n), np.int64) for _ in range(3))
    tp_bin = np.zeros((n_bins, t.size, n), np.int64)
    for name in names:
        c, i = cases[name], col[patient_of[name]]
        which = size_bin_index(c.gt_volume_ml, edges)
        n_gt[i] += c.gt_volume_ml.size
        n_gt_bin[:, i] += np.bincount(which, minlength=n_bins)
        tp[:, i] += c.detected.sum(axis=1)
        fp[:, i] += c.n_fp
        n_pred[:, i] += c.n_pred
        for k in range(n_bins):
            tp_bin[k, :, i] += c.detected[:, which == k].sum(axis=1)
    return FrocCounts(t, patients, len(names), n_gt, tp, fp, n_pred, edges, n_gt_bin, tp_bin)


def resolve_patients(cases: Sequence[str], patient_of: Mapping[str, str] | None) -> dict[str, str]:
    """``{case: patient id}`` for every case; None maps each case to itself.

    Raises:
      ValueError: a case without a patient.
    """
    if patient_of is None:
        return {c: c for c in cases}
    missing = [c for c in cases if c not in patient_of]
    if missing:
        raise ValueError(f"no patient given for case(s) {', '.join(missing[:5])}")
    return {c: str(patient_of[c]) for c in cases}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def froc_table(counts: FrocCounts) -> dict[str, np.ndarray]:
    """Cohort values at every threshold.

    Returns:
      ``sensitivity`` (T,): detected / truth lesions (NaN without lesions);
      ``fp_per_patient`` (T,): FP components / patients;
      ``precision`` (T,): matched / predicted components (NaN when none is predicted);
      ``sensitivity_bin`` (B, T): sensitivity of the truth lesions of each size bin.
    """
    n_pred = counts.n_pred.sum(axis=1)
    return {
        "sensitivity": _ratio(counts.tp.sum(axis=1), counts.n_gt.sum()),
        "fp_per_patient": counts.fp.sum(axis=1) / len(counts.patients),
        "precision": _ratio(n_pred - counts.fp.sum(axis=1), n_pred),
        "sensitivity_bin": _ratio(counts.tp_bin.sum(axis=2), counts.n_gt_bin.sum(axis=1)[:, None]),
    }


def _check_points(fp_per_patient, sensitivity) -> tuple[np.ndarray, np.ndarray]:
    fp = np.asarray(fp_per_patient, np.float64).reshape(-1)
    sens = np.asarray(sensitivity, np.float64).reshape(-1)
    if fp.size != sens.size:
        raise ValueError(f"FP rates and sensitivities differ in length: {fp.size} vs {sens.size}")
    if not np.all(np.isfinite(fp)) or (fp.size and fp.min() < 0) or np.any(np.isinf(sens)):
        raise ValueError("FP rates must be finite and >= 0, sensitivities finite or NaN (no truth lesions)")
    return fp, sens


def _envelope(fp: np.ndarray, sens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., T) points -> (..., T + 1) vertices: the origin, then the points by FP (ties: by sensitivity), with
    the running maximum of the sensitivity. Within a run of equal FP the first vertex holds the sensitivity on
    arrival and the last the top."""
    order = np.lexsort((sens, fp), axis=-1)
    origin = np.zeros(fp.shape[:-1] + (1,))
    x = np.concatenate([origin, np.take_along_axis(fp, order, -1)], axis=-1)
    y = np.maximum.accumulate(np.concatenate([origin, np.take_along_axis(sens, order, -1)], axis=-1), axis=-1)
    return x, y


def _read(x: np.ndarray, y: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Envelope (..., V) read at each rate -> (..., R): linear between the last vertex at or below the rate (the
    top of a vertical rise there) and the next one (the arrival of the next run); past the end, the last value."""
    j = np.sum(x[..., None, :] <= rates[:, None], axis=-1) - 1
    nxt = np.minimum(j + 1, x.shape[-1] - 1)
    x0, x1 = np.take_along_axis(x, j, -1), np.take_along_axis(x, nxt, -1)
    y0, y1 = np.take_along_axis(y, j, -1), np.take_along_axis(y, nxt, -1)
    span = x1 - x0
    frac = np.divide(rates - x0, span, out=np.zeros(span.shape), where=span > 0)
    return y0 + frac * (y1 - y0)


def froc_curve(fp_per_patient: Sequence[float], sensitivity: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The FROC curve's vertices: the origin and the points sorted by FP, as their monotone upper envelope.

    A vertex's sensitivity is the best of any point with at most its FP. Where
    several points share one FP rate the curve rises vertically there, so that
    rate keeps two vertices, the sensitivity on arrival and the highest (a
    staircase, as a sweep over candidate scores draws it); other repeats are dropped.

    Args:
      fp_per_patient, sensitivity: one value per threshold (any order).

    Returns:
      ``(fp, sens)``: fp non-decreasing from 0 (each value at most twice), sens non-decreasing.

    Raises:
      ValueError: lengths differ, a value is not finite (or FP < 0).
    """
    fp, sens = _check_points(fp_per_patient, sensitivity)
    if np.any(np.isnan(sens)):
        raise ValueError("sensitivities must be finite")
    x, y = _envelope(fp, sens)
    first = np.insert(x[1:] != x[:-1], 0, True)
    last = np.append(x[1:] != x[:-1], True)
    return x[first | last], y[first | last]


def sensitivity_at(fp_per_patient: Sequence[float], sensitivity: Sequence[float],
                   rates: Sequence[float] | float) -> np.ndarray:
    """Sensitivity of the FROC curve (:func:`froc_curve`) at each FP-per-patient rate, LUNA16's reading.

    Linear interpolation; at a rate where the curve rises vertically the top is
    taken (as ``np.interp`` does on such a curve); beyond the last vertex, the last sensitivity.
    Rate 0 is allowed (a matched operating point may have no FP): the best sensitivity with no FP.

    Returns:
      array of the rates' shape; NaN everywhere when any sensitivity is NaN (no truth lesions).

    Raises:
      ValueError: bad rates (not finite or < 0) or points (lengths differ, FP not finite or < 0).
    """
    r = np.asarray(np.atleast_1d(rates), np.float64).reshape(-1)
    if r.size == 0 or not np.all(np.isfinite(r)) or r.min() < 0:
        raise ValueError(f"FP rates must be finite numbers >= 0, got {list(np.atleast_1d(rates))}")
    fp, sens = _check_points(fp_per_patient, sensitivity)
    if np.any(np.isnan(sens)):
        return np.full(r.shape, np.nan)
    return _read(*_envelope(fp, sens), r)


def cpm(fp_per_patient: Sequence[float], sensitivity: Sequence[float],
        rates: Sequence[float] = CPM_RATES) -> float:
    """Competition performance metric: mean sensitivity at ``rates`` FP per patient (default LUNA16's seven).

    Args:
      fp_per_patient, sensitivity: one value per threshold.
      rates: FP-per-patient rates.

    Returns:
      the CPM; NaN without truth lesions.

    Raises:
      ValueError: as :func:`sensitivity_at`.
    """
    return float(np.mean(sensitivity_at(fp_per_patient, sensitivity, rates)))


def froc_columns(seeds: Sequence[FrocCounts]) -> dict[str, np.ndarray]:
    """The (seeds, patients) columns of one run for :func:`vadice.stats.two_level_bootstrap_ci`.

    ``n_gt`` holds truth lesions, ``tp_<k>`` and ``fp_<k>`` the detected lesions and
    FP components at threshold k of the grid.

    Args:
      seeds: one :class:`FrocCounts` per training seed of the run.

    Raises:
      ValueError: no seeds, or seeds on different thresholds or patients.
    """
    if not seeds:
        raise ValueError("a run needs at least one seed")
    check_alike(seeds)
    cols = {"n_gt": np.stack([s.n_gt for s in seeds])}
    for k in range(seeds[0].thresholds.size):
        cols[f"tp_{k}"] = np.stack([s.tp[k] for s in seeds])
        cols[f"fp_{k}"] = np.stack([s.fp[k] for s in seeds])
    return cols


def check_alike(runs: Sequence[FrocCounts]) -> None:
    """Refuse counts on different threshold grids or patients (they cannot be pooled or compared).

    Raises:
      ValueError: thresholds or patients differ.
    """
    first = runs[0]
    for r in runs[1:]:
        if not np.array_equal(r.thresholds, first.thresholds):
            raise ValueError("runs were counted on different threshold grids")
        if r.patients != first.patients:
            raise ValueError("runs hold different patients")


def curve_statistic(rates: Sequence[float]) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """Statistic: the pooled FROC curve of columns from :func:`froc_columns`, read at ``rates``.

    Seeds and patients are pooled: sensitivity = Σ tp / Σ n_gt, FP per patient =
    Σ fp / (seeds x patients), i.e. the FP of an average patient under an average
    seed. Works on (..., S, n) columns, returning (..., R); NaN where a resample has
    no truth lesions.
    """
    r = check_rates(rates)

    def stat(cols: Mapping[str, np.ndarray]) -> np.ndarray:
        n_t = sum(1 for key in cols if key.startswith("tp_"))
        n_gt = np.asarray(cols["n_gt"], np.float64)
        units = n_gt.shape[-2] * n_gt.shape[-1]
        sens = np.stack([_ratio(np.sum(cols[f"tp_{k}"], axis=(-2, -1)), np.sum(n_gt, axis=(-2, -1)))
                         for k in range(n_t)], axis=-1)
        fp = np.stack([np.sum(cols[f"fp_{k}"], axis=(-2, -1)) / units for k in range(n_t)], axis=-1)
        out = _read(*_envelope(fp, np.nan_to_num(sens)), r)
        return np.where(np.isnan(sens).any(axis=-1, keepdims=True), np.nan, out)

    return stat


def cpm_statistic(rates: Sequence[float] = CPM_RATES) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """Statistic for :func:`vadice.stats.two_level_bootstrap_ci`: the CPM of columns from :func:`froc_columns`.

    The mean of :func:`curve_statistic` at ``rates`` (seeds and patients pooled).
    Works on (..., S, n) columns, returning (...); NaN where a resample has no truth lesions.
    """
    curve = curve_statistic(rates)
    return lambda cols: curve(cols).mean(axis=-1)


@dataclass(frozen=True)
class CpmDelta:
    """CPM(b) - CPM(a) with its bootstrap CI and the seeds' verdict.

    Attributes:
      ci: :class:`vadice.stats.BootstrapCI` of the pooled Δ.
      seed_diffs: Δ of each seed pair (seed k of b against seed k of a); empty when the runs' seed counts differ.
      n_agree: seeds whose Δ has the pooled Δ's sign.
      verdict: a key of ``vadice.stats.VERDICTS``.
    """

    ci: BootstrapCI
    seed_diffs: tuple[float, ...]
    n_agree: int
    verdict: str


def delta_cpm(
    a: Sequence[FrocCounts],
    b: Sequence[FrocCounts],
    rates: Sequence[float] = CPM_RATES,
    paired: bool = False,
    ties: str = "against",
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> CpmDelta:
    """Compare two runs' CPM: two-level bootstrap (patients, then seeds) and :func:`vadice.stats.seed_verdict`.

    Args:
      a, b: one :class:`FrocCounts` per seed of each run (same thresholds and patients).
      rates: FP-per-patient rates of the CPM.
      paired: seed k of ``a`` and of ``b`` are twins (a shared warm start): resample seeds jointly.
      ties: ``"against"`` or ``"neutral"``, as :func:`vadice.stats.seed_verdict`.
      n_boot, seed, confidence: as :func:`vadice.stats.two_level_bootstrap_ci`.

    Returns:
      :class:`CpmDelta`.

    Raises:
      ValueError: empty runs, different grids or patients, bad rates, ties or bootstrap options.
    """
    if not a or not b:
        raise ValueError("both runs need at least one seed")
    check_alike(list(a) + list(b))
    stat = cpm_statistic(rates)
    cols_a, cols_b = froc_columns(a), froc_columns(b)
    ci = two_level_bootstrap_ci(cols_a, cols_b, stat, n_boot=n_boot, seed=seed, confidence=confidence, paired=paired)
    seed_diffs = ()
    if len(a) == len(b):
        with np.errstate(invalid="ignore", divide="ignore"):
            seed_diffs = tuple(float(stat({k: v[i:i + 1] for k, v in cols_b.items()})
                                     - stat({k: v[i:i + 1] for k, v in cols_a.items()})) for i in range(len(a)))
    n_agree, verdict = seed_verdict(ci.diff, ci.low, ci.high, seed_diffs, ties=ties)
    return CpmDelta(ci, seed_diffs, n_agree, verdict)
