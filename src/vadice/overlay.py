"""Contour overlays of GTVp/GTVn on one axial slice, as PNG.

One picture per case lets a user see at a glance what a number in the report
means. The slice shown is the one with the largest tumour burden, because the
middle slice of a head-and-neck MRI often holds no tumour at all.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas
directly, so nothing here touches pyplot's global state or the backend choice of
the calling program.

Floor 1 (imports ``io`` and ``lesions`` only): ``vadice.predict`` draws a case's overlay as it writes the label
map, and the report shows the same pictures.
"""

from __future__ import annotations

import io as _io
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vadice.io import write_bytes
from vadice.lesions import check_spacing

DEFAULT_LABEL_NAMES = {1: "GTVp", 2: "GTVn"}
# Red and cyan stay distinguishable on grey MRI and for the commonest colour-vision deficiencies.
DEFAULT_LABEL_COLORS = {1: "#ff3b30", 2: "#00d5ff"}
_FALLBACK_COLORS = ("#ffcc00", "#34c759", "#af52de", "#ff9500")


def _check_volume(name: str, array: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (z, y, x) array, got shape {array.shape}")
    if min(array.shape) < 1:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} shape {array.shape} does not match labels shape {shape}")
    return array


def pick_slice(labels: np.ndarray, gt: np.ndarray | None = None) -> int:
    """Axial slice (index along z) with the most foreground voxels.

    Args:
      labels: (z, y, x) integer label map (prediction); foreground is ``> 0``.
      gt: optional (z, y, x) truth of the same shape; when given the burden is
        counted on the union of truth and prediction, so a missed tumour is
        shown too.

    Returns:
      The slice index; the first one on ties; the middle slice when there is no
      foreground at all.

    Raises:
      ValueError: not 3-D, or shapes differ.
    """
    labels = _check_volume("labels", labels)
    fg = labels > 0
    if gt is not None:
        fg = fg | (_check_volume("gt", gt, labels.shape) > 0)
    burden = fg.sum(axis=(1, 2))
    if not burden.any():
        return labels.shape[0] // 2
    return int(np.argmax(burden))


