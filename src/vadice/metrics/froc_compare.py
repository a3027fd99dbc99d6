"""Set-ups compared on their FROC curves and at matched operating points (docs/froc.md).

A loss that finds more small nodes at threshold 0.5 may only be working at a
lower threshold than the baseline. Three views answer that, per set-up and label:

- the curves: each seed's FROC curve and the pooled one (seeds and patients
  pooled as :func:`vadice.metrics.froc.curve_statistic`) with a two-level
  bootstrap band (patients, then seeds) read on a log grid of FP rates;
- the CPM and ΔCPM against the reference (:func:`vadice.metrics.froc.delta_cpm`:
  two-level CI, per-seed Δ, the seeds' verdict);
- matched operating points. Each set-up's *own* operating point is the pooled
  row of its threshold grid at ``operating_threshold`` (default 0.5, the point
  nnU-Net's argmax segments for two classes: what ``vadice evaluate`` sees), an
  input rather than a search, so no set-up is tuned on the test cases. Against
  the reference's own point (sensitivity S_ref, FP/patient F_ref) a set-up gets
  its sensitivity at F_ref (read off its pooled curve, as the CPM reads it) and
  its precision at S_ref: the highest precision of any threshold of its grid
  whose pooled sensitivity is at least S_ref (the "interpolated precision" of
  precision-recall analysis; NaN when no threshold reaches S_ref). The same is
  given the other way round: the reference at each set-up's own point.

A size view (``size_bin``, default lesions under 1 ml) restricts the truth
lesions, and so the sensitivities, to those bins; the FP components and the
precision stay the label's (a false-positive component has no truth volume).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from vadice.io import InputError
from vadice.metrics.froc import (CPM_RATES, FrocCounts, check_alike, check_rates, cpm, curve_statistic, delta_cpm,
                                 froc_columns, froc_table, sensitivity_at)
from vadice.metrics.lesionwise import bin_names

TOOL_TAG = "vadice froc-compare"
OUTPUT_FILES = ("froc_comparison.json", "froc_comparison.md")
DEFAULT_OPERATING_THRESHOLD = 0.5
DEFAULT_SIZE_BIN = "<1 ml"
# 1/8 ... 8 FP per patient in quarter-octave steps: holds every CPM rate, fine enough to draw the band.
BAND_RATES = tuple(float(2.0 ** (k / 4)) for k in range(-12, 13))
_CHUNK = 250  # bootstrap resamples per batch: bounds the memory of (resamples, seeds, patients) columns


def size_bins_below(bins_ml: Sequence[float], size_bin: str) -> np.ndarray:
    """Which size bins ``size_bin`` covers: ``"<X ml"``, ``"A-B ml"`` or ``">=X ml"`` on the bins' edges.

    Args:
      bins_ml: inner edges (``FrocCounts.bins_ml``).
      size_bin: the range; its limits must be edges of ``bins_ml`` ("ml" optional).

    Returns:
      (B,) boolean mask over the bins.

    Raises:
      ValueError: an unreadable range, or a limit that is not an edge.
    """
    text = size_bin.strip().removesuffix("ml").strip()
    num = r"(\d+(?:\.\d*)?|\.\d+)"
    if m := re.fullmatch(rf"<\s*{num}", text):
        lo, hi = 0.0, float(m[1])
    elif m := re.fullmatch(rf"{num}\s*-\s*{num}", text):
        lo, hi = float(m[1]), float(m[2])
    elif m := re.fullmatch(rf">=\s*{num}", text):
        lo, hi = float(m[1]), np.inf
    else:
        raise ValueError(f"size bin must read '<X ml', 'A-B ml' or '>=X ml', got {size_bin!r}")
    edges = np.concatenate([[0.0], np.asarray(bins_ml, np.float64), [np.inf]])
    if lo not in edges or hi not in edges or lo >= hi:
        raise ValueError(f"size bin {size_bin!r}: its limits must be increasing edges of the counts' size bins "
                         f"({', '.join(bin_names(bins_ml))})")
    return (edges[:-1] >= lo) & (edges[1:] <= hi)


def restrict_to_size(counts: FrocCounts, size_bin: str) -> FrocCounts:
    """The counts with truth lesions (``n_gt``, ``tp``) limited to ``size_bin``; FP and predictions unchanged.

    Raises:
      ValueError: as :func:`size_bins_below`.
    """
    keep = size_bins_below(counts.bins_ml, size_bin)
    return replace(counts, n_gt=counts.n_gt_bin[keep].sum(axis=0), tp=counts.tp_bin[keep].sum(axis=0))


def pool_seeds(seeds: Sequence[FrocCounts]) -> FrocCounts:
    """One :class:`FrocCounts` whose patients are every (seed, patient) pair.

    Its :func:`vadice.metrics.froc.froc_table` is the pooled curve of
    :func:`vadice.metrics.froc.curve_statistic`: Σ tp / Σ n_gt, and Σ fp / (seeds x patients).

    Raises:
      ValueError: no seeds, or seeds on other thresholds or patients.
    """
    if not seeds:
        raise ValueError("a set-up needs at least one seed")
    check_alike(seeds)
    first = seeds[0]
    cat = {f: np.concatenate([getattr(s, f) for s in seeds], axis=-1)
           for f in ("n_gt", "tp", "fp", "n_pred", "n_gt_bin", "tp_bin")}
    patients = tuple(f"seed{k}:{p}" for k in range(len(seeds)) for p in first.patients)
    return replace(first, patients=patients, n_cases=sum(s.n_cases for s in seeds), **cat)


def precision_at_sensitivity(table: Mapping[str, np.ndarray], thresholds: Sequence[float],
                             target: float) -> tuple[float, float]:
    """Highest precision of any threshold whose sensitivity is at least ``target``, and that threshold.

    Args:
      table: :func:`vadice.metrics.froc.froc_table` of a set-up.
      thresholds: the table's thresholds.
      target: the sensitivity to reach.

    Returns:
      ``(precision, threshold)``; ``(nan, nan)`` when no threshold reaches ``target`` or ``target`` is NaN.
      Among equal precisions the highest threshold is taken.
    """
    sens, prec = np.asarray(table["sensitivity"]), np.asarray(table["precision"])
    ok = np.flatnonzero((sens >= target - 1e-12) & np.isfinite(prec)) if np.isfinite(target) else np.array([], int)
    if ok.size == 0:
        return float("nan"), float("nan")
    best = ok[prec[ok] == prec[ok].max()][-1]
    return float(prec[best]), float(np.asarray(thresholds)[best])


def operating_point(table: Mapping[str, np.ndarray], thresholds: Sequence[float], threshold: float) -> dict:
    """The table's row at ``threshold``: sensitivity, FP per patient, precision.

    Raises:
      ValueError: ``threshold`` is not on the grid.
    """
    hit = np.flatnonzero(np.isclose(np.asarray(thresholds, np.float64), float(threshold), rtol=0, atol=1e-9))
    if hit.size != 1:
        raise ValueError(f"operating threshold {threshold:g} is not on the threshold grid "
                         f"({', '.join(f'{t:g}' for t in thresholds)})")
    k = int(hit[0])
    return {"threshold": float(threshold), "sensitivity": float(table["sensitivity"][k]),
            "fp_per_patient": float(table["fp_per_patient"][k]), "precision": float(table["precision"][k])}


def matched(table: Mapping[str, np.ndarray], thresholds: Sequence[float], other: Mapping[str, float]) -> dict:
    """A set-up read at another set-up's operating point ``other`` (from :func:`operating_point`).

    Returns:
      ``sensitivity_at_fp``: its pooled curve's sensitivity at ``other``'s FP per patient;
      ``precision_at_sensitivity`` and ``threshold``: as :func:`precision_at_sensitivity` at ``other``'s
      sensitivity.
    """
    prec, thr = precision_at_sensitivity(table, thresholds, other["sensitivity"])
    sens = sensitivity_at(table["fp_per_patient"], table["sensitivity"], other["fp_per_patient"])[0]
    return {"sensitivity_at_fp": float(sens), "precision_at_sensitivity": prec, "threshold": thr}


def curve_band(seeds: Sequence[FrocCounts], rates: Sequence[float] = BAND_RATES, n_boot: int = 2000,
               seed: int = 0, confidence: float = 0.95) -> dict:
    """The pooled curve of a set-up at ``rates`` with a two-level percentile bootstrap band.

    Each resample draws the patients with replacement, then the seeds (whole models) with replacement, as
    :func:`vadice.stats.two_level_bootstrap_ci` does for one run.

    Returns:
      ``rates``, ``sensitivity`` (the pooled curve), ``low``, ``high`` (NaN where no resample is defined).

    Raises:
      ValueError: bad rates, ``n_boot < 1`` or ``confidence`` outside (0, 1).
    """
    r = check_rates(rates)
    if n_boot < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n_boot >= 1 and confidence in (0, 1), got {n_boot}, {confidence}")
    cols = {k: v.astype(np.float64) for k, v in froc_columns(seeds).items()}
    stat = curve_statistic(r)
    n_s, n = cols["n_gt"].shape
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, n, size=(n_boot, 1, n))
    draws = rng.integers(0, n_s, size=(n_boot, n_s, 1))
    boot = np.concatenate([stat({k: v[draws[i:i + _CHUNK], patients[i:i + _CHUNK]] for k, v in cols.items()})
                           for i in range(0, n_boot, _CHUNK)])
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a rate where every resample is undefined
        low, high = np.nanquantile(boot, [alpha, 1 - alpha], axis=0)
    return {"rates": r.tolist(), "sensitivity": stat(cols).tolist(), "low": low.tolist(), "high": high.tolist()}


def _seed_curve(c: FrocCounts, rates: Sequence[float]) -> dict:
    t = froc_table(c)
    return {"fp_per_patient": t["fp_per_patient"].tolist(), "sensitivity": t["sensitivity"].tolist(),
            "precision": t["precision"].tolist(), "cpm": cpm(t["fp_per_patient"], t["sensitivity"], rates)}


def _view(runs: Mapping[str, Sequence[FrocCounts]], reference: str, rates, operating_threshold, paired, ties,
          n_boot, seed, confidence) -> dict:
    """Curves, CPM, ΔCPM and matched operating points of one view (all lesions, or one size range)."""
    thresholds = next(iter(runs.values()))[0].thresholds
    tables = {name: froc_table(pool_seeds(seeds)) for name, seeds in runs.items()}
    own = {name: operating_point(tables[name], thresholds, operating_threshold) for name in runs}
    out = {}
    for name, seeds in runs.items():
        block = {"seeds": [_seed_curve(c, rates) for c in seeds],
                 "pooled": {"fp_per_patient": tables[name]["fp_per_patient"].tolist(),
                            "sensitivity": tables[name]["sensitivity"].tolist(),
                            "precision": tables[name]["precision"].tolist(),
                            "cpm": cpm(tables[name]["fp_per_patient"], tables[name]["sensitivity"], rates),
                            "band": curve_band(seeds, n_boot=n_boot, seed=seed, confidence=confidence)},
                 "operating_point": own[name], "delta_cpm": None, "at_reference_point": None,
                 "reference_at_this_point": None}
        if name != reference:
            d = delta_cpm(runs[reference], seeds, rates, paired=paired, ties=ties, n_boot=n_boot, seed=seed,
                          confidence=confidence)
            block["delta_cpm"] = {"diff": d.ci.diff, "low": d.ci.low, "high": d.ci.high,
                                  "n_boot_valid": d.ci.n_valid, "seed_diffs": list(d.seed_diffs),
                                  "n_agree": d.n_agree, "verdict": d.verdict}
            block["at_reference_point"] = matched(tables[name], thresholds, own[reference])
            block["reference_at_this_point"] = matched(tables[reference], thresholds, own[name])
        out[name] = block
    return out


def resolve_runs(runs: Mapping[str, Sequence[FrocCounts | str | os.PathLike]], label: str) -> dict[str, list]:
    """``{set-up: [FrocCounts per seed]}``, reading ``vadice froc`` folders where given.

    Raises:
      InputError: a folder without counts, or without ``label`` (naming the labels it holds).
    """
    from vadice.metrics.froc_io import load_froc_counts

    out = {}
    for name, seeds in runs.items():
        out[name] = []
        for s in seeds:
            if isinstance(s, FrocCounts):
                out[name].append(s)
                continue
            counts = load_froc_counts(s)
            if label not in counts:
                raise InputError(s, f"no label {label!r} in its counts (labels: {', '.join(counts)})")
            out[name].append(counts[label])
    return out


def compare_froc(
    runs: Mapping[str, Sequence[FrocCounts | str | os.PathLike]],
    reference: str,
    label: str,
    paired: bool = False,
    ties: str | None = None,
    size_bin: str | None = DEFAULT_SIZE_BIN,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    rates: Sequence[float] = CPM_RATES,
    operating_threshold: float = DEFAULT_OPERATING_THRESHOLD,
) -> dict:
    """Compare set-ups' FROC curves, CPM and matched operating points against ``reference``.

    Args:
      runs: ``{set-up: seeds}``, each seed a :class:`FrocCounts` or a ``vadice froc`` folder (its ``counts.npz``
        read for ``label``); seed k of every set-up in one position.
      reference: the set-up every other is compared against.
      label: the label name (as ``vadice froc`` wrote it, e.g. ``"GTVn"``); recorded, and used to read folders.
      paired: seed k of every set-up is the twin of the reference's seed k (see
        :func:`vadice.metrics.compare.seed_pairing`): seeds resampled jointly.
      ties: ``"against"`` or ``"neutral"`` (:func:`vadice.stats.seed_verdict`); None: neutral when paired,
        against otherwise (as ``vadice compare``).
      size_bin: a second view restricted to truth lesions in this range (:func:`size_bins_below`); None: none.
      n_boot, seed, confidence: the bootstrap of ΔCPM and of the bands.
      rates: the CPM's FP rates.
      operating_threshold: each set-up's own operating point, a threshold of the grid.

    Returns:
      ``{"tool", "label", "reference", "runs", "n_seeds", "n_patients", "thresholds", "settings",
      "views": {"all": {set-up: block}, size_bin: {...}}}``; a block holds ``seeds`` (per-seed curve and
      CPM), ``pooled`` (curve, CPM, ``band``), ``operating_point``, ``delta_cpm``, ``at_reference_point``
      and ``reference_at_this_point`` (the last three None for the reference). NaN as float NaN.

    Raises:
      InputError: unreadable folders or a missing label.
      ValueError: fewer than two set-ups, unknown reference, set-ups on other thresholds or patients, paired
        set-ups with different numbers of seeds, a bad size bin, operating threshold or option.
    """
    if len(runs) < 2:
        raise ValueError("a FROC comparison needs at least two set-ups")
    if reference not in runs:
        raise ValueError(f"reference {reference!r} is not among the set-ups ({', '.join(runs)})")
    counts = resolve_runs(runs, label)
    ordered = {reference: counts[reference], **{k: v for k, v in counts.items() if k != reference}}
    n_seeds = {k: len(v) for k, v in ordered.items()}
    if min(n_seeds.values()) < 1:
        raise ValueError("every set-up needs at least one seed")
    if paired and len(set(n_seeds.values())) != 1:
        raise ValueError(f"paired seeds need the same number of seeds in every set-up, got {n_seeds}")
    check_alike([c for seeds in ordered.values() for c in seeds])
    ties = ties or ("neutral" if paired else "against")
    first = ordered[reference][0]
    views = {"all": ordered}
    if size_bin is not None:
        views[size_bin] = {k: [restrict_to_size(c, size_bin) for c in v] for k, v in ordered.items()}
    operating_point(froc_table(first), first.thresholds, operating_threshold)  # off the grid: refuse first
    return {
        "tool": TOOL_TAG, "label": label, "reference": reference, "runs": list(ordered), "n_seeds": n_seeds,
        "n_patients": len(first.patients), "thresholds": first.thresholds.tolist(),
        "settings": {"paired": bool(paired), "ties": ties, "n_boot": n_boot, "seed": seed, "confidence": confidence,
                     "cpm_rates": [float(r) for r in rates], "operating_threshold": float(operating_threshold),
                     "size_bin": size_bin, "size_bins_ml": list(first.bins_ml)},
        "views": {view: _view(v, reference, rates, operating_threshold, paired, ties, n_boot, seed, confidence)
                  for view, v in views.items()},
    }
