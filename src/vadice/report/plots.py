"""Report figures as PNG bytes, plus a parser for nnU-Net training logs.

Every plot function takes plain Python containers (already read from the
evaluation CSVs), skips NaN values, and returns a "no data" figure rather than
raising when there is nothing to draw: a report with one empty panel is more
useful than no report. Figures use :class:`matplotlib.figure.Figure` with the
Agg canvas directly, so no pyplot global state is touched.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from vadice.overlay import figure_to_png

# Set-up colours: the same set-up gets the same colour in every figure (order of first appearance).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
METRIC_TITLES = {
    "dsc": "DSC",
    "sds": "Surface Dice (SDS)",
    "msd": "Mean surface distance (mm)",
    "hd95": "HD95 (mm)",
}


def setup_colors(setups: Iterable[str]) -> dict[str, str]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(setups)}


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def no_data_png(title: str, message: str = "no data") -> bytes:
    """A small figure that says there is nothing to plot (instead of failing)."""
    fig = _new_figure(4.5, 2.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.45, message, ha="center", va="center", fontsize=10, color="#666666",
            transform=ax.transAxes, wrap=True)
    return figure_to_png(fig)


# ---------------------------------------------------------------------------
# Per-case distributions with paired lines


def paired_distribution_png(
    metric: str,
    data: Mapping[str, Mapping[str, Mapping[object, float]]],
    setups: Sequence[str] | None = None,
) -> bytes:
    """Box plots per set-up with each case's points joined across set-ups.

    Args:
      metric: metric name (``dsc``, ``hd95`` ...), used for titles.
      data: ``{label: {setup: {case_key: value}}}``. ``case_key`` identifies
        the pairing unit (e.g. ``(case, seed)``): points with the same key are
        joined by a line between neighbouring set-ups. NaN/None values are
        skipped (a line is drawn only where both ends are finite).
      setups: order of set-ups on the x axis (default: order of appearance).

    Returns:
      PNG bytes; one panel per label, or a "no data" figure.
    """
    title = METRIC_TITLES.get(metric, metric)
    labels = [lab for lab in data if any(_finite(v) for s in data[lab].values() for v in s.values())]
    if not labels:
        return no_data_png(title, "no finite values")
    if setups is None:
        setups = list(dict.fromkeys(s for lab in data for s in data[lab]))
    colors = setup_colors(setups)
    fig = _new_figure(max(3.6, 2.2 + 1.1 * len(setups)) * len(labels), 3.6)
    rng = np.random.default_rng(0)  # fixed jitter: identical reports for identical inputs
    for i, label in enumerate(labels):
        ax = fig.add_subplot(1, len(labels), i + 1)
        per_setup = data[label]
        keys = list(dict.fromkeys(k for s in setups for k in per_setup.get(s, {})))
        jitter = dict(zip(keys, rng.uniform(-0.12, 0.12, size=len(keys))))
        # Paired lines first so the points sit on top.
        for a, b in zip(range(len(setups)), range(1, len(setups))):
            va, vb = per_setup.get(setups[a], {}), per_setup.get(setups[b], {})
            for key in keys:
                ya, yb = va.get(key), vb.get(key)
                if _finite(ya) and _finite(yb):
                    ax.plot([a + jitter[key], b + jitter[key]], [ya, yb], color="#888888",
                            linewidth=0.6, alpha=0.45, zorder=1)
        box_data, positions = [], []
        for j, setup in enumerate(setups):
            vals = [(k, float(v)) for k, v in per_setup.get(setup, {}).items() if _finite(v)]
            if not vals:
                continue
            ys = np.array([v for _, v in vals])
            xs = np.array([j + jitter[k] for k, _ in vals])
            ax.scatter(xs, ys, s=14, color=colors[setup], edgecolor="white", linewidth=0.4, zorder=3)
            box_data.append(ys)
            positions.append(j)
        if box_data:
            ax.boxplot(box_data, positions=positions, widths=0.5, showfliers=False, zorder=2,
                       medianprops={"color": "black"}, boxprops={"color": "#444444"},
                       whiskerprops={"color": "#444444"}, capprops={"color": "#444444"})
        counts = [sum(_finite(v) for v in per_setup.get(s, {}).values()) for s in setups]
        ax.set_xticks(range(len(setups)))
        ax.set_xticklabels([f"{s}\nn={n}" for s, n in zip(setups, counts)], fontsize=8)
        ax.set_xlim(-0.6, len(setups) - 0.4)
        ax.set_title(f"{label}: {title}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_to_png(fig)


# ---------------------------------------------------------------------------
# Lesion detection


def size_sensitivity_png(
    data: Mapping[str, Mapping[str, Sequence[tuple[str, int, int]]]],
    setups: Sequence[str] | None = None,
) -> bytes:
    """Grouped bars of lesion sensitivity per size bin, one group per bin, one bar per set-up.

    Args:
      data: ``{label: {setup: [(bin_name, n_detected, n_total), ...]}}``, the
        pooled counts of the comparison's size-bin rows. Bins with no lesions show no bar and
        ``n=0``.
      setups: bar order (default: order of appearance).

    Returns:
      PNG bytes; one panel per label, each bar annotated with ``detected/total``.
    """
    title = "Lesion sensitivity by size"
    labels = [lab for lab in data if any(t for s in data[lab].values() for _, _, t in s)]
    if not labels:
        return no_data_png(title, "no truth lesions")
    if setups is None:
        setups = list(dict.fromkeys(s for lab in data for s in data[lab]))
    colors = setup_colors(setups)
    n_bins = max(len(b) for lab in labels for b in data[lab].values())
    fig = _new_figure(min(7.0, max(4.5, 0.35 * n_bins * max(1, len(setups)) + 1.5)) * len(labels), 3.8)
    width = 0.8 / max(1, len(setups))
    for i, label in enumerate(labels):
        ax = fig.add_subplot(1, len(labels), i + 1)
        bin_names: list[str] = []
        for j, setup in enumerate(setups):
            bins = list(data[label].get(setup, []))
            if len(bins) > len(bin_names):
                bin_names = [b[0] for b in bins]
            for b, (_, det, tot) in enumerate(bins):
                x = b - 0.4 + width * (j + 0.5)
                if tot > 0:
                    sens = det / tot
                    ax.bar(x, sens, width=width * 0.95, color=colors[setup])
                    ax.text(x, sens + 0.02, f"{det}/{tot}", ha="center", va="bottom", fontsize=7,
                            rotation=90 if len(setups) > 2 else 0)
                elif j == 0:
                    ax.text(b, 0.02, "no lesions", ha="center", va="bottom", fontsize=6, color="#888888")
        ax.set_xticks(range(len(bin_names)))
        ax.set_xticklabels(bin_names, fontsize=8)
        ax.set_xlim(-0.6, len(bin_names) - 0.4)
        ax.set_ylim(0, 1.25)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel("sensitivity")
        ax.set_title(f"{label}: truth lesions detected", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        handles = [Line2D([], [], color=colors[s], linewidth=6, label=s) for s in setups]
        ax.legend(handles=handles, fontsize=7, loc="upper left", ncol=max(1, len(setups)))
    fig.tight_layout()
    return figure_to_png(fig)


def forest_png(
    items: Sequence[tuple[str, Sequence[tuple[str, float, float, float, Sequence[float]]]]],
    setups: Sequence[str] | None = None,
    baseline: str = "baseline",
) -> bytes:
    """Each headline difference with its CI and its per-seed differences, one row per metric.

    Args:
      items: ``[(metric title, [(setup, Δ, ci_low, ci_high, per-seed Δs), ...]), ...]``;
        non-finite values are skipped.
      setups: colour order (default: order of appearance).
      baseline: name of the reference, for the axis label.

    Returns:
      PNG bytes: a horizontal interval per set-up and metric, a large point at
      Δ, small crosses at the per-seed Δs, and a line at 0.
    """
    title = "Differences to " + baseline
    rows = [(name, e) for name, entries in items for e in entries if _finite(e[1])]
    if not rows:
        return no_data_png(title, "no finite differences")
    if setups is None:
        setups = list(dict.fromkeys(e[0] for _, e in rows))
    colors = setup_colors([baseline] + [s for s in setups if s != baseline])
    fig = _new_figure(8.0, 1.0 + 0.32 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    for y, (name, (setup, diff, low, high, seed_diffs)) in enumerate(reversed(rows)):
        color = colors.get(setup, PALETTE[0])
        if _finite(low) and _finite(high):
            ax.plot([low, high], [y, y], color=color, linewidth=2.2, solid_capstyle="butt")
        ax.scatter([diff], [y], s=36, color=color, edgecolor="black", linewidth=0.5, zorder=3)
        sd = [float(v) for v in seed_diffs if _finite(v)]
        if sd:
            ax.scatter(sd, [y] * len(sd), s=22, marker="x", color="#333333", linewidth=0.9, zorder=4)
    ax.axvline(0.0, color="#555555", linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{name} — {e[0]}" for name, e in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"Δ = set-up − {baseline}   (bar: 95 % CI, patients then seeds; ×: one seed's Δ)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return figure_to_png(fig)


def precision_sensitivity_png(
    data: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    setups: Sequence[str] | None = None,
) -> bytes:
    """Lesion precision against sensitivity per label, one point per set-up and seed.

    Args:
      data: ``{label: {setup: [(sensitivity, precision), ...]}}``, one pair per
        seed. Pairs with a non-finite member are skipped. With several seeds the
        seeds are drawn small and their mean large, so the seed spread is
        visible next to the set-up difference.

    Returns:
      PNG bytes; one panel per label.
    """
    title = "Lesion precision vs sensitivity"
    labels = [lab for lab in data
              if any(_finite(a) and _finite(b) for s in data[lab].values() for a, b in s)]
    if not labels:
        return no_data_png(title, "no finite sensitivity/precision values")
    if setups is None:
        setups = list(dict.fromkeys(s for lab in data for s in data[lab]))
    colors = setup_colors(setups)
    fig = _new_figure(4.0 * len(labels), 3.8)
    for i, label in enumerate(labels):
        ax = fig.add_subplot(1, len(labels), i + 1)
        for setup in setups:
            pts = np.array([(a, b) for a, b in data[label].get(setup, []) if _finite(a) and _finite(b)],
                           dtype=float).reshape(-1, 2)
            if not len(pts):
                continue
            if len(pts) > 1:
                ax.scatter(pts[:, 0], pts[:, 1], s=14, color=colors[setup], alpha=0.5)
            m = pts.mean(axis=0)
            ax.scatter([m[0]], [m[1]], s=60, color=colors[setup], edgecolor="black", linewidth=0.6,
                       label=f"{setup} ({len(pts)} seed{'s' if len(pts) != 1 else ''})")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_aspect("equal")
        ax.set_xlabel("sensitivity (truth lesions detected)")
        ax.set_ylabel("precision (predicted lesions matched)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return figure_to_png(fig)


def froc_png(comparison: Mapping, setups: Sequence[str] | None = None) -> bytes:
    """FROC curves of a FROC comparison (:func:`vadice.metrics.froc_compare.compare_froc`), one panel per view.

    Per set-up: each seed's curve (thin), the pooled curve (thick) and its bootstrap band (shaded); the x axis
    is logarithmic, ticked at the CPM's FP rates, from half the lowest to 1.5 times the highest. Curves are
    drawn as the CPM reads them (:func:`vadice.metrics.froc.sensitivity_at`: linear in FP between points,
    flat past the last), sampled on that axis, so a straight segment shows bent on the log scale.

    Returns:
      PNG bytes; a "no data" figure when the comparison holds no view.
    """
    from vadice.metrics.froc import sensitivity_at

    title = "FROC"
    views = dict(comparison.get("views") or {})
    if not views:
        return no_data_png(title, "no FROC comparison")
    rates = [float(r) for r in (comparison.get("settings") or {}).get("cpm_rates") or (0.125, 8.0)]
    setups = list(setups or comparison.get("runs") or next(iter(views.values())))
    colors = setup_colors(setups)
    xs = np.geomspace(rates[0] / 2, rates[-1] * 1.5, 200)
    fig = _new_figure(4.6 * len(views), 3.9)
    for i, (view, blocks) in enumerate(views.items()):
        ax = fig.add_subplot(1, len(views), i + 1)
        for name in setups:
            b = blocks.get(name)
            if b is None:
                continue
            for seed in b["seeds"]:
                if all(_finite(v) for v in seed["sensitivity"]):
                    ax.plot(xs, sensitivity_at(seed["fp_per_patient"], seed["sensitivity"], xs), color=colors[name],
                            lw=0.7, alpha=0.45)
            band = b["pooled"]["band"]
            low, high = np.asarray(band["low"], float), np.asarray(band["high"], float)
            if np.isfinite(low).any():
                ax.fill_between(band["rates"], low, high, color=colors[name], alpha=0.18, lw=0)
            pooled = b["pooled"]
            if all(_finite(v) for v in pooled["sensitivity"]):
                cpm = pooled["cpm"]
                ax.plot(xs, sensitivity_at(pooled["fp_per_patient"], pooled["sensitivity"], xs), color=colors[name],
                        lw=2.0,
                        label=f"{name} (CPM {cpm:.3f}, {len(b['seeds'])} seed{'s' if len(b['seeds']) != 1 else ''})"
                        if _finite(cpm) else name)
        ax.set_xscale("log", base=2)
        ax.set_xlim(rates[0] / 2, rates[-1] * 1.5)
        ax.set_xticks(rates)
        ax.set_xticklabels([f"{r:g}" for r in rates])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("false-positive lesions per patient")
        ax.set_ylabel("lesion sensitivity")
        ax.set_title(f"{comparison.get('label', '')}: {'all lesions' if view == 'all' else view}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return figure_to_png(fig)


# ---------------------------------------------------------------------------
# Training logs

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
# nnU-Net v2 prints "Epoch 3", "train_loss -0.43", "val_loss -0.3", "Pseudo dice [0.61, 0.2]"
# (numpy 2 prints "[np.float32(0.61), ...]"), "Current learning rate: 0.01", "Epoch time: 12.3 s".
# nnU-Net v1 printed "epoch:  3", "train loss : -0.43", "validation loss: -0.3" and
# "Average global foreground Dice: [0.61, 0.2]"; both are accepted.
_RE_EPOCH = re.compile(r"(?:^|[\s:])(?:Epoch|epoch:)\s+(\d+)\s*$")
_RE_TRAIN = re.compile(r"\btrain(?:_| )loss\s*:?\s*" + _NUM, re.IGNORECASE)
_RE_VAL = re.compile(r"\b(?:val|validation)(?:_| )loss\s*:?\s*" + _NUM, re.IGNORECASE)
_RE_DICE = re.compile(r"(?:Pseudo dice|Average global foreground Dice)\s*:?\s*\[(.*)\]", re.IGNORECASE)
_RE_LR = re.compile(r"Current learning rate\s*:?\s*" + _NUM, re.IGNORECASE)
_RE_TIME = re.compile(r"Epoch time\s*:?\s*" + _NUM, re.IGNORECASE)
_RE_WRAPPER = re.compile(r"np\.\w+\(|numpy\.\w+\(|tensor\(|\)")


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass
class TrainingLog:
    """Per-epoch values from one or more nnU-Net ``training_log_*.txt`` files.

    All lists are aligned with ``epochs``; a value missing for an epoch is NaN
    (``pseudo_dice`` entries are then empty lists).
    """

    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    pseudo_dice: list[list[float]] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    epoch_time_s: list[float] = field(default_factory=list)

    @property
    def mean_pseudo_dice(self) -> list[float]:
        out = []
        for d in self.pseudo_dice:
            vals = [v for v in d if math.isfinite(v)]
            out.append(float(np.mean(vals)) if vals else math.nan)
        return out

    def __len__(self) -> int:
        return len(self.epochs)


def parse_training_log(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> TrainingLog:
    """Parse nnU-Net training log text into per-epoch values.

    A resumed training writes a new ``training_log_<timestamp>.txt``; pass all
    of a fold's files (any order: they are read in name order, which is time
    order) and later values of an epoch replace earlier ones.

    Args:
      paths: one log file or a sequence of them.

    Returns:
      A :class:`TrainingLog`, sorted by epoch; empty when no epoch lines were found.

    Raises:
      FileNotFoundError: a path does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    per_epoch: dict[int, dict] = {}
    for path in sorted(Path(p) for p in paths):
        epoch = None
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.rstrip()
                m = _RE_EPOCH.search(line)
                if m:
                    epoch = int(m.group(1))
                    per_epoch[epoch] = {}
                    continue
                if epoch is None:
                    continue
                rec = per_epoch[epoch]
                if (m := _RE_TRAIN.search(line)):
                    rec["train_loss"] = _to_float(m.group(1))
                elif (m := _RE_VAL.search(line)):
                    rec["val_loss"] = _to_float(m.group(1))
                elif (m := _RE_DICE.search(line)):
                    inner = _RE_WRAPPER.sub("", m.group(1))
                    rec["pseudo_dice"] = [_to_float(t.strip()) for t in inner.split(",") if t.strip()]
                elif (m := _RE_LR.search(line)):
                    rec["learning_rate"] = _to_float(m.group(1))
                elif (m := _RE_TIME.search(line)):
                    rec["epoch_time_s"] = _to_float(m.group(1))
    log = TrainingLog()
    for epoch in sorted(per_epoch):
        rec = per_epoch[epoch]
        log.epochs.append(epoch)
        log.train_loss.append(rec.get("train_loss", math.nan))
        log.val_loss.append(rec.get("val_loss", math.nan))
        log.pseudo_dice.append(rec.get("pseudo_dice", []))
        log.learning_rate.append(rec.get("learning_rate", math.nan))
        log.epoch_time_s.append(rec.get("epoch_time_s", math.nan))
    return log


