"""Lesion statistics of a dataset: HNTS-MRG source folder or nnU-Net raw dataset.

A lesion is a connected component of one label (26-connectivity by default),
found by :func:`vadice.lesions.label_lesions`, the same definition as the
published HNTS-MRG statistics (docs/data.md, "Lesion distributions") and the rest of
vadice. Quantiles use numpy's default (linear interpolation).
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from vadice.data.hntsmrg import ALT_ENDING, AUDIT_DIR, FILE_ENDING, LABELS, discover, file_ending, source_files
from vadice.data.node_cues import body_midline_x, measure_node, physical_x, side_of
from vadice.data.validate import read_checked_mask
from vadice.io import InputError, read_image, write_bytes, write_text
from vadice.lesions import check_connectivity, label_lesions

LABEL_NAMES = {v: k for k, v in LABELS.items() if v}
LABELS_FG = tuple(sorted(LABEL_NAMES))
STATS_JSON = "lesion_stats.json"
STATS_PNG = "lesion_volumes.png"
# Unlabelled structures of a synthetic cohort's audit map (cohort.json ``structures[].kind``) measured as nodes.
AUDIT_NODE_KINDS = ("normal_node", "reactive_node")
NECROSIS_BINS_ML = ((0.0, 1.0, "<1 ml"), (1.0, 5.0, "1-5 ml"), (5.0, float("inf"), ">=5 ml"))
_SOURCE_GROUPS = {"preRT": "preRT_mask", "midRT": "midRT_mask"}


def find_masks(path: str | os.PathLike) -> tuple[str, dict[str, list[tuple[str, Path]]]]:
    """Label maps of a dataset, grouped.

    Returns:
      ``(layout, groups)``: layout ``"hntsmrg"`` (groups ``preRT``, ``midRT``;
      ``"hntsmrg-case"`` for a single ``<id>/`` case folder)
      or ``"nnunet"`` (group ``labelsTr``, or ``preRT``/``midRT`` when the case
      names end in the timepoint); each group a list of ``(case, mask path)``.

    Raises:
      InputError: not a folder, or neither layout.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "not a folder (expected an HNTS-MRG folder or an nnU-Net dataset folder)")
    labels_tr = path / "labelsTr"
    if labels_tr.is_dir():
        files = sorted(p for p in labels_tr.iterdir()
                       if p.name.endswith((FILE_ENDING, ALT_ENDING)) and not p.name.startswith("."))
        if not files:
            raise InputError(labels_tr, f"no {FILE_ENDING} or {ALT_ENDING} label files")
        groups: dict[str, list[tuple[str, Path]]] = {}
        for p in files:
            case = p.name[: -len(file_ending(p))]
            tp = next((t for t in _SOURCE_GROUPS if case.endswith("_" + t)), "labelsTr")
            groups.setdefault(tp, []).append((case, p))
        if "labelsTr" in groups and len(groups) > 1:  # mixed naming: keep one group
            groups = {"labelsTr": [c for g in groups.values() for c in g]}
        return "nnunet", groups
    if (path / "preRT").is_dir() or (path / "midRT").is_dir():  # one case folder, e.g. <id>/
        groups = {}
        for tp in _SOURCE_GROUPS:
            found = sorted(p for ending in (FILE_ENDING, ALT_ENDING) for p in (path / tp).glob(f"*_{tp}_mask{ending}")
                           ) if (path / tp).is_dir() else []
            if found:
                groups[tp] = [(p.name[: -len(f"_{tp}_mask{file_ending(p)}")], p) for p in found]
        if not groups:
            raise InputError(path, "no <id>_preRT_mask.nii.gz / <id>_midRT_mask.nii.gz in preRT/ or midRT/")
        return "hntsmrg-case", groups
    cases, _ = discover(path)
    groups = {}
    for tp, key in _SOURCE_GROUPS.items():
        found = [(str(cid), source_files(folder, cid)[key]) for cid, folder in cases.items()]
        found = [(c, p) for c, p in found if p.exists()]
        if found:
            groups[tp] = found
    if not groups:
        raise InputError(path, "no mask files found (expected <id>/preRT/<id>_preRT_mask.nii.gz ...)")
    return "hntsmrg", groups


