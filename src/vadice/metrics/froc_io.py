"""Folders of ``vadice froc``: probability maps in, ``froc.csv``, ``summary.json`` and ``counts.npz`` out.

``counts.npz`` keeps each label's :class:`vadice.metrics.froc.FrocCounts` (the
per-patient counts at every threshold), so runs can be compared later
(:mod:`vadice.metrics.froc_compare`) without reading the probability maps again.
Its arrays, per label name L (``COUNTS_FIELDS``): ``L__thresholds`` (T,),
``L__patients`` (n,) strings, ``L__n_cases`` (), ``L__n_gt`` (n,), ``L__tp``,
``L__fp``, ``L__n_pred`` (T, n), ``L__bins_ml`` (B - 1,), ``L__n_gt_bin`` (B, n),
``L__tp_bin`` (B, T, n); ``labels`` lists the label names and ``format`` is
``COUNTS_FORMAT``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vadice import __version__
from vadice.io import (NIFTI_SUFFIXES, InputError, atomic_dir, check_out_dir, csv_text, is_nifti, json_clean,
                       strip_nifti_suffix)
from vadice.metrics.froc import (CPM_RATES, DEFAULT_THRESHOLDS, FrocCounts, case_counts, check_rates,
                                 check_thresholds, cpm, froc_table, pool_cases, resolve_patients, sensitivity_at)
from vadice.metrics.lesionwise import DEFAULT_SIZE_BINS_ML, bin_names, check_bins, parse_match

TOOL_TAG = "vadice froc"
OUTPUT_FILES = ("froc.csv", "summary.json", "counts.npz")
COUNTS_FORMAT = "vadice froc counts 1"
COUNTS_FIELDS = ("thresholds", "patients", "n_cases", "n_gt", "tp", "fp", "n_pred", "bins_ml", "n_gt_bin", "tp_bin")
PROB_SUFFIX = ".npz"


def read_probabilities(path: str | os.PathLike, labels: Sequence[int], shape: Sequence[int]) -> dict[int, np.ndarray]:
    """Class probabilities of ``labels`` from an nnU-Net ``.npz`` (key ``probabilities``, C x Z x Y x X).

    Args:
      path: the ``.npz`` file (``nnUNetv2_predict --save_probabilities`` or ``vadice predict
        --save-probabilities``; channel c is the probability of label c).
      labels: label values wanted.
      shape: the (Z, Y, X) shape of the case's truth.

    Returns:
      ``{label: (Z, Y, X) array}`` in the file's float dtype.

    Raises:
      InputError: unreadable file, missing key, wrong dimensionality, too few channels, another grid than the
        truth's, or values that are not finite probabilities.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            probs = npz["probabilities"] if "probabilities" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(path, f"unreadable .npz ({type(exc).__name__}: {str(exc)[:120]})") from None
    if probs is None:
        raise InputError(path, f"no 'probabilities' array (keys: {', '.join(keys) or 'none'})")
    if probs.ndim != 4 or probs.dtype.kind != "f":
        raise InputError(path, f"'probabilities' must be a C x Z x Y x X float array, got {probs.dtype} "
                               f"shape {probs.shape}")
    if tuple(probs.shape[1:]) != tuple(shape):
        raise InputError(path, f"probability grid {tuple(probs.shape[1:])} differs from the truth's {tuple(shape)}")
    out = {}
    for label in labels:
        if label >= probs.shape[0]:
            raise InputError(path, f"no channel for label {label} ({probs.shape[0]} channels)")
        p = probs[label]  # the file's precision kept: thresholds are rounded to it (see case_counts)
        if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise InputError(path, f"channel {label} holds values outside [0, 1] or non-finite ones")
        out[int(label)] = p
    return out


