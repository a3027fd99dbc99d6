"""End to end with a tiny trained model (slow): the challenge container from a model zip, and DICOM -> RTSTRUCT.

One 2-iteration cpu-small training on a hand-made 16x56x56 dataset (as tests/nnunet/test_integration.py) serves
every check, so the real ``vadice.predict.predict`` call of the commands is exercised, not a stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_synth import rotation, write_series

pytest.importorskip("nnunetv2")

from vadice.io import Geometry, write_nifti  # noqa: E402

pytestmark = pytest.mark.slow

DATASET_ID = 986
NAME = f"Dataset{DATASET_ID:03d}_VadiceClinic"
SHAPE = (16, 56, 56)


def _blob(shape, center, radii):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1


def _case(rng):
    lab = np.zeros(SHAPE, np.uint8)
    lab[_blob(SHAPE, (8, 28, 18), (4, 9, 8))] = 1
    lab[_blob(SHAPE, (8, 20, 42), (2, 4, 4)) & (lab == 0)] = 2
    img = rng.normal(100, 10, SHAPE).astype(np.float32) + 60 * (lab == 1) + 40 * (lab == 2)
    return img, lab


def _cli(args, env, timeout=600):
    res = subprocess.run([sys.executable, "-m", "vadice", "-q", *args], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"vadice {' '.join(args)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("clinic")
    raw = root / "raw" / NAME
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    geo = Geometry(size=tuple(reversed(SHAPE)), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                   direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    rng = np.random.default_rng(5)
    for i in range(5):
        img, lab = _case(rng)
        write_nifti(img, geo, raw / "imagesTr" / f"case{i:02d}_0000.nii.gz")
        write_nifti(lab, geo, raw / "labelsTr" / f"case{i:02d}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": {"background": 0, "GTVp": 1, "GTVn": 2},
        "numTraining": 5, "file_ending": ".nii.gz"}))
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "res"), "nnUNet_compile": "f", "nnUNet_def_n_proc": "1",
           "OMP_NUM_THREADS": "2", "VADICE_CACHE": str(root / "cache")}
    _cli(["plan", str(DATASET_ID), "--preset", "cpu-small", "--num-processes", "1"], env)
    env["nnUNet_n_proc_DA"] = "0"  # single-process augmentation for training only (planning needs >= 1)
    _cli(["train", str(DATASET_ID), "--loss", "dual", "--fold", "0", "--preset", "cpu-small", "--device", "cpu",
          "--iterations", "2", "--epochs", "1", "--val-iterations", "1", "--no-val-mirroring"], env)
    models = [p.parent.parent for p in (root / "res").rglob("fold_0/checkpoint_final.pth")]
    assert len(models) == 1
    _cli(["export-model", str(models[0]), "--out", str(root / "model.zip")], env)
    return root, root / "model.zip", env


def test_gc_predict_from_a_model_zip_keeps_the_input_grid(tiny_model):
    root, model_zip, env = tiny_model
    img, _ = _case(np.random.default_rng(11))
    image = sitk.GetImageFromArray(img)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((-20.5, 13.25, 7.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    (root / "input/images/pre-rt-t2w-head-neck").mkdir(parents=True)
    sitk.WriteImage(image, str(root / "input/images/pre-rt-t2w-head-neck/uuid.mha"))
    _cli(["gc-predict", "--task", "1", "--model", str(model_zip), "--input", str(root / "input"),
          "--output", str(root / "output"), "--device", "cpu"], env)
    out = sitk.ReadImage(str(root / "output/images/mri-head-neck-segmentation/output.mha"))
    assert out.GetPixelID() == sitk.sitkUInt8
    assert (out.GetSize(), out.GetSpacing(), out.GetOrigin(), out.GetDirection()) == \
           (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(out))) <= {0, 1, 2}


def test_predict_dicom_series_to_rtstruct_and_seg(tiny_model):
    root, model_zip, env = tiny_model
    img, _ = _case(np.random.default_rng(12))
    w = write_series(root / "dicom", np.clip(img, 0, 4000).astype(np.uint16), spacing_xyz=(1.0, 1.0, 2.0),
                     rot=rotation("x", 12))
    _cli(["predict", "-i", str(root / "dicom"), "-o", str(root / "pred"), "-m", str(model_zip), "--device", "cpu",
          "--disable-tta", "--output-type", "nifti,rtstruct,seg"], env)
    assert {"SYN001.nii.gz", "RS_SYN001.dcm", "SEG_SYN001.dcm"} <= {p.name for p in (root / "pred").iterdir()}
    rs = pydicom.dcmread(root / "pred/RS_SYN001.dcm")
    assert rs.FrameOfReferenceUID == w.frame_uid and rs.StudyInstanceUID == w.study_uid
    seg = pydicom.dcmread(root / "pred/SEG_SYN001.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == w.series_uid