def training_curves_png(
    curves: Mapping[str, Sequence[tuple[str, TrainingLog]]],
    setups: Sequence[str] | None = None,
) -> bytes:
    """Train loss, validation loss and mean pseudo Dice per epoch.

    Args:
      curves: ``{setup: [(run_label, TrainingLog), ...]}`` (run label such as
        ``"fold 0, seed 1"``). Colour = set-up; line style cycles over runs.
        NaN epochs leave gaps.

    Returns:
      PNG bytes with three panels, or a "no data" figure when no log has an epoch.
    """
    title = "Training curves"
    if not any(len(log) for runs in curves.values() for _, log in runs):
        return no_data_png(title, "no epochs found in the training logs")
    if setups is None:
        setups = list(curves)
    colors = setup_colors(setups)
    styles = ("-", "--", ":", "-.")
    fig = _new_figure(13.0, 3.8)
    panels = [("train loss", lambda g: g.train_loss), ("validation loss", lambda g: g.val_loss),
              ("mean pseudo Dice (nnU-Net validation patches)", lambda g: g.mean_pseudo_dice)]
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    handles = []
    for setup in setups:
        for r, (run_label, log) in enumerate(curves.get(setup, [])):
            if not len(log):
                continue
            style = styles[r % len(styles)]
            for ax, (_, getter) in zip(axes, panels):
                ax.plot(log.epochs, getter(log), color=colors[setup], linestyle=style, linewidth=1.1,
                        marker="." if len(log) < 30 else None, markersize=3)
            handles.append(Line2D([], [], color=colors[setup], linestyle=style, label=f"{setup}: {run_label}"))
    for ax, (name, _) in zip(axes, panels):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].legend(handles=handles[:24], fontsize=6, loc="best")
    fig.tight_layout()
    return figure_to_png(fig)
