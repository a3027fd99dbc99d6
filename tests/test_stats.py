"""Paired statistics against hand-worked and enumerated answers; bootstrap coverage on simulated data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from vadice.stats import (
    holm,
    paired_bootstrap_ci,
    rank_biserial,
    ratio_of_sums,
    seed_verdict,
    two_level_bootstrap_ci,
    wilcoxon_paired,
)


def _ranks(values):
    """Average ranks (1-based) of ties, by hand: no scipy."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _exact_p(d, zero_method):
    """Two-sided exact signed-rank p by enumerating every sign assignment of the non-zero differences."""
    d = [x for x in d if x != 0] if zero_method == "wilcox" else list(d)
    ranks = _ranks([abs(x) for x in d])
    nz = [(r, x > 0) for r, x in zip(ranks, d) if x != 0]
    t_obs = sum(r for r, pos in nz if pos)
    sums = [sum(r for (r, _), s in zip(nz, signs) if s) for signs in itertools.product((0, 1), repeat=len(nz))]
    le = sum(s <= t_obs + 1e-12 for s in sums) / len(sums)
    ge = sum(s >= t_obs - 1e-12 for s in sums) / len(sums)
    return min(1.0, 2 * min(le, ge))


def test_wilcoxon_by_hand():
    # All five differences positive: only 1 of 32 sign patterns is as extreme on each side -> p = 2/32.
    assert wilcoxon_paired([0] * 5, [1, 2, 3, 4, 5]).p == pytest.approx(0.0625, abs=1e-12)
    # One negative of rank 2: T- = 2; sign patterns with T- <= 2: {}, {1}, {2} -> 3/32 each side.
    assert wilcoxon_paired([0] * 5, [1, -2, 3, 4, 5]).p == pytest.approx(6 / 32, abs=1e-12)


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
@pytest.mark.parametrize("d", [[0.3, -0.1, 0.5, 0.7, 0.2, 0.9, -0.4],
                               [0.0, 1.0, -2.0, 3.0, 4.0, 5.0, 0.0, 6.0],
                               [-0.5, -0.25, 0.125, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 7.0]])
