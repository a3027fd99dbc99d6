"""Model zips: nnU-Net's own exporter as the reference layout, round trip byte for byte, unsafe zips refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vadice.cli import main
from vadice.io import InputError
from vadice.models import model_from_zip
from vadice.sharing import export_model

TRAINER, PLANS, CONF = "nnUNetTrainerVADual", "vadiceCPUSmallPlans", "3d_fullres"


def _fake_results(root: Path, folds=(0, 1)) -> Path:
    model = root / "Dataset977_Share" / f"{TRAINER}__{PLANS}__{CONF}"
    model.mkdir(parents=True)
    for name in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
        (model / name).write_text(json.dumps({"name": name, "channel_names": {"0": "T2"}}))
    for f in folds:
        fold = model / f"fold_{f}"
        (fold / "validation").mkdir(parents=True)
        (fold / "checkpoint_final.pth").write_bytes(os.urandom(64))
        (fold / "progress.png").write_bytes(b"png")
        (fold / "debug.json").write_text("{}")
        (fold / "validation" / "summary.json").write_text(json.dumps({"fold": f}))
        (fold / "validation" / "case.nii.gz").write_bytes(b"not exported")
    (model / "fold_3").mkdir()  # unfinished fold
    return model


def test_layout_equals_nnunets_own_exporter(tmp_path):
    model = _fake_results(tmp_path / "res")
    ours = export_model(model, tmp_path / "ours.zip")
    script = ("from nnunetv2.model_sharing.model_export import export_pretrained_model as e; "
              f"e('Dataset977_Share', {str(tmp_path / 'ref.zip')!r}, configurations=('{CONF}',), trainer='{TRAINER}', "
              f"plans_identifier='{PLANS}', folds=(0, 1))")
    env = {**os.environ, "nnUNet_results": str(tmp_path / "res"), "nnUNet_raw": str(tmp_path),
           "nnUNet_preprocessed": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    reference = set(zipfile.ZipFile(tmp_path / "ref.zip").namelist())
    mine = set(zipfile.ZipFile(ours).namelist())
    prefix = f"Dataset977_Share/{TRAINER}__{PLANS}__{CONF}/"
    assert mine - reference == {prefix + "vadice_model.json"}
    assert reference - mine == set()


def test_round_trip_and_cache(tmp_path):
    model = _fake_results(tmp_path / "res")
    export_model(model, tmp_path / "m.zip", folds=[1])
    unpacked = model_from_zip(tmp_path / "m.zip", cache=tmp_path / "cache")
    assert unpacked.name == model.name
    assert (unpacked / "fold_1/checkpoint_final.pth").read_bytes() == (model / "fold_1/checkpoint_final.pth").read_bytes()
    assert not (unpacked / "fold_0").exists()
    info = json.loads((unpacked / "vadice_model.json").read_text())
    assert info["folds"] == ["1"] and len(info["checkpoint_sha256"]["fold_1"]) == 64
    (unpacked / "marker").write_text("x")  # a second call reuses the unpacked copy
    assert (model_from_zip(tmp_path / "m.zip", cache=tmp_path / "cache") / "marker").exists()


def test_bad_zips_and_models(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(InputError, match="unsafe path"):
        model_from_zip(tmp_path / "evil.zip", cache=tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists()
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(InputError, match="not a zip"):
        model_from_zip(tmp_path / "plain.txt")
    model = _fake_results(tmp_path / "res")
    with pytest.raises(InputError, match="checkpoint not found"):
        export_model(model, tmp_path / "m.zip", folds=[3])
    assert not (tmp_path / "m.zip").exists()
    with pytest.raises(InputError, match="not a trained nnU-Net model folder"):
        export_model(tmp_path / "res", tmp_path / "m.zip")


def test_export_model_command(tmp_path, capsys):
    model = _fake_results(tmp_path / "res")
    assert main(["export-model", str(model), "--out", str(tmp_path / "m.zip"), "--folds", "0"]) == 0
    names = zipfile.ZipFile(tmp_path / "m.zip").namelist()
    assert any(n.endswith("fold_0/checkpoint_final.pth") for n in names)
    assert not any("fold_1" in n for n in names)
    assert main(["export-model", str(model), "--out", str(tmp_path / "m.zip")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_postprocessing_file_travels_in_the_zip(tmp_path, caplog):
    from vadice.postprocess import BUNDLED_NAME, PostProcessing, load_postprocessing, save_postprocessing

    model = _fake_results(tmp_path / "res")
    pp = save_postprocessing(PostProcessing(labels={"GTVp": 1, "GTVn": 2}, min_volume_mm3={1: 0.0, 2: 50.0},
                                            cases=("a", "b", "c"), source={"model_dir": str(model)}),
                             tmp_path / "pp.json")
    with caplog.at_level("WARNING", logger="vadice"):
        export_model(model, tmp_path / "m.zip", postprocessing=pp)
    assert caplog.text == ""
    unpacked = model_from_zip(tmp_path / "m.zip", cache=tmp_path / "cache")
    assert (unpacked / BUNDLED_NAME).read_bytes() == pp.read_bytes()
    assert load_postprocessing(unpacked / BUNDLED_NAME).min_volume_mm3 == {1: 0.0, 2: 50.0}
    info = json.loads((unpacked / "vadice_model.json").read_text())["postprocessing"]
    assert info == {"file": BUNDLED_NAME, "sha256": info["sha256"], "min_volume_mm3": {"GTVp": 0.0, "GTVn": 50.0},
                    "fitted_on_cases": 3}
    assert len(info["sha256"]) == 64
    assert BUNDLED_NAME not in "".join(zipfile.ZipFile(export_model(model, tmp_path / "plain.zip")).namelist())

    other = tmp_path / "other" / model.name
    other.parent.mkdir()
    model.rename(other)  # the file names the folder it was fitted for: shipping it with another warns
    with caplog.at_level("WARNING", logger="vadice"):
        export_model(other, tmp_path / "moved.zip", postprocessing=pp)
    assert "was fitted on predictions of" in caplog.text


def test_a_bad_postprocessing_file_leaves_no_zip(tmp_path, capsys):
    model = _fake_results(tmp_path / "res")
    (tmp_path / "pp.json").write_text('{"tool": "something else"}')
    assert main(["export-model", str(model), "--out", str(tmp_path / "m.zip"),
                 "--postprocessing", str(tmp_path / "pp.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vadice export-model: error: {tmp_path / 'pp.json'}: not a vadice")
    assert not (tmp_path / "m.zip").exists()
