"""The experiment's test set and probabilities (vadice.testset), with training and inference replaced.

Training writes nnU-Net's validation outputs by hand (label maps, float32 ``.npz`` and ``.pkl``), inference is a
stand-in ``vadice.nnunet.inference.Predictor`` (as in test_postprocess.py); conversion, evaluation, comparison,
FROC, the manifest, the post-processing guard and the report are the real ones. The test cohort reuses one of the
training cohort's case ids (as a second ``vadice synth`` cohort does), with other content.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vadice.cli import main
from vadice.experiment import Experiment, ExperimentSettings, Unit
from vadice.io import Geometry, InputError, read_nifti, sha256_file, write_nifti

GEOM = Geometry((16, 16, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
TRAIN_IDS = (2, 3, 5)
TEST_IDS = (3, 7)  # 3: the id of a training case, another patient
CODE = {"commit": "1" * 40, "dirty": False}


def _mask(case_id: int) -> np.ndarray:
    """A GTVp block and a GTVn block whose place depends on the case (so cases differ in content)."""
    m = np.zeros((8, 16, 16), np.uint8)
    m[2:5, 2:6, 2:6] = 1
    m[3:6, 8 + case_id % 4:12 + case_id % 4, 9:13] = 2
    return m


def _image(case_id: int, salt: int = 0) -> np.ndarray:
    return (_mask(case_id) * 100 + case_id + salt).astype(np.int16)


def _cohort(folder: Path, ids) -> Path:
    """Another cohort: patient ``cid`` looks like no training patient of that id."""
    for cid in ids:
        write_nifti(_image(cid + 1, salt=50), GEOM, folder / str(cid) / "preRT" / f"{cid}_preRT_T2.nii.gz")
        write_nifti(_mask(cid + 1), GEOM, folder / str(cid) / "preRT" / f"{cid}_preRT_mask.nii.gz")
    return folder


class FakePredictor:
    """Stand-in for inference.Predictor: predicts the case's bright voxels, probabilities from them."""

    built: list = []
    cases: list = []

    def __init__(self, model_dir, folds=(0,), device="cpu", tta=True, *args, **kwargs):
        FakePredictor.built.append((Path(model_dir).name, tuple(folds), tta))

    def predict_case(self, files, output_file=None, probabilities=False):
        image, geom = read_nifti(files[0])
        labels = np.where(image >= 250, 2, np.where(image >= 150, 1, 0)).astype(np.uint8)
        FakePredictor.cases.append(Path(files[0]).name)
        write_nifti(labels, geom, Path(output_file))
        probs = np.stack([labels == k for k in range(3)]).astype(np.float32) * 0.9 + 0.05 if probabilities else None
        return SimpleNamespace(labels=labels, probabilities=probs, written=Path(output_file))


@pytest.fixture
def study(tmp_path, monkeypatch):
    """Raw training dataset, a test cohort, fake training (with --npz outputs) and fake inference."""
    from vadice.nnunet import inference
    from vadice.nnunet.paths import DatasetRef, NNUNetPaths

    raw = tmp_path / "raw" / "Dataset001_X"
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "file_ending": ".nii.gz"}))
    for cid in TRAIN_IDS:
        write_nifti(_mask(cid), GEOM, raw / "labelsTr" / f"HNTS_{cid:03d}_preRT.nii.gz")
        write_nifti(_image(cid), GEOM, raw / "imagesTr" / f"HNTS_{cid:03d}_preRT_0000.nii.gz")
    monkeypatch.setattr("vadice.nnunet.paths.resolve_dataset",
                        lambda d: DatasetRef(1, "Dataset001_X", NNUNetPaths(raw=tmp_path / "raw")))
    monkeypatch.setattr("vadice.experiment.code_version", lambda: dict(CODE))
    FakePredictor.built, FakePredictor.cases = [], []
    monkeypatch.setattr(inference, "Predictor", FakePredictor)
    trained = []

    def train(self, loss, fold, seed, iterations, epochs, results_dir, log_name, warm_start=None,
              probabilities=False):
        model_dir = results_dir / loss
        fold_dir = model_dir / f"fold_{fold}"
        (fold_dir / "validation").mkdir(parents=True, exist_ok=True)
        (model_dir / "plans.json").write_text("{}")
        (model_dir / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "file_ending": ".nii.gz"}))
        (fold_dir / "checkpoint_final.pth").write_bytes(log_name.encode())
        for cid in TRAIN_IDS:
            case = f"HNTS_{cid:03d}_preRT"
            pred = _mask(cid) if loss == "baseline" else _mask(cid + 1)
            write_nifti(pred, GEOM, fold_dir / "validation" / f"{case}.nii.gz")
            if probabilities:  # nnU-Net's --npz: float32 and a .pkl
                probs = np.stack([pred == k for k in range(3)]).astype(np.float32)
                np.savez_compressed(fold_dir / "validation" / f"{case}.npz", probabilities=probs)
                (fold_dir / "validation" / f"{case}.pkl").write_bytes(b"properties")
        trained.append((loss, probabilities))
        return SimpleNamespace(fold_dir=fold_dir, model_dir=model_dir, checkpoint=fold_dir / "checkpoint_final.pth",
                               command=["train"], settings={"warm_start_sha256": None})

    monkeypatch.setattr(Experiment, "_train", train)
    test_dir = _cohort(tmp_path / "test_cohort", TEST_IDS)
    settings = ExperimentSettings(dataset="1", folds=(0,), seeds=(0,), setups=("baseline", "dual"), device="cpu",
                                  test_set=str(test_dir), probabilities=True)
    return SimpleNamespace(tmp=tmp_path, raw=raw, settings=settings, test_dir=test_dir, trained=trained)


