"""Power before a study: how large a gain in lesion sensitivity would vadice's own analysis call "consistent"?

Simulates studies of a design (patients, lesions per patient per size bin,
training seeds per set-up, paired or unpaired seeds, the verdict's tie rule,
bootstrap resamples) under the noise measured in an earlier run, analyses each
simulated study exactly as ``vadice compare`` does a real one
(``vadice.stats.two_level_bootstrap_ci`` with the design's pairing on the
pooled sensitivity of the target size bins, ``vadice.stats.seed_verdict`` with
the design's tie rule) and prints, for each true Δ of a grid, the probability
that the verdict is "consistent" with a gain (Δ̂ > 0), and the smallest Δ of the
grid reaching the target power (default 80 %).

The model (per lesion, logit scale):

  logit P(detected) = logit(p_bin + Δ [set-up b, target bins only])
                      + u_patient + v_seed,arm + w_lesion

  u_patient ~ N(0, patient_sd²): shared by both set-ups and all seeds (an easy or hard patient);
  w_lesion  ~ N(0, lesion_sd²):  shared likewise (a conspicuous or a subtle node);
  v         ~ N(0, seed_sd²):    one per training seed; with paired seeds (a shared warm start) seed k of
                                 both set-ups gets the same v, unpaired each set-up's seed its own.

Δ is in probability units added to the baseline's per-lesion detection
probability of the target bins (clipped below 1) before the random effects.
Lesion counts per patient and bin are Poisson with the given means.

  python bench/power.py --patients 40 --seeds 3 --target-bins 0 --json power.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit, logit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vadice.metrics.lesionwise import DEFAULT_SIZE_BINS_ML, bin_names  # noqa: E402
from vadice.stats import TIE_RULES, ratio_of_sums, seed_verdict, two_level_bootstrap_ci  # noqa: E402

# HNTS-MRG-like defaults (per patient: one primary, ~2 nodes, a third of them under 0.5 ml).
DEFAULT_LESIONS = (0.6, 0.4, 1.0, 0.5, 0.8)
DEFAULT_P_DETECT = (0.35, 0.6, 0.85, 0.95, 0.98)


@dataclass(frozen=True)
class Design:
    """A study design.

    Attributes:
      patients: test patients.
      lesions: mean truth lesions per patient in each size bin (Poisson).
      target_bins: indices of the size bins whose pooled sensitivity is compared (and where Δ acts).
      seeds: training seeds per set-up.
      paired: seed k of both set-ups shares a warm start (resampled jointly; shares its random effect).
      ties: ``seed_verdict``'s tie rule.
      n_boot: bootstrap resamples per analysis.
      confidence: CI level.
    """

    patients: int = 40
    lesions: tuple[float, ...] = DEFAULT_LESIONS
    target_bins: tuple[int, ...] = (0,)
    seeds: int = 3
    paired: bool = True
    ties: str = "neutral"
    n_boot: int = 500
    confidence: float = 0.95


@dataclass(frozen=True)
class Noise:
    """Noise measured in an earlier run (logit-scale standard deviations; see the module docstring).

    Attributes:
      p_detect: the baseline's per-lesion detection probability in each size bin.
      seed_sd, patient_sd, lesion_sd: spread of the seed, patient and lesion random effects.
    """

    p_detect: tuple[float, ...] = DEFAULT_P_DETECT
    seed_sd: float = 0.3
    patient_sd: float = 0.5
    lesion_sd: float = 1.0


def check(design: Design, noise: Noise) -> None:
    """Raise ValueError naming the first bad field of a design or noise model."""
    n_bins = len(DEFAULT_SIZE_BINS_ML) + 1
    if design.patients < 2 or design.seeds < 1 or design.n_boot < 1:
        raise ValueError("need >= 2 patients, >= 1 seed and n_boot >= 1")
    if len(design.lesions) != n_bins or len(noise.p_detect) != n_bins:
        raise ValueError(f"lesions and p_detect need one value per size bin ({n_bins}: {', '.join(bin_names())})")
    if min(design.lesions) < 0 or not design.target_bins or not set(design.target_bins) <= set(range(n_bins)):
        raise ValueError(f"lesion means must be >= 0 and target bins indices in 0..{n_bins - 1}")
    if sum(design.lesions[k] for k in design.target_bins) <= 0:
        raise ValueError("the target bins hold no lesions")
    if not all(0 < p < 1 for p in noise.p_detect) or min(noise.seed_sd, noise.patient_sd, noise.lesion_sd) < 0:
        raise ValueError("p_detect must lie in (0, 1) and the spreads be >= 0")
    if design.ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}")


def simulate_study(design: Design, noise: Noise, delta: float, rng: np.random.Generator) -> dict:
    """One simulated study's per-seed, per-patient counts of the target bins.

    Returns:
      ``{"a": {"tp": (S, n), "n": (S, n)}, "b": {...}}`` for :func:`vadice.stats.two_level_bootstrap_ci`.
    """
    n, s = design.patients, design.seeds
    target = np.asarray(design.target_bins)
    means = np.asarray(design.lesions, np.float64)[target]
    counts = rng.poisson(means, size=(n, target.size))  # lesions per patient and target bin
    patient = np.repeat(np.tile(np.arange(n)[:, None], (1, target.size)).ravel(), counts.ravel())
    which = np.repeat(np.tile(np.arange(target.size), n), counts.ravel())
    p0 = np.asarray(noise.p_detect, np.float64)[target][which]
    base = rng.normal(0, noise.patient_sd, n)[patient] + rng.normal(0, noise.lesion_sd, patient.size)
    v_a = rng.normal(0, noise.seed_sd, (s, 1))
    v_b = v_a if design.paired else rng.normal(0, noise.seed_sd, (s, 1))
    out = {}
    for arm, p, v in (("a", p0, v_a), ("b", np.minimum(p0 + delta, 1 - 1e-6), v_b)):
        hit = rng.random((s, patient.size)) < expit(logit(p) + base + v)
        tp = np.stack([np.bincount(patient, weights=h, minlength=n) for h in hit])
        out[arm] = {"tp": tp, "n": np.tile(np.bincount(patient, minlength=n).astype(np.float64), (s, 1))}
    return out


def analyse(study: dict, design: Design, seed: int) -> tuple[float, float, str]:
    """Δ̂ of the pooled target sensitivity, its CI's lower bound and the verdict, as ``vadice compare`` gives them."""
    stat = ratio_of_sums("tp", "n", axes=2)
    a, b = study["a"], study["b"]
    ci = two_level_bootstrap_ci(a, b, stat, n_boot=design.n_boot, seed=seed, confidence=design.confidence,
                                paired=design.paired)
    with np.errstate(invalid="ignore", divide="ignore"):
        seed_diffs = [float(stat({k: v[i:i + 1] for k, v in b.items()}) - stat({k: v[i:i + 1] for k, v in a.items()}))
                      for i in range(design.seeds)]
    return ci.diff, ci.low, seed_verdict(ci.diff, ci.low, ci.high, seed_diffs, ties=design.ties)[1]


