"""Writing a cohort: HNTS-MRG 2024 training layout, ``cohort.json``, atomic files, resume."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vadice.data.hntsmrg import AUDIT_DIR, source_files
from vadice.data.synth.cohort import draw_cohort
from vadice.data.synth.draw import LABEL_GTVP, TIMEPOINTS, CaseSpec, Look
from vadice.data.synth.render import lesion_look, render_audit, render_case
from vadice.io import write_nifti, write_text


COHORT_FILE = "cohort.json"
_PARTIAL_DIR = ".vadice_synth.partial"


def _write_case(spec: CaseSpec, out_dir: Path) -> dict:
    files = source_files(out_dir / str(spec.case_id), spec.case_id)
    grids = {"preRT": spec.grids["preRT"], "midRT": spec.grids["midRT"], "preRT_registered": spec.grids["midRT"]}
    targets = {"preRT": ("preRT_T2", "preRT_mask"), "midRT": ("midRT_T2", "midRT_mask"),
               "preRT_registered": ("preRT_T2_registered", "preRT_mask_registered")}
    lesions = []
    for tp in TIMEPOINTS:
        img, mask, recs = render_case(spec, tp)
        geom = grids[tp].geometry
        # Native scans are stored as integers; the registered (resampled) image as float32.
        if tp == "preRT_registered":
            img_out = img.astype(np.float32)
        else:
            img_out = np.clip(np.rint(img), 0, 32767).astype(np.int16)
        write_nifti(img_out, geom, files[targets[tp][0]])
        write_nifti(mask, geom, files[targets[tp][1]])
        origin = np.array(geom.origin)
        spacing_zyx = np.array(geom.spacing_zyx)
        for r in recs:
            c = np.array(r["centroid_zyx"])
            r["centroid_mm"] = [float(v) for v in origin + (c * spacing_zyx)[::-1]]
            lesions.append({"case": spec.case_id, "timepoint": tp, **r})
    return {
        "case": {
            "id": spec.case_id,
            "fat_suppressed": spec.fat_suppressed,
            "complete_response": spec.complete_response,
            "primary_side": _side_name(spec.primary_side) if spec.primary_side else None,
            "grids": {k: {"shape_zyx": list(g.shape_zyx), "spacing_xyz": list(g.spacing_xyz),
                          "origin_xyz": list(g.origin_xyz)} for k, g in spec.grids.items()},
        },
        "lesions": lesions,
        "structures": _write_audit(spec, out_dir),
    }


def audit_file(out_dir: Path, case_id: int) -> Path:
    """Audit map of a case: structure id per voxel of its pre-RT grid, outside the HNTS-MRG layout."""
    return Path(out_dir) / AUDIT_DIR / f"{case_id}_preRT_structures.nii.gz"


def _side_name(side: int) -> str:
    return {1: "left", -1: "right"}.get(int(np.sign(side)), "midline")


def _write_audit(spec: CaseSpec, out_dir: Path) -> list[dict]:
    ids, numbers = render_audit(spec)
    write_nifti(ids, spec.grids["preRT"].geometry, audit_file(out_dir, spec.case_id))
    voxels = np.bincount(ids.ravel())
    primary = next((lesion for lesion in spec.lesions if lesion.label == LABEL_GTVP), None)
    # v1 draws no side for the primary: it is the side of the midline its centre lies on.
    primary_side = spec.primary_side or (int(np.sign(primary.center[0])) if primary is not None else 0)
    rows = []
    items = [(lesion, lesion.shape.scaled(lesion.volume_pre_ml ** (1 / 3)), lesion_look(lesion, spec.fat_suppressed))
             for lesion in spec.lesions]
    items += [(s, s.shape, s.look or Look(s.tissue, int(np.sign(s.center[0])))) for s in spec.structures]
    for i, (item, shape, look) in enumerate(items, start=1):
        is_lesion = i <= len(spec.lesions)
        diameters = np.sort(2.0 * shape.radii)
        row = {"case": spec.case_id, "id": i, "kind": look.kind,
               "label": item.label if is_lesion else 0, "lesion": numbers[i - 1] if is_lesion else None,
               "side": _side_name(look.side), "level": look.level,
               "laterality": _laterality(look.side, primary_side, item is primary),
               "centre_mm": [float(v) for v in item.center],
               "long_axis_mm": float(diameters[2]), "short_axis_mm": float(diameters[0]),
               "volume_ml": float(item.volume_pre_ml if is_lesion else 4.0 / 3.0 * np.pi * np.prod(shape.radii) / 1000),
               "voxels": int(voxels[i]) if i < voxels.size else 0,
               "cues": {"round": bool(diameters[2] / diameters[0] < 2.0), "hilum": look.hilum > 0,
                        "necrosis": look.necrosis > 0, "heterogeneous": look.texture >= 0.5,
                        "irregular_margin": look.irregular}}
        rows.append(row)
    mucosa = len(items) + 1
    rows.append({"case": spec.case_id, "id": mucosa, "kind": "mucosa", "label": 0, "lesion": None,
                 "side": "midline", "level": None, "laterality": None, "centre_mm": None, "long_axis_mm": None,
                 "short_axis_mm": None, "volume_ml": None,
                 "voxels": int(voxels[mucosa]) if mucosa < voxels.size else 0, "cues": None})
    return rows


def _laterality(side: float, primary_side: int, is_primary: bool) -> str | None:
    if is_primary:
        return None
    if not primary_side:
        return "unknown"
    return "ipsilateral" if int(np.sign(side)) == primary_side else "contralateral"


def generate_cohort(out_dir, n_cases: int, seed: int, size: str = "small", progress: bool = True,
                    workers: int = 1, profile: str = "v1") -> Path:
    """Write a synthetic cohort in the HNTS-MRG 2024 training layout.

    Writes ``OUT_DIR/<id>/preRT/<id>_preRT_{T2,mask}.nii.gz`` and
    ``OUT_DIR/<id>/midRT/<id>_{midRT_T2,midRT_mask,preRT_T2_registered,preRT_mask_registered}.nii.gz``
    plus ``OUT_DIR/cohort.json`` (ground-truth lesion table and the audit of every
    structure, written last) and ``OUT_DIR/audit/<id>_preRT_structures.nii.gz``
    (structure id per pre-RT voxel, ids as in ``cohort.json``).
    Every file is written atomically. An interrupted run is resumed: cases
    already finished are kept (their records sit in a hidden folder until the
    table is complete).

    Args:
      out_dir: output folder; must be absent, empty, or an unfinished run with
        the same parameters. A finished run with the same parameters is left
        as it is.
      n_cases, seed, size, profile: see :func:`draw_cohort`.
      progress: show a progress bar.
      workers: cases rendered in parallel threads (numpy and zlib release the GIL).

    Returns:
      ``out_dir`` as a Path.

    Raises:
      FileExistsError: ``out_dir`` holds something else.
      ValueError: bad arguments.
    """
    out_dir = Path(out_dir)
    specs = draw_cohort(n_cases, seed, size, profile)
    params = {"n_cases": int(n_cases), "seed": int(seed), "size": size, "profile": profile}
    partial = out_dir / _PARTIAL_DIR
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir}: exists and is not a directory")
        cohort = out_dir / COHORT_FILE
        if cohort.exists():
            try:
                done = json.loads(cohort.read_text())
            except (OSError, ValueError):
                done = {}
            # Cohorts written before profiles existed are v1 ones.
            if {k: done.get(k, "v1" if k == "profile" else None) for k in params} == params:
                return out_dir
            raise FileExistsError(f"{out_dir}: already holds a different cohort ({COHORT_FILE}); choose a new folder")
        if any(out_dir.iterdir()):
            params_file = partial / "params.json"
            if not params_file.exists() or json.loads(params_file.read_text()) != params:
                raise FileExistsError(f"{out_dir}: not empty; choose a new or empty folder")
    partial.mkdir(parents=True, exist_ok=True)
    write_text(partial / "params.json", json.dumps(params))

    def one(spec: CaseSpec) -> dict:
        record_file = partial / f"{spec.case_id}.json"
        if record_file.exists():
            return json.loads(record_file.read_text())
        # A killed run can leave temporary files of an atomic write behind.
        for leftover in [*(out_dir / str(spec.case_id)).glob("*/.*.part*"),
                         *(out_dir / AUDIT_DIR).glob(f".{spec.case_id}_*.part*")]:
            leftover.unlink()
        record = _write_case(spec, out_dir)
        write_text(record_file, json.dumps(record))
        return record

    bar = tqdm(total=len(specs), desc="synth", unit="case", disable=not progress)
    records = []
    if workers <= 1:
        for spec in specs:
            records.append(one(spec))
            bar.update()
    else:
        with ThreadPoolExecutor(max_workers=int(workers)) as pool:
            for rec in pool.map(one, specs):
                records.append(rec)
                bar.update()
    bar.close()

    table = {
        "generator": "vadice.data.synth",
        **params,
        "layout": "HNTS-MRG 2024 training",
        "labels": {"background": 0, "GTVp": 1, "GTVn": 2},
        "volume_unit": "ml",
        "centroid_zyx": "voxel indices (z, y, x) of the file's grid",
        "centroid_mm": "physical (x, y, z) mm, ITK/LPS",
        "audit": f"{AUDIT_DIR}/<id>_preRT_structures.nii.gz: structure id per pre-RT voxel (structures[].id)",
        "cases": [r["case"] for r in records],
        "lesions": [lesion for r in records for lesion in r["lesions"]],
        "structures": [row for r in records for row in r["structures"]],
    }
    write_text(out_dir / COHORT_FILE, json.dumps(table, indent=1))
    shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