def _open(run, settings, **kw) -> Experiment:
    exp = Experiment.open(run, settings, progress=False, **kw)
    exp.plan = type("Plan", (), {"plans_identifier": "p", "plans_sha256": "s", "configuration": "3d_fullres"})()
    return exp


def test_test_set_predicted_once_per_unit_evaluated_apart_and_resumable(study):
    run = study.tmp / "run"
    exp = _open(run, study.settings)
    exp.run_units()
    assert study.trained == [("baseline", True), ("dual", True)]  # nnU-Net asked for --npz
    # held-out probabilities: float16 beside the label maps; nnU-Net's float32 and .pkl gone
    with np.load(run / "predictions" / "dual" / "seed_0" / "HNTS_002_preRT.npz") as npz:
        assert npz["probabilities"].dtype == np.float16 and npz["probabilities"].shape == (3, 8, 16, 16)
    validation = run / "nnUNet_results" / "seed_0" / "dual" / "fold_0" / "validation"
    assert not list(validation.glob("*.npz")) and not list(validation.glob("*.pkl"))

    result = exp.collect()  # both sets by default with a test set
    assert list(result["sets"]) == ["oof", "test"]
    assert result["sets"]["test"]["label"] == "test set (2 patients)"
    assert result["sets"]["oof"]["label"] == "out-of-fold (3 patients)"
    # one predictor per set-up and seed, the fold ensemble, no mirroring on the CPU
    assert FakePredictor.built == [("baseline", (0,), False), ("dual", (0,), False)]
    assert len(FakePredictor.cases) == 4
    for setup in ("baseline", "dual"):
        test_preds = run / "predictions_test" / setup / "seed_0"
        assert sorted(p.name for p in test_preds.iterdir() if not p.name.startswith(".")) == [
            "HNTS_003_preRT.nii.gz", "HNTS_003_preRT.npz", "HNTS_007_preRT.nii.gz", "HNTS_007_preRT.npz"]
        test_eval = json.loads((run / "evaluation_test" / setup / "seed_0" / "summary.json").read_text())
        oof_eval = json.loads((run / "evaluation" / setup / "seed_0" / "summary.json").read_text())
        assert test_eval["n_cases"] == 2 and oof_eval["n_cases"] == 3
        for which, n in (("froc", 3), ("froc_test", 2)):
            froc = json.loads((run / which / setup / "seed_0" / "summary.json").read_text())
            assert froc["n_cases"] == n and set(froc["labels"]) == {"GTVp", "GTVn"}
    assert exp.froc_dirs("test") == {s: {0: run / "froc_test" / s / "seed_0"} for s in ("baseline", "dual")}
    # the node FROC of dual against the baseline, per set, paired like the set's comparison
    for which, n in (("froc_comparison", 3), ("froc_comparison_test", 2)):
        cmp = json.loads((run / which / "froc_comparison.json").read_text())
        assert cmp["reference"] == "baseline" and cmp["label"] == "GTVn" and cmp["n_patients"] == n
        assert set(cmp["views"]["all"]) == {"baseline", "dual"} and cmp["views"]["all"]["dual"]["delta_cpm"]
    assert (run / "comparison_test" / "comparison.json").is_file() and (run / "seed_spread_test.json").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    record = manifest["test_set"]
    assert record["cases"] == ["HNTS_003_preRT", "HNTS_007_preRT"] and record["source"] == str(study.test_dir)
    assert manifest["settings"]["test_set"] == str(study.test_dir) and manifest["settings"]["probabilities"]

    # resumable per case: a lost prediction is the only one made again, by one predictor per unit
    (run / "predictions_test" / "dual" / "seed_0" / "HNTS_007_preRT.nii.gz").unlink()
    FakePredictor.built, FakePredictor.cases = [], []
    exp.collect(which="test")
    assert FakePredictor.built == [("dual", (0,), False)] and FakePredictor.cases == ["HNTS_007_preRT_0000.nii.gz"]

    from vadice.experiment import build_report

    html = build_report(run, which="test").read_text()
    assert html.count("test set (2 patients)") >= 1 and "out-of-fold (" not in html
    assert "Operating points (FROC)" in html
    assert "out-of-fold (3 patients)" in build_report(run).read_text()


