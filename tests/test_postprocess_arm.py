"""A post-processed arm (vadice.postprocess.arm): fitted on some cases' predictions, applied to others', resumable.

Hand-made label maps on 1 x 1 x 2 mm voxels (2 mm³): a 216 mm³ tumour and a 64 mm³ node per case, and in every
prediction one 1-voxel (2 mm³) speck of each label. The f1 objective then picks 10 mm³ for both labels (the
smallest candidate that removes the specks and keeps every lesion), worked out by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vadice.io import Geometry, InputError, read_mask, write_nifti
from vadice.postprocess import load_postprocessing
from vadice.postprocess.arm import post_processed_arm

GEOM = Geometry((32, 32, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _truth(k: int) -> np.ndarray:
    m = np.zeros((8, 32, 32), np.uint8)
    m[1:4, 2 + k:8 + k, 2:8] = 1            # GTVp: 108 voxels = 216 mm³ (its place depends on the case)
    m[4:6, 20:24, 20 - k:24 - k] = 2        # GTVn: 32 voxels = 64 mm³
    return m


def _prediction(k: int) -> np.ndarray:
    m = _truth(k)
    m[7, 30, 30] = 2                        # a 2 mm³ node speck
    m[7, 0, 30] = 1                         # a 2 mm³ tumour speck
    return m


@pytest.fixture
def folders(tmp_path):
    """Fit cases a, b; test cases c, d (another cohort: its own truth folder)."""
    gt, fit, test, test_gt = (tmp_path / n for n in ("gt", "fit_pred", "test_pred", "test_gt"))
    for k, case in enumerate(("a", "b")):
        write_nifti(_truth(k), GEOM, gt / f"{case}.nii.gz")
        write_nifti(_prediction(k), GEOM, fit / f"{case}.nii.gz")
    for k, case in enumerate(("c", "d"), start=2):
        write_nifti(_truth(k), GEOM, test_gt / f"{case}.nii.gz")
        write_nifti(_prediction(k), GEOM, test / f"{case}.nii.gz")
    (test / "c.npz").write_bytes(b"probabilities are not label maps")
    return tmp_path


def _arm(root, **kw):
    fit = {c: root / "fit_pred" / f"{c}.nii.gz" for c in ("a", "b")}
    return post_processed_arm(fit, root / "gt", root / "test_pred", root / "out", root / "pp" / "pp.json",
                              source={"setup": "dual", "seed": 0}, **kw)


def test_fitted_on_the_fit_cases_applied_to_the_others(folders):
    out = _arm(folders, group="out_of_fold")
    assert out == folders / "out"
    pp = load_postprocessing(folders / "pp" / "pp.json")
    assert pp.cases == ("a", "b") and pp.objective == "f1"
    assert pp.min_volume_mm3 == {1: 10.0, 2: 10.0}
    assert pp.source["folds"] == {"out_of_fold": ["a", "b"]} and pp.source["setup"] == "dual"
    assert sorted(p.name for p in out.iterdir()) == ["c.nii.gz", "d.nii.gz"]  # label maps only
    for k, case in enumerate(("c", "d"), start=2):
        assert np.array_equal(read_mask(out / f"{case}.nii.gz")[0], _truth(k))  # both specks gone


def test_refuses_to_apply_to_a_case_it_was_fitted_on(folders):
    write_nifti(_prediction(0), GEOM, folders / "test_pred" / "a.nii.gz")
    with pytest.raises(InputError, match=r"was fitted on 1 of these case\(s\): a"):
        _arm(folders)
    assert not (folders / "out").exists()
    # with the test cohort's truth: a's truth there is the fitted a's, so it is the same case: still refused
    write_nifti(_truth(0), GEOM, folders / "test_gt" / "a.nii.gz")
    with pytest.raises(InputError, match="was fitted on 1"):
        _arm(folders, apply_truth_dir=folders / "test_gt")
    assert not (folders / "out").exists()


def test_a_case_sharing_only_the_name_is_another_patient(folders):
    # a second cohort reuses the id "a" for another patient: other truth, so it is post-processed too
    write_nifti(_prediction(5), GEOM, folders / "test_pred" / "a.nii.gz")
    write_nifti(_truth(5), GEOM, folders / "test_gt" / "a.nii.gz")
    with pytest.raises(InputError, match="was fitted on 1"):  # names alone cannot tell
        _arm(folders)
    out = _arm(folders, apply_truth_dir=folders / "test_gt")
    assert np.array_equal(read_mask(out / "a.nii.gz")[0], _truth(5))
    assert load_postprocessing(folders / "pp" / "pp.json").cases == ("a", "b")  # the file still lists a


def test_resumption_skips_what_exists(folders, monkeypatch):
    out = _arm(folders)
    pp_text = (folders / "pp" / "pp.json").read_text()

    def no_fit(*a, **k):
        raise AssertionError("fitted again")

    monkeypatch.setattr("vadice.postprocess.arm.fit_postprocessing", no_fit)
    monkeypatch.setattr("vadice.postprocess.arm.apply_to_folder", lambda *a, **k: no_fit())
    (out / "c.nii.gz").write_bytes(b"kept")
    assert _arm(folders) == out and (out / "c.nii.gz").read_bytes() == b"kept"  # a finished arm: untouched
    monkeypatch.undo()
    monkeypatch.setattr("vadice.postprocess.arm.fit_postprocessing", no_fit)
    (out / "c.nii.gz").unlink()
    (out / "d.nii.gz").unlink()
    out.rmdir()
    _arm(folders)  # the fit is kept, only the application is redone
    assert (folders / "pp" / "pp.json").read_text() == pp_text
    assert np.array_equal(read_mask(out / "c.nii.gz")[0], _truth(2))


def test_a_kept_file_fitted_on_other_cases_is_refused(folders):
    _arm(folders)
    data = json.loads((folders / "pp" / "pp.json").read_text())
    data["fitted_on"] = {"n_cases": 1, "cases": ["a"]}
    (folders / "pp" / "pp.json").write_text(json.dumps(data))
    for p in (folders / "out").iterdir():
        p.unlink()
    (folders / "out").rmdir()
    with pytest.raises(InputError, match="fitted on 1 other case"):
        _arm(folders)