def test_wilcoxon_matches_enumeration(d, zero_method):
    a = np.zeros(len(d) + 1)
    b = np.array(list(d) + [np.nan])  # the NaN pair is dropped
    t = wilcoxon_paired(a, b, zero_method=zero_method)
    assert t.p == pytest.approx(_exact_p(d, zero_method), abs=1e-12)
    assert (t.n_pairs, t.n_nonzero) == (len(d), sum(x != 0 for x in d))
    assert t.median_diff == pytest.approx(sorted(d)[len(d) // 2] if len(d) % 2 else
                                          (sorted(d)[len(d) // 2 - 1] + sorted(d)[len(d) // 2]) / 2)


def test_rank_biserial_zero_handling_by_hand():
    d = [0.0, 0.0, 1.0, -2.0, 3.0]
    # wilcox: ranks of 1, 2, 3 -> 1, 2, 3: (4 - 2) / 6.
    assert rank_biserial(d, "wilcox") == pytest.approx(2 / 6)
    # pratt: ranks over all |d| (zeros 1.5, 1.5; then 3, 4, 5), zeros dropped: (3 + 5 - 4) / 12.
    assert rank_biserial(d, "pratt") == pytest.approx(4 / 12)
    # zsplit: zeros' ranks split between the signs, so they stay in the denominator: (8 - 4) / 15.
    assert rank_biserial(d, "zsplit") == pytest.approx(4 / 15)
    for zm in ("wilcox", "pratt", "zsplit"):
        assert wilcoxon_paired([0] * 5, d, zero_method=zm).effect_size == pytest.approx(rank_biserial(d, zm))
    assert rank_biserial([0.0, 0.0], "pratt") == 0.0 and math.isnan(rank_biserial([], "wilcox"))


def test_wilcoxon_degenerate():
    assert wilcoxon_paired([1, 2, 3], [1, 2, 3]).p == 1.0
    assert np.isnan(wilcoxon_paired([np.nan], [1]).p)
    t = wilcoxon_paired([0, 0, 0, 0], [1, 2, 3, 4])
    assert t.effect_size == 1.0
    with pytest.raises(ValueError, match="zero_method"):
        wilcoxon_paired([1], [2], zero_method="none")
    with pytest.raises(ValueError, match="length"):
        wilcoxon_paired([1, 2], [2])


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone max: 0.06
    expected = [0.03, 0.06, 0.06, 0.02, np.nan]
    np.testing.assert_allclose(holm(p), expected, rtol=1e-12)
    assert holm([]).size == 0


def test_bootstrap_covers_true_difference_and_is_deterministic():
    rng = np.random.default_rng(11)
    n = 200
    # Per-patient intersections/volumes; run b adds a constant true DSCagg shift.
    gt = rng.uniform(5, 30, n)
    pred_a = gt * rng.uniform(0.8, 1.2, n)
    inter_a = np.minimum(gt, pred_a) * 0.80
    inter_b = np.minimum(gt, pred_a) * 0.85
    a = {"i": inter_a, "d": gt + pred_a}
    b = {"i": inter_b, "d": gt + pred_a}
    stat = ratio_of_sums("i", "d", 2.0)
    true_diff = 2 * (inter_b.sum() - inter_a.sum()) / (gt + pred_a).sum()
    ci = paired_bootstrap_ci(a, b, stat, n_boot=1000, seed=5)
    assert ci.diff == pytest.approx(true_diff, rel=1e-12)
    assert ci.low <= true_diff <= ci.high and ci.low > 0
    again = paired_bootstrap_ci(a, b, stat, n_boot=1000, seed=5)
    assert (again.low, again.high) == (ci.low, ci.high)
    other = paired_bootstrap_ci(a, b, stat, n_boot=1000, seed=6)
    assert (other.low, other.high) != (ci.low, ci.high)


def test_bootstrap_coverage_of_a_paired_difference():
    # 400 simulated paired data sets with a known population difference 0.05; patient effects (SD 0.1)
    # are shared by both runs, so an interval that ignored the pairing would be far too wide and cover
    # ~100 %; a 90 % interval mislabelled as 95 % would cover ~90 %.
    covered = 0
    n_sets = 400
    for s in range(n_sets):
        rng = np.random.default_rng(1000 + s)
        x = rng.normal(0.7, 0.1, 40)
        y = x + rng.normal(0.05, 0.03, 40)
        ci = two_level_bootstrap_ci({"v": x[None]}, {"v": y[None]}, lambda c: np.mean(c["v"], axis=(-2, -1)),
                                    n_boot=400, seed=s)
        covered += ci.low <= 0.05 <= ci.high
    assert 0.915 <= covered / n_sets <= 0.98


def test_two_level_bootstrap_widens_with_seed_noise():
    # Same patients; in "noisy" each seed shifts every patient by its own offset (training noise).
    rng = np.random.default_rng(4)
    base = rng.normal(0.7, 0.1, (1, 50)).repeat(3, axis=0)
    quiet = base + 0.02
    noisy = base + 0.02 + np.array([[-0.08], [0.0], [0.08]])
    stat = lambda c: np.mean(c["v"], axis=(-2, -1))  # noqa: E731
    ci_quiet = two_level_bootstrap_ci({"v": base}, {"v": quiet}, stat, n_boot=500, seed=1)
    ci_noisy = two_level_bootstrap_ci({"v": base}, {"v": noisy}, stat, n_boot=500, seed=1)
    assert ci_quiet.diff == pytest.approx(0.02) and ci_noisy.diff == pytest.approx(0.02)
    assert ci_quiet.high - ci_quiet.low < 1e-9  # constant shift, identical seeds: no uncertainty
    assert ci_noisy.low < 0 < ci_noisy.high  # resampling seeds exposes the training noise
    with pytest.raises(ValueError, match="same, non-zero number of patients"):
        two_level_bootstrap_ci({"v": base}, {"v": base[:, :3]}, stat)


def test_seed_verdict_can_go_either_way():
    assert seed_verdict(0.03, 0.01, 0.05, [0.02, 0.04, 0.03]) == (3, "consistent")
    # The pooled Δ is the mean of the seeds' Δs and lies inside their range, yet one seed has the other sign.
    assert seed_verdict(0.03, 0.01, 0.05, [0.08, 0.04, -0.03]) == (2, "seeds disagree")
    assert seed_verdict(-0.03, -0.05, -0.01, [-0.02, 0.0]) == (1, "seeds disagree")  # 0 does not agree
    assert seed_verdict(0.03, -0.01, 0.05, [0.02, 0.04]) == (2, "CI includes 0")
    assert seed_verdict(0.03, 0.01, 0.05, [0.03]) == (1, "one seed")
    assert seed_verdict(float("nan"), 0.0, 1.0, [0.1])[1] == "undefined"
    assert seed_verdict(0.03, 0.01, 0.05, []) == (0, "seeds unpaired")
    assert seed_verdict(0.03, -0.01, 0.05, []) == (0, "CI includes 0")


def test_bootstrap_checks():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci({"v": [1, 2]}, {"v": [1]}, lambda c: c["v"].mean(-1))
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci({"v": [1]}, {"v": [1]}, lambda c: c["v"].mean(-1), confidence=1.5)


def test_paired_seeds_cancel_the_shared_seed_shift():
    # Seed k of both runs shares a warm start: a large per-seed shift common to both twins, and b = a + 0.1.
    # Resampled jointly, the twins' shift cancels exactly; resampled apart, it swamps the 0.1.
    rng = np.random.default_rng(3)
    shift = np.array([[0.0], [0.6], [-0.5]])
    a = shift + rng.normal(0, 0.01, size=(3, 12))
    b = a + 0.1
    stat = lambda c: np.mean(c["v"], axis=(-2, -1))  # noqa: E731
    paired = two_level_bootstrap_ci({"v": a}, {"v": b}, stat, n_boot=400, seed=0, paired=True)
    apart = two_level_bootstrap_ci({"v": a}, {"v": b}, stat, n_boot=400, seed=0, paired=False)
    assert paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    assert apart.low < 0 < apart.high
    with pytest.raises(ValueError, match="same number of seeds"):
        two_level_bootstrap_ci({"v": a}, {"v": b[:2]}, stat, paired=True)


def test_unpaired_draw_is_unchanged_by_the_pairing_option():
    rng = np.random.default_rng(5)
    a, b = rng.random((3, 8)), rng.random((2, 8))
    stat = lambda c: np.mean(c["v"], axis=(-2, -1))  # noqa: E731
    old = two_level_bootstrap_ci({"v": a}, {"v": b}, stat, n_boot=300, seed=7)
    # by hand: the draw as it was before pairing existed (patients, seeds of a, seeds of b from one stream)
    g = np.random.default_rng(7)
    p = g.integers(0, 8, size=(300, 1, 8))
    sa, sb = g.integers(0, 3, size=(300, 3, 1)), g.integers(0, 2, size=(300, 2, 1))
    boot = np.mean(b[sb, p], axis=(-2, -1)) - np.mean(a[sa, p], axis=(-2, -1))
    assert (old.low, old.high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-12)


def test_tied_seeds_count_neither_way_under_the_neutral_rule():
    # 2 seeds up, 1 seed tied: against under the old rule, consistent under the neutral one
    assert seed_verdict(0.1, 0.02, 0.2, [0.1, 0.2, 0.0]) == (2, "seeds disagree")
    assert seed_verdict(0.1, 0.02, 0.2, [0.1, 0.2, 0.0], ties="neutral") == (2, "consistent")
    # a seed of the other sign is against under both rules
    assert seed_verdict(0.1, 0.02, 0.2, [0.1, 0.2, -0.01], ties="neutral") == (2, "seeds disagree")
    # one seed up, two tied: not more than half agree
    assert seed_verdict(0.1, 0.02, 0.2, [0.3, 0.0, 0.0], ties="neutral") == (1, "seeds tied")
    # four seeds, two up, two tied: exactly half is not enough
    assert seed_verdict(0.1, 0.02, 0.2, [0.1, 0.1, 0.0, 0.0], ties="neutral") == (2, "seeds tied")
    assert seed_verdict(0.1, -0.02, 0.2, [0.1, 0.2, 0.0], ties="neutral") == (2, "CI includes 0")
    with pytest.raises(ValueError, match="ties"):
        seed_verdict(0.1, 0.02, 0.2, [0.1], ties="maybe")
