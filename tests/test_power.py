"""bench/power.py: simulated studies analysed with vadice's own bootstrap and verdict."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import power  # noqa: E402

# A small-node comparison: 30 patients, ~1 node under 0.5 ml each, baseline finds 40 % of them.
DESIGN = power.Design(patients=30, lesions=(1.0, 0.4, 1.0, 0.5, 0.8), target_bins=(0,), seeds=3, paired=True,
                      ties="neutral", n_boot=200)
NOISE = power.Noise(p_detect=(0.4, 0.6, 0.85, 0.95, 0.98), seed_sd=0.3, patient_sd=0.5, lesion_sd=1.0)


def test_no_effect_is_called_a_gain_at_most_at_the_nominal_rate():
    # 300 studies without an effect: a "consistent" gain needs the 95 % CI above 0 (2.5 % one-sided) and the
    # seeds to agree; allow Monte-Carlo slack of 3 standard errors (sqrt(0.025 * 0.975 / 300) = 0.009).
    result = power.power_curve(DESIGN, NOISE, [0.0], sims=300, seed=1)
    row = result["rows"][0]
    assert row["p_consistent_gain"] <= 0.025 + 3 * 0.009
    assert abs(row["mean_delta_hat"]) < 0.02


def test_a_huge_effect_is_almost_always_found():
    result = power.power_curve(DESIGN, NOISE, [0.5], sims=60, seed=2)
    assert result["rows"][0]["p_consistent_gain"] >= 0.95
    assert result["smallest_delta"] == 0.5


def test_paired_seeds_have_more_power_under_a_large_shared_seed_effect():
    # Seeds move every lesion's logit by N(0, 1.5²): paired twins share that shift and it cancels in their Δ;
    # unpaired seeds carry it into every seed's Δ, so the seeds disagree in sign far more often.
    noise = power.Noise(p_detect=NOISE.p_detect, seed_sd=1.5, patient_sd=0.5, lesion_sd=1.0)
    paired = power.power_curve(DESIGN, noise, [0.4], sims=80, seed=3)["rows"][0]["p_consistent_gain"]
    unpaired_design = power.Design(**{**power.asdict(DESIGN), "paired": False})  # same tie rule: pairing only
    unpaired = power.power_curve(unpaired_design, noise, [0.4], sims=80, seed=3)["rows"][0]["p_consistent_gain"]
    assert paired >= unpaired + 0.2, (paired, unpaired)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "power.json"
    assert power.main(["--sims", "5", "--n-boot", "50", "--deltas", "0,0.4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "smallest Δ called consistent" in text
    result = json.loads(out.read_text())
    assert [r["delta"] for r in result["rows"]] == [0.0, 0.4] and result["sims"] == 5
    # Same seed, same table.
    assert power.power_curve(DESIGN, NOISE, [0.2], sims=5, seed=7) == power.power_curve(DESIGN, NOISE, [0.2],
                                                                                          sims=5, seed=7)
