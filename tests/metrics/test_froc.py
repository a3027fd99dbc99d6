"""Lesion-level FROC, CPM and their comparison (vadice.metrics.froc, `vadice froc`).

Cross-checks: hand-worked counts and CPM; PI-CAI's picai_eval (its own components, overlap and threshold
sweep) on flat-plateau detection maps; LUNA16's reading of the curve (np.interp on its 10001-point grid).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from vadice.io import Geometry, write_nifti
from vadice.metrics.froc import (
    CPM_RATES,
    case_counts,
    check_thresholds,
    cpm,
    cpm_statistic,
    delta_cpm,
    froc_columns,
    froc_curve,
    froc_table,
    pool_cases,
    sensitivity_at,
)
from vadice.metrics.froc_io import load_froc_counts

SPACING = (2.0, 5.0, 5.0)  # one voxel = 0.05 ml
THRESHOLDS = (0.2, 0.4, 0.6, 0.8, 0.9)


def hand_case():
    """Three truth lesions and two false positives, every candidate a plateau of one probability.

    A: 2x2x2 = 8 voxels = 0.4 ml, p = 0.9 (bin < 0.5 ml)
    B: 3x3x3 = 27 voxels = 1.35 ml, p = 0.6 (bin 1-5 ml)
    C: 2x2x2 = 0.4 ml, p = 0 (never found; bin < 0.5 ml)
    F1: p = 0.8, F2: p = 0.3, both away from every lesion.
    """
    gt = np.zeros((12, 20, 20), np.uint8)
    prob = np.zeros(gt.shape, np.float32)
    gt[1:3, 1:3, 1:3] = 1
    prob[1:3, 1:3, 1:3] = 0.9
    gt[5:8, 10:13, 10:13] = 1
    prob[5:8, 10:13, 10:13] = 0.6
    gt[9:11, 15:17, 2:4] = 1
    prob[2, 16, 16] = 0.8
    prob[10, 2, 16] = 0.3
    gt[0, 0, 19] = 2  # another label: never a lesion of label 1
    return prob, gt


# Hand-worked, per threshold 0.2 / 0.4 / 0.6 / 0.8 / 0.9 (components of p >= t):
#   0.2: A, B, F1, F2 -> detected 2 of 3, FP 2, predicted 4
#   0.4: A, B, F1     -> 2, FP 1, predicted 3
#   0.6: A, B, F1     -> 2, FP 1, predicted 3   (B's plateau is exactly 0.6: >= keeps it)
#   0.8: A, F1        -> 1, FP 1, predicted 2
#   0.9: A            -> 1, FP 0, predicted 1
HAND_TP = [2, 2, 2, 1, 1]
HAND_FP = [2, 1, 1, 1, 0]
HAND_PRED = [4, 3, 3, 2, 1]
# Curve vertices: (0, 0) (0, 1/3) (1, 1/3) (1, 2/3) (2, 2/3): a staircase. At 1/8, 1/4, 1/2 FP: 1/3;
# at 1, 2, 4, 8: 2/3. CPM = (3 * 1/3 + 4 * 2/3) / 7 = 11/21.
HAND_CPM = 11 / 21


def test_hand_worked_counts_sensitivity_and_bins():
    prob, gt = hand_case()
    c = case_counts(prob, gt, 1, SPACING, THRESHOLDS)
    np.testing.assert_allclose(c.gt_volume_ml, [0.4, 1.35, 0.4])
    assert c.detected.sum(axis=1).tolist() == HAND_TP
    assert c.n_fp.tolist() == HAND_FP and c.n_pred.tolist() == HAND_PRED
    table = froc_table(pool_cases({"case": c}))
    np.testing.assert_allclose(table["sensitivity"], np.array(HAND_TP) / 3)
    np.testing.assert_allclose(table["fp_per_patient"], HAND_FP)
    np.testing.assert_allclose(table["precision"], [2 / 4, 2 / 3, 2 / 3, 1 / 2, 1])
    # Bins <0.5, 0.5-1, 1-5, 5-10, >=10: A and C in the first (A found throughout), B in the third.
    np.testing.assert_allclose(table["sensitivity_bin"][0], [0.5] * 5)
    np.testing.assert_allclose(table["sensitivity_bin"][2], [1, 1, 1, 0, 0])
    assert np.isnan(table["sensitivity_bin"][[1, 3, 4]]).all()


def test_hand_worked_cpm_and_operating_point():
    prob, gt = hand_case()
    table = froc_table(pool_cases({"case": case_counts(prob, gt, 1, SPACING, THRESHOLDS)}))
    assert cpm(table["fp_per_patient"], table["sensitivity"]) == pytest.approx(HAND_CPM)
    # At 1/2 FP the staircase is still flat at 1/3; at 1 FP it has risen to 2/3.
    np.testing.assert_allclose(sensitivity_at(table["fp_per_patient"], table["sensitivity"], [0.5, 1.0]),
                               [1 / 3, 2 / 3])


def test_cpm_reads_each_rate_on_a_straight_curve():
    # One point (8 FP, 1.0) after the origin: sensitivity r / 8 at rate r, so the CPM is mean(rates) / 8
    # = (1/8 + 1/4 + 1/2 + 1 + 2 + 4 + 8) / 7 / 8; beyond 8 FP the curve stays at 1.
    assert cpm([8.0], [1.0]) == pytest.approx(15.875 / 7 / 8)
    np.testing.assert_allclose(sensitivity_at([8.0], [1.0], [2.0, 16.0]), [0.25, 1.0])
    # Points given out of order and not monotone: the envelope keeps the best sensitivity reached so far.
    x, y = froc_curve([4.0, 2.0, 3.0], [0.5, 0.6, 0.4])
    assert x.tolist() == [0.0, 2.0, 3.0, 4.0] and y.tolist() == [0.0, 0.6, 0.6, 0.6]


def test_threshold_grid_is_checked():
    with pytest.raises(ValueError, match="strictly increasing"):
        check_thresholds([0.5, 0.4])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        check_thresholds([0.0, 0.5])
    prob, gt = hand_case()
    with pytest.raises(ValueError, match="shapes differ"):
        case_counts(prob[:-1], gt, 1, SPACING)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        case_counts(prob * 2, gt, 1, SPACING)


def test_false_positives_are_divided_by_patients_not_cases():
    # Three cases, two patients (P1: pre-RT and mid-RT, P2: one case). Each case is the hand case: FP 2 at t=0.2.
    prob, gt = hand_case()
    c = case_counts(prob, gt, 1, SPACING, THRESHOLDS)
    counts = pool_cases({"p1_pre": c, "p1_mid": c, "p2_pre": c},
                        patient_of={"p1_pre": "P1", "p1_mid": "P1", "p2_pre": "P2"})
    assert counts.patients == ("P1", "P2") and counts.n_cases == 3
    assert counts.fp[0].tolist() == [4, 2] and counts.n_gt.tolist() == [6, 3]
    # 6 FP components over 2 patients = 3 per patient (per case it would be 2).
    np.testing.assert_allclose(froc_table(counts)["fp_per_patient"], np.array(HAND_FP) * 3 / 2)
    with pytest.raises(ValueError, match="no patient given"):
        pool_cases({"a": c}, patient_of={"b": "P"})


# --------------------------------------------------------------------------- picai_eval and LUNA16

def plateau_cohort(seed: int, n_cases: int = 6):
    """Binary cases on a lattice of 9-voxel cells: each cell holds at most one truth box and one candidate box
    (a plateau of one confidence) inside a 1-voxel margin, so nothing touches another cell's content; a
    candidate overlaps at most one truth lesion, where picai_eval's one-to-one matching and vadice's rule agree.
    """
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n_cases):
        gt = np.zeros((18, 36, 36), np.uint8)
        det = np.zeros(gt.shape, np.float32)
        for cz in range(2):
            for cy in range(4):
                for cx in range(4):
                    base = np.array([cz, cy, cx]) * 9 + 1
                    if rng.random() < 0.5:
                        lo = base + rng.integers(0, 3, 3)
                        gt[tuple(slice(a, a + s) for a, s in zip(lo, rng.integers(2, 5, 3)))] = 1
                    if rng.random() < 0.6:
                        lo = base + rng.integers(0, 4, 3)
                        box = tuple(slice(a, a + s) for a, s in zip(lo, rng.integers(1, 4, 3)))
                        det[box] = np.float32(rng.integers(1, 20) / 20)
        cases.append((det, gt))
    return cases


@pytest.mark.parametrize("match, min_overlap", [("iou:0.1", 0.1), ("overlap", 1e-9)])
def test_counts_agree_with_picai_eval(match, min_overlap):
    picai = pytest.importorskip("picai_eval")
    cases = plateau_cohort(3)
    metrics = picai.evaluate(y_det=[d for d, _ in cases], y_true=[g for _, g in cases], min_overlap=min_overlap,
                             overlap_func="IoU", num_parallel_calls=1)
    # picai_eval sweeps every distinct confidence (descending) and overwrites its last point with FP = inf.
    tp_picai, fp_picai = metrics.lesion_TP, metrics.lesion_FP  # computing them sets metrics.thresholds
    thr = np.asarray(metrics.thresholds[:-1], np.float64)
    assert thr.size >= 5
    grid = np.sort(thr[thr > 0])
    counts = pool_cases({str(i): case_counts(d, g, 1, (1.0, 1.0, 1.0), grid, match=match)
                         for i, (d, g) in enumerate(cases)})
    order = np.argsort(-grid)  # picai's order
    assert int(counts.n_gt.sum()) == metrics.num_lesions
    np.testing.assert_array_equal(counts.tp.sum(axis=1)[order], tp_picai[:-1][thr > 0])
    np.testing.assert_array_equal(counts.fp.sum(axis=1)[order], fp_picai[:-1][thr > 0])
    table = froc_table(counts)
    np.testing.assert_allclose(table["fp_per_patient"][order], metrics.lesion_FPR[:-1][thr > 0])

    # LUNA16's CPM reading of picai's curve: np.interp from the origin on 10001 FP rates in [1/8, 8], the grid
    # point nearest each rate. Agrees with vadice's exact interpolation to within one grid step's change.
    fpr, tpr = np.concatenate([[0.0], metrics.lesion_FPR[:-1]]), np.concatenate([[0.0], metrics.lesion_TPR[:-1]])
    grid_fp = np.linspace(0.125, 8, 10001)
    sens_grid = np.interp(grid_fp, fpr, tpr)
    luna = np.mean([sens_grid[np.argmin(np.abs(grid_fp - r))] for r in CPM_RATES])
    assert cpm(table["fp_per_patient"], table["sensitivity"]) == pytest.approx(luna, abs=2e-3)


# --------------------------------------------------------------------------- comparing runs

def _counts(tp, fp, n_gt, thresholds=(0.3, 0.6)):
    """FrocCounts of one seed from per-threshold, per-patient lists (one truth lesion per bin-0 count)."""
    tp, fp, n_gt = np.asarray(tp), np.asarray(fp), np.asarray(n_gt)
    from vadice.metrics.froc import FrocCounts

    n_bins = 5
    n_gt_bin = np.zeros((n_bins, n_gt.size), np.int64)
    n_gt_bin[0] = n_gt
    tp_bin = np.zeros((n_bins,) + tp.shape, np.int64)
    tp_bin[0] = tp
    return FrocCounts(np.asarray(thresholds), tuple(f"p{i}" for i in range(n_gt.size)), n_gt.size, n_gt, tp, fp,
                      tp + fp, (0.5, 1.0, 5.0, 10.0), n_gt_bin, tp_bin)


def test_cpm_statistic_pools_seeds_and_patients():
    # Two seeds, two patients, 2 lesions each. Threshold 0.6: seed 0 finds 1+1, 0 FP; seed 1 finds 2+2, 4+0 FP.
    # Threshold 0.3: seed 0 finds 2+2 with 2+2 FP, seed 1 the same as at 0.6.
    s0 = _counts(tp=[[2, 2], [1, 1]], fp=[[2, 2], [0, 0]], n_gt=[2, 2])
    s1 = _counts(tp=[[2, 2], [2, 2]], fp=[[4, 0], [4, 0]], n_gt=[2, 2])
    cols = froc_columns([s0, s1])
    assert cols["tp_0"].shape == (2, 2) and set(cols) == {"n_gt", "tp_0", "fp_0", "tp_1", "fp_1"}
    # Pooled: threshold 0.6 -> sensitivity 6/8, FP 4 / (2 seeds x 2 patients) = 1; threshold 0.3 -> 8/8, FP 2.
    # Vertices (0,0) (1, 0.75) (2, 1): at 1/8, 1/4, 1/2: 0.75 r; at 1: 0.75; 2, 4, 8: 1.
    expected = (0.75 * (0.125 + 0.25 + 0.5) + 0.75 + 3) / 7
    assert float(cpm_statistic()(cols)) == pytest.approx(expected)


def test_cpm_statistic_on_a_batch_of_resamples_equals_each_resample_alone():
    rng = np.random.default_rng(5)
    cols = {"n_gt": rng.integers(0, 3, (4, 2, 6))}
    for k in range(3):
        cols[f"tp_{k}"] = np.minimum(cols["n_gt"], rng.integers(0, 3, (4, 2, 6)))
        cols[f"fp_{k}"] = rng.integers(0, 4, (4, 2, 6))
    cols["n_gt"][2] = 0  # a resample without truth lesions: undefined
    stat = cpm_statistic()
    batch = stat(cols)
    assert batch.shape == (4,) and np.isnan(batch[2])
    for i in (0, 1, 3):
        one = {k: v[i] for k, v in cols.items()}
        sens = [one[f"tp_{k}"].sum() / one["n_gt"].sum() for k in range(3)]
        fp = [one[f"fp_{k}"].sum() / 12 for k in range(3)]
        assert batch[i] == pytest.approx(cpm(fp, sens))


def test_delta_cpm_verdicts():
    rng = np.random.default_rng(0)
    n = 30
    n_gt = rng.integers(1, 4, n)
    a = [_counts(tp=[np.minimum(n_gt, rng.integers(0, 3, n)), np.zeros(n, int)], fp=[rng.integers(0, 3, n)] * 2,
                 n_gt=n_gt) for _ in range(3)]
    same = delta_cpm(a, a, n_boot=200, paired=True)
    assert same.ci.diff == 0 and same.verdict == "CI includes 0" and same.seed_diffs == (0.0, 0.0, 0.0)
    # b finds every lesion at both thresholds with the same FP: better in every seed.
    b = [_counts(tp=[n_gt, n_gt], fp=s.fp, n_gt=n_gt) for s in a]
    better = delta_cpm(a, b, n_boot=200, paired=True, ties="neutral")
    assert better.ci.diff > 0 and better.ci.low > 0 and better.verdict == "consistent" and better.n_agree == 3
    assert delta_cpm(b, a, n_boot=200).ci.high < 0
    with pytest.raises(ValueError, match="different patients"):
        delta_cpm(a, [_counts(tp=[[1], [1]], fp=[[0], [0]], n_gt=[1])])


# --------------------------------------------------------------------------- vadice froc

GEOM = Geometry((20, 20, 12), (5.0, 5.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _write_case(gt_dir, prob_dir, name, prob, gt, key="probabilities"):
    write_nifti(gt, GEOM, gt_dir / f"{name}.nii.gz")
    probs = np.zeros((3,) + gt.shape, np.float16)
    probs[1] = prob
    probs[0] = 1 - prob
    np.savez_compressed(prob_dir / f"{name}.npz", **{key: probs})


@pytest.fixture
def folders(tmp_path):
    gt_dir, prob_dir = tmp_path / "gt", tmp_path / "prob"
    gt_dir.mkdir()
    prob_dir.mkdir()
    prob, gt = hand_case()
    for name in ("p1_pre", "p1_mid", "p2_pre"):
        _write_case(gt_dir, prob_dir, name, prob, gt)
    return tmp_path, gt_dir, prob_dir


def test_cli_writes_froc_csv_and_summary(folders, capsys):
    from vadice.cli import main

    tmp, gt_dir, prob_dir = folders
    (tmp / "patients.csv").write_text("case,patient\np1_pre,P1\np1_mid,P1\np2_pre,P2\n")
    out = tmp / "froc"
    rc = main(["-q", "froc", "--gt", str(gt_dir), "--prob", str(prob_dir), "--label", "1", "--label", "2",
               "--out", str(out), "--thresholds", ",".join(map(str, THRESHOLDS)), "--patients",
               str(tmp / "patients.csv"), "--fp-rate", "0.5"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["n_patients"] == 2
    # Every case is the hand case: sensitivities as there; FP per patient 3/2 of the per-case counts.
    # Curve (0,0) (0,1/3) (1.5,1/3) (1.5,2/3) (3,2/3): CPM = (4 * 1/3 + 3 * 2/3) / 7 (1/8 .. 1 on the flat part).
    gtvp = summary["labels"]["GTVp"]
    assert gtvp["cpm"] == pytest.approx((4 / 3 + 2) / 7) and gtvp["n_gt"] == 9
    assert gtvp["sensitivity_at_fp_rate"] == pytest.approx(1 / 3)
    gtvn = summary["labels"]["GTVn"]  # one voxel of label 2 per case, an empty channel: never found
    assert gtvn["cpm"] == 0 and gtvn["n_gt"] == 3
    rows = list(csv.DictReader((out / "froc.csv").open()))
    p_rows = [r for r in rows if r["label"] == "GTVp"]
    assert [float(r["threshold"]) for r in p_rows] == list(THRESHOLDS)
    assert [float(r["fp_per_patient"]) for r in p_rows] == [f * 1.5 for f in HAND_FP]
    assert [int(r["tp"]) for r in p_rows] == [3 * t for t in HAND_TP]
    assert [float(r["sensitivity 1-5 ml"]) for r in p_rows] == [1, 1, 1, 0, 0]
    assert "GTVp" in capsys.readouterr().out
    # counts.npz rebuilds the per-patient counts behind froc.csv: P1 holds two hand cases, P2 one.
    counts = load_froc_counts(out)
    assert list(counts) == ["GTVp", "GTVn"] and counts["GTVp"].patients == ("P1", "P2")
    assert counts["GTVp"].tp.tolist() == [[2 * t, t] for t in HAND_TP]
    assert counts["GTVp"].n_gt.tolist() == [6, 3] and counts["GTVp"].n_cases == 3
    assert [int(x) for x in counts["GTVp"].fp.sum(axis=1)] == [int(r["fp"]) for r in p_rows]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vadice froc: error: "), err
    return err[0]


def test_cli_refuses_bad_inputs_without_output(folders, capsys):
    from vadice.cli import main

    tmp, gt_dir, prob_dir = folders
    out = tmp / "froc"
    argv = ["-q", "froc", "--gt", str(gt_dir), "--prob", str(prob_dir), "--label", "1", "--out", str(out)]

    np.savez(prob_dir / "p2_pre.npz", probabilities=np.zeros((3, 12, 20, 19), np.float32))
    assert main(argv) == 2
    assert "p2_pre.npz" in (e := _error(capsys)) and "differs from the truth" in e

    np.savez(prob_dir / "p2_pre.npz", softmax=np.zeros((3, 12, 20, 20), np.float32))
    assert main(argv) == 2
    assert "p2_pre.npz" in (e := _error(capsys)) and "no 'probabilities'" in e

    (prob_dir / "p2_pre.npz").write_bytes(b"not a zip file")
    assert main(argv) == 2
    assert "p2_pre.npz" in (e := _error(capsys)) and "unreadable .npz" in e

    (tmp / "patients.csv").write_text("case,patient\np1_pre,P1\np1_mid,P1\n")
    assert main(argv + ["--patients", str(tmp / "patients.csv")]) == 2
    assert "no patient given for case(s) p2_pre" in _error(capsys)

    (prob_dir / "p2_pre.npz").unlink()
    assert main(argv) == 2
    assert "p2_pre.npz" in (e := _error(capsys)) and "missing probability file" in e
    assert not out.exists() and not list(tmp.glob(".froc*"))