def _window(image: np.ndarray, max_samples: int = 1_000_000) -> tuple[float, float]:
    """1st-99th percentile intensity window over the volume.

    Percentiles of a regular sub-grid (about ``max_samples`` voxels) differ
    from the full volume's by far less than a grey level, at a fraction of
    the cost of sorting 20 M voxels.
    """
    step = max(1, int(np.ceil((image.size / max_samples) ** (1 / 3))))
    sample = image[::step, ::step, ::step]
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1.0, 99.0])
    if not hi > lo:  # constant image: avoid a zero-width window
        lo, hi = float(finite.min()), float(finite.max())
        if not hi > lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def _contour_grid(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upsampled crop of a 2-D mask with the voxel coordinates of its pixel centres.

    A level-0.5 contour through voxel centres cuts each corner by half a voxel,
    which visibly shrinks a node a few voxels wide; upsampling by ``f`` (nearest
    neighbour) first puts the contour on the voxel edges, with corners cut by
    only ``1/(2f)`` voxel. Only the mask's bounding box plus one voxel is
    upsampled (contouring a whole upsampled 512 x 512 slice takes seconds), and
    that margin of background keeps contours closed at the slice border.
    """
    ys_idx, xs_idx = np.nonzero(mask)
    y0, y1 = ys_idx.min() - 1, ys_idx.max() + 2
    x0, x1 = xs_idx.min() - 1, xs_idx.max() + 2
    crop = np.zeros((y1 - y0, x1 - x0), np.float32)
    crop[1:-1, 1:-1] = mask[y0 + 1:y1 - 1, x0 + 1:x1 - 1]
    f = int(np.clip(512 // max(crop.shape), 2, 8))
    fine = np.kron(crop, np.ones((f, f), np.float32))
    # Sub-pixel j of the crop has its centre at y0 + (j + 0.5) / f - 0.5 in voxel coordinates.
    xs = x0 + (np.arange(fine.shape[1]) + 0.5) / f - 0.5
    ys = y0 + (np.arange(fine.shape[0]) + 0.5) / f - 0.5
    return xs, ys, fine


def overlay_figure(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    gt: np.ndarray | None = None,
    title: str | None = None,
    label_colors: Mapping[int, str] | None = None,
    label_names: Mapping[int, str] | None = None,
    slice_index: int | None = None,
) -> Figure:
    """Build the overlay figure (see :func:`overlay_png`); returned for callers that want to inspect it."""
    labels = _check_volume("labels", labels)
    image = _check_volume("image", image, labels.shape)
    if gt is not None:
        gt = _check_volume("gt", gt, labels.shape)
    sz, sy, sx = check_spacing(spacing)
    names = dict(DEFAULT_LABEL_NAMES)
    names.update(label_names or {})
    colors = dict(DEFAULT_LABEL_COLORS)
    colors.update(label_colors or {})

    empty = not (labels > 0).any() and (gt is None or not (gt > 0).any())
    if slice_index is None:
        k = pick_slice(labels, gt)
    else:
        k = int(slice_index)
        if not 0 <= k < labels.shape[0]:
            raise ValueError(f"slice_index {k} outside 0..{labels.shape[0] - 1}")

    lo, hi = _window(image)
    ny, nx = labels.shape[1:]
    # Physical size of the slice decides the figure shape, so thin long FOVs are not squashed.
    height_mm, width_mm = ny * sy, nx * sx
    fig_w = 5.0
    fig_h = float(np.clip(fig_w * height_mm / width_mm, 1.8, 9.0)) + 0.7
    fig = Figure(figsize=(fig_w, fig_h), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(
        np.nan_to_num(image[k].astype(float), nan=lo),
        cmap="gray", vmin=lo, vmax=hi, interpolation="nearest",
        # aspect = height/width of one pixel on screen = y spacing / x spacing.
        aspect=sy / sx,
    )

    # Only the shown slice matters for drawing; scanning the whole volume for its labels
    # (np.unique sorts 20 M voxels) would dominate the run time.
    present = sorted(
        {int(v) for v in np.unique(labels[k]) if v > 0}
        | ({int(v) for v in np.unique(gt[k]) if v > 0} if gt is not None else set())
        | set(DEFAULT_LABEL_NAMES)
    )
    sources = [("prediction", labels, "solid")] + ([("truth", gt, "dashed")] if gt is not None else [])
    handles = []
    for i, lab in enumerate(present):
        color = colors.get(lab, _FALLBACK_COLORS[i % len(_FALLBACK_COLORS)])
        name = names.get(lab, f"label {lab}")
        for source, volume, style in sources:
            mask = volume[k] == lab
            if mask.any():
                xs, ys, fine = _contour_grid(mask)
                ax.contour(xs, ys, fine, levels=[0.5], colors=[color], linestyles=style, linewidths=1.4)
            label_text = f"{name} {source}" if gt is not None else name
            handles.append(Line2D([], [], color=color, linestyle=style, linewidth=1.4, label=label_text))
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(ny - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if handles:
        # Below the image, so the legend never hides a lesion.
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=7,
                  ncol=min(len(handles), 4), frameon=False)

    where = f"axial slice z={k} of {labels.shape[0]}"
    if empty:
        # Say only what was looked at: a prediction-only overlay never saw a truth.
        where += (" (no structure in truth or prediction: middle slice)" if gt is not None
                  else " (no structure predicted: middle slice)")
    elif slice_index is None:
        where += " (largest tumour burden)"
    ax.set_title(f"{title}\n{where}" if title else where, fontsize=9)
    fig.tight_layout()
    return fig


def figure_to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas (no pyplot)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    buf = _io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def overlay_png(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    out_path: str | os.PathLike,
    gt: np.ndarray | None = None,
    title: str | None = None,
    label_colors: Mapping[int, str] | None = None,
    label_names: Mapping[int, str] | None = None,
) -> Path:
    """Write a PNG of GTVp/GTVn contours on the slice of largest tumour burden.

    The image is windowed to its 1st-99th intensity percentiles; pixels are
    drawn with the in-plane spacing's aspect ratio so anatomy is not
    stretched. The array is shown in voxel order (row = y index, column = x
    index), without reorientation to a radiological convention.

    Args:
      image: (z, y, x) intensity array (one channel).
      labels: (z, y, x) predicted label map (GTVp = 1, GTVn = 2); solid contours.
      spacing: voxel spacing in mm, (z, y, x) array order.
      out_path: PNG file to write (atomically).
      gt: optional (z, y, x) truth label map; dashed contours.
      title: optional first title line (e.g. the case name); the slice index
        is always added.
      label_colors: optional {label: matplotlib colour} overrides.
      label_names: optional {label: name} overrides.

    Returns:
      ``out_path`` as a Path.

    Raises:
      ValueError: arrays not 3-D, shapes differ, or spacing invalid.
    """
    fig = overlay_figure(image, labels, spacing, gt=gt, title=title,
                         label_colors=label_colors, label_names=label_names)
    return write_bytes(out_path, figure_to_png(fig))
