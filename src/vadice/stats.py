"""Paired statistics for comparing configurations on the same patients.

- :func:`wilcoxon_paired`: Wilcoxon signed-rank test (scipy) with an explicit
  ``zero_method`` and the pair count reported, for per-patient metrics.
- :func:`holm`: Holm step-down adjustment across a family of p-values
  (statsmodels ``multipletests``), NaN entries left out of the family.
- :func:`paired_bootstrap_ci`: patient-level paired percentile bootstrap of a
  cohort statistic's difference (e.g. DSCagg), deterministic given a seed.
  Hand-written rather than ``scipy.stats.bootstrap`` because cohort metrics
  are ratios of sums over patients: resampling patient indices once and
  reusing them for both runs and every column keeps the pairing explicit and
  vectorises to one matrix product per column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as _st
from statsmodels.stats.multitest import multipletests

ZERO_METHODS = ("wilcox", "pratt", "zsplit")


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`wilcoxon_paired`.

    Attributes:
      p: two-sided p-value (NaN when fewer than ``min_pairs`` pairs; 1.0 when
        every difference is zero, i.e. no evidence of a difference).
      statistic: the signed-rank statistic (NaN when not computed).
      n_pairs: pairs with both values finite.
      n_nonzero: pairs whose difference is not zero.
      median_diff: median of b - a over the pairs.
      effect_size: matched-pairs rank-biserial correlation in [-1, 1]
        (positive: b larger), computed on the non-zero differences.
    """

    p: float
    statistic: float
    n_pairs: int
    n_nonzero: int
    median_diff: float
    effect_size: float


def wilcoxon_paired(a: Sequence[float], b: Sequence[float], zero_method: str = "wilcox",
                    min_pairs: int = 1) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of b - a over pairs with both values finite.

    Args:
      a, b: per-patient values in the same patient order.
      zero_method: how zero differences are treated: ``"wilcox"`` drops them
        (the classic test), ``"pratt"`` ranks then drops them, ``"zsplit"``
        splits their ranks between signs.
      min_pairs: below this many finite pairs, p is NaN.

    Returns:
      :class:`PairedTest`.

    Raises:
      ValueError: different lengths or unknown ``zero_method``.
    """
    if zero_method not in ZERO_METHODS:
        raise ValueError(f"zero_method must be one of {ZERO_METHODS}, got {zero_method!r}")
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = b[ok] - a[ok]
    n = int(d.size)
    nz = d[d != 0]
    median = float(np.median(d)) if n else float("nan")
    if nz.size:
        ranks = _st.rankdata(np.abs(nz))
        effect = float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum())
    else:
        effect = 0.0 if n else float("nan")
    if n < max(min_pairs, 1):
        return PairedTest(float("nan"), float("nan"), n, int(nz.size), median, effect)
    if nz.size == 0:
        return PairedTest(1.0, float("nan"), n, 0, median, effect)
    res = _st.wilcoxon(d, zero_method=zero_method, alternative="two-sided")
    return PairedTest(float(res.pvalue), float(res.statistic), n, int(nz.size), median, effect)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values; NaN inputs stay NaN and are not part of the family.

    Returns:
      float array of the same length.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


@dataclass(frozen=True)
class BootstrapCI:
    """Observed difference and its percentile bootstrap interval.

    Attributes:
      diff: statistic(b) - statistic(a) on the original patients.
      low, high: interval bounds at ``confidence``.
      n_boot: resamples drawn; n_valid: resamples where both statistics were finite.
    """

    diff: float
    low: float
    high: float
    confidence: float
    n_boot: int
    n_valid: int


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) patient indices drawn with replacement from a seeded generator."""
    if n < 1:
        raise ValueError("bootstrap needs at least one patient")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired_bootstrap_ci(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    indices: np.ndarray | None = None,
) -> BootstrapCI:
    """Patient-level paired bootstrap CI of ``statistic(b) - statistic(a)``.

    The same resampled patients are used for both runs (pairing), and passing
    ``indices`` reuses one set of resamples across several statistics.

    Args:
      a, b: per-patient columns, e.g. ``{"inter": ..., "gt": ..., "pred": ...}``,
        all of one length n and in the same patient order in ``a`` and ``b``.
      statistic: maps a dict of arrays of shape (..., n) to values of shape
        (...,); it is called once on the originals and once on all resamples.
      n_boot: number of resamples.
      seed: generator seed (same seed, same interval).
      confidence: interval coverage, e.g. 0.95.
      indices: optional precomputed (n_boot, n) index matrix.

    Returns:
      :class:`BootstrapCI` (bounds NaN when no resample gives finite values).

    Raises:
      ValueError: columns of different lengths, bad confidence or n_boot.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    cols_a = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in a.items()}
    cols_b = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in b.items()}
    sizes = {v.size for v in list(cols_a.values()) + list(cols_b.values())}
    if len(sizes) != 1:
        raise ValueError(f"all per-patient columns must have the same length, got {sorted(sizes)}")
    n = sizes.pop()
    idx = bootstrap_indices(n, n_boot, seed) if indices is None else np.asarray(indices)
    if idx.ndim != 2 or idx.shape[1] != n:
        raise ValueError(f"indices must have shape (n_boot, {n}), got {idx.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = float(statistic(cols_b) - statistic(cols_a))
        boot = (np.asarray(statistic({k: v[idx] for k, v in cols_b.items()}), dtype=np.float64)
                - np.asarray(statistic({k: v[idx] for k, v in cols_a.items()}), dtype=np.float64))
    boot = boot[np.isfinite(boot)]
    alpha = (1 - confidence) / 2
    if boot.size == 0:
        low = high = float("nan")
    else:
        low, high = (float(x) for x in np.quantile(boot, [alpha, 1 - alpha]))
    return BootstrapCI(diff, low, high, confidence, int(idx.shape[0]), int(boot.size))


def ratio_of_sums(num: str, den: str, num_scale: float = 1.0) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """Statistic ``num_scale * Σ num / Σ den`` over the last axis (pooled sensitivity, DSCagg, ...)."""

    def stat(cols: Mapping[str, np.ndarray]) -> np.ndarray:
        d = np.sum(cols[den], axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, num_scale * np.sum(cols[num], axis=-1) / np.where(d > 0, d, 1), np.nan)

    return stat


def nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
