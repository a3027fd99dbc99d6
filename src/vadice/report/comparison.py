"""Text renderings of comparisons: computed in :mod:`vadice.metrics`, written here.

This module only formats: every number comes from a result dict of
:func:`vadice.metrics.froc_compare.compare_froc`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


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
    import json

    from vadice.io import json_clean, write_dir_atomically
    from vadice.metrics.evaluate import check_out_dir
    from vadice.metrics.froc_compare import OUTPUT_FILES, TOOL_TAG

    check_out_dir(out_dir, marker="froc_comparison.json", tag=TOOL_TAG, own_files=OUTPUT_FILES)
    return write_dir_atomically(out_dir, {
        "froc_comparison.json": json.dumps(json_clean(result), indent=2, ensure_ascii=False) + "\n",
        "froc_comparison.md": froc_markdown(result)})
