"""Comparisons written out: ``comparison.md/.csv/.json`` and ``froc_comparison.md/.json``.

Every number is computed in :mod:`vadice.metrics.compare` (:func:`compare_runs`) or
:mod:`vadice.metrics.froc_compare` (:func:`compare_froc`); this module chooses the
headline rows, formats and writes. :func:`compare_folders` is ``compare_runs`` plus the
writing, the entry point of ``vadice compare`` and ``vadice experiment``.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
from pathlib import Path
from typing import Sequence

from vadice import registry
from vadice.io import check_out_dir, json_clean, write_dir_atomically
from vadice.metrics.compare import OUTPUT_FILES as COMPARE_FILES
from vadice.metrics.compare import TOOL_TAG as COMPARE_TAG
from vadice.metrics.compare import compare_runs
from vadice.metrics.lesionwise import DEFAULT_SIZE_BINS_ML, bin_names


def _fmt(x, digits=4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def _point(p: dict) -> str:
    return (f"sensitivity {_fmt(p['sensitivity'], 3)}, {_fmt(p['fp_per_patient'], 3)} FP/patient, "
            f"precision {_fmt(p['precision'], 3)}")


def froc_markdown(result: dict) -> str:
    """froc_comparison.md: the rule, then per view (all lesions, the size range) CPM, ΔCPM and matched points."""
    st, ref = result["settings"], result["reference"]
    pairing = "paired (seed k of every set-up are twins; one seed draw for both)" if st["paired"] else \
        "unpaired (seeds drawn per set-up)"
    lines = [f"# FROC comparison against {ref}: {result['label']}", "",
             f"{result['n_patients']} patients; seeds per set-up: "
             + ", ".join(f"{k} {v}" for k, v in result["n_seeds"].items()) + ".", "",
             f"**Rule.** ΔCPM = CPM(set-up) − CPM({ref}); CPM = mean sensitivity at "
             + ", ".join(f"{r:g}" for r in st["cpm_rates"]) + " FP per patient of the pooled curve (seeds and "
             f"patients pooled). CI: {st['confidence']:.0%} two-level bootstrap (patients, then seeds, {pairing}; "
             f"{st['n_boot']} resamples, seed {st['seed']}); verdict by the seeds' Δ, ties {st['ties']}.", "",
             f"**Operating points.** Each set-up's own point is its pooled row at threshold "
             f"{st['operating_threshold']:g}. *At {ref}'s point*: the set-up's sensitivity at {ref}'s FP/patient "
             f"(read off its curve) and its best precision at any threshold reaching {ref}'s sensitivity "
             "(– when none does). *Reference at this point*: the same for the reference at the set-up's own point.",
             ""]
    for view, blocks in result["views"].items():
        title = "all lesions" if view == "all" else f"truth lesions {view} (FP and precision: all components)"
        lines += [f"## {title}", "",
                  "| set-up | CPM pooled | CPM per seed | ΔCPM [CI]; per seed; verdict | own operating point |",
                  "|---|---|---|---|---|"]
        for name, b in blocks.items():
            d = b["delta_cpm"]
            delta = "reference" if d is None else (
                f"{_fmt(d['diff'], 3)} [{_fmt(d['low'], 3)}, {_fmt(d['high'], 3)}]; "
                + ", ".join(_fmt(x, 3) for x in d["seed_diffs"]) + f"; {d['n_agree']}/{len(d['seed_diffs'])} agree: "
                f"**{d['verdict']}**")
            lines.append(f"| {name} | {_fmt(b['pooled']['cpm'], 3)} | "
                         + ", ".join(_fmt(s["cpm"], 3) for s in b["seeds"])
                         + f" | {delta} | {_point(b['operating_point'])} |")
        lines += ["", f"| set-up | sensitivity at {ref}'s FP/patient | precision at {ref}'s sensitivity "
                      f"(threshold) | {ref}'s sensitivity at this FP/patient | {ref}'s precision at this "
                      "sensitivity (threshold) |", "|---|---|---|---|---|"]
        for name, b in blocks.items():
            if b["at_reference_point"] is None:
                continue
            a, r = b["at_reference_point"], b["reference_at_this_point"]
            lines.append(f"| {name} | {_fmt(a['sensitivity_at_fp'], 3)} | {_fmt(a['precision_at_sensitivity'], 3)} "
                         f"({_fmt(a['threshold'], 2)}) | {_fmt(r['sensitivity_at_fp'], 3)} | "
                         f"{_fmt(r['precision_at_sensitivity'], 3)} ({_fmt(r['threshold'], 2)}) |")
        lines.append("")
    return "\n".join(lines)


def write_froc_comparison(result: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``froc_comparison.json`` and ``froc_comparison.md`` into ``out_dir`` at once.

    Args:
      result: :func:`vadice.metrics.froc_compare.compare_froc`'s dict.
      out_dir: missing, empty, or an earlier ``vadice froc-compare`` folder (replaced).

    Returns:
      the folder's absolute path.

    Raises:
      InputError: ``out_dir`` is a file or another tool's folder.
    """
    from vadice.metrics.froc_compare import OUTPUT_FILES, TOOL_TAG

    check_out_dir(out_dir, marker="froc_comparison.json", tag=TOOL_TAG, own_files=OUTPUT_FILES)
    return write_dir_atomically(out_dir, {
        "froc_comparison.json": json.dumps(json_clean(result), indent=2, ensure_ascii=False) + "\n",
        "froc_comparison.md": froc_markdown(result)})