def froc_folders(
    gt_dir: str | os.PathLike,
    prob_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    labels: Mapping[str, int],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    fp_rate: float = 1.0,
    match: str = "overlap",
    connectivity: int = 26,
    bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML,
    patient_of: Mapping[str, str] | None = None,
    rates: Sequence[float] = CPM_RATES,
    progress: bool = False,
) -> dict:
    """FROC and CPM of a folder of probability maps against a folder of truth label maps.

    Truth ``<case>.nii.gz`` and probabilities ``<case>.npz`` must pair one to one.
    Writes ``froc.csv`` (one row per label and threshold) and ``summary.json``
    (per label: ``cpm``, ``sensitivity_at_fp_rate``, counts) into ``out_dir``
    at once, or nothing.

    Args:
      gt_dir, prob_dir: input folders; out_dir: output folder (empty, missing, or an earlier ``vadice froc``
        output, which is replaced).
      labels: ``{name: value}`` of the labels to evaluate.
      thresholds, match, connectivity, bins_ml: as :func:`case_counts` / :func:`pool_cases`.
      fp_rate: the FP-per-patient rate whose sensitivity is reported beside the CPM.
      patient_of: ``{case: patient}``; None: each case its own patient.
      rates: the CPM's rates.
      progress: show a tqdm bar over cases.

    Returns:
      the summary written to ``summary.json``.

    Raises:
      InputError: missing folders or cases, unreadable files, grids that differ.
      ValueError: bad options.
    """
    from tqdm.auto import tqdm

    from vadice.io import read_mask

    t = check_thresholds(thresholds)
    check_rates([fp_rate])
    check_rates(rates)
    parse_match(match)
    edges = check_bins(bins_ml)
    gt_dir, prob_dir = Path(gt_dir), Path(prob_dir)
    out_dir = check_out_dir(out_dir, "summary.json", TOOL_TAG, OUTPUT_FILES)
    for folder in (gt_dir, prob_dir):
        if not folder.is_dir():
            raise InputError(folder, "not a folder")
    cases = sorted(strip_nifti_suffix(p.name) for p in gt_dir.iterdir() if is_nifti(p))
    if not cases:
        raise InputError(gt_dir, "no truth files (.nii.gz)")
    probs = {p.name[: -len(PROB_SUFFIX)] for p in prob_dir.iterdir() if p.name.endswith(PROB_SUFFIX)}
    missing = [c for c in cases if c not in probs]
    if missing:
        raise InputError(prob_dir / f"{missing[0]}{PROB_SUFFIX}",
                         f"missing probability file ({len(missing)} case(s) without one)")
    extra = sorted(probs - set(cases))
    if extra:
        raise InputError(prob_dir / f"{extra[0]}{PROB_SUFFIX}", f"no truth file for this case in {gt_dir}")
    try:
        patient_of = resolve_patients(cases, patient_of)  # before the work, not after it
    except ValueError as exc:
        raise InputError(gt_dir, str(exc)) from None

    per_label = {v: {} for v in labels.values()}
    for case in tqdm(cases, desc="froc", unit="case", disable=not progress):
        gt_path = next(p for p in (gt_dir / f"{case}{s}" for s in NIFTI_SUFFIXES) if p.exists())
        gt, geom = read_mask(gt_path, allowed_labels=None)
        for value, p in read_probabilities(prob_dir / f"{case}{PROB_SUFFIX}", list(labels.values()), gt.shape).items():
            per_label[value][case] = case_counts(p, gt, value, geom.spacing_zyx, t, connectivity, match)

    rows, summary_labels, pooled = [], {}, {}
    for name, value in labels.items():
        counts = pooled[name] = pool_cases(per_label[value], patient_of, edges)
        table = froc_table(counts)
        for k, thr in enumerate(t):
            row = {"label": name, "threshold": float(thr), "n_gt": int(counts.n_gt.sum()),
                   "tp": int(counts.tp[k].sum()), "fp": int(counts.fp[k].sum()),
                   "n_pred": int(counts.n_pred[k].sum()), "sensitivity": table["sensitivity"][k],
                   "fp_per_patient": table["fp_per_patient"][k], "precision": table["precision"][k]}
            for b, bin_name in enumerate(bin_names(edges)):
                row[f"sensitivity {bin_name}"] = table["sensitivity_bin"][b, k]
            rows.append(row)
        summary_labels[name] = {
            "label": int(value), "n_gt": int(counts.n_gt.sum()),
            "cpm": cpm(table["fp_per_patient"], table["sensitivity"], rates),
            "sensitivity_at_fp_rate": float(sensitivity_at(table["fp_per_patient"], table["sensitivity"],
                                                           fp_rate)[0]),
        }
    summary = {"tool": TOOL_TAG, "version": __version__, "n_cases": len(cases), "n_patients": len(counts.patients),
               "thresholds": [float(x) for x in t], "cpm_rates": [float(r) for r in rates], "fp_rate": float(fp_rate),
               "match": match, "connectivity": connectivity, "size_bins_ml": edges, "labels": summary_labels}
    columns = list(rows[0])
    with atomic_dir(out_dir, replace=True) as tmp:
        (tmp / "froc.csv").write_text(csv_text(rows, columns), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(json_clean(summary), indent=2) + "\n", encoding="utf-8")
        save_froc_counts(tmp / "counts.npz", pooled)
    return json_clean(summary)