def test_changing_the_test_set_on_resume_is_refused(study):
    run = study.tmp / "run"
    _open(run, study.settings).run_units([Unit("baseline", 0, 0)])
    other = _cohort(study.tmp / "other_cohort", (11,))
    for changed in ({"test_set": str(other)}, {"test_set": None}, {"probabilities": False}):
        with pytest.raises(InputError, match=f"other settings .*{next(iter(changed))}"):
            _open(run, ExperimentSettings(**{**study.settings.__dict__, **changed}))
    with pytest.raises(InputError, match="not found"):
        _open(study.tmp / "run2", ExperimentSettings(**{**study.settings.__dict__, "test_set": "/nowhere"}))
    assert not (study.tmp / "run2").exists()


def test_a_test_image_that_is_also_a_training_image_is_refused(study):
    image = study.test_dir / "7" / "preRT" / "7_preRT_T2.nii.gz"
    (study.raw / "vadice_convert.json").write_text(json.dumps(
        {"patients": {"9": {"sources": {"9/preRT/9_preRT_T2.nii.gz": sha256_file(image)}}}}))
    run = study.tmp / "run"
    exp = Experiment.open(run, study.settings, progress=False)
    with pytest.raises(InputError, match="7_preRT_T2.nii.gz: is also a training image"):
        exp.prepare()
    assert not run.exists()  # no partial output


def test_postprocessing_fit_refuses_the_test_set(study):
    from vadice.postprocess.fit import fit_postprocessing, validation_folds

    run = study.tmp / "run"
    exp = _open(run, study.settings)
    exp.run_units()
    exp.collect(which="test")
    test_gt = exp.test_gt_dir()
    shutil.copytree(test_gt, study.tmp / "gt_elsewhere")
    with pytest.raises(InputError, match="predictions_test/dual/seed_0: is part of the test set of experiment run"):
        fit_postprocessing(validation_folds(run / "predictions_test" / "dual" / "seed_0"), study.tmp / "gt_elsewhere")
    # copies of the test predictions and truth elsewhere in the run: the truth folder, then the truth's content
    shutil.copytree(run / "predictions_test" / "dual" / "seed_0", run / "copy" / "preds")
    with pytest.raises(InputError, match="labelsTr: is part of the test set"):
        fit_postprocessing(validation_folds(run / "copy" / "preds"), test_gt)
    shutil.copytree(test_gt, run / "copy" / "gt")
    with pytest.raises(InputError, match="HNTS_003_preRT.nii.gz: is the truth of test-set case 'HNTS_003_preRT'"):
        fit_postprocessing(validation_folds(run / "copy" / "preds"), run / "copy" / "gt")
    # the held-out predictions of the same run (case HNTS_003_preRT too, another patient) are fine
    exp.collect(which="oof")
    pp = fit_postprocessing(validation_folds(run / "predictions" / "dual" / "seed_0"), run / "gt")
    assert "HNTS_003_preRT" in pp.cases


def test_cli_test_set_options(study, capsys):
    assert main(["experiment", "1", "--out", str(study.tmp / "r"), "--on", "test"]) == 2
    assert "--on test needs --test-set DIR" in capsys.readouterr().err
    run = study.tmp / "run"
    _open(run, ExperimentSettings(**{**study.settings.__dict__, "test_set": None, "probabilities": False}))\
        .run_units([Unit("baseline", 0, 0)])
    # a run begun without probabilities: the CLI's default is refused with the way out
    assert main(["experiment", "1", "--out", str(run), "--setups", "baseline,dual", "--folds", "0", "--seeds", "0",
                 "--device", "cpu", "--collect"]) == 2
    err = capsys.readouterr().err
    assert "probabilities: False -> True" in err and "--no-probabilities" in err and len(err.strip().splitlines()) == 1


def test_train_command_exports_validation_probabilities():
    from vadice.nnunet.paths import DatasetRef, NNUNetPaths
    from vadice.nnunet.train import plain_command

    ref = DatasetRef(1, "Dataset001_X", NNUNetPaths())
    assert plain_command(ref, "nnUNetTrainer", "p", 0, "cuda", 1, True, {}, save_probabilities=True).endswith(
        "--c --npz")
    assert "--npz" not in plain_command(ref, "nnUNetTrainer", "p", 0, "cuda", 1, True, {})
