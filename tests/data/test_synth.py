"""Synthetic cohort: layout, determinism, distributions, realism checks, resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vadice.cli import main
from vadice.data import synth
from vadice.data.synth import write as synth_write
from vadice.data.hntsmrg import SOURCE_FILES, source_files
from vadice.io import read_nifti

MASK_KEYS = ("preRT_mask", "midRT_mask", "preRT_mask_registered")


def _cases(cohort):
    return json.loads((cohort / "cohort.json").read_text())


def test_layout_names_ids_and_grids(small_cohort):
    table = _cases(small_cohort)
    ids = [c["id"] for c in table["cases"]]
    assert len(ids) == len(set(ids)) == table["n_cases"]
    assert ids == sorted(ids) and min(ids) >= 2
    assert any(b - a > 1 for a, b in zip(ids, ids[1:])), "ids should not be contiguous"
    case_dirs = sorted(p.name for p in small_cohort.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert sorted(case_dirs) == sorted(str(i) for i in ids)
    assert not list(small_cohort.glob(".*")), "no hidden leftovers after a finished run"
    for cid in ids:
        files = source_files(small_cohort / str(cid), cid)
        on_disk = sorted(str(p.relative_to(small_cohort / str(cid))) for p in (small_cohort / str(cid)).rglob("*")
                         if p.is_file())
        assert on_disk == sorted(rel.format(id=cid) for rel in SOURCE_FILES.values())
        geoms = {}
        for key, path in files.items():
            data, geom = read_nifti(path)
            geoms[key] = geom
            assert data.ndim == 3
            assert all(n <= m for n, m in zip(data.shape, synth.SMALL_MAX_ZYX))
            assert geom.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
            if key in MASK_KEYS:
                assert data.dtype == np.uint8
                assert set(np.unique(data).tolist()) <= {0, 1, 2}
            else:
                assert np.isfinite(data).all() and data.max() > 0
        assert geoms["preRT_T2"] == geoms["preRT_mask"]
        # Registered pre-RT files share the mid-RT grid.
        assert geoms["midRT_T2"] == geoms["midRT_mask"] == geoms["preRT_T2_registered"] == geoms[
            "preRT_mask_registered"]


def test_cohort_variety(small_cohort):
    """The fixture cohort (seed 1) covers the cases the converter and statistics must handle."""
    table = _cases(small_cohort)
    by_case = {c["id"]: [l for l in table["lesions"] if l["case"] == c["id"]] for c in table["cases"]}
    mid_empty = [cid for cid, ls in by_case.items() if not any(l["timepoint"] == "midRT" for l in ls)]
    assert mid_empty, "some mid-RT masks must be completely empty"
    for cid in mid_empty:
        mask, _ = read_nifti(source_files(small_cohort / str(cid), cid)["midRT_mask"])
        assert not mask.any()
    assert any(not any(l["label"] == 1 for l in ls) for ls in by_case.values()), "a case without GTVp"
    assert {c["fat_suppressed"] for c in table["cases"]} == {True, False}
    assert any(c["grids"]["preRT"] != c["grids"]["midRT"] for c in table["cases"])
    # Nodes numbered with the primary tumour in one id sequence per mask, like connected-component labelling.
    for cid, ls in by_case.items():
        for tp in synth.TIMEPOINTS:
            ids = [l["lesion"] for l in ls if l["timepoint"] == tp]
            assert ids == list(range(1, len(ids) + 1))


def test_rendered_volumes_hit_targets(small_cohort):
    table = _cases(small_cohort)
    grids = {c["id"]: c["grids"] for c in table["cases"]}
    for l in table["lesions"]:
        g = grids[l["case"]]["preRT" if l["timepoint"] == "preRT" else "midRT"]
        voxel_ml = float(np.prod(g["spacing_xyz"])) / 1000.0
        assert l["volume_ml"] == pytest.approx(l["voxels"] * voxel_ml)
        # Exact voxel count up to rounding, except tiny lesions capped by the maximum blob scale.
        assert abs(l["volume_ml"] - l["target_volume_ml"]) <= max(0.6 * voxel_ml, 0.25 * l["target_volume_ml"])


def _generate_arrays(tmp_path, name, seed, n=1):
    out = synth.generate_cohort(tmp_path / name, n, seed, progress=False)
    table = _cases(out)
    arrays = {}
    for c in table["cases"]:
        for key, path in source_files(out / str(c["id"]), c["id"]).items():
            arrays[(c["id"], key)] = read_nifti(path)[0]
    return table, arrays


def test_same_seed_same_voxels_different_seed_different(tmp_path):
    t1, a1 = _generate_arrays(tmp_path, "a", seed=11)
    t2, a2 = _generate_arrays(tmp_path, "b", seed=11)
    t3, a3 = _generate_arrays(tmp_path, "c", seed=12)
    assert t1 == t2
    assert a1.keys() == a2.keys()
    for k in a1:
        assert a1[k].dtype == a2[k].dtype and a1[k].tobytes() == a2[k].tobytes(), k
    # A different seed changes the images (noise at least) and the case id / lesion table.
    images = [k for k in a3 if "T2" in k[1]]
    assert t3["lesions"] != t1["lesions"]
    assert all(a3[k].tobytes() != a1.get(k, np.zeros(0)).tobytes() for k in images)


def test_volume_distributions_follow_hntsmrg():
    """Target volumes of 300 drawn (not rendered) cases against the published training statistics."""
    specs = synth.draw_cohort(300, seed=0)
    rows = synth.lesion_table(specs)

    def vols(tp, label):
        return np.array([r["volume_ml"] for r in rows if r["timepoint"] == tp and r["label"] == label])

    pre_p, mid_p, pre_n, mid_n = vols("preRT", 1), vols("midRT", 1), vols("preRT", 2), vols("midRT", 2)
    # Published: pre-RT GTVp median 8.4 ml (IQR 4.3-16.0); mid-RT GTVp median 2.6 ml;
    # GTVn median 2.65 (pre) / 2.05 ml (mid), 31 % of nodes < 1 ml. Bands allow for 300-case sampling.
    assert 6.5 <= np.median(pre_p) <= 10.5
    assert 3.0 <= np.percentile(pre_p, 25) <= 6.0 and 11.0 <= np.percentile(pre_p, 75) <= 21.0
    assert pre_p.max() <= 50.0
    assert 1.8 <= np.median(mid_p) <= 3.5
    assert 1.9 <= np.median(pre_n) <= 3.4
    assert 1.5 <= np.median(mid_n) <= 2.7
    assert 0.24 <= np.mean(pre_n < 1.0) <= 0.38
    assert 0.24 <= np.mean(mid_n < 1.0) <= 0.38
    n_cases = len(specs)
    pt_present = len({r["case"] for r in rows if r["timepoint"] == "preRT" and r["label"] == 1}) / n_cases
    assert 0.83 <= pt_present <= 0.96  # published 135/150
    node_counts = [sum(1 for l in s.lesions if l.label == 2) for s in specs]
    positive = [c for c in node_counts if c]
    assert 1.5 <= np.mean(positive) <= 2.3  # published ~1.86 per node-positive patient
    assert max(node_counts) >= 10  # "sometimes 10+"
    mid_empty = sum(1 for s in specs if all(l.volume_mid_ml is None for l in s.lesions))
    assert 0.03 <= mid_empty / n_cases <= 0.15
    # Mid-RT lesions are never larger than their pre-RT self by more than 20 %.
    for s in specs:
        for l in s.lesions:
            if l.volume_mid_ml is not None:
                assert l.volume_mid_ml <= 1.2 * l.volume_pre_ml + 1e-9


def test_lesions_not_separable_by_intensity(small_cohort):
    """Best intensity band [lo, hi] classifier of lesion vs non-lesion voxels inside the body stays poor."""
    table = _cases(small_cohort)
    for c in table["cases"]:
        files = source_files(small_cohort / str(c["id"]), c["id"])
        img, _ = read_nifti(files["preRT_T2"])
        mask, _ = read_nifti(files["preRT_mask"])
        if not mask.any():
            continue
        body = img > np.percentile(img, 60)  # crude body region: excludes the air background
        body |= mask > 0
        vals, lesion = img[body].astype(float), (mask[body] > 0)
        qs = np.percentile(vals[lesion], [0, 5, 10, 25, 50, 75, 90, 95, 100])
        best = 0.0
        for i, lo in enumerate(qs):
            for hi in qs[i + 1:]:
                pred = (vals >= lo) & (vals <= hi)
                dice = 2 * np.sum(pred & lesion) / (pred.sum() + lesion.sum())
                best = max(best, dice)
        assert best < 0.5, f"case {c['id']}: a threshold band separates lesions (Dice {best:.2f})"


def test_unlabelled_lookalikes_exist():
    spec = synth.draw_cohort(1, seed=4)[0]
    kinds = {s.tissue for s in spec.structures}
    assert {"normal_node", "gland"} <= kinds
    assert abs(synth.TISSUE["normal_node"][0] - synth.TISSUE["node"][0]) < 0.1


def test_interrupted_run_resumes_to_identical_output(tmp_path, monkeypatch):
    ref, ref_arrays = _generate_arrays(tmp_path, "ref", seed=21, n=2)
    real = synth_write._write_case
    calls = []

    def dying(spec, out_dir):
        calls.append(spec.case_id)
        if len(calls) == 2:
            # Leave a half-written temporary behind, as a killed writer would.
            (out_dir / str(spec.case_id) / "preRT").mkdir(parents=True, exist_ok=True)
            (out_dir / str(spec.case_id) / "preRT" / f".{spec.case_id}_preRT_T2.nii.gz.x.part.nii.gz").write_bytes(b"x")
            raise KeyboardInterrupt
        return real(spec, out_dir)

    monkeypatch.setattr(synth_write, "_write_case", dying)
    with pytest.raises(KeyboardInterrupt):
        synth.generate_cohort(tmp_path / "run", 2, 21, progress=False)
    assert not (tmp_path / "run" / "cohort.json").exists()
    monkeypatch.setattr(synth_write, "_write_case", real)
    synth.generate_cohort(tmp_path / "run", 2, 21, progress=False)
    table = _cases(tmp_path / "run")
    assert table == ref
    assert not [p for p in (tmp_path / "run").rglob(".*")]
    for c in table["cases"]:
        for key, path in source_files(tmp_path / "run" / str(c["id"]), c["id"]).items():
            assert read_nifti(path)[0].tobytes() == ref_arrays[(c["id"], key)].tobytes()


def test_refuses_foreign_folder_and_bad_arguments(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["-q", "synth", str(tmp_path / "busy"), "--cases", "1", "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "busy" in err and "not empty" in err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert main(["-q", "synth", str(tmp_path / "x"), "--cases", "0", "--seed", "0"]) == 2
    assert "--cases" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="size"):
        synth.draw_cohort(1, 0, size="huge")


def test_cli_synth_then_same_arguments_is_a_no_op(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["synth", str(out), "--cases", "1", "--seed", "2", "--workers", "1"]) == 0
    assert "cohort.json" in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(["-q", "synth", str(out), "--cases", "1", "--seed", "2"]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # Other parameters on a finished cohort: refused, nothing touched.
    assert main(["-q", "synth", str(out), "--cases", "2", "--seed", "2"]) == 2
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    shutil.rmtree(out)


def test_neck_grid_is_a_finer_crop_of_the_same_scene(tmp_path):
    """``neck``: the published node volumes, ~1.5 mm in-plane, <= 160 mm field of view, whole lesions kept."""
    import cc3d

    # Placement depends on the grid (margins, slab), so the same seed may place a lesion more or fewer;
    # the distribution is what must not change: the published 31 % of pre-RT nodes below 1 ml, median 2.65 ml.
    nodes = [r["volume_ml"] for r in synth.lesion_table(synth.draw_cohort(400, 5, size="neck"))
             if r["label"] == synth.LABEL_GTVN and r["timepoint"] == "preRT"]
    assert np.mean(np.array(nodes) < 1.0) == pytest.approx(0.31, abs=0.04)
    assert np.median(nodes) == pytest.approx(2.65, rel=0.15)
    out = synth.generate_cohort(tmp_path / "neck", 3, 11, size="neck", progress=False)
    table = _cases(out)
    for c in table["cases"]:
        g = c["grids"]["preRT"]
        sx, sy, sz = g["spacing_xyz"]
        assert 1.3 <= sx == sy <= 2.0 and 1.9 <= sz <= 2.6
        assert g["shape_zyx"][1] * sx <= synth.NECK_FOV_MM + sx
        mask, _ = read_nifti(source_files(out / str(c["id"]), c["id"])["preRT_mask"])
        rows = [l for l in table["lesions"] if l["case"] == c["id"] and l["timepoint"] == "preRT"]
        labels, n = cc3d.connected_components(mask > 0, connectivity=26, return_N=True)
        assert n == len(rows)
        # Every lesion is whole inside the crop: its rendered volume is its drawn volume.
        for l in rows:
            assert abs(l["volume_ml"] - l["target_volume_ml"]) <= max(0.6 * sx * sy * sz / 1000, 0.25 * l["target_volume_ml"])
