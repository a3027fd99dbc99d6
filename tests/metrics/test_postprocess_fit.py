"""Fitting the minimum component volumes (vadice.postprocess.fit): known answers and no leakage.

Synthetic cases on an anisotropic grid (2 x 1 x 1 mm, 2 mm³ voxels). GTVn (label 2):
  type A: one true node of 60 mm³ (predicted exactly) and one false-positive blob of 30 mm³;
          alone, the best minimum volume is 50 (removes the 30, keeps the 60).
  type B: one true node of 300 mm³ and one false positive of 150 mm³; alone, the best is 200.
GTVp (label 1): one 1000 mm³ tumour predicted exactly, no false positive: every candidate scores the same,
so the tie goes to 0 (nothing removed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vadice.cli import main
from vadice.io import Geometry, InputError, write_nifti
from vadice.io import read_mask
from vadice.metrics.evaluate import evaluate_case, evaluate_folders
from vadice.postprocess.fit import (
    check_grid,
    choose,
    count_case,
    fit_postprocessing,
    lesion_scores,
    parse_objective,
    validation_folds,
    write_cross_validated,
)
from vadice.postprocess import DEFAULT_GRID_MM3, load_postprocessing, remove_small_components

GEOM = Geometry((40, 40, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
SPACING = GEOM.spacing_zyx  # (2, 1, 1): 2 mm³ per voxel
LABELS = {"GTVp": 1, "GTVn": 2}
# (true node voxels as a z, y, x block, false positive block): volumes in mm³ = voxels x 2
TYPES = {"A": ((2, 3, 5), (1, 3, 5)),     # 30 voxels = 60 mm³, 15 voxels = 30 mm³
         "B": ((5, 5, 6), (3, 5, 5))}     # 150 voxels = 300 mm³, 75 voxels = 150 mm³


def _case(kind: str) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros(GEOM.shape_zyx, np.uint8)
    gt[10:15, 25:35, 25:35] = 1                     # GTVp 500 voxels = 1000 mm³
    tp, fp = TYPES[kind]
    gt[0:tp[0], 0:tp[1], 0:tp[2]] = 2               # the true node
    pred = gt.copy()
    pred[0:fp[0], 15:15 + fp[1], 15:15 + fp[2]] = 2  # a false positive, away from everything
    return gt, pred


def _write_model(root: Path, folds: dict[str, list[tuple[str, str]]]) -> tuple[Path, Path]:
    """An nnU-Net-like model folder (fold_<k>/validation/<case>.nii.gz) and a truth folder."""
    model = root / "results" / "Dataset990_Test" / "Trainer__Plans__3d_fullres"
    gt_dir = root / "pre" / "Dataset990_Test" / "gt_segmentations"
    for fold, cases in folds.items():
        for case, kind in cases:
            gt, pred = _case(kind)
            write_nifti(pred, GEOM, model / f"fold_{fold}" / "validation" / f"{case}.nii.gz")
            write_nifti(gt, GEOM, gt_dir / f"{case}.nii.gz")
    return model, gt_dir


def test_counts_are_vadice_evaluates_counts_on_the_filtered_prediction():
    # One implementation of each number: the fit's counts for a candidate equal what evaluate_case says about
    # the prediction filtered with that candidate.
    rng = np.random.default_rng(3)
    gt = (rng.random(GEOM.shape_zyx) > 0.985).astype(np.uint8) * 2
    gt[10:15, 25:35, 25:35] = 1
    pred = (rng.random(GEOM.shape_zyx) > 0.985).astype(np.uint8) * 2
    pred[11:15, 26:33, 25:35] = 1
    pred[gt == 2] = np.where(rng.random(np.count_nonzero(gt == 2)) > 0.5, 2, 0)
    grid = (0.0, 3.0, 5.0, 10.0)
    counts = count_case(gt, pred, SPACING, LABELS, grid)
    for j, v in enumerate(grid):
        res = evaluate_case(gt, remove_small_components(pred, SPACING, {1: v, 2: v}), SPACING, LABELS)
        for i, name in enumerate(LABELS):
            les = res.labels[name].lesions
            assert tuple(counts[i, j]) == (les.n_gt, les.n_gt_detected, les.n_pred, les.n_pred_matched)
    assert counts[1, 0, 2] > counts[1, 1, 2] > 0  # 3 mm³ removed single voxels (2 mm³)


def test_counts_of_empty_masks():
    gt, _ = _case("A")
    empty = np.zeros_like(gt)
    counts = count_case(gt, empty, SPACING, LABELS, DEFAULT_GRID_MM3)
    assert counts[:, :, 0].tolist() == [[1] * 7, [1] * 7] and counts[:, :, 1:].sum() == 0  # all missed
    assert count_case(empty, empty, SPACING, LABELS, DEFAULT_GRID_MM3).sum() == 0


def test_fit_finds_the_known_best_minimum_volume(tmp_path):
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A"), ("a2", "A")], "1": [("a3", "A"), ("a4", "A")]})
    pp = fit_postprocessing(validation_folds(model), gt_dir, LABELS)
    assert pp.min_volume_mm3 == {1: 0.0, 2: 50.0}
    assert pp.cases == ("a1", "a2", "a3", "a4")
    scores = {row["min_volume_mm3"]: row for row in pp.details["in_sample"]["GTVn"]}
    # 0, 10, 20 keep the 30 mm³ false positives: S 1, P 4/8; 50 is perfect; 100+ remove the 60 mm³ nodes.
    assert scores[20.0]["precision"] == 0.5 and scores[50.0]["f1"] == 1.0
    assert scores[100.0]["sensitivity"] == 0.0 and scores[100.0]["f1"] == 0.0
    # Every fold's cross-validated choice is 50 too, and the out-of-fold effect is the full gain.
    cv = pp.details["cross_validation"]
    assert [f["min_volume_mm3"]["GTVn"] for f in cv["folds"].values()] == [50.0, 50.0]
    assert cv["out_of_fold"]["GTVn"]["before"]["precision"] == 0.5
    assert cv["out_of_fold"]["GTVn"]["after"]["precision"] == 1.0


def test_cross_validation_never_fits_on_the_fold_it_scores(tmp_path):
    # Fold 0 holds type-A cases (alone: 50), fold 1 type-B cases (alone: 200). Pooled over both, 50 wins
    # (S 1, P 4/6, F1 0.8 against S 1/2, P 1, F1 0.67 for 200). So:
    #   fitted on the other fold only (correct): fold 0 -> 200, fold 1 -> 50;
    #   fitted on its own fold (leak):           fold 0 -> 50,  fold 1 -> 200;
    #   fitted on all folds (leak):              fold 0 -> 50,  fold 1 -> 50.
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A"), ("a2", "A")], "1": [("b1", "B"), ("b2", "B")]})
    pp = fit_postprocessing(validation_folds(model), gt_dir, LABELS)
    cv = pp.details["cross_validation"]
    assert cv["folds"]["0"]["min_volume_mm3"]["GTVn"] == 200.0
    assert cv["folds"]["1"]["min_volume_mm3"]["GTVn"] == 50.0
    assert cv["folds"]["0"]["fitted_on_cases"] == ["b1", "b2"] and cv["folds"]["0"]["evaluated_cases"] == ["a1", "a2"]
    assert pp.min_volume_mm3[2] == 50.0  # the file for new data: all folds
    # Out of fold: fold 0 at 200 loses both 60 mm³ nodes and their false positives; fold 1 at 50 keeps both
    # 300 mm³ nodes and both 150 mm³ false positives. 4 truth nodes, 2 found; 4 predicted, 2 matched.
    after = cv["out_of_fold"]["GTVn"]["after"]
    assert (after["n_gt"], after["n_gt_detected"], after["n_pred"], after["n_pred_matched"]) == (4, 2, 4, 2)
    before = cv["out_of_fold"]["GTVn"]["before"]
    assert (before["n_gt"], before["n_gt_detected"], before["n_pred"], before["n_pred_matched"]) == (4, 4, 8, 4)


def test_the_file_lists_every_case_it_saw_and_predict_refuses_them(tmp_path):
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A")], "1": [("b1", "B")]})
    pp = fit_postprocessing(validation_folds(model), gt_dir, LABELS)
    assert set(pp.cases) == {"a1", "b1"}
    with pytest.raises(InputError, match="was fitted on 1 of these case"):
        pp.refuse_seen(["new", "b1"], "pp.json")


def test_objective_precision_with_a_sensitivity_floor():
    # Pooled counts of 1 A + 1 B case per candidate of the default grid (hand-counted from TYPES):
    #   v:      0    10   20   50   100  200  500
    #   det:    2    2    2    2    1    1    0     (of 2 truth nodes)
    #   pred:   4    4    4    3    2    1    0
    #   match:  2    2    2    2    1    1    0
    det = [2, 2, 2, 2, 1, 1, 0]
    pred = [4, 4, 4, 3, 2, 1, 0]
    match = [2, 2, 2, 2, 1, 1, 0]
    pooled = np.array([[2, d, p, m] for d, p, m in zip(det, pred, match)])
    assert DEFAULT_GRID_MM3[choose(pooled, DEFAULT_GRID_MM3, "f1")] == 50.0       # F1 0.8 vs 0.667 at 200
    assert DEFAULT_GRID_MM3[choose(pooled, DEFAULT_GRID_MM3, "precision@sens-drop:0")] == 50.0   # P 2/3
    assert DEFAULT_GRID_MM3[choose(pooled, DEFAULT_GRID_MM3, "precision@sens-drop:0.5")] == 200.0  # P 1
    # Everything removed never wins by an undefined precision; no truth lesion at all -> 0.
    assert DEFAULT_GRID_MM3[choose(pooled[:, :] * [0, 0, 1, 0], DEFAULT_GRID_MM3, "f1")] == 0.0


def test_scores_follow_evaluates_conventions():
    assert lesion_scores(np.array([0, 0, 3, 0]))["f1"] != lesion_scores(np.array([0, 0, 3, 0]))["f1"]  # NaN
    assert lesion_scores(np.array([4, 0, 0, 0]))["f1"] == 0.0  # nothing predicted: F1 0, precision NaN
    s = lesion_scores(np.array([4, 3, 6, 2]))
    assert s["sensitivity"] == 0.75 and s["precision"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 * 0.75 / 3 / (0.75 + 1 / 3))


@pytest.mark.parametrize("bad", ["f2", "precision@sens-drop:2", "precision@sens-drop:x"])
def test_bad_objectives_are_refused(bad):
    with pytest.raises(ValueError):
        parse_objective(bad)


@pytest.mark.parametrize("bad", [(), (10, 20), (0, 20, 10), (0, -1), (0, float("inf"))])
def test_bad_grids_are_refused(bad):
    with pytest.raises(ValueError):
        check_grid(bad)


def test_one_group_of_predictions_fits_without_cross_validation(tmp_path):
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A"), ("a2", "A")]})
    plain = model / "fold_0" / "validation"  # a plain folder of predictions, e.g. training cases
    folds = validation_folds(plain)
    assert list(folds) == ["all"]
    pp = fit_postprocessing(folds, gt_dir, LABELS)
    assert pp.min_volume_mm3[2] == 50.0 and pp.cases == ("a1", "a2")
    assert pp.details["cross_validation"] is None


def test_a_case_in_two_folds_or_without_truth_is_refused(tmp_path):
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A")], "1": [("a2", "A")]})
    folds = validation_folds(model)
    with pytest.raises(InputError, match="is in fold 0 and fold 1"):
        fit_postprocessing({"0": folds["0"], "1": {"a1": folds["0"]["a1"]}}, gt_dir, LABELS)
    (gt_dir / "a2.nii.gz").unlink()
    with pytest.raises(InputError, match="a2.nii.gz: truth label map of a predicted case is missing"):
        fit_postprocessing(folds, gt_dir, LABELS)


def test_a_fold_without_validation_predictions_is_refused(tmp_path):
    model, _ = _write_model(tmp_path, {"0": [("a1", "A")]})
    (model / "fold_1").mkdir()
    with pytest.raises(InputError, match="fold_1/validation: no validation predictions"):
        validation_folds(model)


# ---------------------------------------------------------------------------------------------
# the command line

def test_cli_fit_writes_the_file_and_prints_the_cross_validation(tmp_path, monkeypatch, capsys):
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A"), ("a2", "A")], "1": [("b1", "B"), ("b2", "B")]})
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))  # truth found as nnU-Net keeps it
    monkeypatch.delenv("nnUNet_raw", raising=False)
    out = tmp_path / "pp.json"
    assert main(["-q", "postprocess", "fit", str(model), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["min_volume_mm3"] == {"GTVp": 0.0, "GTVn": 50.0}
    assert data["fitted_on"]["cases"] == ["a1", "a2", "b1", "b2"]
    assert data["source"]["model_dir"] == str(model.resolve())
    assert data["source"]["gt_dir"] == str(gt_dir.absolute())
    assert data["candidate_grid_mm3"] == list(DEFAULT_GRID_MM3) and data["objective"] == "f1"
    printed = capsys.readouterr().out
    assert "GTVn: min volume 50 mm³; cross-validated (per fold 0: 200, 1: 50)" in printed
    assert load_postprocessing(out).min_volume_mm3 == {1: 0.0, 2: 50.0}


@pytest.mark.parametrize("extra, says", [
    (["--grid", "5,10"], "--grid: candidate grid must be increasing finite mm³ values starting at 0"),
    (["--objective", "dice"], "--objective: objective must be 'f1'"),
    (["--match", "iou:2"], "IoU threshold must be in (0, 1]"),
])
def test_cli_fit_bad_options_one_line_exit_2_no_file(tmp_path, capsys, extra, says):
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A")]})
    out = tmp_path / "pp.json"
    assert main(["-q", "postprocess", "fit", str(model), "--gt", str(gt_dir), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vadice postprocess: error: ") and says in err[0], err
    assert not out.exists()


def test_cli_fit_bad_inputs_one_line_exit_2_no_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A")], "1": [("a2", "A")]})
    run = tmp_path / "run"
    (run / "units").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    (gt_dir / "a2.nii.gz").unlink()
    out = tmp_path / "pp.json"
    cases = [
        ([str(model)], f"{model}: no truth labels found for these predictions: pass --gt LABELS_DIR"),
        ([str(model), "--gt", str(gt_dir)], f"{gt_dir / 'a2.nii.gz'}: truth label map of a predicted case is missing"),
        ([str(run)], f"{run}: this is an experiment run folder: choose a model with --setup"),
        ([str(tmp_path / "nowhere"), "--gt", str(gt_dir)], f"{tmp_path / 'nowhere'}: model folder not found"),
    ]
    for args, says in cases:
        assert main(["-q", "postprocess", "fit", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"vadice postprocess: error: {says}"]
        assert not out.exists()


def test_cross_validated_predictions_score_as_the_recorded_out_of_fold_counts(tmp_path):
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A"), ("a2", "A")], "1": [("b1", "B"), ("b2", "B")]})
    folds = validation_folds(model)
    pp = fit_postprocessing(folds, gt_dir, LABELS)
    out = tmp_path / "cv"
    write_cross_validated(pp, folds, out)
    # Fold 0's cases with fold 0's volume (200, fitted on fold 1): both type-A nodes (60 and 30 mm³) go, the
    # 1000 mm³ GTVp stays. Fold 1's with 50 (fitted on fold 0): type B's 300 and 150 mm³ nodes both stay.
    pred_a = _case("A")[1]
    assert np.array_equal(read_mask(out / "a1.nii.gz")[0], np.where(pred_a == 2, 0, pred_a))
    assert np.array_equal(read_mask(out / "b1.nii.gz")[0], _case("B")[1])
    summary = evaluate_folders(gt_dir, out, None, progress=False)["labels"]["GTVn"]
    after = pp.details["cross_validation"]["out_of_fold"]["GTVn"]["after"]
    assert [summary[k] for k in ("n_gt_lesions", "n_gt_detected", "n_pred_lesions", "n_pred_matched")] == \
        [after[k] for k in ("n_gt", "n_gt_detected", "n_pred", "n_pred_matched")]
    with pytest.raises(InputError, match="exists"):
        write_cross_validated(pp, folds, out)


def test_cli_cv_out_and_its_refusals(tmp_path, capsys):
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A")], "1": [("b1", "B")]})
    out, cv = tmp_path / "pp.json", tmp_path / "cv"
    assert main(["-q", "postprocess", "fit", str(model), "--gt", str(gt_dir), "--out", str(out),
                 "--cv-out", str(cv)]) == 0
    assert sorted(p.name for p in cv.iterdir()) == ["a1.nii.gz", "b1.nii.gz"]
    capsys.readouterr()
    # An existing --cv-out, or one fold only: refused before fitting, nothing written.
    out.unlink()
    assert main(["-q", "postprocess", "fit", str(model), "--gt", str(gt_dir), "--out", str(out),
                 "--cv-out", str(cv)]) == 2
    assert "cv: exists" in capsys.readouterr().err and not out.exists()
    plain = model / "fold_0" / "validation"
    assert main(["-q", "postprocess", "fit", str(plain), "--gt", str(gt_dir), "--out", str(out),
                 "--cv-out", str(tmp_path / "cv2")]) == 2
    assert "two or more folds" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cv2").exists()
    # A foreign file at --out is refused before anything is written, --cv-out included.
    out.write_text("mine")
    assert main(["-q", "postprocess", "fit", str(model), "--gt", str(gt_dir), "--out", str(out),
                 "--cv-out", str(tmp_path / "cv3")]) == 2
    assert "not a vadice post-processing file" in capsys.readouterr().err
    assert out.read_text() == "mine" and not (tmp_path / "cv3").exists()


def test_cli_fit_on_an_experiment_run_folder_finds_model_and_truth(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    model, gt_dir = _write_model(tmp_path, {"0": [("a1", "A")], "1": [("b1", "B")]})
    run = tmp_path / "run"
    (run / "units").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    for fold in (0, 1):
        (run / "units" / f"dual__fold{fold}__seed0.json").write_text(json.dumps({"model_dir": str(model)}))
    gt_dir.rename(run / "gt")  # the run's own copy of the truth, as `vadice experiment` collects it
    out = tmp_path / "pp.json"
    assert main(["-q", "postprocess", "fit", str(run), "--setup", "dual", "--out", str(out)]) == 0
    source = json.loads(out.read_text())["source"]
    assert source["run_dir"] == str(run.resolve()) and source["setup"] == "dual" and source["seed"] == 0
    assert source["gt_dir"] == str(run / "gt") and source["model_dir"] == str(model.resolve())