def _case_lesions(case: str, mask_path: Path, connectivity: int) -> dict:
    data, info = read_checked_mask(mask_path)
    _, lesions = label_lesions(data, info.geometry.spacing_zyx, labels=LABELS_FG, connectivity=connectivity)
    return {"case": case, "file": str(mask_path),
            "lesions": [{"label": l.label, "lesion": l.lesion_id, "voxels": l.voxels, "volume_ml": l.volume_ml,
                         "centroid_zyx": list(l.centroid)} for l in lesions]}



def summarise_volumes(volumes_ml: list[float]) -> dict:
    """Quantiles and small-lesion counts of a list of lesion volumes (ml)."""
    v = np.asarray(volumes_ml, dtype=float)
    if v.size == 0:
        return {"n": 0, "min": None, "q25": None, "median": None, "q75": None, "max": None,
                "fraction_lt_1ml": None, "count_lt_0_5ml": 0}
    q = np.percentile(v, [0, 25, 50, 75, 100])
    return {"n": int(v.size), "min": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]),
            "max": float(q[4]), "fraction_lt_1ml": float(np.mean(v < 1.0)), "count_lt_0_5ml": int(np.sum(v < 0.5))}


def dataset_statistics(path: str | os.PathLike, connectivity: int = 26, progress: bool = True,
                       workers: int = 1) -> dict:
    """Per-label lesion statistics of every mask of a dataset.

    Args:
      path: HNTS-MRG training folder (statistics per timepoint preRT, midRT)
        or nnU-Net raw dataset folder (its ``labelsTr``).
      connectivity: 6, 18 or 26.
      progress: progress bar.
      workers: masks read in parallel threads.

    Returns:
      dict with ``source``, ``layout``, ``connectivity`` and ``groups``: per
      group ``n_cases``, ``empty_cases`` (no foreground at all), ``cases``
      (per case: lesion list with label, lesion id, voxels, volume_ml,
      centroid_zyx) and ``labels``: per label name ``cases_with_label``,
      ``components_total``, ``components_per_case`` (count -> number of cases,
      zero included), ``components_per_positive_case`` (mean) and ``volumes_ml``
      (n, min, q25, median, q75, max, fraction_lt_1ml, count_lt_0_5ml).

    Raises:
      InputError: unknown layout or an invalid mask (names the file).
    """
    connectivity = check_connectivity(connectivity)
    layout, groups = find_masks(path)
    jobs = [(g, case, p) for g, items in groups.items() for case, p in items]
    bar = tqdm(total=len(jobs), desc="stats", unit="mask", disable=not progress)

    def one(job):
        try:
            return _case_lesions(job[1], job[2], connectivity)
        except InputError as exc:  # every bad mask is reported, not only the first one read
            return exc
        finally:
            bar.update()

    try:
        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            results = list(pool.map(one, jobs))
    finally:
        bar.close()  # before any error line, so that it does not land inside the bar
    bad = [r for r in results if isinstance(r, InputError)]
    if bad:
        shown = "; ".join(str(e) for e in bad[:3])
        raise InputError(None, f"{len(bad)} of {len(jobs)} masks are invalid: {shown}"
                         + (f"; and {len(bad) - 3} more" if len(bad) > 3 else ""))

    out = {"source": str(Path(path).resolve()), "layout": layout, "connectivity": connectivity, "groups": {}}
    for g in groups:
        per_case = [r for (grp, _, _), r in zip(jobs, results) if grp == g]
        summary = {"n_cases": len(per_case),
                   "empty_cases": [r["case"] for r in per_case if not r["lesions"]],
                   "labels": {}, "cases": per_case}
        for label, name in LABEL_NAMES.items():
            counts = [sum(1 for l in r["lesions"] if l["label"] == label) for r in per_case]
            vols = [l["volume_ml"] for r in per_case for l in r["lesions"] if l["label"] == label]
            positive = [c for c in counts if c]
            summary["labels"][name] = {
                "label": label,
                "cases_with_label": len(positive),
                "components_total": int(sum(counts)),
                "components_per_case": {str(k): v for k, v in sorted(Counter(counts).items())},
                "components_per_positive_case": float(np.mean(positive)) if positive else None,
                "volumes_ml": summarise_volumes(vols),
            }
        out["groups"][g] = summary
    return out


