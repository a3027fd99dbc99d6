"""Paired statistics for comparing configurations on the same patients.

- :func:`wilcoxon_paired`: Wilcoxon signed-rank test (scipy) with an explicit
  ``zero_method`` and the pair count reported, for per-patient metrics.
- :func:`holm`: Holm step-down adjustment across a family of p-values
  (statsmodels ``multipletests``), NaN entries left out of the family.
- :func:`paired_bootstrap_ci`: patient-level paired percentile bootstrap of a
  cohort statistic's difference (e.g. DSCagg), deterministic given a seed.
- :func:`two_level_bootstrap_ci`: the same with several training seeds per
  run: each resample draws patients (shared by both runs: the pairing), then
  seeds: jointly for both runs when seed k of one run is the twin of seed k of
  the other (``paired=True``: they share a warm start), independently
  otherwise (each seed a training of its own).
- :func:`seed_verdict`: the rule that calls a difference "consistent", with a
  seed whose Δ is exactly 0 counted against (``ties="against"``, the rule for
  unpaired designs) or as tied (``ties="neutral"``).
  Hand-written rather than ``scipy.stats.bootstrap`` because cohort metrics
  are ratios of sums over patients and seeds: resampling indices once and
  reusing them for both runs and every column keeps the pairing explicit and
  vectorises to one fancy-indexing per column.
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
        (positive: b larger), with zeros treated as the test treats them
        (see :func:`rank_biserial`).
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
    effect = rank_biserial(d, zero_method)
    if n < max(min_pairs, 1):
        return PairedTest(float("nan"), float("nan"), n, int(nz.size), median, effect)
    if nz.size == 0:
        return PairedTest(1.0, float("nan"), n, 0, median, effect)
    res = _st.wilcoxon(d, zero_method=zero_method, alternative="two-sided")
    return PairedTest(float(res.pvalue), float(res.statistic), n, int(nz.size), median, effect)


def rank_biserial(d: Sequence[float], zero_method: str = "wilcox") -> float:
    """Matched-pairs rank-biserial correlation (R+ - R-) / R, zeros handled like the test.

    ``wilcox`` ranks the non-zero differences only; ``pratt`` ranks all |d|
    and then drops the zeros' ranks (as scipy's test does); ``zsplit`` ranks
    all |d| and splits the zeros' ranks evenly between signs, so they count in
    the denominator R only.

    Args:
      d: paired differences (finite).
      zero_method: one of ``ZERO_METHODS``.

    Returns:
      value in [-1, 1]; 0.0 when every difference is zero; NaN for no pairs.

    Raises:
      ValueError: unknown ``zero_method``.
    """
    if zero_method not in ZERO_METHODS:
        raise ValueError(f"zero_method must be one of {ZERO_METHODS}, got {zero_method!r}")
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return float("nan")
    if not np.any(d != 0):
        return 0.0
    if zero_method == "wilcox":
        d = d[d != 0]
    ranks = _st.rankdata(np.abs(d))
    pos, neg = ranks[d > 0].sum(), ranks[d < 0].sum()
    total = ranks.sum() if zero_method == "zsplit" else pos + neg
    return float((pos - neg) / total)


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
    return _percentile_ci(diff, boot, confidence, int(idx.shape[0]))


def two_level_bootstrap_ci(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    paired: bool = False,
) -> BootstrapCI:
    """Percentile bootstrap CI of ``statistic(b) - statistic(a)`` over patients, then seeds.

    Each resample draws n patients with replacement (the same patients for
    both runs, which keeps the pairing), then S seeds with replacement, drawn
    separately for each run when a seed of one run is a training of its own,
    not a twin of the other run's seed with the same number (``paired=False``).
    When the runs' seed k share a warm start (``vadice experiment`` gives every
    set-up of seed k the same one), seed k of ``a`` and seed k of ``b`` are
    twins: ``paired=True`` draws one set of seed indices for both runs, so the
    seed-to-seed spread that both twins share cancels in the difference. A
    seed is resampled as a whole model (all its patients together), since a
    seed shifts every patient of that model at once. With one seed per run
    this is :func:`paired_bootstrap_ci` over patients.

    Args:
      a, b: columns of shape (S_a, n) and (S_b, n): seeds x patients, the
        patients in the same order in both; with ``paired=True`` row k of
        ``a`` and row k of ``b`` are twins, so S_a must equal S_b.
      statistic: maps a dict of arrays of shape (..., S, n) to (...,).
      n_boot, seed, confidence: as :func:`paired_bootstrap_ci`.
      paired: resample seed indices jointly for both runs.

    Returns:
      :class:`BootstrapCI`.

    Raises:
      ValueError: columns not 2-D, patients differing in number, paired runs
        with different numbers of seeds, bad options.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    cols = []
    for run in (a, b):
        c = {k: np.asarray(v, dtype=np.float64) for k, v in run.items()}
        if not c or any(v.ndim != 2 for v in c.values()) or len({v.shape for v in c.values()}) != 1:
            raise ValueError("every column must be a 2-D (seeds, patients) array of one shape per run")
        cols.append(c)
    (s_a, n), (s_b, n_b) = next(iter(cols[0].values())).shape, next(iter(cols[1].values())).shape
    if n != n_b or n < 1 or s_a < 1 or s_b < 1:
        raise ValueError(f"runs need the same, non-zero number of patients and >= 1 seed, got {n} and {n_b}")
    if paired and s_a != s_b:
        raise ValueError(f"paired seeds need the same number of seeds in both runs, got {s_a} and {s_b}")
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, n, size=(n_boot, 1, n))
    seeds_a = rng.integers(0, s_a, size=(n_boot, s_a, 1))
    # Unpaired: a second, independent draw (the same stream as before pairing existed, so old CIs reproduce).
    seeds_b = seeds_a if paired else rng.integers(0, s_b, size=(n_boot, s_b, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = float(statistic(cols[1]) - statistic(cols[0]))
        boot = (np.asarray(statistic({k: v[seeds_b, patients] for k, v in cols[1].items()}), dtype=np.float64)
                - np.asarray(statistic({k: v[seeds_a, patients] for k, v in cols[0].items()}), dtype=np.float64))
    return _percentile_ci(diff, boot, confidence, int(n_boot))


def _percentile_ci(diff: float, boot: np.ndarray, confidence: float, n_boot: int) -> BootstrapCI:
    """The percentile interval of the finite resampled differences (NaN bounds when none is finite)."""
    boot = boot[np.isfinite(boot)]
    alpha = (1 - confidence) / 2
    if boot.size == 0:
        low = high = float("nan")
    else:
        low, high = (float(x) for x in np.quantile(boot, [alpha, 1 - alpha]))
    return BootstrapCI(diff, low, high, confidence, n_boot, int(boot.size))


VERDICTS = {
    "consistent": "CI excludes 0 and every seed's Δ has the sign of the pooled Δ (with ties='neutral': no seed "
                  "has the other sign and more than half the seeds have the pooled Δ's sign)",
    "seeds disagree": "CI excludes 0 but at least one seed's Δ has the other sign (with ties='against', a Δ of "
                      "exactly 0 counts as the other sign)",
    "seeds tied": "CI excludes 0 and no seed's Δ has the other sign, but too many seeds have Δ = 0 "
                  "(ties='neutral' only)",
    "CI includes 0": "the data are compatible with no difference",
    "one seed": "CI excludes 0, but with one seed per run training noise is not assessed",
    "seeds unpaired": "CI excludes 0, but the runs have different numbers of seeds: agreement not assessed",
    "undefined": "Δ or its CI could not be computed",
}
TIE_RULES = ("against", "neutral")


def seed_verdict(diff: float, low: float, high: float, seed_diffs: Sequence[float],
                 ties: str = "against") -> tuple[int, str]:
    """How many seeds agree in sign with the pooled Δ, and the verdict (a key of ``VERDICTS``).

    "consistent" needs a CI that excludes 0 and seeds that agree with the sign
    of the pooled Δ; unlike "inside the seed range", this can fail either way,
    because the pooled Δ need not have the sign of every seed.

    A seed whose Δ is exactly 0 (common for lesion counts near a ceiling: both
    twins find every small node) is not evidence against the pooled Δ, but
    not for it either. ``ties="against"`` counts it as disagreeing (every seed
    must agree; vadice's rule before seeds were paired, kept for unpaired
    designs); ``ties="neutral"`` counts it neither way: "consistent" then
    needs no seed of the other sign and *more than half* of the seeds with
    the pooled Δ's sign, else "seeds tied".

    Args:
      diff: pooled Δ; low, high: its CI; seed_diffs: the Δ of each seed pair (empty when the runs'
        seeds cannot be paired).
      ties: ``"against"`` or ``"neutral"`` (see above).

    Returns:
      ``(n_agree, verdict)``; ``n_agree`` counts seeds with Δ of the pooled Δ's sign (never ties).

    Raises:
      ValueError: unknown ``ties``.
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    sd = np.asarray(list(seed_diffs), dtype=np.float64)
    if not all(math.isfinite(x) for x in (diff, low, high)) or not np.isfinite(sd).all():
        return 0, "undefined"
    n_agree = int(np.count_nonzero((np.sign(sd) == np.sign(diff)) & (sd != 0)))
    if low <= 0 <= high:
        return n_agree, "CI includes 0"
    if sd.size == 0:
        return 0, "seeds unpaired"
    if sd.size == 1:
        return n_agree, "one seed"
    if ties == "against":
        return n_agree, "consistent" if n_agree == sd.size else "seeds disagree"
    n_against = int(np.count_nonzero((sd != 0) & (np.sign(sd) != np.sign(diff))))
    if n_against:
        return n_agree, "seeds disagree"
    return n_agree, "consistent" if 2 * n_agree > sd.size else "seeds tied"


def ratio_of_sums(num: str, den: str, num_scale: float = 1.0,
                  axes: int = 1) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """Statistic ``num_scale * Σ num / Σ den`` over the last ``axes`` axes (pooled sensitivity, DSCagg, ...).

    ``axes=2`` pools seeds and patients of (..., S, n) columns.
    """
    if axes not in (1, 2):
        raise ValueError(f"axes must be 1 or 2, got {axes}")
    over = (-1,) if axes == 1 else (-2, -1)

    def stat(cols: Mapping[str, np.ndarray]) -> np.ndarray:
        d = np.sum(cols[den], axis=over)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, num_scale * np.sum(cols[num], axis=over) / np.where(d > 0, d, 1), np.nan)

    return stat


def nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