def save_froc_counts(path: str | os.PathLike, counts: Mapping[str, FrocCounts]) -> Path:
    """Write ``{label name: FrocCounts}`` as ``counts.npz`` (layout in the module docstring).

    Raises:
      ValueError: no labels, or a label name that cannot be a key (empty or holding ``__``).
    """
    if not counts:
        raise ValueError("no labels to save")
    arrays = {"format": np.asarray(COUNTS_FORMAT), "labels": np.asarray(list(counts), dtype=str)}
    for name, c in counts.items():
        if not name or "__" in name:
            raise ValueError(f"label name {name!r} cannot be saved (empty or holding '__')")
        for f in COUNTS_FIELDS:
            value = getattr(c, f)
            arrays[f"{name}__{f}"] = np.asarray(value, dtype=str if f == "patients" else None)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return Path(path)


def load_froc_counts(folder: str | os.PathLike) -> dict[str, FrocCounts]:
    """Each label's :class:`FrocCounts` from a ``vadice froc`` folder's ``counts.npz`` (or that file itself).

    Returns:
      ``{label name: FrocCounts}`` in the order ``vadice froc`` wrote them.

    Raises:
      InputError: the folder or file is missing (an output of an older ``vadice froc`` lacks it: run it again),
        unreadable, of another format, or its arrays are missing or do not fit together (naming the array).
    """
    path = Path(folder)
    if path.is_dir():
        path = path / "counts.npz"
    if not path.is_file():
        hint = " (a 'vadice froc' folder written before counts.npz existed: run vadice froc again)" \
            if (path.parent / "summary.json").is_file() else ""
        raise InputError(path, "missing; not a 'vadice froc' folder" + hint)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(path, f"unreadable .npz ({type(exc).__name__}: {str(exc)[:120]})") from None
    if "format" not in arrays or str(arrays["format"]) != COUNTS_FORMAT or "labels" not in arrays:
        raise InputError(path, f"not a '{COUNTS_FORMAT}' file")
    out = {}
    for name in (str(x) for x in arrays["labels"]):
        missing = [f"{name}__{f}" for f in COUNTS_FIELDS if f"{name}__{f}" not in arrays]
        if missing:
            raise InputError(path, f"missing array(s) {', '.join(missing)}")
        a = {f: arrays[f"{name}__{f}"] for f in COUNTS_FIELDS}
        t, n = a["thresholds"].size, a["patients"].size
        n_bins = a["bins_ml"].size + 1
        shapes = {"n_gt": (n,), "tp": (t, n), "fp": (t, n), "n_pred": (t, n), "n_gt_bin": (n_bins, n),
                  "tp_bin": (n_bins, t, n)}
        for f, shape in shapes.items():
            if a[f].shape != shape or a[f].dtype.kind not in "iu":
                raise InputError(path, f"array {name}__{f} must be integers of shape {shape}, got "
                                       f"{a[f].dtype} {a[f].shape}")
        out[name] = FrocCounts(a["thresholds"].astype(np.float64), tuple(str(x) for x in a["patients"]),
                               int(a["n_cases"]), *(a[f].astype(np.int64) for f in ("n_gt", "tp", "fp", "n_pred")),
                               tuple(float(x) for x in a["bins_ml"]), a["n_gt_bin"].astype(np.int64),
                               a["tp_bin"].astype(np.int64))
    return out