def comparison_csv(result: dict) -> str:
    """comparison.csv: one line per (label, metric, run), every statistic of the row; empty = undefined."""
    buf = _stdio.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "metric", "kind", "run", "value", "n_undefined", "n_values", "diff", "ci_low", "ci_high",
                "n_boot_valid", "seed_diffs", "n_seeds_agree", "verdict", "p", "p_holm", "n_pairs", "n_wilcoxon",
                "median_diff", "effect_size", "seed_pairing"])
    pairing = "paired" if (result["settings"].get("seed_pairing") or {}).get("paired") else "unpaired"
    for r in result["rows"]:
        for name in result["runs"]:
            sd = r["seed_diffs"].get(name)
            w.writerow([r["label"], r["metric"], r["kind"], name, _num(r["values"].get(name)),
                        _num(r.get("n_undefined", {}).get(name)), _num(r.get("n_values", {}).get(name))]
                       + [_num(r[k].get(name)) for k in ("diff", "ci_low", "ci_high", "n_boot_valid")]
                       + [";".join(_num(x) for x in sd) if sd else "", _num(r["n_seeds_agree"].get(name)),
                          r["verdict"].get(name) or ""]
                       + [_num(r[k].get(name)) for k in ("p", "p_holm", "n_pairs", "n_wilcoxon", "median_diff",
                                                          "effect_size")] + [pairing])
    return buf.getvalue()


