"""Lesion-wise detection: components per label, matching, sensitivity and precision.

A lesion is a connected component of one label (``vadice.lesions``, cc3d).
All truth/prediction component pairs that overlap come from one sparse table
(``np.unique`` over the paired ids of the overlapping voxels), so the cost does
not grow with the number of lesions the way per-lesion loops do.

Matching rules:
  ``"overlap"`` (default): a truth lesion is detected when a predicted
  component of the same label overlaps it by at least one voxel; a predicted
  component is matched when it overlaps a truth lesion of its label.
  ``"iou:t"``: a pair counts only when its IoU is >= t (panoptica uses 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from vadice.lesions import check_connectivity, check_spacing, label_components
from vadice.metrics.surface import separated_boxes

DEFAULT_SIZE_BINS_ML = (0.5, 1.0, 5.0, 10.0)


def parse_match(match: str) -> tuple[str, float | None]:
    """``"overlap"`` -> ``("overlap", None)``; ``"iou:0.5"`` -> ``("iou", 0.5)``.

    Raises:
      ValueError: anything else, or an IoU threshold outside (0, 1].
    """
    text = str(match).strip().lower()
    if text == "overlap":
        return "overlap", None
    if text.startswith("iou:"):
        try:
            t = float(text[4:])
        except ValueError:
            t = float("nan")
        if not 0 < t <= 1:
            raise ValueError(f"IoU threshold must be in (0, 1], got {match!r}")
        return "iou", t
    raise ValueError(f"match rule must be 'overlap' or 'iou:<t>', got {match!r}")


@dataclass(frozen=True)
class LesionMatch:
    """Lesion-wise result of one label in one case.

    Arrays are in raster order of each component's first voxel; lesion ids in
    outputs are 1 + the index into these arrays.

    Attributes:
      label: label value.
      voxel_mm3: voxel volume.
      gt_voxels, gt_detected, gt_dsc: per truth lesion.
      pred_voxels, pred_matched, pred_dsc: per predicted component.
    """

    label: int
    voxel_mm3: float
    gt_voxels: np.ndarray
    gt_detected: np.ndarray
    gt_dsc: np.ndarray
    pred_voxels: np.ndarray
    pred_matched: np.ndarray
    pred_dsc: np.ndarray

    @property
    def n_gt(self) -> int:
        return int(self.gt_voxels.size)

    @property
    def n_gt_detected(self) -> int:
        return int(np.count_nonzero(self.gt_detected))

    @property
    def n_pred(self) -> int:
        return int(self.pred_voxels.size)

    @property
    def n_pred_matched(self) -> int:
        return int(np.count_nonzero(self.pred_matched))

    @property
    def gt_volume_ml(self) -> np.ndarray:
        return self.gt_voxels * (self.voxel_mm3 / 1000.0)

    @property
    def pred_volume_ml(self) -> np.ndarray:
        return self.pred_voxels * (self.voxel_mm3 / 1000.0)

    @property
    def sensitivity(self) -> float:
        """Detected / truth lesions; NaN without truth lesions."""
        return self.n_gt_detected / self.n_gt if self.n_gt else float("nan")

    @property
    def precision(self) -> float:
        """Matched / predicted components; NaN without predicted components."""
        return self.n_pred_matched / self.n_pred if self.n_pred else float("nan")


def check_label_maps(gt: np.ndarray, pred: np.ndarray, kinds: str = "iub") -> None:
    """Raise unless ``gt`` and ``pred`` are 3-D NumPy label maps of one shape with a dtype kind in ``kinds``.

    Raises:
      TypeError: not an array, or a dtype kind outside ``kinds``.
      ValueError: not 3-D, or the shapes differ.
    """
    what = "an unsigned-integer" if kinds == "ub" else "an integer"
    for name, arr in (("gt", gt), ("pred", pred)):
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in kinds:
            raise TypeError(f"{name} must be {what} NumPy label map, got "
                            f"{getattr(arr, 'dtype', type(arr).__name__)}")
        if arr.ndim != 3:
            raise ValueError(f"{name} must be 3-D, got shape {arr.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: {gt.shape} vs {pred.shape}")


def match_lesions(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float],
    labels: Iterable[int] = (1, 2),
    connectivity: int = 26,
    match: str = "overlap",
    boxes: Sequence[tuple[slice, ...]] | None = None,
) -> dict[int, LesionMatch]:
    """Match truth lesions and predicted components, label by label.

    Lesion Dice of a truth lesion is its Dice with the union of the predicted
    components of its label that overlap it (whatever the match rule), 0 when
    none does; symmetrically for predicted components.

    Args:
      gt, pred: integer label maps of the same 3-D shape.
      spacing: voxel spacing in mm, array axis order.
      labels: label values to evaluate.
      connectivity: 6, 18 or 26.
      match: ``"overlap"`` or ``"iou:<t>"``.
      boxes: ``separated_boxes`` of the non-zero voxels of both maps when the
        caller has them already (``vadice.metrics.evaluate`` shares them with
        the surfaces); computed when None.

    Returns:
      ``{label: LesionMatch}`` for every requested label.

    Raises:
      TypeError: non-integer label maps.
      ValueError: shape mismatch, bad spacing, connectivity or match rule.
    """
    check_label_maps(gt, pred)
    spacing = check_spacing(spacing, 3)
    connectivity = check_connectivity(connectivity)
    rule, threshold = parse_match(match)
    labels = [int(l) for l in labels]
    voxel_mm3 = float(np.prod(spacing))

    # Components never cross an empty plane, so each separated group of voxels (any label, either mask) is
    # matched on its own small box: a distant false positive no longer stretches one box over the volume.
    if boxes is None:
        # Max-reductions find non-zero planes of unsigned maps directly; signed ones need the comparison.
        boxes = separated_boxes(*(m if m.dtype.kind in "ub" else m != 0 for m in (gt, pred)))
    parts = [_match_box(gt[box], pred[box], labels, connectivity, rule, threshold, box, gt.shape)
             for box in boxes]
    out = {}
    for l in labels:
        fields = []
        for side in ("gt", "pred"):
            key = np.concatenate([np.zeros(0, np.int64)] + [p[l][side][0] for p in parts])
            order = np.argsort(key, kind="stable")  # raster order of the first voxel, over the whole volume
            fields += [np.concatenate([empty] + [p[l][side][k] for p in parts])[order]
                       for k, empty in ((1, np.zeros(0, np.int64)), (2, np.zeros(0, bool)), (3, np.zeros(0)))]
        out[l] = LesionMatch(l, voxel_mm3, *fields)
    return out


def _match_box(gt: np.ndarray, pred: np.ndarray, labels: list[int], connectivity: int, rule: str,
               threshold: float | None, box: tuple[slice, ...], shape: tuple[int, ...]) -> dict:
    """Matching inside one box: ``{label: {"gt"|"pred": (first-voxel flat index, size, hit, dsc)}}``."""
    g_inst, g_lab = label_components(gt, labels, connectivity)
    p_inst, p_lab = label_components(pred, labels, connectivity)
    n_g, n_p = g_lab.size - 1, p_lab.size - 1
    g_size = np.bincount(g_inst.reshape(-1), minlength=n_g + 1).astype(np.int64)
    p_size = np.bincount(p_inst.reshape(-1), minlength=n_p + 1).astype(np.int64)

    # Sparse overlap table: one entry per overlapping (truth id, predicted id) pair.
    both = (g_inst != 0) & (p_inst != 0)
    keys, ov = np.unique(g_inst[both].astype(np.int64) * (n_p + 1) + p_inst[both], return_counts=True)
    pg, pp = keys // (n_p + 1), keys % (n_p + 1)
    same = g_lab[pg] == p_lab[pp]
    pg, pp, ov = pg[same], pp[same], ov[same]

    # Lesion Dice against everything of the same label that overlaps (rule-independent).
    g_ov = np.bincount(pg, weights=ov, minlength=n_g + 1)
    g_other = np.bincount(pg, weights=p_size[pp], minlength=n_g + 1)
    p_ov = np.bincount(pp, weights=ov, minlength=n_p + 1)
    p_other = np.bincount(pp, weights=g_size[pg], minlength=n_p + 1)
    g_dsc = 2 * g_ov / np.maximum(g_size + g_other, 1)
    p_dsc = 2 * p_ov / np.maximum(p_size + p_other, 1)

    if rule == "iou":
        iou = ov / (g_size[pg] + p_size[pp] - ov)
        ok = iou >= threshold
        pg, pp = pg[ok], pp[ok]
    detected = np.zeros(n_g + 1, bool)
    detected[pg] = True
    matched = np.zeros(n_p + 1, bool)
    matched[pp] = True

    out = {}
    for l in labels:
        out[l] = {}
        for side, inst, lab, size, hit, dsc in (("gt", g_inst, g_lab, g_size, detected, g_dsc),
                                                ("pred", p_inst, p_lab, p_size, matched, p_dsc)):
            ids = np.flatnonzero(lab == l)
            ids = ids[ids > 0]
            out[l][side] = (_first_voxels(inst, ids, box, shape), size[ids], hit[ids], dsc[ids])
    return out


def _first_voxels(inst: np.ndarray, ids: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Flat index in the full volume of the first voxel (raster order) of each id of ``inst`` (a crop at ``box``)."""
    if ids.size == 0:
        return np.zeros(0, np.int64)
    flat = inst.reshape(-1)
    where = np.flatnonzero(flat)
    found, first = np.unique(flat[where], return_index=True)
    local = np.unravel_index(where[first[np.searchsorted(found, ids)]], inst.shape)
    return np.ravel_multi_index(tuple(c + b.start for c, b in zip(local, box)), shape).astype(np.int64)


