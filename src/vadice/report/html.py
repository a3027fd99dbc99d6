"""The self-contained ``report.html`` of an experiment.

The Jinja template lives in :mod:`vadice.report.template`.

Reads what the evaluation and comparison steps wrote (``cases.csv``,
``summary.json``, ``comparison.json``) and nnU-Net's training logs, draws the
figures, and renders one HTML file with every image embedded as a base64 data
URI and inline CSS: it opens offline, can be mailed, and archived next to the
run. Every cohort number (DSCagg, pooled lesion sensitivity and precision,
size bins, per-seed values, Δ, CI, verdict) is taken from ``comparison.json``,
computed once by :mod:`vadice.metrics.compare`; evaluation folders are read
with that module's reader, for the per-case distributions and the overlays.

The report opens with the answer (warnings, the headline numbers with their
differences, CIs and verdicts, one figure) and ends with settings and manifest.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2

import vadice
from vadice import registry
from vadice.io import InputError, write_text
from vadice.metrics.compare import load_evaluation
from vadice.report import plots
from vadice.report.comparison import headline_rows
from vadice.report.template import TEMPLATE

# (id, heading) of every section, in order; tests and docs rely on these.
SECTIONS = (
    ("answer", "Answer"),
    ("comparison", "All metrics"),
    ("inputs", "What the numbers rest on"),
    ("distributions", "Per-case distributions"),
    ("lesion-size", "Sensitivity by lesion size"),
    ("precision-sensitivity", "Precision and sensitivity per label"),
    ("froc", "Operating points (FROC)"),
    ("training", "Training curves"),
    ("cases", "Best and worst cases"),
    ("notes", "How to read this report"),
    ("settings", "Settings and manifest"),
)
DISTRIBUTION_METRICS = ("dsc", "sds", "msd", "hd95")
METRIC_NAMES = {
    "dscagg": "DSCagg",
    "dscagg_mean": "DSCagg (mean of labels)",
    "dsc": "DSC",
    "sds": "SDS",
    "msd": "MSD (mm)",
    "hd95": "HD95 (mm)",
    "lesion_sensitivity": "Lesion sensitivity",
    "lesion_precision": "Lesion precision",
}


@dataclass
class ReportInputs:
    """Everything :func:`write_report` needs; paths point at files the experiment wrote.

    Attributes:
      title: report title.
      settings: experiment settings shown at the end (flat or nested dict).
      notes: free-text notes shown at the top (e.g. the CPU-preset caveat).
      comparison: content of ``comparison.json`` (``vadice compare``), or None.
      evaluations: ``{setup: {seed: evaluation folder}}`` (``vadice evaluate``
        folders). Set-up order is the display order unless ``comparison["runs"]`` gives one.
      training_logs: ``{setup: [(run label, training_log_*.txt path), ...]}``;
        entries with the same run label are merged (a resumed training writes
        a second log file).
      overlays: ``[(caption, PNG path), ...]`` for Best and worst cases.
      manifest: optional run manifest (versions, commit, seeds, ...).
      froc_comparison: content of ``froc_comparison.json`` (``vadice froc-compare``), or None: the FROC
        section then says that none was given.
    """

    title: str
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    comparison: dict | None = None
    evaluations: dict[str, dict[int, Path]] = field(default_factory=dict)
    training_logs: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)
    overlays: list[tuple[str, Path]] = field(default_factory=list)
    manifest: dict | None = None
    froc_comparison: dict | None = None


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
      evaluation_dir: a ``vadice evaluate`` folder.
      label: label name (``"GTVn"``) or value (``2``) as in its summary.json.
      k: how many cases in each list.

    Returns:
      ``(best, worst)``: lists of ``(case, dsc)``, best first / worst first.

    Raises:
      InputError: a malformed evaluation folder, or no row for ``label``.
      ValueError: ``k < 1``.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    summary, rows, _ = load_evaluation(evaluation_dir)
    by_value = {str(v): name for name, v in (summary["settings"].get("labels") or {}).items()}
    wanted = by_value.get(str(label), str(label))
    selected = [r for r in rows if r["label"] == wanted]
    if not selected:
        present = sorted({r["label"] for r in rows})
        raise InputError(Path(evaluation_dir) / "cases.csv",
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
    if metric.startswith("lesion_sensitivity "):
        return f"Lesion sensitivity, truth lesions {metric.split(' ', 1)[1]}"
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


# ---------------------------------------------------------------------------
# Section builders


def training_loss(setup: str) -> str:
    """The loss a set-up trains with, in words (the registry's), for the training curves."""
    known = registry.SETUPS.get(setup)
    return known.loss if known else "nnU-Net's loss of this trainer"


def code_versions(manifest: Mapping | None) -> tuple[str, str | None]:
    """The code versions a run's units trained on, as one line, and a warning when there are several.

    Returns:
      ``(line, warning or None)`` from the manifest's ``unit_code_versions`` ({version: [unit keys]});
      a manifest without them (an older run) gives "not recorded" and no warning.
    """
    versions = (manifest or {}).get("unit_code_versions") or {}
    if not versions:
        return "not recorded", None
    line = "; ".join(f"{v} ({len(units)} unit{'s' if len(units) != 1 else ''})" for v, units in versions.items())
    if len(versions) == 1:
        return line, None
    return line, (f"The units of this run trained on {len(versions)} code versions ({line}): differences between "
                  "set-ups may partly be differences of code.")


def _setup_order(inputs: ReportInputs) -> list[str]:
    runs = list((inputs.comparison or {}).get("runs") or [])
    order = [r for r in runs if r in inputs.evaluations]
    order += [s for s in inputs.evaluations if s not in order]
    order += [s for s in inputs.training_logs if s not in order]
    return order


def _entries(row: Mapping, runs: Sequence[str]) -> list[dict]:
    """One display entry per run of a comparison row: value (with counts), Δ, CI, per-seed Δ, verdict, p."""
    metric = str(row["metric"])
    first = runs[0]
    out = []
    for run in runs:
        value = _fmt_value(row["values"].get(run), metric)
        counts = (row.get("counts") or {}).get(run)
        if counts:
            value += f" ({counts[0]}/{counts[1]})"
        undefined = ""
        if row["kind"] == "per_case":
            undefined = f"{row['n_undefined'][run]} of {row['n_values'][run]}"
        entry = {"run": run, "value": value, "undefined": undefined, "diff": "", "ci": "", "seeds": "",
                 "verdict": "", "p": "", "p_holm": "", "n_pairs": str(row["n_pairs"].get(run, "")),
                 "significant": False, "consistent": False, "boot": ""}
        if run != first:
            lo, hi = row["ci_low"].get(run), row["ci_high"].get(run)
            sd = row["seed_diffs"].get(run) or []
            p_holm = row["p_holm"].get(run)
            entry.update(
                diff=_fmt_diff(row["diff"].get(run), metric),
                ci=f"[{_fmt_diff(lo, metric)}, {_fmt_diff(hi, metric)}]" if _is_num(lo) and _is_num(hi) else "–",
                seeds=(", ".join(_fmt_diff(x, metric) for x in sd) + f" ({row['n_seeds_agree'][run]} of {len(sd)} "
                       "agree)") if sd else "–",
                verdict=row["verdict"].get(run) or "", consistent=row["verdict"].get(run) == "consistent",
                p=_fmt_p(row["p"].get(run)), p_holm=_fmt_p(p_holm),
                significant=_is_num(p_holm) and float(p_holm) < 0.05,
                boot=str(row["n_boot_valid"].get(run, "")),
            )
        out.append(entry)
    return out


def _table_rows(rows: Sequence[Mapping], runs: Sequence[str]) -> list[dict]:
    out = []
    for row in rows:
        title = _metric_title(str(row["metric"]))
        if row["kind"] == "per_case":
            unit = " (mm)" if title.endswith(" (mm)") else ""
            title = title.removesuffix(unit) + ", mean per case" + unit
        out.append({"label": row["label"], "metric": title, "kind": row["kind"].replace("_", "-"),
                    "flag": bool(row.get("undefined_differ")), "entries": _entries(row, runs)})
    return out


def froc_rows(froc: Mapping) -> list[dict]:
    """Table rows of a FROC comparison: per view and set-up, CPM, ΔCPM and the matched operating points."""
    out = []
    for view, blocks in (froc.get("views") or {}).items():
        for name, b in blocks.items():
            d, own, at = b["delta_cpm"], b["operating_point"], b["at_reference_point"]
            out.append({
                "view": "all lesions" if view == "all" else view, "setup": name,
                "cpm": _fmt_value(b["pooled"]["cpm"]),
                "cpm_seeds": ", ".join(_fmt_value(s["cpm"]) for s in b["seeds"]),
                "delta": "reference" if d is None else f"{_fmt_diff(d['diff'])} [{_fmt_diff(d['low'])}, "
                                                       f"{_fmt_diff(d['high'])}]",
                "delta_seeds": "" if d is None else ", ".join(_fmt_diff(x) for x in d["seed_diffs"]),
                "verdict": "" if d is None else d["verdict"],
                "consistent": d is not None and d["verdict"] == "consistent",
                "own": f"{_fmt_value(own['sensitivity'])} / {_fmt_value(own['fp_per_patient'])} / "
                       f"{_fmt_value(own['precision'])}",
                "at_ref": "" if at is None else f"{_fmt_value(at['sensitivity_at_fp'])} / "
                                                f"{_fmt_value(at['precision_at_sensitivity'])}",
            })
    return out


def write_report(inputs: ReportInputs, out_path: str | os.PathLike) -> Path:
    """Render the self-contained HTML report and write it atomically.

    Args:
      inputs: see :class:`ReportInputs`.
      out_path: the ``report.html`` to write.

    Returns:
      ``out_path`` as a Path.

    Raises:
      InputError: an evaluation folder is missing or malformed (named in the
        message); nothing is written then.
    """
    out_path = Path(out_path)
    if out_path.exists() and out_path.is_dir():
        raise InputError(out_path, "report path is a directory; give a file name such as report.html")
    setups = _setup_order(inputs)
    comparison = inputs.comparison or {}
    runs = [str(r) for r in comparison.get("runs") or []]
    rows = [r for r in comparison.get("rows") or [] if isinstance(r, dict)]

    # Read everything first so a bad input fails before anything is drawn or written.
    evals: dict[str, dict[Any, dict]] = {}
    for setup, per_seed in inputs.evaluations.items():
        evals[setup] = {}
        for seed, folder in sorted(per_seed.items(), key=lambda kv: str(kv[0])):
            summary, cases, _ = load_evaluation(folder)
            evals[setup][seed] = {"dir": Path(folder), "summary": summary, "cases": cases}
    all_evals = [e for per in evals.values() for e in per.values()]
    labels = list(dict.fromkeys(r["label"] for e in all_evals for r in e["cases"]))
    multi_seed = any(len(per) > 1 for per in evals.values())
    shown = [s for s in setups if s in evals]

    # The answer: headline rows and their figure.
    headline = _table_rows(headline_rows(comparison), runs) if rows else []
    forest = [(f"{r['label']} {_metric_title(r['metric'])}",
               [(run, r["diff"][run], r["ci_low"][run], r["ci_high"][run], r["seed_diffs"][run] or [])
                for run in runs[1:]]) for r in headline_rows(comparison)] if rows else []
    forest_img = _png_uri(plots.forest_png(forest, setups=runs, baseline=runs[0] if runs else "baseline"))
    table = _table_rows(rows, runs)

    # Per-case distributions (one point per case, and seed).
    distributions = []
    for metric in DISTRIBUTION_METRICS:
        data = {lab: {s: {} for s in shown} for lab in labels}
        for setup, per in evals.items():
            for seed, e in per.items():
                for r in e["cases"]:
                    data[r["label"]][setup][(r["case"], seed) if multi_seed else r["case"]] = r[metric]
        distributions.append({"title": _metric_title(metric),
                              "img": _png_uri(plots.paired_distribution_png(metric, data, setups=shown))})

    # Size bins, precision and sensitivity: the comparison's pooled counts (one computation).
    size_data: dict[str, dict[str, list]] = {}
    ps_data: dict[str, dict[str, list]] = {}
    ps_table = []
    for row in rows:
        lab, metric = row["label"], str(row["metric"])
        if metric.startswith("lesion_sensitivity "):
            for run in runs:
                det, tot = (row.get("counts") or {}).get(run) or (0, 0)
                size_data.setdefault(lab, {}).setdefault(run, []).append((metric.split(" ", 1)[1], det, tot))
    by_key = {(r["label"], r["metric"]): r for r in rows}
    for lab in labels:
        sens, prec = by_key.get((lab, "lesion_sensitivity")), by_key.get((lab, "lesion_precision"))
        if not sens or not prec:
            continue
        for run in runs:
            ps_data.setdefault(lab, {})[run] = list(zip(sens["seed_values"][run], prec["seed_values"][run]))
            cs, cp = sens["counts"].get(run) or (0, 0), prec["counts"].get(run) or (0, 0)
            ps_table.append({"label": lab, "setup": run, "n_seeds": len(sens["seed_values"][run]),
                             "sens": f"{_fmt_value(sens['values'][run])} ({cs[0]}/{cs[1]})",
                             "prec": f"{_fmt_value(prec['values'][run])} ({cp[0]}/{cp[1]})",
                             "sens_seeds": ", ".join(_fmt_value(v) for v in sens["seed_values"][run]),
                             "prec_seeds": ", ".join(_fmt_value(v) for v in prec["seed_values"][run])})
    size_img = _png_uri(plots.size_sensitivity_png(size_data, setups=runs))
    size_table = [{"label": lab, "setup": run, "cells": [f"{d}/{t}" if t else "–" for _, d, t in bins]}
                  for lab, per in size_data.items() for run, bins in per.items()]
    size_bin_header = [name for name, _, _ in next((b for per in size_data.values() for b in per.values()), [])]
    ps_img = _png_uri(plots.precision_sensitivity_png(ps_data, setups=runs))

    # What the numbers rest on: per set-up inputs from the comparison.
    inputs_rows = []
    for run, info in (comparison.get("inputs") or {}).items():
        excluded = "; ".join(f"{lab}: both empty {d.get('both_empty', 0)}, truth only empty "
                             f"{d.get('gt_empty_only', 0)}, prediction only empty {d.get('pred_empty_only', 0)}"
                             + (f", penalised and included {d['penalised']}" if d.get("penalised") else "")
                             for lab, d in (info.get("excluded") or {}).items())
        inputs_rows.append({"setup": run, "seeds": (comparison.get("n_seeds") or {}).get(run, ""),
                            "missing": info.get("missing_predictions", 0),
                            "resampled": info.get("resampled_predictions", 0),
                            "excluded": excluded or "–", "notes": "; ".join(info.get("dscagg_notes") or []) or "–"})

    # Training curves, labelled with the loss each set-up trains with.
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
    training_table = [{"setup": s, "loss": training_loss(s), "run": r,
                       "epochs": len(log),
                       "last_train": _fmt_value(log.train_loss[-1] if len(log) else math.nan),
                       "last_val": _fmt_value(log.val_loss[-1] if len(log) else math.nan),
                       "last_dice": ", ".join(_fmt_value(v) for v in log.pseudo_dice[-1]) if len(log) else "–"}
                      for s, runs_ in curves.items() for r, log in runs_]
    losses = [(s, training_loss(s)) for s in setups if s in curves]

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

    froc = inputs.froc_comparison
    froc_img = _png_uri(plots.froc_png(froc, setups=runs or None)) if froc else None
    froc_settings = (froc or {}).get("settings") or {}

    n_cases = comparison.get("n_cases")
    if not _is_num(n_cases):
        n_cases = max((len({r["case"] for r in e["cases"]}) for e in all_evals), default=0)
    n_seeds = max((len(per) for per in evals.values()), default=0)
    st = comparison.get("settings") or {}
    eval_settings = next((e["summary"]["settings"] for e in all_evals), None)
    code_line, code_warning = code_versions(inputs.manifest)

    html = _template().render(
        title=inputs.title,
        sections=SECTIONS,
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        version=getattr(vadice, "__version__", "?"),
        setups=setups,
        warnings=list(comparison.get("warnings") or []) + ([code_warning] if code_warning else []),
        code_line=code_line,
        pairing=st.get("seed_pairing") or {"paired": False, "reason": "unpaired seeds"},
        verdicts=comparison.get("verdicts") or {},
        headline=headline,
        forest_img=forest_img,
        table=table,
        runs=runs,
        baseline=runs[0] if runs else (setups[0] if setups else ""),
        confidence=f"{float(st.get('confidence', 0.95)):.0%}",
        n_boot=st.get("n_boot", ""),
        zero_method=st.get("zero_method", ""),
        pseudo=list(st.get("pair_key") or ["case"]) == ["case", "seed"],
        penalty=st.get("empty_distance_penalty"),
        inputs_rows=inputs_rows,
        distributions=distributions,
        size_img=size_img,
        size_table=size_table,
        size_bin_header=size_bin_header,
        ps_img=ps_img,
        ps_table=ps_table,
        froc=froc,
        froc_img=froc_img,
        froc_table=froc_rows(froc) if froc else [],
        froc_threshold=froc_settings.get("operating_threshold", 0.5),
        froc_paired=bool(froc_settings.get("paired")),
        training_img=training_img,
        training_table=training_table,
        training_missing=training_missing,
        losses=losses,
        overlays=overlays,
        user_notes=list(inputs.notes or []),
        n_cases=int(n_cases),
        n_seeds=n_seeds,
        settings_items=_flat_items(inputs.settings or {}),
        comparison_settings=_flat_items(st),
        eval_settings=_flat_items(eval_settings or {}),
        manifest_items=_flat_items(inputs.manifest or {}, limit=200),
        manifest_json=json.dumps(inputs.manifest, indent=2, default=str, sort_keys=True) if inputs.manifest else "",
        eval_dirs=[(s, seed, str(e["dir"])) for s, per in evals.items() for seed, e in per.items()],
    )
    return write_text(out_path, html)


def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE)
