"""The self-contained ``report.html`` of an experiment.

Reads what the evaluation and comparison steps wrote (``cases.csv``,
``lesions.csv``, ``summary.json``, ``comparison.json``) and nnU-Net's training
logs, draws the figures, and renders one HTML file with every image embedded
as a base64 data URI and inline CSS: it opens offline, can be mailed, and
archived next to the run. The files are parsed here with the ``csv``/``json``
modules rather than through ``vadice.metrics`` so the report depends only on
the file formats, not on the code that produced them.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2

import vadice
from vadice.io import InputError, write_text
from vadice.report import plots

# (id, heading) of every section, in order; tests and docs rely on these.
SECTIONS = (
    ("settings", "Settings"),
    ("comparison", "Comparison table"),
    ("distributions", "Per-case distributions"),
    ("lesion-size", "Sensitivity by lesion size"),
    ("precision-sensitivity", "Precision and sensitivity per label"),
    ("training", "Training curves"),
    ("cases", "Best and worst cases"),
    ("notes", "Notes"),
)
DEFAULT_LABEL_NAMES = {1: "GTVp", 2: "GTVn"}
DISTRIBUTION_METRICS = ("dsc", "sds", "msd", "hd95")
REQUIRED_CASE_COLUMNS = ("case", "label", "dsc")
NUMERIC_CASE_COLUMNS = ("dsc", "sds", "msd", "hd95", "gt_volume_ml", "pred_volume_ml", "intersection_ml",
                        "n_gt_lesions", "n_gt_detected", "n_pred_lesions", "n_pred_matched")
METRIC_NAMES = {
    "dscagg": "DSCagg",
    "dscagg_mean": "DSCagg (mean of labels)",
    "dsc": "DSC",
    "dsc_mean": "DSC mean",
    "dsc_median": "DSC median",
    "sds": "SDS",
    "sds_mean": "SDS mean",
    "msd": "MSD (mm)",
    "msd_mean": "MSD mean (mm)",
    "hd95": "HD95 (mm)",
    "hd95_mean": "HD95 mean (mm)",
    "hd95_median": "HD95 median (mm)",
    "lesion_sensitivity": "Lesion sensitivity",
    "lesion_precision": "Lesion precision",
    "sensitivity": "Lesion sensitivity (per case)",
    "precision": "Lesion precision (per case)",
}


@dataclass
class ReportInputs:
    """Everything :func:`write_report` needs; paths point at files the experiment wrote.

    Attributes:
      title: report title.
      settings: experiment settings shown in the Settings section (flat or nested dict).
      notes: free-text notes shown first in Notes (e.g. the CPU-preset caveat).
      comparison: content of ``comparison.json`` (``vadice compare``), or None.
      evaluations: ``{setup: {seed: evaluation folder}}`` (folders holding
        ``cases.csv`` and, optionally, ``lesions.csv`` / ``summary.json``).
        Set-up order is the display order unless ``comparison["runs"]`` gives one.
      training_logs: ``{setup: [(run label, training_log_*.txt path), ...]}``;
        entries with the same run label are merged (a resumed training writes
        a second log file).
      overlays: ``[(caption, PNG path), ...]`` for Best and worst cases.
      seed_spread: optional ``{label: {metric: {setup: {"min", "max", "sd", "n_seeds"}}}}``
        shown next to each difference in the comparison table: for the first
        set-up the spread of its value over seeds, for the others the spread
        of their per-seed difference to the first (what ``vadice experiment``
        writes).
      manifest: optional run manifest (versions, commit, seeds, ...).
    """

    title: str
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    comparison: dict | None = None
    evaluations: dict[str, dict[int, Path]] = field(default_factory=dict)
    training_logs: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)
    overlays: list[tuple[str, Path]] = field(default_factory=list)
    seed_spread: dict | None = None
    manifest: dict | None = None


# ---------------------------------------------------------------------------
# Reading evaluation folders


def label_name(value: Any, names: Mapping[int, str] | None = None) -> str:
    """Normalise a label given as a name (``"GTVn"``) or an integer (``2``/``"2"``) to its name."""
    text = str(value).strip()
    try:
        as_int = int(float(text))
    except ValueError:
        return text
    if float(text) != as_int:
        return text
    return (names or DEFAULT_LABEL_NAMES).get(as_int, text)


def _parse_float(text: str | None) -> float:
    if text is None:
        return math.nan
    text = text.strip()
    if text == "" or text.lower() in ("nan", "none", "null", "na"):
        return math.nan
    return float(text)


def _parse_bool(text: str | None) -> bool:
    return str(text).strip().lower() in ("1", "1.0", "true", "yes", "y", "t")


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"unreadable CSV ({exc})") from None


def _evaluation_dir(evaluation_dir: str | os.PathLike) -> Path:
    path = Path(evaluation_dir)
    if not path.is_dir():
        raise InputError(path, "evaluation folder not found")
    return path


def read_cases(evaluation_dir: str | os.PathLike, names: Mapping[int, str] | None = None) -> list[dict]:
    """Rows of ``cases.csv`` with numeric columns as floats (empty field -> NaN) and label names.

    Raises:
      InputError: folder or file missing, required columns (case, label, dsc)
        missing, or a numeric field that is not a number.
    """
    path = _evaluation_dir(evaluation_dir) / "cases.csv"
    columns, raw = _read_csv(path)
    missing = [c for c in REQUIRED_CASE_COLUMNS if c not in columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; is this a vadice evaluation folder?")
    rows = []
    for i, r in enumerate(raw, start=2):
        row: dict[str, Any] = {"case": r["case"], "label": label_name(r["label"], names)}
        for key, text in r.items():
            if key in ("case", "label") or key is None:
                continue
            try:
                row[key] = _parse_float(text)
            except ValueError:
                # Extra text columns (e.g. distance_flag) stay text; the metric columns must be numbers.
                if key in NUMERIC_CASE_COLUMNS or key.startswith("sds_"):
                    raise InputError(path, f"line {i}: column {key!r} is not a number: {text!r}") from None
                row[key] = text
        rows.append(row)
    return rows


def read_lesions(evaluation_dir: str | os.PathLike, names: Mapping[int, str] | None = None) -> list[dict] | None:
    """Rows of ``lesions.csv`` (volume_ml float, detected bool), or None when the file is absent."""
    path = _evaluation_dir(evaluation_dir) / "lesions.csv"
    if not path.exists():
        return None
    columns, raw = _read_csv(path)
    missing = [c for c in ("label", "source", "volume_ml", "detected") if c not in columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    rows = []
    for i, r in enumerate(raw, start=2):
        try:
            volume = _parse_float(r["volume_ml"])
        except ValueError:
            raise InputError(path, f"line {i}: volume_ml is not a number: {r['volume_ml']!r}") from None
        rows.append({
            "case": r.get("case", ""),
            "label": label_name(r["label"], names),
            "source": str(r["source"]).strip().lower(),
            "volume_ml": volume,
            "detected": _parse_bool(r["detected"]),
        })
    return rows


def read_summary(evaluation_dir: str | os.PathLike) -> dict:
    """``summary.json`` as a dict ({} when absent)."""
    path = _evaluation_dir(evaluation_dir) / "summary.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object")
    return data


def _summary_label_names(summary: Mapping) -> dict[int, str] | None:
    """Label id -> name from the evaluation settings, when the summary records them."""
    settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    labels = settings.get("labels") if isinstance(settings, dict) else None
    if isinstance(labels, dict):
        out = {}
        for k, v in labels.items():
            # Accept {"GTVp": 1} as well as {"1": "GTVp"}.
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[int(v)] = str(k)
            elif str(k).strip().lstrip("-").isdigit():
                out[int(k)] = str(v)
        return out or None
    return None


def _summary_label_block(summary: Mapping, label: str) -> dict:
    """The per-label block of a summary, wherever the evaluation nested it."""
    for container in (summary, summary.get("labels"), summary.get("per_label")):
        if isinstance(container, dict):
            block = container.get(label)
            if isinstance(block, dict):
                return block
    return {}


def _size_edges(summary: Mapping) -> tuple[float, ...]:
    settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    for key in ("size_bins_ml", "size_bins", "size_edges_ml", "size_bin_edges_ml", "bins_ml"):
        value = settings.get(key)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
            edges = tuple(float(v) for v in value if math.isfinite(float(v)) and float(v) > 0)
            if edges and all(b > a for a, b in zip(edges, edges[1:])):
                return edges
    return plots.DEFAULT_SIZE_EDGES_ML


def best_and_worst_cases(
    evaluation_dir: str | os.PathLike,
    label: str | int = "GTVn",
    k: int = 1,
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The ``k`` cases with the highest and the lowest DSC for one label.

    Cases whose DSC is NaN (truth and prediction both empty) are ignored. Ties
    are broken by case name, so the choice is reproducible. When there are at
    least ``2k`` cases the two lists do not share a case.

    Args:
      evaluation_dir: folder holding ``cases.csv``.
      label: label name (``"GTVn"``) or id (``2``).
      k: how many cases in each list.

    Returns:
      ``(best, worst)``: lists of ``(case, dsc)``, best first / worst first.

    Raises:
      InputError: ``cases.csv`` missing or malformed, or no row for ``label``.
      ValueError: ``k < 1``.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    evaluation_dir = _evaluation_dir(evaluation_dir)
    names = _summary_label_names(read_summary(evaluation_dir))
    rows = read_cases(evaluation_dir, names)
    wanted = label_name(label, names)
    selected = [r for r in rows if r["label"] == wanted]
    if not selected:
        present = sorted({r["label"] for r in rows})
        raise InputError(evaluation_dir / "cases.csv",
                         f"no rows for label {wanted!r} (labels present: {', '.join(present) or 'none'})")
    scored = sorted(((r["case"], float(r["dsc"])) for r in selected if math.isfinite(r["dsc"])),
                    key=lambda t: (t[1], t[0]))
    best = sorted(scored, key=lambda t: (-t[1], t[0]))[:k]
    taken = {c for c, _ in best} if len(scored) >= 2 * k else set()
    worst = [t for t in scored if t[0] not in taken][:k]
    return best, worst


# ---------------------------------------------------------------------------
# Formatting helpers


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _fmt_value(x: Any, metric: str = "") -> str:
    if not _is_num(x):
        return "–"
    if any(t in metric for t in ("hd95", "msd")):
        return f"{float(x):.2f}"
    return f"{float(x):.3f}"


def _fmt_diff(x: Any, metric: str = "") -> str:
    if not _is_num(x):
        return "–"
    s = _fmt_value(x, metric)
    return s if s.startswith("-") else "+" + s


def _fmt_p(x: Any) -> str:
    if not _is_num(x):
        return "–"
    x = float(x)
    if x < 0.001:
        return "< 0.001"
    return f"{x:.2g}" if x < 0.01 else f"{x:.3f}"


def _metric_title(metric: str) -> str:
    if metric in METRIC_NAMES:
        return METRIC_NAMES[metric]
    if metric.startswith("sds_") and metric.endswith("mm"):
        return f"SDS at {metric[4:-2]} mm"
    return metric


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _flat_items(d: Mapping, limit: int = 400) -> list[tuple[str, str]]:
    out = []
    for key, value in d.items():
        if isinstance(value, (dict, list, tuple)):
            text = json.dumps(value, default=str, sort_keys=isinstance(value, dict))
        else:
            text = str(value)
        if len(text) > limit:
            text = text[: limit - 1] + "…"
        out.append((str(key), text))
    return out


def _spread_text(spread: Any, metric: str) -> str:
    if not isinstance(spread, dict):
        return ""
    parts = []
    if _is_num(spread.get("sd")):
        parts.append(f"SD {_fmt_value(spread['sd'], metric)}")
    if _is_num(spread.get("min")) and _is_num(spread.get("max")):
        parts.append(f"{_fmt_value(spread['min'], metric)}–{_fmt_value(spread['max'], metric)}")
    n = spread.get("n_seeds")
    if _is_num(n):
        parts.append(f"{int(n)} seed{'s' if int(n) != 1 else ''}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# Section builders


def _setup_order(inputs: ReportInputs) -> list[str]:
    runs = list((inputs.comparison or {}).get("runs") or [])
    order = [r for r in runs if r in inputs.evaluations]
    order += [s for s in inputs.evaluations if s not in order]
    order += [s for s in inputs.training_logs if s not in order]
    return order


def _comparison_rows(comparison: Mapping | None, seed_spread: Mapping | None) -> tuple[list[dict], list[str]]:
    if not comparison:
        return [], []
    runs = [str(r) for r in comparison.get("runs") or []]
    first = runs[0] if runs else ""
    out = []
    for row in comparison.get("rows") or []:
        if not isinstance(row, dict):
            continue
        label, metric = str(row.get("label", "")), str(row.get("metric", ""))
        spreads = ((seed_spread or {}).get(label) or {}).get(metric) or {}
        entries = []
        for run in runs:
            get = lambda key: (row.get(key) or {}).get(run)  # noqa: E731
            lo, hi = get("ci_low"), get("ci_high")
            p_holm = get("p_holm")
            entries.append({
                "run": run,
                "value": _fmt_value(get("values"), metric),
                "diff": "" if run == first else _fmt_diff(get("diff"), metric),
                "ci": "" if run == first else (
                    f"[{_fmt_diff(lo, metric)}, {_fmt_diff(hi, metric)}]" if _is_num(lo) and _is_num(hi) else "–"),
                "p": "" if run == first else _fmt_p(get("p")),
                "p_holm": "" if run == first else _fmt_p(p_holm),
                "significant": _is_num(p_holm) and float(p_holm) < 0.05,
                "n_pairs": "" if run == first or get("n_pairs") is None else str(get("n_pairs")),
                "spread": _spread_text(spreads.get(run), metric),
            })
        kind = str(row.get("kind", ""))
        title = _metric_title(metric)
        if kind == "per_case" and (metric in DISTRIBUTION_METRICS or metric.startswith("sds_")):
            unit = " (mm)" if title.endswith(" (mm)") else ""
            title = title.removesuffix(unit) + ", mean per case" + unit
        out.append({"label": label, "metric": title, "kind": kind.replace("_", "-"),
                    "entries": entries})
    return out, runs


def _mean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values if _is_num(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def write_report(inputs: ReportInputs, out_path: str | os.PathLike) -> Path:
    """Render the self-contained HTML report and write it atomically.

    Args:
      inputs: see :class:`ReportInputs`.
      out_path: the ``report.html`` to write.

    Returns:
      ``out_path`` as a Path.

    Raises:
      InputError: an evaluation folder or its ``cases.csv`` is missing or
        malformed (named in the message); nothing is written then.
    """
    out_path = Path(out_path)
    if out_path.exists() and out_path.is_dir():
        raise InputError(out_path, "report path is a directory; give a file name such as report.html")
    setups = _setup_order(inputs)

    # Read everything first so a bad input fails before anything is drawn or written.
    evals: dict[str, dict[int, dict]] = {}
    for setup, per_seed in inputs.evaluations.items():
        evals[setup] = {}
        for seed, folder in sorted(per_seed.items(), key=lambda kv: (not isinstance(kv[0], int),
                                                                     kv[0] if isinstance(kv[0], int) else str(kv[0]))):
            summary = read_summary(folder)
            names = _summary_label_names(summary)
            evals[setup][seed] = {
                "dir": Path(folder),
                "summary": summary,
                "cases": read_cases(folder, names),
                "lesions": read_lesions(folder, names),
            }
    all_evals = [e for per in evals.values() for e in per.values()]
    labels = list(dict.fromkeys(r["label"] for e in all_evals for r in e["cases"]))
    multi_seed = any(len(per) > 1 for per in evals.values())

    def key_of(case: str, seed: Any) -> Any:
        return (case, seed) if multi_seed else case

    # Per-case distributions.
    columns = {k for e in all_evals for r in e["cases"] for k in r}
    metrics = [m for m in DISTRIBUTION_METRICS if m in columns]
    distributions = []
    for metric in metrics:
        data = {lab: {s: {} for s in setups if s in evals} for lab in labels}
        for setup, per in evals.items():
            for seed, e in per.items():
                for r in e["cases"]:
                    data[r["label"]][setup][key_of(r["case"], seed)] = r.get(metric, math.nan)
        distributions.append({"title": _metric_title(metric),
                              "img": _png_uri(plots.paired_distribution_png(metric, data, setups=[s for s in setups if s in evals]))})
    if not distributions:
        distributions.append({"title": "Per-case metrics",
                              "img": _png_uri(plots.no_data_png("Per-case metrics", "no evaluation folders"))})

    # Lesion detection by size, pooled over seeds.
    size_data: dict[str, dict[str, list]] = {lab: {} for lab in labels}
    size_missing = []
    for setup, per in evals.items():
        vols: dict[str, list] = {lab: [] for lab in labels}
        dets: dict[str, list] = {lab: [] for lab in labels}
        edges = plots.DEFAULT_SIZE_EDGES_ML
        for seed, e in per.items():
            edges = _size_edges(e["summary"])
            if e["lesions"] is None:
                size_missing.append(f"{setup} seed {seed}: no lesions.csv in {e['dir']}")
                continue
            for r in e["lesions"]:
                if r["source"] == "gt" and r["label"] in vols:
                    vols[r["label"]].append(r["volume_ml"])
                    dets[r["label"]].append(r["detected"])
        for lab in labels:
            size_data[lab][setup] = plots.size_bins(vols[lab], dets[lab], edges)
    size_img = _png_uri(plots.size_sensitivity_png(size_data, setups=[s for s in setups if s in evals]))
    size_table = []
    for lab in labels:
        for setup in setups:
            bins = size_data.get(lab, {}).get(setup)
            if bins:
                size_table.append({"label": lab, "setup": setup,
                                   "cells": [f"{d}/{t}" if t else "–" for _, d, t in bins]})
    first_bins = next((bins for per in size_data.values() for bins in per.values() if bins), [])
    size_bin_header = [name for name, _, _ in first_bins]

    # Lesion precision / sensitivity per label, per seed and pooled (from cases.csv counts).
    ps_data: dict[str, dict[str, list]] = {lab: {} for lab in labels}
    ps_table = []
    have_counts = {"n_gt_lesions", "n_gt_detected", "n_pred_lesions", "n_pred_matched"} <= columns
    if have_counts:
        for lab in labels:
            for setup in setups:
                if setup not in evals:
                    continue
                tot = {"gt": 0.0, "det": 0.0, "pred": 0.0, "match": 0.0}
                points = []
                for seed, e in evals[setup].items():
                    s = {"gt": 0.0, "det": 0.0, "pred": 0.0, "match": 0.0}
                    for r in e["cases"]:
                        if r["label"] != lab:
                            continue
                        for k_, col in (("gt", "n_gt_lesions"), ("det", "n_gt_detected"),
                                        ("pred", "n_pred_lesions"), ("match", "n_pred_matched")):
                            if _is_num(r.get(col)):
                                s[k_] += float(r[col])
                    points.append((_ratio(s["det"], s["gt"]), _ratio(s["match"], s["pred"])))
                    for k_ in tot:
                        tot[k_] += s[k_]
                ps_data[lab][setup] = points
                ps_table.append({
                    "label": lab, "setup": setup, "n_seeds": len(points),
                    "sens": f"{_fmt_value(_ratio(tot['det'], tot['gt']))} ({int(tot['det'])}/{int(tot['gt'])})",
                    "prec": f"{_fmt_value(_ratio(tot['match'], tot['pred']))} ({int(tot['match'])}/{int(tot['pred'])})",
                })
    ps_img = _png_uri(plots.precision_sensitivity_png(ps_data, setups=[s for s in setups if s in evals]))

    # Per-set-up summary (mean over seeds), from summary.json where present, else pooled from cases.csv.
    summary_rows = []
    for setup in setups:
        if setup not in evals:
            continue
        for lab in labels:
            dscagg, dsc_mean = [], []
            for e in evals[setup].values():
                block = _summary_label_block(e["summary"], lab)
                value = block.get("dscagg")
                if not _is_num(value):
                    rows = [r for r in e["cases"] if r["label"] == lab]
                    inter = sum(r.get("intersection_ml", math.nan) for r in rows)
                    denom = sum(r.get("gt_volume_ml", math.nan) + r.get("pred_volume_ml", math.nan) for r in rows)
                    value = 2 * inter / denom if _is_num(inter) and _is_num(denom) and denom > 0 else math.nan
                dscagg.append(value)
                dsc_mean.append(_mean([r.get("dsc", math.nan) for r in e["cases"] if r["label"] == lab]))
            summary_rows.append({"setup": setup, "label": lab, "n_seeds": len(evals[setup]),
                                 "n_cases": len({r["case"] for e in evals[setup].values()
                                                 for r in e["cases"] if r["label"] == lab}),
                                 "dscagg": _fmt_value(_mean(dscagg)), "dsc_mean": _fmt_value(_mean(dsc_mean))})

    # Training curves.
    curves: dict[str, list] = {}
    training_missing = []
    for setup, entries in inputs.training_logs.items():
        grouped: dict[str, list[Path]] = {}
        for run_label, path in entries:
            if Path(path).is_file():
                grouped.setdefault(str(run_label), []).append(Path(path))
            else:
                training_missing.append(f"{setup}, {run_label}: {path} not found")
        curves[setup] = [(run_label, plots.parse_training_log(paths)) for run_label, paths in grouped.items()]
    training_img = _png_uri(plots.training_curves_png(curves, setups=[s for s in setups if s in curves]))
    training_table = [{"setup": s, "run": r, "epochs": len(log),
                       "last_train": _fmt_value(log.train_loss[-1] if len(log) else math.nan),
                       "last_val": _fmt_value(log.val_loss[-1] if len(log) else math.nan),
                       "last_dice": ", ".join(_fmt_value(v) for v in log.pseudo_dice[-1]) if len(log) else "–"}
                      for s, runs in curves.items() for r, log in runs]

    # Overlays.
    overlays = []
    for caption, path in inputs.overlays:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError:
            overlays.append({"caption": caption, "img": None, "problem": f"{path}: not found"})
            continue
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            overlays.append({"caption": caption, "img": None, "problem": f"{path}: not a PNG file"})
            continue
        overlays.append({"caption": caption, "img": _png_uri(data), "problem": None})

    comparison_rows, runs = _comparison_rows(inputs.comparison, inputs.seed_spread)
    n_cases = (inputs.comparison or {}).get("n_cases")
    if not _is_num(n_cases):
        n_cases = max((len({r["case"] for r in e["cases"]}) for e in all_evals), default=0)
    n_seeds = max((len(per) for per in evals.values()), default=0)

    settings_items = _flat_items(inputs.settings or {})
    comparison_settings = _flat_items((inputs.comparison or {}).get("settings") or {})
    eval_settings = next((e["summary"].get("settings") for e in all_evals
                          if isinstance(e["summary"].get("settings"), dict)), None)
    manifest_items = _flat_items(inputs.manifest or {}, limit=200)
    manifest_json = json.dumps(inputs.manifest, indent=2, default=str, sort_keys=True) if inputs.manifest else ""

    html = _template().render(
        title=inputs.title,
        sections=SECTIONS,
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        version=getattr(vadice, "__version__", "?"),
        setups=setups,
        settings_items=settings_items,
        comparison_settings=comparison_settings,
        eval_settings=_flat_items(eval_settings or {}),
        manifest_items=manifest_items,
        manifest_json=manifest_json,
        eval_dirs=[(s, seed, str(e["dir"])) for s, per in evals.items() for seed, e in per.items()],
        comparison_rows=comparison_rows,
        runs=runs,
        baseline=runs[0] if runs else (setups[0] if setups else ""),
        has_spread=bool(inputs.seed_spread),
        summary_rows=summary_rows,
        distributions=distributions,
        size_img=size_img,
        size_table=size_table,
        size_bin_header=size_bin_header,
        size_missing=size_missing,
        ps_img=ps_img,
        ps_table=ps_table,
        have_counts=have_counts,
        training_img=training_img,
        training_table=training_table,
        training_missing=training_missing,
        overlays=overlays,
        user_notes=list(inputs.notes or []),
        n_cases=int(n_cases),
        n_seeds=n_seeds,
    )
    return write_text(out_path, html)


def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE)


# The template lives in this module (not a package data file) so an installed
# wheel always has it; it loads nothing from the network: inline CSS, no scripts.
TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="vadice {{ version }}">
<title>{{ title }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 1.5em 3em; color: #222; line-height: 1.45; }
h1 { margin-top: 1em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
nav ol { columns: 2; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.group-start td { border-top: 2px solid #999; }
.sig { font-weight: bold; color: #b00020; }
.muted { color: #777; }
.warn { background: #fff4d6; border-left: 4px solid #f0b400; padding: .5em .8em; margin: .8em 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; } .gallery figure { flex: 0 1 360px; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .8em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="muted">Generated by vadice {{ version }} on {{ generated }}. Set-ups: {{ setups | join(", ") or "none" }};
{{ n_cases }} case{{ "s" if n_cases != 1 }}; up to {{ n_seeds }} seed{{ "s" if n_seeds != 1 }} per set-up.</p>
{% for note in user_notes %}
<div class="warn">{{ note }}</div>
{% endfor %}
<nav><ol>
{% for id, heading in sections %}<li><a href="#{{ id }}">{{ heading }}</a></li>
{% endfor %}
</ol></nav>

<section id="settings">
<h2>Settings</h2>
{% if settings_items %}
<table><tr><th>setting</th><th>value</th></tr>
{% for k, v in settings_items %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>
{% endfor %}</table>
{% else %}<p class="muted">No experiment settings given.</p>{% endif %}
{% if eval_settings %}
<h3>Evaluation settings</h3>
<p class="muted">From the first evaluation folder's summary.json (the comparison checks that all evaluations share them).</p>
<table>{% for k, v in eval_settings %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
{% endif %}
{% if comparison_settings %}
<h3>Comparison settings</h3>
<table>{% for k, v in comparison_settings %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
{% endif %}
<h3>Run manifest</h3>
{% if manifest_items %}
<table>{% for k, v in manifest_items %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
<details><summary>Full manifest (JSON)</summary><pre>{{ manifest_json }}</pre></details>
{% else %}<p class="muted">No run manifest given.</p>{% endif %}
{% if eval_dirs %}
<details><summary>Evaluation folders read</summary>
<table><tr><th>set-up</th><th>seed</th><th>folder</th></tr>
{% for s, seed, d in eval_dirs %}<tr><td>{{ s }}</td><td>{{ seed }}</td><td>{{ d }}</td></tr>{% endfor %}
</table></details>
{% endif %}
</section>

<section id="comparison">
<h2>Comparison table</h2>
{% if comparison_rows %}
<p>Each set-up against <b>{{ baseline }}</b> (the first). Δ = set-up − {{ baseline }}. 95 % CI: patient-level
bootstrap interval of Δ (cohort metrics). p: Wilcoxon signed-rank on paired per-case values; Holm p: adjusted
across all tests of the table{% if has_spread %}; seed spread: for the first set-up its value across seeds, for the others their Δ computed seed by seed (SD, min–max){% endif %}.
<span class="sig">Bold red</span> = Holm-adjusted p &lt; 0.05.</p>
<table>
<tr><th>label</th><th>metric</th><th>kind</th><th>set-up</th><th>value</th><th>Δ vs {{ baseline }}</th>
<th>95 % CI of Δ</th><th>p</th><th>Holm p</th><th>pairs</th>{% if has_spread %}<th>seed spread</th>{% endif %}</tr>
{% for row in comparison_rows %}
{% for e in row.entries %}
<tr{% if loop.first %} class="group-start"{% endif %}>
{% if loop.first %}<td rowspan="{{ row.entries | length }}">{{ row.label }}</td>
<td rowspan="{{ row.entries | length }}">{{ row.metric }}</td>
<td rowspan="{{ row.entries | length }}">{{ row.kind }}</td>{% endif %}
<td>{{ e.run }}</td><td class="num">{{ e.value }}</td><td class="num">{{ e.diff }}</td><td class="num">{{ e.ci }}</td>
<td class="num">{{ e.p }}</td><td class="num{% if e.significant %} sig{% endif %}">{{ e.p_holm }}</td>
<td class="num">{{ e.n_pairs }}</td>{% if has_spread %}<td class="num">{{ e.spread }}</td>{% endif %}
</tr>
{% endfor %}
{% endfor %}
</table>
{% else %}
<p class="muted">No comparison given (run <code>vadice compare</code> on two or more evaluations).</p>
{% endif %}
{% if summary_rows %}
<h3>Per-set-up summary</h3>
<p class="muted">Mean over seeds of each evaluation's DSCagg and mean per-case DSC.</p>
<table><tr><th>set-up</th><th>label</th><th>DSCagg</th><th>DSC mean</th><th>cases</th><th>seeds</th></tr>
{% for r in summary_rows %}<tr><td>{{ r.setup }}</td><td>{{ r.label }}</td><td class="num">{{ r.dscagg }}</td>
<td class="num">{{ r.dsc_mean }}</td><td class="num">{{ r.n_cases }}</td><td class="num">{{ r.n_seeds }}</td></tr>
{% endfor %}</table>
{% endif %}
</section>

<section id="distributions">
<h2>Per-case distributions</h2>
<p>One point per case{% if n_seeds > 1 %} and seed{% endif %}; grey lines join the same case{% if n_seeds > 1 %}
and seed{% endif %} across set-ups, so a set-up that helps most cases shows lines sloping the same way. Boxes: median
and quartiles. Cases where a metric is undefined (NaN: both masks empty for DSC, one side empty for distances)
are left out; <i>n</i> under each box counts the points drawn.</p>
{% for d in distributions %}
<figure><img src="{{ d.img }}" alt="{{ d.title }}"><figcaption>{{ d.title }}</figcaption></figure>
{% endfor %}
</section>

<section id="lesion-size">
<h2>Sensitivity by lesion size</h2>
<p>Fraction of truth lesions (connected components) detected, by truth lesion volume, pooled over cases and seeds
per set-up. Labels on bars: detected/total. Small bins hold few lesions: a bar of 1/2 is not a rate.</p>
<figure><img src="{{ size_img }}" alt="Sensitivity by lesion size"></figure>
{% if size_table %}
<table><tr><th>label</th><th>set-up</th>{% for b in size_bin_header %}<th>{{ b }}</th>{% endfor %}</tr>
{% for r in size_table %}<tr><td>{{ r.label }}</td><td>{{ r.setup }}</td>{% for c in r.cells %}<td class="num">{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endif %}
{% for m in size_missing %}<p class="muted">{{ m }}</p>{% endfor %}
</section>

<section id="precision-sensitivity">
<h2>Precision and sensitivity per label</h2>
<p>Sensitivity: detected truth lesions / truth lesions. Precision: predicted components that match a truth lesion /
predicted components. Pooled over all cases; one small point per seed, the large point is their mean.</p>
<figure><img src="{{ ps_img }}" alt="Precision and sensitivity per label"></figure>
{% if ps_table %}
<table><tr><th>label</th><th>set-up</th><th>sensitivity (detected/total)</th><th>precision (matched/predicted)</th><th>seeds</th></tr>
{% for r in ps_table %}<tr><td>{{ r.label }}</td><td>{{ r.setup }}</td><td class="num">{{ r.sens }}</td>
<td class="num">{{ r.prec }}</td><td class="num">{{ r.n_seeds }}</td></tr>
{% endfor %}</table>
{% elif not have_counts %}<p class="muted">cases.csv has no lesion-count columns.</p>{% endif %}
</section>

<section id="training">
<h2>Training curves</h2>
<p>From nnU-Net's training logs. Losses are nnU-Net's (Dice + cross-entropy, negative values: lower is better);
the pseudo Dice is nnU-Net's quick estimate on validation patches, not the evaluation above.</p>
<figure><img src="{{ training_img }}" alt="Training curves"></figure>
{% if training_table %}
<table><tr><th>set-up</th><th>run</th><th>epochs</th><th>last train loss</th><th>last val loss</th><th>last pseudo Dice</th></tr>
{% for r in training_table %}<tr><td>{{ r.setup }}</td><td>{{ r.run }}</td><td class="num">{{ r.epochs }}</td>
<td class="num">{{ r.last_train }}</td><td class="num">{{ r.last_val }}</td><td class="num">{{ r.last_dice }}</td></tr>
{% endfor %}</table>
{% endif %}
{% for m in training_missing %}<p class="muted">{{ m }}</p>{% endfor %}
</section>

<section id="cases">
<h2>Best and worst cases</h2>
<p>Contours on the axial slice with the largest tumour burden: solid = prediction, dashed = truth;
GTVp red, GTVn cyan. Pixel aspect follows the voxel spacing; the image is shown in voxel order.</p>
{% if overlays %}
<div class="gallery">
{% for o in overlays %}
<figure>{% if o.img %}<img src="{{ o.img }}" alt="{{ o.caption }}">{% else %}<p class="muted">{{ o.problem }}</p>{% endif %}
<figcaption>{{ o.caption }}</figcaption></figure>
{% endfor %}
</div>
{% else %}<p class="muted">No overlays given.</p>{% endif %}
</section>

<section id="notes">
<h2>Notes</h2>
{% for note in user_notes %}<div class="warn">{{ note }}</div>
{% endfor %}
<h3>How to read this report</h3>
<ul>
<li><b>DSCagg</b> is the HNTS-MRG 2024 ranking metric: per structure, 2·Σ|A∩B| / Σ(|A|+|B|) with volumes pooled over
all cases; the challenge ranks by the mean of GTVp and GTVn. Pooling weights large tumours heavily, so a missed
small node barely moves it: read it together with per-case DSC and the lesion-wise sensitivity by size.</li>
<li><b>Δ</b> is each set-up minus {{ baseline or "the first set-up" }}. The <b>95 % CI</b> (cohort metrics) is a
patient-level bootstrap interval of Δ: an interval that contains 0 means the data are compatible with no difference.</li>
<li><b>p</b> is the Wilcoxon signed-rank test on paired per-case values (same case{% if n_seeds > 1 %} and seed{% endif %});
<b>Holm p</b> is adjusted for testing many metrics and labels at once. Judge significance on Holm p only.</li>
<li>With few cases ({{ n_cases }} here) and few seeds ({{ n_seeds }}), differences are unlikely to be significant, and
a non-significant p is not evidence that set-ups are equal: it may only mean too few cases.</li>
<li>Training is noisy: retraining the same set-up with another seed can change lesion sensitivity by more than the
differences between set-ups (on a synthetic probe, node sensitivity of one set-up ranged 0.77–0.92 over three seeds).
{% if has_spread %}Compare each Δ with the seed spread next to it; a Δ inside that spread is within training noise.
{% else %}Run several seeds (<code>--seeds 0,1,2</code>) to see this spread next to each difference.{% endif %}</li>
<li>Empty masks: DSC is undefined (NaN) when truth and prediction are both empty; surface distances are undefined when
one side is empty. Such values are excluded from means and plots and counted in each evaluation's summary.json.</li>
</ul>
</section>
</body>
</html>
"""