def bin_names(bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML) -> list[str]:
    """Readable names of the size bins, e.g. ``["<0.5 ml", "0.5-1 ml", ..., ">=10 ml"]``."""
    edges = check_bins(bins_ml)
    names = [f"<{edges[0]:g} ml"]
    names += [f"{lo:g}-{hi:g} ml" for lo, hi in zip(edges[:-1], edges[1:])]
    names.append(f">={edges[-1]:g} ml")
    return names


def check_bins(bins_ml: Sequence[float]) -> list[float]:
    edges = [float(b) for b in bins_ml]
    if not edges or any(not np.isfinite(b) or b <= 0 for b in edges) or sorted(set(edges)) != edges:
        raise ValueError(f"size bins must be increasing positive ml values, got {list(bins_ml)}")
    return edges


def size_bin_index(volumes_ml: Sequence[float], bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML) -> np.ndarray:
    """Index of each volume's size bin: 0 for [0, e0), k for [e_{k-1}, e_k), len(bins) for [e_last, inf).

    The one binning rule: evaluation (summary.json) and comparison both use it.
    """
    edges = check_bins(bins_ml)
    return np.searchsorted(np.asarray(edges), np.asarray(volumes_ml, dtype=np.float64).reshape(-1), side="right")


def size_stratified_sensitivity(
    volumes_ml: Sequence[float],
    detected: Sequence[bool],
    bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML,
) -> list[dict]:
    """Sensitivity of truth lesions grouped by volume.

    Args:
      volumes_ml: truth lesion volumes in ml.
      detected: detected flag per lesion.
      bins_ml: inner bin edges; bins are [0, e0), [e0, e1), ..., [e_last, inf).

    Returns:
      one dict per bin: ``bin`` (name), ``low_ml``, ``high_ml`` (None for the
      open top bin), ``n_gt``, ``n_detected``, ``sensitivity`` (NaN when empty).
    """
    edges = check_bins(bins_ml)
    vol = np.asarray(volumes_ml, dtype=np.float64).reshape(-1)
    det = np.asarray(detected, dtype=bool).reshape(-1)
    if vol.size != det.size:
        raise ValueError(f"volumes and detected flags differ in length: {vol.size} vs {det.size}")
    which = size_bin_index(vol, edges)
    lows = [0.0] + edges
    highs = edges + [None]
    out = []
    for k, name in enumerate(bin_names(edges)):
        sel = which == k
        n = int(np.count_nonzero(sel))
        d = int(np.count_nonzero(det[sel]))
        out.append({"bin": name, "low_ml": lows[k], "high_ml": highs[k], "n_gt": n, "n_detected": d,
                    "sensitivity": d / n if n else float("nan")})
    return out


def pooled_rate(hits, totals, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Σ hits / Σ totals over ``axis``: the one pooled lesion sensitivity (detected / truth lesions) and
    precision (matched / predicted components).

    Pooling counts (not averaging per-case rates) is what makes the rate a cohort number: a case with one
    lesion weighs one lesion, not one case.

    Args:
      hits, totals: counts of one shape.
      axis: the axes pooled (None: all).

    Returns:
      array of the remaining shape (0-d for ``axis=None``); NaN where Σ totals is 0 (no lesion to find).
    """
    d = np.sum(totals, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, np.sum(hits, axis=axis) / np.where(d > 0, d, 1), np.nan)
