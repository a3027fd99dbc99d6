"""Paired comparison of evaluation folders (``vadice evaluate`` outputs) on the same patients.

Computation only: :mod:`vadice.report.comparison` writes the result
(``comparison.md/.csv/.json``) and picks its headline rows.

A *run* is one configuration: one evaluation folder, or several (one per
training seed). Every number is compared against the first run.

Per-case metrics (DSC, SDS, MSD, HD95): a value is *undefined* (NaN) when the
metric is (e.g. DSC with both masks empty, HD95 with one side empty). The
values shown, Δ, its CI and the Wilcoxon test all use the same cases: those
where the metric is defined for every run and every seed (``n_pairs``), so
value(run) − value(first) = Δ exactly. The undefined values of each run are
counted (``n_undefined``) and a metric whose counts differ between runs is
flagged (``undefined_differ``): a run that predicts nothing on hard cases
loses those cases from HD95/MSD and can look better for it.

Cohort metrics pool every case *and* seed of a run (one definition, used
everywhere, including the report): DSCagg = 2·Σ|A∩B| / Σ(|A|+|B|) (per label;
``dscagg_mean`` is their mean), lesion sensitivity = Σ detected / Σ truth
lesions, overall and per truth-volume bin (the evaluation's ``size_bins_ml``),
lesion precision = Σ matched / Σ predicted components.

Differences: Δ, a two-level bootstrap CI (patients, then seeds; see
:func:`vadice.stats.two_level_bootstrap_ci`), the Δ of each seed pair (seed k
of a run against seed k of the first run), how many of them have the sign of
the pooled Δ, and the verdict of :func:`vadice.stats.seed_verdict`:
"consistent" only when the CI excludes 0 and the seeds agree in sign.

Seeds are *paired* (see :func:`seed_pairing`) when seed k of every run is the
twin of seed k of the first: they continued from one warm start (``vadice
experiment`` gives every set-up of seed k the same one), or the caller says
so. Paired: the bootstrap draws one set of seed indices for both runs and a
seed whose Δ is exactly 0 counts neither way (``ties="neutral"``). Unpaired:
seeds are drawn per run and a Δ of 0 counts against (``ties="against"``).
Per-case metrics also get a two-sided Wilcoxon signed-rank p on the per-case
values averaged over seeds (patients are the independent units), Holm-adjusted
over every test of the table. ``pair_key=("case", "seed")`` instead pairs
(case, seed) units for the Wilcoxon test only: pseudo-replication (n = cases ×
seeds, seeds paired by position), kept for comparison with older results and
marked as such in every output.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vadice.io import InputError
from vadice.metrics.lesionwise import DEFAULT_SIZE_BINS_ML, bin_names, check_bins, pooled_rate, size_bin_index
from vadice.metrics.overlap import pooled_dscagg
from vadice.stats import VERDICTS, holm, seed_verdict, two_level_bootstrap_ci, wilcoxon_paired

PER_CASE_METRICS = ("dsc", "sds", "msd", "hd95")
COMPARED_SETTINGS = ("labels", "tolerances_mm", "connectivity", "match", "hd_mode", "hd_percentile",
                     "size_bins_ml", "empty_distance_penalty")
OUTPUT_FILES = ("comparison.md", "comparison.csv", "comparison.json")
TOOL_TAG = "vadice compare"
COUNT_COLUMNS = ("gt_volume_ml", "pred_volume_ml", "intersection_ml", "n_gt_lesions", "n_gt_detected",
                 "n_pred_lesions", "n_pred_matched")
_NUMERIC = PER_CASE_METRICS + COUNT_COLUMNS
# A set-up that predicts nothing for a label on more than this share of (case, seed) pairs is flagged.
EMPTY_PREDICTION_SHARE = 0.5
# A run name ending so is a post-processed copy of the run named before it ("dual+pp" of "dual").
PP_SUFFIX = "+pp"
PSEUDO_REPLICATION = ("pair_key ('case', 'seed'): Wilcoxon pairs (case, seed) units, n = cases × seeds with "
                      "seeds paired by position; the seeds of one patient are not independent, so p is too "
                      "small (pseudo-replication). Use the default pairing by case for inference.")


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def _read_csv(path: Path, need: set[str]) -> tuple[list[str], list[dict]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            raw = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise InputError(path, "missing; not a 'vadice evaluate' folder") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"unreadable CSV ({exc})") from None
    if not need <= set(header):
        raise InputError(path, f"missing column(s) {', '.join(sorted(need - set(header)))}")
    return header, raw


def load_evaluation(folder: str | os.PathLike) -> tuple[dict, list[dict], list[dict]]:
    """Read ``summary.json``, ``cases.csv`` and ``lesions.csv`` of an evaluation folder.

    The one reader of evaluation folders (compare and report use it).

    Returns:
      ``(summary, case_rows, lesion_rows)``; numeric columns (``sds_<τ>mm``
      included) as floats, empty fields as NaN; lesion rows with
      ``volume_ml`` float and ``detected`` bool.

    Raises:
      InputError: missing or malformed files (naming the file and line).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not an evaluation folder (directory not found)")
    spath, cpath, lpath = folder / "summary.json", folder / "cases.csv", folder / "lesions.csv"
    try:
        summary = json.loads(spath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(spath, "missing; not a 'vadice evaluate' folder") from None
    except (OSError, ValueError) as exc:
        raise InputError(spath, f"unreadable JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("settings"), dict):
        raise InputError(spath, "no 'settings' entry; not a 'vadice evaluate' summary")
    header, raw = _read_csv(cpath, {"case", "label", *_NUMERIC})
    numeric = [c for c in header if c in _NUMERIC or (c.startswith("sds_") and c.endswith("mm"))]
    rows = []
    for i, r in enumerate(raw, start=2):
        try:
            rows.append({**r, **{c: _float(r[c]) for c in numeric}})
        except ValueError:
            bad = next(c for c in numeric if not _is_float(r[c]))
            raise InputError(cpath, f"line {i}: column {bad!r} is not a number: {r[bad]!r}") from None
    _, raw = _read_csv(lpath, {"case", "label", "source", "volume_ml", "detected"})
    lesions = []
    for i, r in enumerate(raw, start=2):
        if not _is_float(r["volume_ml"]) or r["detected"] not in ("0", "1"):
            raise InputError(lpath, f"line {i}: volume_ml must be a number and detected 0 or 1")
        lesions.append({**r, "volume_ml": float(r["volume_ml"]), "detected": r["detected"] == "1"})
    return summary, rows, lesions


def _is_float(text: str) -> bool:
    try:
        _float(text)
        return True
    except (TypeError, ValueError):
        return False


def _settings(summary: dict) -> dict:
    s = summary.get("settings", {})
    return {k: s.get(k) for k in COMPARED_SETTINGS}


def _columns(runs: list, labels: Sequence[str], cases: Sequence[str], metrics: Sequence[str],
             bins: Sequence[float]) -> dict[str, np.ndarray]:
    """(seeds, cases) arrays ``"<label>:<column>"`` of one run; a missing row reads as NaN."""
    pos = {c: j for j, c in enumerate(cases)}
    n_bins = len(bins) + 1
    keys = [f"{lab}:{c}" for lab in labels for c in (*metrics, *COUNT_COLUMNS)]
    keys += [f"{lab}:bin{k}:{c}" for lab in labels for k in range(n_bins) for c in ("n_gt", "n_det")]
    out = {k: np.full((len(runs), len(cases)), np.nan) for k in keys}
    for s, (_, rows, lesions) in enumerate(runs):
        for k in keys:
            if ":bin" in k:
                out[k][s] = 0.0
        for r in rows:
            if r["label"] in labels and r["case"] in pos:
                for c in (*metrics, *COUNT_COLUMNS):
                    out[f"{r['label']}:{c}"][s, pos[r["case"]]] = r[c]
        truth = [r for r in lesions if r["source"] == "gt" and r["label"] in labels and r["case"] in pos]
        which = size_bin_index([r["volume_ml"] for r in truth], bins)
        for r, k in zip(truth, which):
            out[f"{r['label']}:bin{k}:n_gt"][s, pos[r["case"]]] += 1
            out[f"{r['label']}:bin{k}:n_det"][s, pos[r["case"]]] += r["detected"]
    return out


def _mean_stat(key: str):
    return lambda c: np.mean(c[key], axis=(-2, -1))


def _dscagg_stat(lab: str):
    # overlap.pooled_dscagg is the one DSCagg definition; here it pools cases and seeds.
    return lambda c: pooled_dscagg(c[f"{lab}:intersection_ml"], c[f"{lab}:gt_volume_ml"],
                                   c[f"{lab}:pred_volume_ml"], axis=(-2, -1))


def _rate_stat(num: str, den: str):
    # lesionwise.pooled_rate is the one pooled sensitivity/precision; here it pools cases and seeds.
    return lambda c: pooled_rate(c[num], c[den], axis=(-2, -1))


def _volume_keys(lab: str) -> list[str]:
    return [f"{lab}:intersection_ml", f"{lab}:gt_volume_ml", f"{lab}:pred_volume_ml"]


def cohort_statistics(labels: Sequence[str], bins: Sequence[float]) -> dict[tuple[str, str], tuple]:
    """``{(label, metric): (statistic, column keys, numerator key, denominator key)}`` of every cohort metric.

    Statistics map (..., seeds, cases) columns (see :func:`compare_runs`) to
    values; the column keys are the columns a statistic reads; numerator and
    denominator name the counts shown beside ratio metrics (None for DSCagg).
    """
    out = {}
    for lab in labels:
        out[(lab, "dscagg")] = (_dscagg_stat(lab), _volume_keys(lab), None, None)
        for metric, num, den in (("lesion_sensitivity", "n_gt_detected", "n_gt_lesions"),
                                 ("lesion_precision", "n_pred_matched", "n_pred_lesions")):
            num, den = f"{lab}:{num}", f"{lab}:{den}"
            out[(lab, metric)] = (_rate_stat(num, den), [num, den], num, den)
        for k, name in enumerate(bin_names(bins)):
            num, den = f"{lab}:bin{k}:n_det", f"{lab}:bin{k}:n_gt"
            out[(lab, f"lesion_sensitivity {name}")] = (_rate_stat(num, den), [num, den], num, den)
    parts = [_dscagg_stat(lab) for lab in labels]
    out[("mean", "dscagg_mean")] = (lambda c: np.mean([p(c) for p in parts], axis=0),
                                    [k for lab in labels for k in _volume_keys(lab)], None, None)
    return out


def seed_pairing(n_seeds: Sequence[int], warm_starts: Sequence[Sequence[str | None]] | None = None,
                 paired: bool | None = None) -> tuple[bool, str]:
    """Whether seed k of every run is the twin of seed k of the first run, and why (one line).

    Args:
      n_seeds: seeds per run.
      warm_starts: per run, per seed, the warm start that seed's model continued from (e.g. its
        checkpoint's SHA-256; None where not recorded), or None when nothing is known.
      paired: True or False decides (the user's word); None decides from ``warm_starts``: paired when
        every run has the same seeds and, for every k, seed k of every run has one recorded warm start.

    Returns:
      ``(paired, reason)``.

    Raises:
      ValueError: ``paired=True`` with runs of different numbers of seeds (nothing to pair), or
        ``warm_starts`` not shaped like ``n_seeds``.
    """
    same = len(set(n_seeds)) == 1
    if warm_starts is not None and [len(w) for w in warm_starts] != list(n_seeds):
        raise ValueError(f"warm_starts must list one entry per seed of every run ({list(n_seeds)} seeds)")
    if paired is True:
        if not same:
            raise ValueError(f"seeds cannot be paired: the runs have different numbers of seeds ({list(n_seeds)})")
        return True, "paired seeds: seed k of every run is the twin of seed k of the first (as requested)"
    if paired is False:
        return False, "unpaired seeds (as requested): each seed a training of its own, drawn per run"
    if not same:
        return False, "unpaired seeds: the runs have different numbers of seeds"
    if warm_starts is None or any(w is None for run in warm_starts for w in run):
        return False, "unpaired seeds: no shared warm start recorded for every seed"
    differ = [k for k in range(n_seeds[0]) if len({run[k] for run in warm_starts}) != 1]
    if differ:
        return False, f"unpaired seeds: the warm starts of seed position(s) {differ} differ between runs"
    return True, ("paired seeds: seed k of every run continued from the same warm start (recorded per seed), "
                  "so seed k of each run are twins")


def compare_runs(
    run_dirs: Sequence[str | os.PathLike | Sequence[str | os.PathLike]],
    names: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    zero_method: str = "wilcox",
    confidence: float = 0.95,
    pair_key: Sequence[str] = ("case",),
    paired: bool | None = None,
    warm_starts: Sequence[Sequence[str | None]] | None = None,
) -> dict:
    """Compare evaluation folders of the same cases against the first run.

    Args:
      run_dirs: one entry per run: an evaluation folder, or a list of folders
        (one per seed) of the same configuration.
      names: display names (default: folder names).
      n_boot, seed, confidence: the two-level bootstrap of every Δ.
      zero_method: Wilcoxon treatment of zero differences.
      pair_key: ``("case",)`` or ``("case", "seed")`` (pseudo-replication; see
        the module docstring).
      paired, warm_starts: whether seed k of every run is the twin of seed k
        of the first (see :func:`seed_pairing`): paired seeds are resampled
        jointly and a seed with Δ = 0 counts neither way; unpaired (the
        default when nothing is recorded) as before.

    Returns:
      dict with keys ``runs``, ``run_dirs``, ``settings``, ``n_cases``,
      ``n_seeds``, ``cases``, ``inputs`` (per run: missing/resampled
      predictions, excluded counts, DSCagg notes), ``warnings``, ``verdicts``
      and ``rows`` (see docs/evaluation.md); NaN as float NaN.

    Raises:
      InputError: unreadable folders, different case sets or settings
        (naming the run and the difference).
      ValueError: bad names or options, or paired seeds asked for runs with
        different numbers of seeds.
    """
    if len(run_dirs) < 2:
        raise ValueError("compare needs at least two runs")
    groups = [[Path(p)] if isinstance(p, (str, os.PathLike)) else [Path(x) for x in p] for p in run_dirs]
    if any(not g for g in groups):
        raise ValueError("every run needs at least one evaluation folder")
    names = list(names) if names is not None else [g[0].name for g in groups]
    if len(names) != len(groups):
        raise ValueError(f"{len(names)} names for {len(groups)} runs")
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ValueError(f"run names must be unique and non-empty, got {names}")
    pair_key = tuple(pair_key)
    if pair_key not in (("case",), ("case", "seed")):
        raise ValueError(f"pair_key must be ('case',) or ('case', 'seed'), got {pair_key}")
    if pair_key == ("case", "seed") and len({len(g) for g in groups}) != 1:
        raise ValueError("pairing by (case, seed) needs the same number of seed folders in every run")
    is_paired, pairing_reason = seed_pairing([len(g) for g in groups], warm_starts, paired)
    ties = "neutral" if is_paired else "against"

    loaded = [[load_evaluation(f) for f in g] for g in groups]
    ref_summary, ref_rows, _ = loaded[0][0]
    ref_settings = _settings(ref_summary)
    ref_cases = sorted({r["case"] for r in ref_rows})
    ref_dir = groups[0][0]
    for g, runs in zip(groups, loaded):
        for folder, (summary, rows, _) in zip(g, runs):
            s = _settings(summary)
            diffs = [f"{k} {s[k]!r} vs {ref_settings[k]!r}" for k in COMPARED_SETTINGS if s[k] != ref_settings[k]]
            if diffs:
                raise InputError(folder, f"evaluation settings differ from {ref_dir}: {'; '.join(diffs)}")
            cases = sorted({r["case"] for r in rows})
            if cases != ref_cases:
                missing = sorted(set(ref_cases) - set(cases))
                extra = sorted(set(cases) - set(ref_cases))
                parts = ([f"missing {len(missing)} case(s) of {ref_dir}: {', '.join(missing[:8])}"] if missing else [])
                parts += [f"{len(extra)} case(s) not in {ref_dir}: {', '.join(extra[:8])}"] if extra else []
                raise InputError(folder, "case sets differ: " + "; ".join(parts))

    labels = list((ref_settings["labels"] or {}).keys())
    tols = ref_settings["tolerances_mm"] or []
    bins = check_bins(ref_settings["size_bins_ml"] or DEFAULT_SIZE_BINS_ML)
    per_case = list(PER_CASE_METRICS) + [f"sds_{float(t):g}mm" for t in tols[1:]]
    n = len(ref_cases)
    cols = [_columns(runs, labels, ref_cases, per_case, bins) for runs in loaded]
    n_seeds = [len(g) for g in groups]
    same_seeds = len(set(n_seeds)) == 1

    def differences(row, stat, parts):
        """Δ, CI, per-seed Δ and verdict of every run against the first (``parts``: columns per run)."""
        base = parts[0]
        for name, other, s_b in zip(names[1:], parts[1:], n_seeds[1:]):
            ci = two_level_bootstrap_ci(base, other, stat, n_boot=n_boot, seed=seed, confidence=confidence,
                                        paired=is_paired)
            seed_diffs = []
            if same_seeds:
                with np.errstate(invalid="ignore", divide="ignore"):
                    seed_diffs = [float(stat({k: v[i:i + 1] for k, v in other.items()})
                                        - stat({k: v[i:i + 1] for k, v in base.items()})) for i in range(s_b)]
            agree, verdict = seed_verdict(ci.diff, ci.low, ci.high, seed_diffs, ties=ties)
            row["diff"][name], row["ci_low"][name], row["ci_high"][name] = ci.diff, ci.low, ci.high
            row["n_boot_valid"][name] = ci.n_valid
            row["seed_diffs"][name] = seed_diffs
            row["n_seeds_agree"][name] = agree
            row["verdict"][name] = verdict

    rows = []
    for lab in labels:
        for m in per_case:
            key = f"{lab}:{m}"
            mats = [c[key] for c in cols]
            common = np.logical_and.reduce([np.isfinite(x).all(axis=0) for x in mats])
            sub = [{key: x[:, common]} for x in mats]
            row = _row(lab, m, "per_case", names)
            stat = _mean_stat(key)
            for name, x, s in zip(names, mats, sub):
                row["n_undefined"][name] = int(np.count_nonzero(~np.isfinite(x)))
                row["n_values"][name] = int(x.size)
                row["values"][name] = float(stat(s)) if common.any() else float("nan")
                row["seed_values"][name] = [float(np.mean(v)) if v.size else float("nan") for v in s[key]]
            row["undefined_differ"] = len({row["n_undefined"][nm] / row["n_values"][nm] for nm in names}) > 1
            row["n_pairs"] = {name: int(common.sum()) for name in names}
            if common.any():
                differences(row, stat, sub)
            for name, s in zip(names[1:], sub[1:]):
                a, b = sub[0][key], s[key]
                ua, ub = (a.reshape(-1), b.reshape(-1)) if pair_key == ("case", "seed") else (a.mean(0), b.mean(0))
                t = wilcoxon_paired(ua, ub, zero_method=zero_method)
                row["p"][name], row["median_diff"][name], row["effect_size"][name] = t.p, t.median_diff, t.effect_size
                row["n_wilcoxon"][name] = t.n_pairs
            rows.append(row)
    for (lab, m), (stat, keys, num, den) in cohort_statistics(labels, bins).items():
        row = _row(lab, m, "cohort", names)
        with np.errstate(invalid="ignore", divide="ignore"):
            for name, c in zip(names, cols):
                part = {k: c[k] for k in keys}
                row["values"][name] = float(stat(part))
                row["seed_values"][name] = [float(stat({k: v[i:i + 1] for k, v in part.items()}))
                                            for i in range(next(iter(part.values())).shape[0])]
                if num is not None:
                    row["counts"][name] = [int(np.nansum(c[num])), int(np.nansum(c[den]))]
        row["n_pairs"] = {name: n for name in names}
        differences(row, stat, [{k: c[k] for k in keys} for c in cols])
        rows.append(row)

    # Holm over the family of all Wilcoxon tests in this table.
    family = [(r, name) for r in rows if r["kind"] == "per_case" for name in names[1:]]
    adjusted = holm([r["p"][name] for r, name in family])
    for (r, name), p in zip(family, adjusted):
        r["p_holm"][name] = float(p)

    inputs = {name: _run_inputs(runs) for name, runs in zip(names, loaded)}
    result = {
        "tool": TOOL_TAG,
        "runs": names,
        "run_dirs": [[str(p.absolute()) for p in g] if len(g) > 1 else str(g[0].absolute()) for g in groups],
        "settings": {**ref_settings, "n_boot": n_boot, "seed": seed, "confidence": confidence,
                     "zero_method": zero_method, "pair_key": list(pair_key),
                     "bootstrap": "two-level: patients (shared by both runs), then seeds "
                                  + ("(one draw shared by both runs: seed k twins)" if is_paired else "(per run)"),
                     "seed_pairing": {"paired": is_paired, "reason": pairing_reason, "ties": ties},
                     "holm_family": "all per-case Wilcoxon tests in this table (labels x metrics x runs)"},
        "n_cases": n,
        "n_seeds": dict(zip(names, n_seeds)),
        "cases": ref_cases,
        "inputs": inputs,
        "verdicts": VERDICTS,
        "warnings": _warnings(names, labels, cols, rows, pair_key, n_seeds, inputs),
        "rows": rows,
    }
    return result


def _run_inputs(runs: list) -> dict:
    """What a reader needs to judge a run's numbers, summed over its seed folders."""
    out = {"missing_predictions": 0, "resampled_predictions": 0, "excluded": {}, "dscagg_notes": []}
    for summary, _, _ in runs:
        out["missing_predictions"] += len(summary.get("missing_predictions") or [])
        out["resampled_predictions"] += len(summary.get("resampled_predictions") or [])
        for lab, block in (summary.get("labels") or {}).items():
            for k, v in (block.get("excluded") or {}).items():
                out["excluded"].setdefault(lab, {}).setdefault(k, 0)
                out["excluded"][lab][k] += int(v)
            for k, v in (block.get("penalised") or {}).items():
                out["excluded"].setdefault(lab, {}).setdefault("penalised", 0)
                out["excluded"][lab]["penalised"] += int(v)
            note = block.get("dscagg_note")
            if note and f"{lab}: {note}" not in out["dscagg_notes"]:
                out["dscagg_notes"].append(f"{lab}: {note}")
    return out


def _warnings(names, labels, cols, rows, pair_key, n_seeds, inputs) -> list[str]:
    out = []
    for name, c in zip(names, cols):
        for lab in labels:
            pred = c[f"{lab}:pred_volume_ml"]
            empty = int(np.count_nonzero(pred == 0))
            if pred.size and empty > EMPTY_PREDICTION_SHARE * pred.size:
                out.append(f"{name} predicts no {lab} on {empty} of {pred.size} (case, seed) pairs: its {lab} "
                           "numbers describe an empty prediction, not a segmentation.")
    for name in names:
        info = inputs[name]
        if info["missing_predictions"]:
            out.append(f"{name}: {info['missing_predictions']} missing prediction(s) evaluated as empty masks.")
        if info["resampled_predictions"]:
            out.append(f"{name}: {info['resampled_predictions']} prediction(s) resampled onto the truth grid.")
    differ = [f"{r['label']} {r['metric']}" for r in rows if r.get("undefined_differ")]
    if differ:
        out.append("Undefined values differ between runs for " + ", ".join(differ) + ": those rows use only "
                   "the cases defined in every run, and a run that leaves hard cases undefined may look better.")
    if not names[0].endswith(PP_SUFFIX):
        pp = [name for name in names[1:] if name.endswith(PP_SUFFIX)]
        if pp:
            out.append(f"{', '.join(pp)} post-processed, {names[0]} not: their Δ mixes the post-processing's "
                       f"effect with the loss's; compare them against {names[0]}{PP_SUFFIX} (the same fitted "
                       "post-processing on the baseline).")
    if pair_key == ("case", "seed"):
        out.append(PSEUDO_REPLICATION)
    if min(n_seeds) < 2:
        out.append("One seed per run: the CIs cover patient sampling only, not training noise; no Δ can be "
                   "called consistent across seeds.")
    if len(set(n_seeds)) != 1:
        out.append("Runs have different numbers of seeds: per-seed Δs are not listed.")
    return out


def _row(label: str, metric: str, kind: str, names: Sequence[str]) -> dict:
    first = names[0]
    row = {"label": label, "metric": metric, "kind": kind, "values": {}, "seed_values": {}}
    for key in ("diff", "ci_low", "ci_high"):
        row[key] = {name: (None if name == first else float("nan")) for name in names}
    for key in ("seed_diffs",):
        row[key] = {name: (None if name == first else []) for name in names}
    for key in ("n_seeds_agree", "n_boot_valid"):
        row[key] = {name: (None if name == first else 0) for name in names}
    row["verdict"] = {name: (None if name == first else "undefined") for name in names}
    row["n_pairs"] = {name: 0 for name in names}
    if kind == "cohort":
        row["counts"] = {}
        for key in ("p", "p_holm", "median_diff", "effect_size", "n_wilcoxon"):
            row[key] = {name: None for name in names}
    else:
        row["n_undefined"], row["n_values"], row["undefined_differ"] = {}, {}, False
        for key in ("p", "p_holm", "median_diff", "effect_size"):
            row[key] = {name: (None if name == first else float("nan")) for name in names}
        row["n_wilcoxon"] = {name: (None if name == first else 0) for name in names}
    return row
