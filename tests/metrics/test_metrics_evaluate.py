"""Folder evaluation and the evaluate CLI: outputs, parallel = serial, geometry, bad inputs."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest

from metrics_cases import label_pair
from vadice.cli import main
from vadice.io import Geometry, write_nifti
from vadice.metrics.evaluate import CASE_COLUMNS, LESION_COLUMNS, evaluate_case, evaluate_folders

IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def _geom(shape_zyx, spacing_zyx, origin=(0.0, 0.0, 0.0)):
    return Geometry(tuple(reversed(shape_zyx)), tuple(float(s) for s in reversed(spacing_zyx)), origin, IDENTITY)


def make_folders(tmp_path, n=4, seed0=0):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for i in range(n):
        g, p, sp = label_pair(seed0 + i)
        sp = (2.0, 0.5, 0.75)  # exactly representable in the float32 NIfTI header
        write_nifti(g, _geom(g.shape, sp), gt_dir / f"case_{i:03d}.nii.gz")
        write_nifti(p, _geom(p.shape, sp), pred_dir / f"case_{i:03d}.nii.gz")
    return gt_dir, pred_dir


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_outputs_match_case_level_api(tmp_path):
    gt_dir, pred_dir = make_folders(tmp_path)
    out = tmp_path / "eval"
    summary = evaluate_folders(gt_dir, pred_dir, out, tolerances=(2.0, 1.0), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["cases.csv", "lesions.csv", "summary.json"]
    rows = _read_csv(out / "cases.csv")
    assert list(rows[0])[: len(CASE_COLUMNS)] == list(CASE_COLUMNS)
    assert "sds_2mm" in rows[0] and "sds_1mm" in rows[0]
    assert len(rows) == 4 * 2
    les = _read_csv(out / "lesions.csv")
    assert list(les[0]) == list(LESION_COLUMNS)
    for i in range(4):
        g, p, _ = label_pair(i)
        ref = evaluate_case(g, p, (2.0, 0.5, 0.75), tolerances=(2.0, 1.0))
        for name, res in ref.labels.items():
            row = next(r for r in rows if r["case"] == f"case_{i:03d}" and r["label"] == name)
            for key in ("dsc", "sds", "msd", "hd95"):
                want = getattr(res, key) if key != "sds" else res.sds[2.0]
                assert (row[key] == "") if np.isnan(want) else float(row[key]) == pytest.approx(want, rel=1e-12)
            assert int(row["n_gt_lesions"]) == res.lesions.n_gt
            n_rows = sum(1 for r in les if r["case"] == f"case_{i:03d}" and r["label"] == name and r["source"] == "gt")
            assert n_rows == res.lesions.n_gt
    js = json.loads((out / "summary.json").read_text())
    assert js["n_cases"] == 4 and set(js["labels"]) == {"GTVp", "GTVn"}
    for key in ("dscagg", "dsc_mean", "dsc_median", "sds_mean", "msd_mean", "hd95_mean", "hd95_median",
                "lesion_sensitivity", "lesion_precision", "n_cases", "excluded", "size_stratified_sensitivity"):
        assert key in js["labels"]["GTVn"]
    assert js["dscagg_mean"] == pytest.approx(np.mean([summary["labels"][k]["dscagg"] for k in ("GTVp", "GTVn")]))
    assert "conventions" in js and js["settings"]["connectivity"] == 26 and "numpy" in js["settings"]["versions"]
    # Re-running into the same folder replaces it; results identical with 2 workers.
    evaluate_folders(gt_dir, pred_dir, out, tolerances=(2.0, 1.0), progress=False, workers=2)
    assert _read_csv(out / "cases.csv") == rows


def test_empty_cases_counted(tmp_path):
    gt_dir, pred_dir = make_folders(tmp_path, n=2)
    z = np.zeros((14, 22, 20), np.uint8)
    g = _geom(z.shape, (2.0, 0.5, 0.75))
    write_nifti(z, g, gt_dir / "empty.nii.gz")
    write_nifti(z, g, pred_dir / "empty.nii.gz")
    one = z.copy()
    one[3, 4, 5] = 2
    write_nifti(one, g, gt_dir / "fn.nii.gz")
    write_nifti(z, g, pred_dir / "fn.nii.gz")
    s = evaluate_folders(gt_dir, pred_dir, None, progress=False)
    ex = s["labels"]["GTVn"]["excluded"]
    assert ex["both_empty"] == 1 and ex["pred_empty_only"] == 1
    assert s["labels"]["GTVp"]["excluded"]["both_empty"] == 2
    assert s["labels"]["GTVn"]["n_dsc"] == 3 and s["labels"]["GTVn"]["n_distance"] == 2


def test_allow_missing_and_resampling(tmp_path):
    gt_dir, pred_dir = make_folders(tmp_path, n=3)
    (pred_dir / "case_002.nii.gz").unlink()
    # Prediction on a larger grid with a shifted origin: resampled onto the truth grid.
    g, p, _ = label_pair(1)
    big = np.zeros((g.shape[0] + 2, g.shape[1] + 4, g.shape[2]), np.uint8)
    big[1:-1, 4:, :] = p
    write_nifti(big, _geom(big.shape, (2.0, 0.5, 0.75), origin=(0.0, -2.0, -2.0)), pred_dir / "case_001.nii.gz")
    with pytest.raises(Exception, match="no prediction for 1 case"):
        evaluate_folders(gt_dir, pred_dir, None, progress=False)
    s = evaluate_folders(gt_dir, pred_dir, tmp_path / "eval", progress=False, allow_missing=True)
    assert s["missing_predictions"] == ["case_002"] and s["resampled_predictions"] == ["case_001"]
    rows = _read_csv(tmp_path / "eval" / "cases.csv")
    direct = evaluate_case(g, p, (2.0, 0.5, 0.75))
    for name, res in direct.labels.items():
        row = next(r for r in rows if r["case"] == "case_001" and r["label"] == name)
        assert float(row["dsc"]) == pytest.approx(res.dsc, rel=1e-12) and row["resampled"] == "1"
        assert float(row["hd95"]) == pytest.approx(res.hd95, rel=1e-12)
    g2, _, _ = label_pair(2)
    for name, value in (("GTVp", 1), ("GTVn", 2)):
        row = next(r for r in rows if r["case"] == "case_002" and r["label"] == name)
        assert row["prediction_missing"] == "1" and float(row["pred_volume_ml"]) == 0.0
        assert row["dsc"] == ("0.0" if (g2 == value).any() else "")


def _cli(*args):
    return main(["-q", "evaluate", *map(str, args)])


def _bad(tmp_path, capsys, gt_dir, pred_dir, needle, extra=()):
    out = tmp_path / "out"
    rc = _cli("--gt", gt_dir, "--pred", pred_dir, "--out", out, *extra)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return err


def test_bad_truncated_file(tmp_path, capsys):
    gt_dir, pred_dir = make_folders(tmp_path, n=2)
    f = pred_dir / "case_001.nii.gz"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    err = _bad(tmp_path, capsys, gt_dir, pred_dir, "case_001.nii.gz")
    assert "truncated" in err or "corrupt" in err


def test_bad_spacing(tmp_path, capsys):
    gt_dir, pred_dir = make_folders(tmp_path, n=2)
    g, p, _ = label_pair(0)
    write_nifti(p, _geom(p.shape, (2.0, 0.5, 0.5)), pred_dir / "case_000.nii.gz")
    err = _bad(tmp_path, capsys, gt_dir, pred_dir, "case_000.nii.gz")
    assert "spacing" in err


def test_bad_stray_label(tmp_path, capsys):
    gt_dir, pred_dir = make_folders(tmp_path, n=2)
    g, p, _ = label_pair(0)
    p[0, 0, 0] = 3
    write_nifti(p, _geom(p.shape, (2.0, 0.5, 0.75)), pred_dir / "case_000.nii.gz")
    err = _bad(tmp_path, capsys, gt_dir, pred_dir, "case_000.nii.gz")
    assert "label value(s) 3" in err


def test_bad_missing_prediction(tmp_path, capsys):
    gt_dir, pred_dir = make_folders(tmp_path, n=3)
    (pred_dir / "case_001.nii.gz").unlink()
    err = _bad(tmp_path, capsys, gt_dir, pred_dir, "case_001")
    assert str(pred_dir) in err and "--allow-missing" in err


def test_bad_extra_prediction(tmp_path, capsys):
    gt_dir, pred_dir = make_folders(tmp_path, n=2)
    (gt_dir / "case_001.nii.gz").unlink()
    _bad(tmp_path, capsys, gt_dir, pred_dir, "without truth: case_001")


def test_bad_duplicate_case_names(tmp_path, capsys):
    gt_dir, pred_dir = make_folders(tmp_path, n=2)
    with gzip.open(pred_dir / "case_000.nii.gz") as fh:
        (pred_dir / "case_000.nii").write_bytes(fh.read())
    err = _bad(tmp_path, capsys, gt_dir, pred_dir, "duplicate case name 'case_000'")
    assert "case_000.nii" in err


def test_out_dir_policy(tmp_path, capsys):
    gt_dir, pred_dir = make_folders(tmp_path, n=1)
    f = tmp_path / "file"
    f.write_text("x")
    assert _cli("--gt", gt_dir, "--pred", pred_dir, "--out", f) == 2
    assert "is a file" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    assert _cli("--gt", gt_dir, "--pred", pred_dir, "--out", other) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "user data"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli("--gt", gt_dir, "--pred", pred_dir, "--out", empty, "--tolerance", "2,1", "--match", "iou:0.5") == 0
    assert (empty / "summary.json").exists()


def test_cli_usage_errors(tmp_path, capsys):
    gt_dir, pred_dir = make_folders(tmp_path, n=1)
    for extra in (["--labels", "GTVp"], ["--tolerance", "x"], ["--match", "dice"], ["--workers", "0"]):
        assert _cli("--gt", gt_dir, "--pred", pred_dir, "--out", tmp_path / "o", *extra) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()


def test_stray_label_in_truth_and_label_only_in_prediction(tmp_path):
    gt_dir, pred_dir = make_folders(tmp_path, n=1)
    g, p, _ = label_pair(0)
    g[g == 1] = 0
    write_nifti(g, _geom(g.shape, (2.0, 0.5, 0.75)), gt_dir / "case_000.nii.gz")
    s = evaluate_folders(gt_dir, pred_dir, None, progress=False)
    gtvp = s["labels"]["GTVp"]
    assert gtvp["excluded"]["gt_empty_only"] == 1 and gtvp["dscagg"] == 0.0 and gtvp["lesion_precision"] == 0.0
    assert np.isnan(gtvp["lesion_sensitivity"])


def test_real_case_runs_and_is_consistent(tmp_path, hntsmrg_case2):
    from vadice.io import read_mask

    gt, geom = read_mask(hntsmrg_case2 / "midRT" / "2_midRT_mask.nii.gz")
    res = evaluate_case(gt, gt.copy(), geom.spacing_zyx)
    for name, r in res.labels.items():
        if r.overlap.gt_voxels:
            assert r.dsc == 1.0 and r.hd95 == 0.0 and r.sds[2.0] == 1.0 and r.lesions.sensitivity == 1.0