def _fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_statistics(stats: dict) -> str:
    """Readable table of :func:`dataset_statistics` output."""
    lines = [f"{stats['source']} ({stats['layout']}, {stats['connectivity']}-connectivity; volumes in ml)"]
    head = (f"{'group':<9} {'label':<5} {'with label':>10} {'lesions':>7} {'per case':>8} {'min':>6} {'q25':>6} "
            f"{'median':>6} {'q75':>6} {'max':>6} {'% <1ml':>6} {'n <0.5ml':>8}")
    lines += [head, "-" * len(head)]
    for g, s in stats["groups"].items():
        for name, lab in s["labels"].items():
            v = lab["volumes_ml"]
            frac = "-" if v["fraction_lt_1ml"] is None else f"{100 * v['fraction_lt_1ml']:.0f}%"
            lines.append(
                f"{g:<9} {name:<5} {lab['cases_with_label']:>5}/{s['n_cases']:<4} {lab['components_total']:>7} "
                f"{_fmt(lab['components_per_positive_case']):>8} {_fmt(v['min']):>6} {_fmt(v['q25']):>6} "
                f"{_fmt(v['median']):>6} {_fmt(v['q75']):>6} {_fmt(v['max']):>6} {frac:>6} {v['count_lt_0_5ml']:>8}")
        lines.append(f"{g:<9} empty masks: {len(s['empty_cases'])}/{s['n_cases']}"
                     + (f" ({', '.join(s['empty_cases'][:10])}{' ...' if len(s['empty_cases']) > 10 else ''})"
                        if s["empty_cases"] else ""))
        for name, lab in s["labels"].items():
            dist = ", ".join(f"{k}:{n}" for k, n in lab["components_per_case"].items())
            lines.append(f"{g:<9} {name} lesions per case {{{dist}}}")
    lines.append("with label: cases holding the label / all cases; per case: lesions per case with the label; "
                 "min..max: lesion volumes; % <1ml: share of lesions under 1 ml; n <0.5ml: lesions under 0.5 ml")
    return "\n".join(lines)


