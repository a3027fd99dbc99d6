"""Which model a command means (vadice.models): folders, zips and run folders; which folds are finished."""

from __future__ import annotations

import json
import zipfile

import pytest

from vadice.io import InputError
from vadice.models import available_folds, resolve_model


def _model(folder, folds=("0",), checkpoint="checkpoint_final.pth"):
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text("{}")
    (folder / "plans.json").write_text("{}")
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        (folder / f"fold_{fold}" / checkpoint).write_bytes(b"w")
    return folder


def test_available_folds_lists_finished_folds_in_numeric_order(tmp_path):
    model = _model(tmp_path / "m", folds=("10", "2", "all", "0"))
    (model / "fold_1").mkdir()  # unfinished: no checkpoint
    _model(tmp_path / "other", folds=("3",), checkpoint="checkpoint_best.pth")
    (model / "fold_3").symlink_to(tmp_path / "other" / "fold_3")
    # by hand: 0, 2, 10 as numbers (fold_10 after fold_2, not between fold_1 and fold_2), then "all"
    assert available_folds(model) == (0, 2, 10, "all")
    assert available_folds(model, "checkpoint_best.pth") == (3,)
    with pytest.raises(InputError, match=r"m: no fold_\*/checkpoint_latest.pth in this model folder"):
        available_folds(model, "checkpoint_latest.pth")


def test_a_model_folder_is_itself_and_a_missing_one_is_named(tmp_path):
    model = _model(tmp_path / "m")
    assert resolve_model(model) == model
    with pytest.raises(InputError, match="nowhere: model folder not found"):
        resolve_model(tmp_path / "nowhere")
    with pytest.raises(InputError, match="--setup only applies to an experiment run folder"):
        resolve_model(model, setup="dual")


def test_a_run_folder_needs_a_setup_and_gives_that_units_model(tmp_path):
    run = tmp_path / "run"
    (run / "units").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    dual = _model(tmp_path / "results" / "dual")
    (run / "units" / "dual__fold0__seed1.json").write_text(json.dumps({"model_dir": str(dual)}))
    assert resolve_model(run, "dual", seed=1) == dual
    with pytest.raises(InputError, match="choose a model with --setup"):
        resolve_model(run)
    with pytest.raises(InputError, match="no finished unit for set-up 'dual' and seed 0"):
        resolve_model(run, "dual")


def test_a_zip_is_unpacked_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VADICE_CACHE", str(tmp_path / "cache"))
    # nnU-Net's zip layout, written by hand: <Dataset>/<Trainer__Plans__configuration>/...
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
        for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"):
            zf.writestr(f"Dataset001_X/T__P__3d_fullres/{name}", "{}")
    model = resolve_model(tmp_path / "m.zip")
    assert model.name == "T__P__3d_fullres" and model.parent.name == "Dataset001_X"
    assert model.is_relative_to(tmp_path / "cache" / "models") and available_folds(model) == (0,)
    with pytest.raises(InputError, match="not to a model zip"):
        resolve_model(tmp_path / "m.zip", setup="dual")
    with pytest.raises(InputError, match="model zip not found"):
        resolve_model(tmp_path / "gone.zip")
