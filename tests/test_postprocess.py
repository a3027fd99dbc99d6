"""Post-processing application (vadice.postprocess): hand-worked removals, the file, predict and apply.

Every expected value below is worked out by hand in the comments; no training, no nnU-Net
(``vadice predict`` runs with the same stand-in for inference as test_predict_outputs.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from vadice.cli import main
from vadice.io import Geometry, InputError, read_mask, write_nifti
from vadice.lesions import label_components
from vadice.postprocess import (
    BUNDLED_NAME,
    DEFAULT_GRID_MM3,
    PostProcessing,
    apply_to_file,
    apply_to_folder,
    load_postprocessing,
    remove_small_components,
    save_postprocessing,
)

# Anisotropic voxels, array (z, y, x) order: 2 x 0.5 x 0.5 mm = 0.5 mm³ per voxel.
SPACING = (2.0, 0.5, 0.5)


def _hand_mask() -> np.ndarray:
    """Label map whose components and volumes are listed in the comments (0.5 mm³ voxels)."""
    m = np.zeros((6, 12, 12), np.uint8)
    m[0, 0, 0] = 2                 # GTVn A: 1 voxel   = 0.5 mm³
    m[0:2, 4:6, 4:6] = 2           # GTVn B: 8 voxels  = 4 mm³
    m[2:4, 8:10, 0:5] = 2          # GTVn C: 20 voxels = 10 mm³
    m[5, 10:12, 10:12] = 1         # GTVp D: 4 voxels  = 2 mm³
    return m


def _hand_mask_without_a_and_b() -> np.ndarray:
    """:func:`_hand_mask` after a 10 mm³ GTVn minimum, worked out by hand: A (0.5) and B (4) are below 10 mm³;
    C is exactly 10 mm³ and stays (">= minimum is kept"); D is GTVp, which has no minimum here, and stays
    although it is smaller than 10 mm³."""
    expected = _hand_mask()
    expected[0, 0, 0] = 0
    expected[0:2, 4:6, 4:6] = 0
    return expected


def test_removes_exactly_the_components_below_the_labels_minimum():
    m = _hand_mask()
    out = remove_small_components(m, SPACING, {2: 10.0})
    assert np.array_equal(out, _hand_mask_without_a_and_b())
    assert out.dtype == m.dtype
    assert np.array_equal(m, _hand_mask())  # the input is not modified


def test_each_label_has_its_own_minimum():
    m = _hand_mask()
    out = remove_small_components(m, SPACING, {1: 3.0, 2: 1.0})
    # GTVp D (2 mm³) < 3 -> removed; GTVn A (0.5) < 1 -> removed; B (4) and C (10) >= 1 -> kept.
    assert np.count_nonzero(out == 1) == 0
    assert np.count_nonzero(out == 2) == 8 + 20
    assert out[0, 0, 0] == 0
    out = remove_small_components(m, SPACING, {1: 1.0, 2: 5.0})
    # The other way round: GTVp D (2) >= 1 -> kept; GTVn A (0.5) and B (4) < 5 -> removed; C (10) kept.
    assert np.count_nonzero(out == 1) == 4
    assert np.count_nonzero(out == 2) == 20


def test_a_volume_equal_to_the_minimum_is_kept_despite_floating_point():
    m = np.zeros((3, 3, 3), np.uint8)
    m[0:3, 1, 1] = 2  # 3 voxels of 0.1 x 0.3 x 0.3 mm: 0.027 mm³, but 3 * 0.009 = 0.026999999999999996 in floats
    spacing = (0.1, 0.3, 0.3)
    assert 3 * float(np.prod(spacing)) < 0.027
    assert np.count_nonzero(remove_small_components(m, spacing, {2: 0.027})) == 3
    assert np.count_nonzero(remove_small_components(m, spacing, {2: 0.0271})) == 0


def test_zero_and_missing_minimums_change_nothing():
    m = _hand_mask()
    assert np.array_equal(remove_small_components(m, SPACING, {1: 0.0, 2: 0.0}), m)
    assert np.array_equal(remove_small_components(m, SPACING, {}), m)
    assert np.array_equal(remove_small_components(np.zeros_like(m), SPACING, {2: 50.0}), np.zeros_like(m))


def test_volume_uses_the_physical_voxel_size_not_the_voxel_count():
    m = _hand_mask()
    # With 1 mm³ voxels C is 20 mm³ and B 8 mm³: a 10 mm³ minimum now keeps C only, as before, but a
    # 5 mm³ minimum keeps B too, whereas at 0.5 mm³ per voxel B (4 mm³) goes.
    assert np.count_nonzero(remove_small_components(m, (1, 1, 1), {2: 5.0}) == 2) == 8 + 20
    assert np.count_nonzero(remove_small_components(m, SPACING, {2: 5.0}) == 2) == 20


def test_connectivity_is_the_lesion_definitions():
    m = np.zeros((3, 3, 3), np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = 2  # touching only at a corner: one lesion with 26-connectivity, two with 6
    assert label_components(m, (2,), 26)[1].size - 1 == 1
    # Unit voxels: one 2 mm³ component (26) survives a 2 mm³ minimum; two 1 mm³ components (6) do not.
    assert np.count_nonzero(remove_small_components(m, (1, 1, 1), {2: 2.0}, connectivity=26)) == 2
    assert np.count_nonzero(remove_small_components(m, (1, 1, 1), {2: 2.0}, connectivity=6)) == 0


def test_components_of_different_labels_are_measured_separately():
    m = np.zeros((4, 4, 4), np.uint8)
    m[0:2, 0:2, 0:2] = 1  # GTVp 8 mm³
    m[2, 0, 0] = 2        # GTVn 1 mm³ touching the GTVp block: still its own 1 mm³ component
    out = remove_small_components(m, (1, 1, 1), {1: 5.0, 2: 2.0})
    assert out[2, 0, 0] == 0 and np.count_nonzero(out == 1) == 8


def test_a_far_away_small_component_is_removed_even_with_a_large_box():
    m = np.zeros((40, 40, 40), np.uint8)
    m[0, 0, 0] = 2
    m[30:35, 30:35, 30:35] = 2  # 125 mm³
    out = remove_small_components(m, (1, 1, 1), {2: 100.0})
    assert out[0, 0, 0] == 0 and np.count_nonzero(out) == 125


@pytest.mark.parametrize("bad", [{2: -1.0}, {2: float("nan")}, {0: 5.0}, {2: "10"}])
def test_bad_minimums_are_refused(bad):
    with pytest.raises(ValueError):
        remove_small_components(_hand_mask(), SPACING, bad)


def test_bad_mask_spacing_or_connectivity_are_refused():
    with pytest.raises(ValueError):
        remove_small_components(_hand_mask().astype(float), SPACING, {2: 1})
    with pytest.raises(ValueError):
        remove_small_components(_hand_mask(), (1, 1), {2: 1})
    with pytest.raises(ValueError):
        remove_small_components(_hand_mask(), SPACING, {2: 1}, connectivity=8)


# ---------------------------------------------------------------------------------------------
# the file

def _pp(cases=("seen1", "seen2"), gtvn=10.0) -> PostProcessing:
    return PostProcessing(labels={"GTVp": 1, "GTVn": 2}, min_volume_mm3={1: 0.0, 2: gtvn}, cases=tuple(cases),
                          source={"model_dir": "/nowhere/model"})


def test_file_round_trip_records_what_the_issue_asks_for(tmp_path):
    path = save_postprocessing(_pp(), tmp_path / "pp.json")
    data = json.loads(path.read_text())
    assert data["tool"] == "vadice postprocess" and data["version"] == 1
    assert data["labels"] == {"GTVp": 1, "GTVn": 2}
    assert data["min_volume_mm3"] == {"GTVp": 0.0, "GTVn": 10.0}
    assert data["candidate_grid_mm3"] == list(DEFAULT_GRID_MM3)
    assert data["objective"] == "f1" and data["connectivity"] == 26
    assert data["fitted_on"]["cases"] == ["seen1", "seen2"]
    assert data["source"]["model_dir"] == "/nowhere/model"
    back = load_postprocessing(path)
    assert back.min_volume_mm3 == {1: 0.0, 2: 10.0} and back.cases == ("seen1", "seen2")


def _write_json(path: Path, edit) -> Path:
    data = _pp().to_json()
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d.update(tool="something else"), "not a vadice post-processing file"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d["min_volume_mm3"].update(GTVn=-5), "finite number"),
    (lambda d: d["min_volume_mm3"].pop("GTVp"), "one value for each label"),
    (lambda d: d["fitted_on"].pop("cases"), "fitted_on.cases"),
    (lambda d: d.update(connectivity=8), "connectivity"),
    (lambda d: d.update(labels={"GTVp": 1, "GTVn": 1}), "distinct"),
])
def test_bad_files_are_refused_naming_the_file(tmp_path, edit, problem):
    path = _write_json(tmp_path / "pp.json", edit)
    with pytest.raises(InputError) as err:
        load_postprocessing(path)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_non_json_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_postprocessing(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_postprocessing(tmp_path / "x.json")


def test_save_refuses_to_overwrite_a_foreign_file(tmp_path):
    other = tmp_path / "notes.json"
    other.write_text('{"mine": true}')
    with pytest.raises(InputError, match="refusing to overwrite"):
        save_postprocessing(_pp(), other)
    assert other.read_text() == '{"mine": true}'
    with pytest.raises(InputError, match="is a folder"):
        save_postprocessing(_pp(), tmp_path)
    save_postprocessing(_pp(), tmp_path / "pp.json")
    save_postprocessing(_pp(gtvn=20.0), tmp_path / "pp.json")  # its own earlier file is replaced
    assert load_postprocessing(tmp_path / "pp.json").min_volume_mm3[2] == 20.0


def test_refuses_the_cases_it_was_fitted_on(tmp_path):
    pp = _pp()
    pp.refuse_seen(["new1", "new2"], tmp_path / "pp.json")
    with pytest.raises(InputError) as err:
        pp.refuse_seen(["new1", "seen2"], tmp_path / "pp.json")
    assert str(err.value).startswith(f"{tmp_path / 'pp.json'}: was fitted on 1 of these case(s): seen2")


# ---------------------------------------------------------------------------------------------
# files and folders

OBLIQUE = Geometry((12, 12, 6), (0.5, 0.5, 2.0), (-10.0, 5.0, 3.0),
                   (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def test_apply_to_file_keeps_the_header_and_voxel_type(tmp_path):
    src = write_nifti(_hand_mask(), OBLIQUE, tmp_path / "a.nii.gz")
    out = apply_to_file(_pp(), src, tmp_path / "b.nii.gz")
    labels, geom = read_mask(tmp_path / "b.nii.gz")
    assert geom.differences(OBLIQUE) == []
    assert sitk.ReadImage(str(tmp_path / "b.nii.gz")).GetPixelID() == sitk.ReadImage(str(src)).GetPixelID()
    # GEOM spacing (x, y, z) = (0.5, 0.5, 2) is SPACING in array order: the 10 mm³ minimum keeps C only.
    assert np.array_equal(labels, out) and np.count_nonzero(labels == 2) == 20


def test_apply_to_folder_refuses_seen_cases_and_leaves_nothing(tmp_path):
    preds = tmp_path / "preds"
    write_nifti(_hand_mask(), OBLIQUE, preds / "new1.nii.gz")
    write_nifti(_hand_mask(), OBLIQUE, preds / "seen1.nii.gz")
    with pytest.raises(InputError, match="was fitted on 1 of these case"):
        apply_to_folder(_pp(), preds, tmp_path / "out", tmp_path / "pp.json")
    assert not (tmp_path / "out").exists()
    (preds / "seen1.nii.gz").unlink()
    written = apply_to_folder(_pp(), preds, tmp_path / "out")
    assert [p.name for p in written] == ["new1.nii.gz"]


def test_cli_apply_one_line_errors_exit_2_and_no_output(tmp_path, capsys):
    preds = tmp_path / "preds"
    write_nifti(_hand_mask(), OBLIQUE, preds / "seen1.nii.gz")
    pp = save_postprocessing(_pp(), tmp_path / "pp.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    for args, says in (([str(pp)], f"{pp}: was fitted on 1 of these case(s): seen1"),
                       ([str(bad)], f"{bad}: not a vadice post-processing file"),
                       ([str(tmp_path / 'none.json')], "post-processing file not found")):
        assert main(["-q", "postprocess", "apply", *args, "-i", str(preds), "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vadice postprocess: error: ") and says in err[0], err
        assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# vadice predict --postprocessing (nnU-Net replaced by a stand-in, as in test_predict_outputs.py)

GEOM = Geometry((12, 12, 6), (0.5, 0.5, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _fake_inference(*args, **kwargs):
    """Stand-in for inference.Predictor: every case 'predicts' the hand-worked mask."""
    return SimpleNamespace(predict_case=lambda files, output_file, probabilities=False:
                           write_nifti(_hand_mask(), GEOM, Path(output_file)))


def _inputs(folder: Path, cases) -> Path:
    for case in cases:
        write_nifti(np.zeros((6, 12, 12), np.float32), GEOM, folder / f"{case}_0000.nii.gz")
    return folder


def test_predict_applies_the_file_and_records_it(monkeypatch, tmp_path, model, caplog):
    from vadice.nnunet import inference
    from vadice.predict import MANIFEST

    monkeypatch.setattr(inference, "Predictor", _fake_inference)
    inputs = _inputs(tmp_path / "in", ["new1"])
    pp = save_postprocessing(_pp(), tmp_path / "pp.json")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="vadice"):
        assert main(["-q", "predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "--device", "cpu",
                     "--postprocessing", str(pp)]) == 0
    assert f"was fitted on predictions of /nowhere/model, not of {model}" in caplog.text
    labels, geom = read_mask(out / "new1.nii.gz")
    assert geom.differences(GEOM) == []
    assert np.array_equal(labels, _hand_mask_without_a_and_b()) and np.count_nonzero(labels == 2) == 20
    settings = json.loads((out / MANIFEST).read_text())["settings"]
    assert len(settings["postprocessing_sha256"]) == 64
    # Without the file the same command writes the unfiltered map (and refuses to mix settings in one folder).
    assert main(["-q", "predict", "-i", str(inputs), "-o", str(tmp_path / "raw"), "-m", str(model),
                 "--device", "cpu"]) == 0
    assert np.array_equal(read_mask(tmp_path / "raw" / "new1.nii.gz")[0], _hand_mask())


def test_predict_refuses_a_case_the_file_was_fitted_on_before_inference(monkeypatch, tmp_path, model, capsys):
    from vadice.nnunet import inference

    calls = []
    monkeypatch.setattr(inference, "Predictor", lambda *a, **k: calls.append(a))
    inputs = _inputs(tmp_path / "in", ["new1", "seen2"])
    pp = save_postprocessing(_pp(), tmp_path / "pp.json")
    assert main(["-q", "predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model),
                 "--device", "cpu", "--postprocessing", str(pp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vadice predict: error: {pp}: was fitted on 1 of these case(s): seen2; applying it there "
                   "would make any score on them optimistic (use cases it did not see)"]
    assert calls == [] and not (tmp_path / "out").exists()


def test_predict_with_a_bad_file_fails_before_inference(monkeypatch, tmp_path, model, capsys):
    from vadice.nnunet import inference

    calls = []
    monkeypatch.setattr(inference, "Predictor", lambda *a, **k: calls.append(a))
    inputs = _inputs(tmp_path / "in", ["new1"])
    bad = _write_json(tmp_path / "pp.json", lambda d: d["min_volume_mm3"].update(GTVn=-1))
    assert main(["-q", "predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model),
                 "--device", "cpu", "--postprocessing", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vadice predict: error: {bad}: bad post-processing file")
    assert calls == [] and not (tmp_path / "out").exists()


def test_predict_bundled_applies_the_models_own_file_and_only_when_asked(monkeypatch, tmp_path, model, caplog):
    from vadice.nnunet import inference

    monkeypatch.setattr(inference, "Predictor", _fake_inference)
    inputs = _inputs(tmp_path / "in", ["new1"])
    save_postprocessing(_pp(), model / BUNDLED_NAME)  # fitted for /nowhere/model: a zip unpacks elsewhere
    with caplog.at_level("INFO", logger="vadice"):
        assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "pp"), "-m", str(model), "--device", "cpu",
                     "--postprocessing", "bundled"]) == 0
    assert np.count_nonzero(read_mask(tmp_path / "pp" / "new1.nii.gz")[0] == 2) == 20  # the 10 mm³ minimum
    assert "was fitted on predictions of" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="vadice"):
        assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "raw"), "-m", str(model),
                     "--device", "cpu"]) == 0
    assert np.array_equal(read_mask(tmp_path / "raw" / "new1.nii.gz")[0], _hand_mask())
    assert "add --postprocessing bundled" in caplog.text


def test_predict_bundled_without_a_bundled_file_fails_before_inference(monkeypatch, tmp_path, model, capsys):
    from vadice.nnunet import inference

    calls = []
    monkeypatch.setattr(inference, "Predictor", lambda *a, **k: calls.append(a))
    inputs = _inputs(tmp_path / "in", ["new1"])
    assert main(["-q", "predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model),
                 "--device", "cpu", "--postprocessing", "bundled"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vadice predict: error: {model}: --postprocessing bundled: this model carries no "
                   f"{BUNDLED_NAME} (it was exported without --postprocessing)"]
    assert calls == [] and not (tmp_path / "out").exists()


def test_gc_predict_applies_a_bundled_file_to_the_challenge_output(monkeypatch, tmp_path, model):
    from vadice.nnunet import inference

    monkeypatch.setattr(inference, "Predictor", _fake_inference)
    image = sitk.GetImageFromArray(np.zeros((6, 12, 12), np.float32))
    image.SetSpacing((0.5, 0.5, 2.0))  # GEOM, on which the stand-in network writes its map
    (tmp_path / "input/images/pre-rt-t2w-head-neck").mkdir(parents=True)
    sitk.WriteImage(image, str(tmp_path / "input/images/pre-rt-t2w-head-neck/x.mha"))
    save_postprocessing(_pp(), model / BUNDLED_NAME)
    args = ["-q", "gc-predict", "--task", "1", "--model", str(model), "--input", str(tmp_path / "input"),
            "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "pp"), "--postprocessing", "bundled"]) == 0
    assert main([*args, "--output", str(tmp_path / "raw")]) == 0
    out = "images/mri-head-neck-segmentation/output.mha"
    filtered = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pp" / out)))
    assert np.array_equal(filtered, _hand_mask_without_a_and_b())
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "raw" / out))), _hand_mask())