def write_statistics(stats: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``lesion_stats.json`` and ``lesion_volumes.png`` (log-volume histograms) atomically.

    Returns:
      the two paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output path exists and is not a folder")
    json_path = write_text(out_dir / STATS_JSON, json.dumps(stats, indent=1))

    groups = list(stats["groups"])
    fig, axes = plt.subplots(len(groups), len(LABEL_NAMES), figsize=(5 * len(LABEL_NAMES), 3.2 * len(groups)),
                             squeeze=False)
    bins = np.logspace(-2, 2.2, 36)
    for i, g in enumerate(groups):
        s = stats["groups"][g]
        for j, (label, name) in enumerate(LABEL_NAMES.items()):
            ax = axes[i, j]
            vols = [l["volume_ml"] for r in s["cases"] for l in r["lesions"] if l["label"] == label]
            if vols:
                ax.hist(np.clip(vols, bins[0], bins[-1]), bins=bins, color="C0" if label == 1 else "C1")
                ax.axvline(np.median(vols), color="k", lw=1, label=f"median {np.median(vols):.2f} ml")
                ax.legend(fontsize=8)
            ax.axvline(1.0, color="grey", ls="--", lw=0.8)
            ax.set_xscale("log")
            ax.set_title(f"{g} {name}: {len(vols)} lesions, {s['labels'][name]['cases_with_label']}/{s['n_cases']} "
                         "cases", fontsize=9)
            ax.set_xlabel("lesion volume (ml)")
            ax.set_ylabel("lesions")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    png_path = write_bytes(out_dir / STATS_PNG, buf.getvalue())
    return json_path, png_path


# --------------------------------------------------------------------------- node cues


def _audit_kinds(path: Path) -> dict[tuple[str, int], str]:
    """``(case, structure id) -> kind`` from a synthetic cohort's ``cohort.json`` (empty for real data)."""
    table = path / "cohort.json"
    if not table.is_file():
        return {}
    try:
        rows = json.loads(table.read_text()).get("structures", [])
    except (OSError, ValueError) as exc:
        raise InputError(table, f"unreadable cohort table ({exc})") from None
    return {(str(r["case"]), int(r["id"])): r["kind"] for r in rows}


def _case_cues(case: str, mask_path: Path, audit_path: Path | None, kinds: dict, connectivity: int) -> list[dict]:
    """Cues of every lesion of a pre-RT mask and of every audited unlabelled node, laterality to the primary."""
    mask, info = read_checked_mask(mask_path)
    geom, spacing = info.geometry, info.geometry.spacing_zyx
    image_path = mask_path.with_name(mask_path.name.replace("_preRT_mask", "_preRT_T2"))
    image, midline = None, None  # masks alone (e.g. the shared real case 2): shape cues only
    if image_path.exists():
        image, _ = read_image(image_path)
        if image.shape != mask.shape:
            raise InputError(mask_path, f"grid {mask.shape} does not match {image_path.name} {image.shape}")
        midline = body_midline_x(image, geom)
    instances, lesions = label_lesions(mask, spacing, labels=LABELS_FG, connectivity=connectivity)
    found = []  # (kind, source, id, region crop, image crop, centroid zyx)
    for lesion in lesions:
        box = tuple(slice(lesion.bbox[2 * a], lesion.bbox[2 * a + 1]) for a in range(3))
        kind = "primary" if lesion.label == LABELS["GTVp"] else "metastatic_node"
        found.append((kind, "mask", lesion.lesion_id, instances[box] == lesion.lesion_id,
                      None if image is None else image[box], lesion.centroid))
    if audit_path is not None:
        ids, _ = read_image(audit_path)
        if ids.shape != mask.shape:
            raise InputError(audit_path, f"grid {ids.shape} does not match {mask_path.name} {mask.shape}")
        ids = ids.astype(np.int64)
        for k, box in enumerate(ndimage.find_objects(ids), start=1):
            kind = kinds.get((case, k))
            if box is None or kind not in AUDIT_NODE_KINDS:
                continue
            region = ids[box] == k
            centroid = np.argwhere(region).mean(axis=0) + [b.start for b in box]
            found.append((kind, "audit", k, region, None if image is None else image[box], centroid))
    primaries = [(int(f[3].sum()), f[5]) for f in found if f[0] == "primary"]
    primary_side = side_of(physical_x(geom, max(primaries, key=lambda p: p[0])[1]), midline) \
        if primaries and midline is not None else 0
    rows = []
    for kind, source, k, region, crop, centroid in found:
        if region.sum() < 2:
            continue
        side = side_of(physical_x(geom, centroid), midline) if midline is not None else 0
        laterality = None if kind == "primary" else (
            "unknown" if not primary_side else "midline" if not side
            else "ipsilateral" if side == primary_side else "contralateral")
        rows.append({"case": case, "kind": kind, "source": source, "id": int(k),
                     **measure_node(crop, region, spacing), "laterality": laterality})
    return rows


def _quartiles(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"q25": None, "median": None, "q75": None}
    q = np.percentile(v, [25, 50, 75])
    return {"q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])}


def _share(flags) -> float | None:
    flags = [f for f in flags if f is not None]  # None: not measurable (no image)
    return float(np.mean(flags)) if flags else None


def summarise_cues(rows: list[dict]) -> dict:
    """Per kind: axis ratio, short axis, hilum, necrosis by volume bin, heterogeneity, laterality.

    Args:
      rows: per-node measurements as ``cue_statistics`` lists them (``kind``, ``axis_ratio``, ``short_axis_mm``,
        ``volume_ml``, ``hilum``, ``necrosis``, ``heterogeneity``, ``laterality``).

    Returns:
      per kind: ``n``, ``axis_ratio`` and ``short_axis_mm`` quartiles, ``share_ratio_lt_2``,
      ``share_short_axis_lt_10mm``, ``hilum_share``, ``necrosis_share``, ``necrosis_by_volume`` (per bin ``n``,
      ``share``), ``heterogeneity`` quartiles, ``laterality`` counts and ``ipsilateral_share`` (of the nodes on
      either side of a lateral primary).
    """
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        sel = [r for r in rows if r["kind"] == kind]
        lat = Counter(r["laterality"] for r in sel if r["laterality"] is not None)
        sided = lat["ipsilateral"] + lat["contralateral"]
        out[kind] = {
            "n": len(sel),
            "axis_ratio": _quartiles(r["axis_ratio"] for r in sel),
            "share_ratio_lt_2": _share(r["axis_ratio"] < 2.0 for r in sel),
            "short_axis_mm": _quartiles(r["short_axis_mm"] for r in sel),
            "share_short_axis_lt_10mm": _share(r["short_axis_mm"] < 10.0 for r in sel),
            "hilum_share": _share(r["hilum"] for r in sel),
            "necrosis_share": _share(r["necrosis"] for r in sel),
            "necrosis_by_volume": {name: {"n": len(b), "share": _share(r["necrosis"] for r in b)}
                                   for lo, hi, name in NECROSIS_BINS_ML
                                   for b in [[r for r in sel if lo <= r["volume_ml"] < hi]]},
            "heterogeneity": _quartiles(r["heterogeneity"] for r in sel),
            "laterality": dict(sorted(lat.items())),
            "ipsilateral_share": lat["ipsilateral"] / sided if sided else None,
        }
    return out


def cue_statistics(path: str | os.PathLike, connectivity: int = 26, progress: bool = True, workers: int = 1) -> dict:
    """Imaging cues of the pre-RT nodes of an HNTS-MRG folder, measured from images and masks.

    Lesions come from the masks (GTVn: ``metastatic_node``, GTVp: ``primary``); a synthetic cohort's audit maps
    (``audit/<id>_preRT_structures.nii.gz`` with kinds from ``cohort.json``) add its unlabelled normal and
    reactive nodes. Real data has no audit: only its lesions are measured; a case without its T2 image gets the
    shape cues alone (signal cues and laterality None / unknown). See :mod:`vadice.data.node_cues`.

    Args:
      path: HNTS-MRG training folder or one ``<id>/`` case folder.
      connectivity: lesion connectivity (6, 18 or 26).
      progress: progress bar.
      workers: cases read in parallel threads.

    Returns:
      dict with ``source``, ``audit`` (whether audit maps were used), ``kinds`` (:func:`summarise_cues`) and
      ``nodes`` (one row per measured structure).

    Raises:
      InputError: not an HNTS-MRG layout (an nnU-Net dataset has no T2 beside the masks in this form), or a
        missing or invalid file (named).
    """
    connectivity = check_connectivity(connectivity)
    path = Path(path)
    layout, groups = find_masks(path)
    if layout == "nnunet":
        raise InputError(path, "node cues need an HNTS-MRG folder (<id>/preRT/ with T2 and mask), not an nnU-Net "
                               "dataset")
    if "preRT" not in groups:
        raise InputError(path, "no pre-RT masks: node cues are measured on <id>_preRT_mask with <id>_preRT_T2")
    kinds = _audit_kinds(path)
    jobs = []
    for case, mask_path in groups["preRT"]:
        audit = path / AUDIT_DIR / f"{case}_preRT_structures.nii.gz"
        jobs.append((case, mask_path, audit if kinds and audit.exists() else None))
    bar = tqdm(total=len(jobs), desc="cues", unit="case", disable=not progress)

    def one(job):
        try:
            return _case_cues(*job, kinds, connectivity)
        finally:
            bar.update()

    try:
        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            rows = [r for per_case in pool.map(one, jobs) for r in per_case]
    finally:
        bar.close()
    return {"source": str(path.resolve()), "audit": any(a is not None for _, _, a in jobs),
            "kinds": summarise_cues(rows), "nodes": rows}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def format_cues(cues: dict) -> str:
    """Readable table of :func:`cue_statistics` output."""
    lines = [f"pre-RT node cues ({'masks + audit maps' if cues['audit'] else 'masks only'}; "
             "ratio: long/short principal axis; short axis in mm)"]
    head = (f"{'kind':<16} {'n':>5} {'ratio med':>9} {'<2':>5} {'short med':>9} {'<10mm':>6} {'hilum':>6} "
            f"{'necrosis':>8} {'<1ml':>5} {'1-5ml':>6} {'>=5ml':>6} {'hetero':>6} {'ipsi':>5}")
    lines += [head, "-" * len(head)]
    for kind, k in cues["kinds"].items():
        nec = k["necrosis_by_volume"]
        lines.append(
            f"{kind:<16} {k['n']:>5} {_fmt(k['axis_ratio']['median']):>9} {_pct(k['share_ratio_lt_2']):>5} "
            f"{_fmt(k['short_axis_mm']['median'], 1):>9} {_pct(k['share_short_axis_lt_10mm']):>6} "
            f"{_pct(k['hilum_share']):>6} {_pct(k['necrosis_share']):>8} {_pct(nec['<1 ml']['share']):>5} "
            f"{_pct(nec['1-5 ml']['share']):>6} {_pct(nec['>=5 ml']['share']):>6} "
            f"{_fmt(k['heterogeneity']['median']):>6} {_pct(k['ipsilateral_share']):>5}")
    lines.append("<2, <10mm: share with axis ratio < 2 / short axis < 10 mm; hilum, necrosis: share with an eccentric / "
                 "central bright cluster; <1ml..>=5ml: necrosis share per volume bin; hetero: median IQR/median of the "
                 "signal; ipsi: share on the primary's side (of the nodes off the midline of cases with a lateral "
                 "primary)")
    return "\n".join(lines)

