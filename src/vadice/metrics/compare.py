"""Paired comparison of evaluation folders (``vadice evaluate`` outputs) on the same patients.

Per-case metrics (DSC, SDS, MSD, HD95): mean per run, mean paired difference
against the first run, two-sided Wilcoxon signed-rank p (explicit
``zero_method``), Holm adjustment over the whole family of tests (every label x
metric x non-first run in the table). Cohort metrics (DSCagg per label and
their mean, pooled lesion sensitivity and precision): value per run,
difference, and a patient-level paired bootstrap 95 % CI of the difference.

Seeds: a run may be several evaluation folders (one per training seed).
With ``pair_key=("case",)`` (default) per-case metrics are averaged over a
run's seeds before pairing, and cohort metrics pool all (case, seed) rows;
with ``pair_key=("case", "seed")`` per-case metrics are paired by case and
seed position (all runs need the same number of seeds). Either way the
bootstrap resamples patients, carrying all seeds of a patient together,
because patients, not seeds, are the independent units.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from vadice.io import InputError
from vadice.metrics.evaluate import check_out_dir, json_clean, write_dir_atomically
from vadice.stats import bootstrap_indices, holm, paired_bootstrap_ci, ratio_of_sums, wilcoxon_paired

PER_CASE_METRICS = ("dsc", "sds", "msd", "hd95")
COMPARED_SETTINGS = ("labels", "tolerances_mm", "connectivity", "match", "hd_mode", "hd_percentile",
                     "size_bins_ml", "empty_distance_penalty")
OUTPUT_FILES = ("comparison.md", "comparison.csv", "comparison.json")
TOOL_TAG = "vadice compare"
_NUMERIC = ("dsc", "sds", "msd", "hd95", "gt_volume_ml", "pred_volume_ml", "intersection_ml",
            "n_gt_lesions", "n_gt_detected", "n_pred_lesions", "n_pred_matched")


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def load_evaluation(folder: str | os.PathLike) -> tuple[dict, list[dict]]:
    """Read ``summary.json`` and ``cases.csv`` of an evaluation folder.

    Returns:
      ``(summary, rows)`` with numeric columns (``sds_<τ>mm`` included) as floats.

    Raises:
      InputError: missing or malformed files (naming the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not an evaluation folder (directory not found)")
    spath, cpath = folder / "summary.json", folder / "cases.csv"
    try:
        summary = json.loads(spath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(spath, "missing; not a 'vadice evaluate' folder") from None
    except (OSError, ValueError) as exc:
        raise InputError(spath, f"unreadable JSON ({exc})") from None
    if not isinstance(summary, dict) or "settings" not in summary:
        raise InputError(spath, "no 'settings' entry; not a 'vadice evaluate' summary")
    try:
        with open(cpath, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            raw = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise InputError(cpath, "missing; not a 'vadice evaluate' folder") from None
    need = {"case", "label", *_NUMERIC}
    if not need <= set(header):
        raise InputError(cpath, f"missing column(s) {', '.join(sorted(need - set(header)))}")
    numeric = [c for c in header if c in _NUMERIC or (c.startswith("sds_") and c.endswith("mm"))]
    rows = []
    for i, r in enumerate(raw, start=2):
        try:
            rows.append({**r, **{c: _float(r[c]) for c in numeric}})
        except ValueError:
            raise InputError(cpath, f"line {i}: non-numeric value") from None
    return summary, rows


def _settings(summary: dict) -> dict:
    s = summary.get("settings", {})
    return {k: s.get(k) for k in COMPARED_SETTINGS}


def _table(rows: list[dict], labels: Sequence[str], metrics: Sequence[str]) -> dict:
    """{label: {metric: {case: value}}} from cases.csv rows."""
    out = {lab: {m: {} for m in metrics} for lab in labels}
    for r in rows:
        if r["label"] in out:
            for m in metrics:
                out[r["label"]][m][r["case"]] = r[m]
    return out


def compare_runs(
    run_dirs: Sequence[str | os.PathLike | Sequence[str | os.PathLike]],
    names: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    zero_method: str = "wilcox",
    confidence: float = 0.95,
    pair_key: Sequence[str] = ("case",),
) -> dict:
    """Compare evaluation folders of the same cases against the first run.

    Args:
      run_dirs: one entry per run: an evaluation folder, or a list of folders
        (one per seed) of the same configuration.
      names: display names (default: folder names).
      out_dir: where to write comparison.md/.csv/.json (atomically); None
        writes nothing.
      n_boot, seed, confidence: bootstrap of cohort-metric differences.
      zero_method: Wilcoxon treatment of zero differences.
      pair_key: ``("case",)`` or ``("case", "seed")`` (see module docstring).

    Returns:
      dict with keys ``runs``, ``run_dirs``, ``settings``, ``n_cases``,
      ``rows`` (see docs/evaluation.md); NaN as float NaN.

    Raises:
      InputError: unreadable folders, different case sets or settings
        (naming the run and the difference).
      ValueError: bad names or options.
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
    if out_dir is not None:
        check_out_dir(out_dir, marker="comparison.json", tag=TOOL_TAG, own_files=OUTPUT_FILES)

    loaded = [[load_evaluation(f) for f in g] for g in groups]
    ref_summary, ref_rows = loaded[0][0]
    ref_settings = _settings(ref_summary)
    ref_cases = sorted({r["case"] for r in ref_rows})
    ref_dir = groups[0][0]
    for g, runs in zip(groups, loaded):
        for folder, (summary, rows) in zip(g, runs):
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
    per_case = list(PER_CASE_METRICS) + [f"sds_{float(t):g}mm" for t in tols[1:]]
    cols = ("gt_volume_ml", "pred_volume_ml", "intersection_ml", "n_gt_lesions", "n_gt_detected",
            "n_pred_lesions", "n_pred_matched")
    n = len(ref_cases)
    idx = bootstrap_indices(n, n_boot, seed)

    # Per run: per-case metric vectors in pairing-unit order, and cohort columns summed per patient.
    def unit_vectors(runs, lab, m):
        tables = [_table(rows, [lab], [m])[lab][m] for _, rows in runs]
        mat = np.array([[t.get(c, np.nan) for c in ref_cases] for t in tables], dtype=np.float64)
        if pair_key == ("case", "seed"):
            return mat.reshape(-1)  # seed-major
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all seeds NaN for a case: stays NaN
            return np.nanmean(mat, axis=0)

    def cohort_cols(runs):
        out = {}
        for lab in labels:
            for c in cols:
                tables = [_table(rows, [lab], [c])[lab][c] for _, rows in runs]
                out[f"{lab}:{c}"] = np.nansum([[t.get(k, np.nan) for k in ref_cases] for t in tables], axis=0)
        return out

    cohort = [cohort_cols(runs) for runs in loaded]
    stats = {}
    for lab in labels:
        stats[(lab, "dscagg")] = _dscagg_stat(lab)
        stats[(lab, "lesion_sensitivity")] = ratio_of_sums(f"{lab}:n_gt_detected", f"{lab}:n_gt_lesions")
        stats[(lab, "lesion_precision")] = ratio_of_sums(f"{lab}:n_pred_matched", f"{lab}:n_pred_lesions")
    stats[("mean", "dscagg_mean")] = _dscagg_mean_stat(labels)

    rows = []
    for lab in labels:
        for m in per_case:
            vecs = [unit_vectors(runs, lab, m) for runs in loaded]
            row = _row(lab, m, "per_case", names)
            for name, v in zip(names, vecs):
                row["values"][name] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            for name, v in zip(names[1:], vecs[1:]):
                t = wilcoxon_paired(vecs[0], v, zero_method=zero_method)
                ok = np.isfinite(vecs[0]) & np.isfinite(v)
                row["diff"][name] = float(np.mean(v[ok] - vecs[0][ok])) if ok.any() else float("nan")
                row["p"][name] = t.p
                row["n_pairs"][name] = t.n_pairs
                row["median_diff"][name] = t.median_diff
                row["effect_size"][name] = t.effect_size
            rows.append(row)
    for (lab, m), stat in stats.items():
        row = _row(lab, m, "cohort", names)
        with np.errstate(invalid="ignore", divide="ignore"):
            for name, c in zip(names, cohort):
                row["values"][name] = float(stat(c))
        for name, c in zip(names[1:], cohort[1:]):
            ci = paired_bootstrap_ci(cohort[0], c, stat, n_boot=n_boot, seed=seed, confidence=confidence,
                                     indices=idx)
            row["diff"][name], row["ci_low"][name], row["ci_high"][name] = ci.diff, ci.low, ci.high
            row["n_pairs"][name] = n
        rows.append(row)

    # Holm over the family of all Wilcoxon tests in this table.
    family = [(r, name) for r in rows if r["kind"] == "per_case" for name in names[1:]]
    adjusted = holm([r["p"][name] for r, name in family])
    for (r, name), p in zip(family, adjusted):
        r["p_holm"][name] = float(p)

    result = {
        "tool": TOOL_TAG,
        "runs": names,
        "run_dirs": [[str(p.absolute()) for p in g] if len(g) > 1 else str(g[0].absolute()) for g in groups],
        "settings": {**ref_settings, "n_boot": n_boot, "seed": seed, "confidence": confidence,
                     "zero_method": zero_method, "pair_key": list(pair_key),
                     "holm_family": "all per-case Wilcoxon tests in this table (labels x metrics x runs)"},
        "n_cases": n,
        "cases": ref_cases,
        "rows": rows,
    }
    if out_dir is not None:
        write_dir_atomically(out_dir, {
            "comparison.json": json.dumps(json_clean(result), indent=2, ensure_ascii=False) + "\n",
            "comparison.csv": _csv(result),
            "comparison.md": _markdown(result),
        })
    return result


def _row(label: str, metric: str, kind: str, names: Sequence[str]) -> dict:
    first = names[0]
    row = {"label": label, "metric": metric, "kind": kind, "values": {}}
    for key in ("diff", "ci_low", "ci_high", "p", "p_holm", "median_diff", "effect_size"):
        row[key] = {name: (None if name == first else float("nan")) for name in names}
    row["n_pairs"] = {name: 0 for name in names}
    if kind == "cohort":
        for key in ("p", "p_holm", "median_diff", "effect_size"):
            row[key] = {name: None for name in names}
    else:
        for key in ("ci_low", "ci_high"):
            row[key] = {name: None for name in names}
    return row


def _dscagg_stat(lab: str):
    def stat(c):
        den = np.sum(c[f"{lab}:gt_volume_ml"], axis=-1) + np.sum(c[f"{lab}:pred_volume_ml"], axis=-1)
        num = 2.0 * np.sum(c[f"{lab}:intersection_ml"], axis=-1)
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return stat


def _dscagg_mean_stat(labels: Sequence[str]):
    parts = [_dscagg_stat(lab) for lab in labels]
    return lambda c: np.mean([p(c) for p in parts], axis=0)


def _fmt(x, digits=4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def _csv(result: dict) -> str:
    buf = _stdio.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "metric", "kind", "run", "value", "diff", "ci_low", "ci_high", "p", "p_holm",
                "n_pairs", "median_diff", "effect_size"])
    for r in result["rows"]:
        for name in result["runs"]:
            w.writerow([r["label"], r["metric"], r["kind"], name]
                       + [_num(r[k].get(name)) for k in ("values", "diff", "ci_low", "ci_high", "p", "p_holm")]
                       + [r["n_pairs"].get(name, ""), _num(r["median_diff"].get(name)),
                          _num(r["effect_size"].get(name))])
    return buf.getvalue()


def _num(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return repr(float(x)) if isinstance(x, float) else str(x)


def _markdown(result: dict) -> str:
    names = result["runs"]
    base = names[0]
    lines = [f"# Paired comparison against {base}", "",
             f"{result['n_cases']} cases. Per-case metrics: mean over cases, Δ = mean paired difference, "
             f"Wilcoxon signed-rank p (zero_method={result['settings']['zero_method']}), Holm-adjusted over "
             f"all {sum(1 for r in result['rows'] if r['kind'] == 'per_case') * (len(names) - 1)} tests. "
             f"Cohort metrics: Δ with patient-level paired bootstrap "
             f"{result['settings']['confidence']:.0%} CI ({result['settings']['n_boot']} resamples, "
             f"seed {result['settings']['seed']}).", ""]
    header = "| label | metric | " + " | ".join(names) + " | " + " | ".join(f"Δ {n}" for n in names[1:]) + \
             " | " + " | ".join(f"CI / p (Holm) {n}" for n in names[1:]) + " |"
    lines += [header, "|" + "---|" * (2 + len(names) + 2 * (len(names) - 1))]
    for r in result["rows"]:
        vals = [_fmt(r["values"][n]) for n in names]
        diffs = [_fmt(r["diff"][n]) for n in names[1:]]
        extra = []
        for n in names[1:]:
            if r["kind"] == "cohort":
                extra.append(f"[{_fmt(r['ci_low'][n])}, {_fmt(r['ci_high'][n])}]")
            else:
                extra.append(f"p={_fmt(r['p'][n], 3)} ({_fmt(r['p_holm'][n], 3)}), n={r['n_pairs'][n]}")
        lines.append(f"| {r['label']} | {r['metric']} | " + " | ".join(vals + diffs + extra) + " |")
    return "\n".join(lines) + "\n"