def _num(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return repr(float(x)) if isinstance(x, float) else str(x)


_N, _T = registry.NODE_LABEL, registry.TUMOUR_LABEL
HEADLINE = ((_N, "lesion_sensitivity"), (_N, "lesion_sensitivity SMALL"), (_T, "lesion_precision"),
            (_N, "lesion_precision"), (_T, "dscagg"), (_N, "dscagg"))


def headline_rows(result: dict) -> list[dict]:
    """The rows the study is about, in HEADLINE order: GTVn lesion sensitivity (all, smallest size bin),
    lesion precision and DSCagg per label; rows whose label the evaluation lacks are skipped.

    An evaluation with other label names (no GTVp and no GTVn) gets the same rows for each of its labels,
    in label order, rather than an empty headline.
    """
    bins = result["settings"].get("size_bins_ml") or DEFAULT_SIZE_BINS_ML
    small = f"lesion_sensitivity {bin_names(bins)[0]}"
    by_key = {(r["label"], r["metric"]): r for r in result["rows"]}
    labels = list(dict.fromkeys(r["label"] for r in result["rows"] if r["label"] != "mean"))
    wanted = HEADLINE
    if not set(registry.LABELS) & set(labels):
        wanted = [(lab, m) for lab in labels
                  for m in ("lesion_sensitivity", "lesion_sensitivity SMALL", "lesion_precision", "dscagg")]
    out = []
    for lab, metric in wanted:
        row = by_key.get((lab, small if metric.endswith("SMALL") else metric))
        if row is not None:
            out.append(row)
    return out


def _value_text(r: dict, name: str) -> str:
    text = _fmt(r["values"][name])
    if r["kind"] == "cohort" and r.get("counts", {}).get(name):
        text += " ({}/{})".format(*r["counts"][name])
    if r["kind"] == "per_case":
        text += f" (undef. {r['n_undefined'][name]}/{r['n_values'][name]})"
    return text


def _diff_text(r: dict, name: str) -> str:
    sd = r["seed_diffs"][name]
    seeds = f"; seeds {', '.join(_fmt(x, 3) for x in sd)}" if sd else ""
    return (f"{_fmt(r['diff'][name])} [{_fmt(r['ci_low'][name])}, {_fmt(r['ci_high'][name])}]{seeds}; "
            f"{r['n_seeds_agree'][name]}/{len(sd)} seeds agree: **{r['verdict'][name]}**")


def markdown(result: dict) -> str:
    """comparison.md: warnings, the headline rows, then every row."""
    names = result["runs"]
    base = names[0]
    st = result["settings"]
    seeds = ", ".join(f"{k} {v}" for k, v in result["n_seeds"].items())
    lines = [f"# Paired comparison against {base}", ""]
    if result["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in result["warnings"]] + [""]
    n_tests = sum(1 for r in result["rows"] if r["kind"] == "per_case") * (len(names) - 1)
    pairing = st.get("seed_pairing") or {"paired": False}
    if pairing["paired"]:
        rule = (f"**Rule.** Δ = run − {base}. CI: {st['confidence']:.0%} two-level bootstrap (resample patients, "
                f"shared by both runs, then seeds, one draw shared by both runs because seed k of each run are "
                f"twins; {st['n_boot']} resamples, seed {st['seed']}). Per-seed Δ: seed k of a run against seed k "
                f"of {base}. A Δ is **consistent** only when its CI excludes 0, no seed's Δ has the other sign "
                "and more than half of the seeds have the pooled Δ's sign (a seed with Δ = 0 counts neither "
                "way); otherwise *seeds disagree*, *seeds tied* (too many seeds with Δ = 0), *CI includes 0* or "
                "*one seed* (CI excludes 0 but training noise is not assessed).")
    else:
        rule = (f"**Rule.** Δ = run − {base}. CI: {st['confidence']:.0%} two-level bootstrap (resample patients, "
                f"shared by both runs, then seeds, per run; {st['n_boot']} resamples, seed {st['seed']}). Per-seed "
                f"Δ: seed k of a run against seed k of {base}. A Δ is **consistent** only when its CI excludes 0 "
                "*and* every seed's Δ has the sign of the pooled Δ; otherwise *seeds disagree*, *CI includes 0*, "
                "*one seed* (CI excludes 0 but training noise is not assessed) or *seeds unpaired* (different "
                "numbers of seeds).")
    lines += [
        f"{result['n_cases']} cases; seeds per run: {seeds}.",
        "",
        rule,
        "",
        f"**Seeds.** {pairing.get('reason', 'unpaired seeds')}.",
        "",
        "**Values.** Cohort metrics pool every case and seed (DSCagg = 2·Σ|A∩B| / Σ(|A|+|B|); lesion "
        "sensitivity/precision = pooled counts, shown in brackets). Per-case metrics: mean over the cases "
        "defined in every run and seed (n), so value − value(" + base + ") = Δ; undef. = undefined (case, seed) "
        "values of that run, left out. p: Wilcoxon signed-rank on per-case values averaged over seeds "
        f"(zero_method={st['zero_method']}), Holm-adjusted over all {n_tests} tests."
        + (" Empty-side HD95/MSD are set to the penalty "
           f"{st['empty_distance_penalty']:g} mm and included." if st.get("empty_distance_penalty") is not None
           else ""),
        "",
        "## Headline",
        "",
        "| label | metric | " + " | ".join(names) + " | " + " | ".join(f"Δ vs {base}: {n} [CI]; per seed; verdict"
                                                                for n in names[1:]) + " |",
        "|" + "---|" * (2 + 2 * len(names) - 1),
    ]
    for r in headline_rows(result):
        lines.append(f"| {r['label']} | {r['metric']} | " + " | ".join(_value_text(r, n) for n in names) + " | "
                     + " | ".join(_diff_text(r, n) for n in names[1:]) + " |")
    lines += ["", "## All metrics", "",
              "| label | metric | " + " | ".join(names) + " | "
              + " | ".join(f"Δ vs {base}: {n} [CI]; per seed; verdict | p (Holm), n {n}" for n in names[1:])
              + " |",
              "|" + "---|" * (2 + len(names) + 2 * (len(names) - 1))]
    for r in result["rows"]:
        extra = []
        for n in names[1:]:
            extra.append(_diff_text(r, n))
            extra.append("" if r["kind"] == "cohort" else
                         f"p={_fmt(r['p'][n], 3)} ({_fmt(r['p_holm'][n], 3)}), n={r['n_wilcoxon'][n]}")
        flag = " ⚠ undefined counts differ" if r.get("undefined_differ") else ""
        lines.append(f"| {r['label']} | {r['metric']}{flag} | " + " | ".join(_value_text(r, n) for n in names)
                     + " | " + " | ".join(extra) + " |")
    lines += ["", "## Inputs", ""]
    for name, info in result["inputs"].items():
        ex = "; ".join(f"{lab}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items())
                       for lab, d in info["excluded"].items())
        lines.append(f"- {name}: missing predictions {info['missing_predictions']}, resampled "
                     f"{info['resampled_predictions']}; excluded (case, seed) values: {ex or 'none recorded'}"
                     + (f"; {'; '.join(info['dscagg_notes'])}" if info["dscagg_notes"] else ""))
    return "\n".join(lines) + "\n"


def write_comparison(result: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``comparison.json``, ``comparison.csv`` and ``comparison.md`` into ``out_dir`` at once.

    Args:
      result: :func:`vadice.metrics.compare.compare_runs`'s dict.
      out_dir: missing, empty, or an earlier ``vadice compare`` folder (replaced).

    Returns:
      the folder's absolute path.

    Raises:
      InputError: ``out_dir`` is a file or another tool's folder.
    """
    check_out_dir(out_dir, "comparison.json", COMPARE_TAG, COMPARE_FILES)
    return write_dir_atomically(out_dir, {
        "comparison.json": json.dumps(json_clean(result), indent=2, ensure_ascii=False) + "\n",
        "comparison.csv": comparison_csv(result),
        "comparison.md": markdown(result),
    })


def compare_folders(run_dirs: Sequence, names: Sequence[str] | None = None,
                    out_dir: str | os.PathLike | None = None, **options) -> dict:
    """:func:`vadice.metrics.compare.compare_runs`, then :func:`write_comparison` into ``out_dir``.

    The output folder is checked before the comparison runs, so a refused folder costs nothing.

    Args:
      run_dirs, names, options: as :func:`vadice.metrics.compare.compare_runs`.
      out_dir: where to write; None writes nothing.

    Returns:
      the comparison dict.

    Raises:
      InputError, ValueError: as :func:`compare_runs` and :func:`write_comparison`.
    """
    if out_dir is not None:
        check_out_dir(out_dir, "comparison.json", COMPARE_TAG, COMPARE_FILES)
    result = compare_runs(run_dirs, names, **options)
    if out_dir is not None:
        write_comparison(result, out_dir)
    return result