def power_curve(design: Design, noise: Noise, deltas, sims: int = 200, seed: int = 0,
                target_power: float = 0.8) -> dict:
    """Probability of a "consistent" gain for each true Δ, and the smallest Δ of the grid reaching ``target_power``.

    Deterministic given ``seed``: study k of every Δ uses the same generator stream.

    Returns:
      ``{"design", "noise", "sims", "rows": [{"delta", "p_consistent_gain", "p_consistent_loss", "p_ci_above_0",
      "mean_delta_hat"}], "smallest_delta", "target_power"}``: ``p_ci_above_0`` is the CI's share alone (what
      the seeds' agreement then removes); ``smallest_delta`` is None when no Δ reaches the target.

    Raises:
      ValueError: bad design, noise, Δ grid or sims.
    """
    check(design, noise)
    deltas = [float(d) for d in deltas]
    if sims < 1 or not deltas or any(not 0 <= d < 1 for d in deltas):
        raise ValueError("need sims >= 1 and Δ values in [0, 1)")
    rows = []
    for delta in deltas:
        gain = loss = ci_gain = 0
        hats = []
        for k in range(sims):
            rng = np.random.default_rng([seed, k])
            diff, low, verdict = analyse(simulate_study(design, noise, delta, rng), design, seed=k)
            gain += verdict == "consistent" and diff > 0
            loss += verdict == "consistent" and diff < 0
            ci_gain += low > 0
            hats.append(diff)
        rows.append({"delta": delta, "p_consistent_gain": gain / sims, "p_consistent_loss": loss / sims,
                     "p_ci_above_0": ci_gain / sims, "mean_delta_hat": float(np.nanmean(hats))})
    reached = [r["delta"] for r in rows if r["p_consistent_gain"] >= target_power]
    return {"design": asdict(design), "noise": asdict(noise), "sims": sims, "rows": rows,
            "target_power": target_power, "smallest_delta": min(reached) if reached else None}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--patients", type=int, default=Design.patients)
    p.add_argument("--lesions", default=",".join(map(str, DEFAULT_LESIONS)),
                   help=f"mean truth lesions per patient per size bin ({', '.join(bin_names())})")
    p.add_argument("--target-bins", default="0", help="size-bin indices compared (Δ acts there)")
    p.add_argument("--seeds", type=int, default=Design.seeds)
    p.add_argument("--unpaired", action="store_true", help="seeds are trainings of their own (no shared warm start)")
    p.add_argument("--ties", default=Design.ties, choices=TIE_RULES)
    p.add_argument("--n-boot", type=int, default=Design.n_boot)
    p.add_argument("--p-detect", default=",".join(map(str, DEFAULT_P_DETECT)),
                   help="baseline per-lesion detection probability per size bin")
    p.add_argument("--seed-sd", type=float, default=Noise.seed_sd, help="logit SD of a seed's effect")
    p.add_argument("--patient-sd", type=float, default=Noise.patient_sd, help="logit SD of a patient's effect")
    p.add_argument("--lesion-sd", type=float, default=Noise.lesion_sd, help="logit SD of a lesion's effect")
    p.add_argument("--deltas", default="0,0.05,0.1,0.15,0.2,0.25,0.3", help="true Δ grid (probability units)")
    p.add_argument("--sims", type=int, default=200)
    p.add_argument("--power", type=float, default=0.8, help="target probability of a consistent gain")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same table)")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    args = p.parse_args(argv)
    design = Design(args.patients, _floats(args.lesions), tuple(int(v) for v in _floats(args.target_bins)),
                    args.seeds, not args.unpaired, args.ties, args.n_boot)
    noise = Noise(_floats(args.p_detect), args.seed_sd, args.patient_sd, args.lesion_sd)
    try:
        result = power_curve(design, noise, _floats(args.deltas), args.sims, args.seed, args.power)
    except ValueError as exc:
        p.error(str(exc))
    names = bin_names()
    print(f"{design.patients} patients, {design.seeds} {'paired' if design.paired else 'unpaired'} seeds, "
          f"ties={design.ties}, n_boot={design.n_boot}, {args.sims} simulated studies per Δ; target: "
          + ", ".join(names[k] for k in design.target_bins))
    print(f"{'Δ':>6} {'P(consistent gain)':>19} {'P(consistent loss)':>19} {'P(CI > 0)':>10} {'mean Δ̂':>8}")
    for r in result["rows"]:
        print(f"{r['delta']:>6.3f} {r['p_consistent_gain']:>19.3f} {r['p_consistent_loss']:>19.3f} "
              f"{r['p_ci_above_0']:>10.3f} {r['mean_delta_hat']:>8.3f}")
    smallest = result["smallest_delta"]
    print(f"smallest Δ called consistent with >= {args.power:.0%} probability: "
          + (f"{smallest:g}" if smallest is not None else "none on this grid"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
