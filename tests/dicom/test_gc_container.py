"""The HNTS-MRG container layout on synthetic .mha inputs, with the network step injected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from vadice.dicom.container import gc_predict
from vadice.io import InputError

DIRECTION = tuple(np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).reshape(-1))  # not identity


def _mha(path: Path, array: np.ndarray, spacing=(0.5, 0.5, 2.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.25, 30.5, 101.0))
    image.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def _threshold_segmenter(calls):
    """Stand-in for the network: label 1 where channel 0 > 100, 2 where the last channel (a mask for task 2) is 2."""
    def segment(in_dir: Path, out_dir: Path):
        channels = sorted(in_dir.iterdir())
        calls.append([p.name for p in channels])
        first = sitk.ReadImage(str(channels[0]))
        lab = (sitk.GetArrayFromImage(first) > 100).astype(np.uint8)
        if len(channels) == 3:
            lab[sitk.GetArrayFromImage(sitk.ReadImage(str(channels[2]))) == 2] = 2
        out = sitk.GetImageFromArray(lab)
        out.CopyInformation(first)
        out_dir.mkdir()
        sitk.WriteImage(out, str(out_dir / "case.nii.gz"))
    return segment


def _image(seed=0, shape=(6, 12, 14)):
    return np.random.default_rng(seed).uniform(0, 200, shape).astype(np.float32)


def test_task1_layout_and_exact_geometry(tmp_path):
    img = _image()
    src = _mha(tmp_path / "input/images/pre-rt-t2w-head-neck/7f3a.mha", img)
    calls = []
    out = gc_predict(1, tmp_path / "input", tmp_path / "output", _threshold_segmenter(calls))
    assert out == tmp_path / "output/images/mri-head-neck-segmentation/output.mha"
    assert calls == [["case_0000.nii.gz"]]
    result = sitk.ReadImage(str(out))
    assert result.GetPixelID() == sitk.sitkUInt8
    assert result.GetSize() == src.GetSize() and result.GetSpacing() == src.GetSpacing()
    assert result.GetOrigin() == src.GetOrigin() and result.GetDirection() == src.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), (img > 100).astype(np.uint8))
    assert b"CompressedData = True" in out.read_bytes()[:1000]


def test_task2_channel_order(tmp_path):
    root = tmp_path / "input/images"
    mid = _image(1)
    _mha(root / "mid-rt-t2w-head-neck/a.mha", mid)
    _mha(root / "registered-pre-rt-head-neck/b.mha", _image(2))
    mask = np.zeros(mid.shape, np.uint8)
    mask[2, 3:6, 4:8] = 2
    _mha(root / "registered-pre-rt-head-neck-segmentation/c.mha", mask)
    calls = []
    out = gc_predict(2, tmp_path / "input", tmp_path / "output", _threshold_segmenter(calls))
    assert calls == [["case_0000.nii.gz", "case_0001.nii.gz", "case_0002.nii.gz"]]
    expected = (mid > 100).astype(np.uint8)
    expected[mask == 2] = 2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), expected)


def test_bad_layouts_write_nothing(tmp_path):
    calls = []
    seg = _threshold_segmenter(calls)
    with pytest.raises(InputError, match="pre-rt-t2w-head-neck: input folder for task 1 not found"):
        gc_predict(1, tmp_path / "input", tmp_path / "output", seg)
    _mha(tmp_path / "input/images/pre-rt-t2w-head-neck/a.mha", _image())
    _mha(tmp_path / "input/images/pre-rt-t2w-head-neck/b.mha", _image())
    with pytest.raises(InputError, match="exactly one .mha file, found 2"):
        gc_predict(1, tmp_path / "input", tmp_path / "output", seg)
    root = tmp_path / "in2/images"
    _mha(root / "mid-rt-t2w-head-neck/a.mha", _image())
    _mha(root / "registered-pre-rt-head-neck/b.mha", _image(), spacing=(0.5, 0.5, 2.5))
    _mha(root / "registered-pre-rt-head-neck-segmentation/c.mha", np.zeros((6, 12, 14), np.uint8))
    with pytest.raises(InputError, match="grid differs from a.mha"):
        gc_predict(2, tmp_path / "in2", tmp_path / "output", seg)
    nan = _image()
    nan[0, 0, 0] = np.nan
    _mha(tmp_path / "in3/images/pre-rt-t2w-head-neck/a.mha", nan)
    with pytest.raises(InputError, match="non-finite"):
        gc_predict(1, tmp_path / "in3", tmp_path / "output", seg)
    assert calls == [] and not (tmp_path / "output").exists()


def test_prediction_with_a_stray_label_is_refused(tmp_path):
    _mha(tmp_path / "input/images/pre-rt-t2w-head-neck/a.mha", _image())

    def bad(in_dir, out_dir):
        first = sitk.ReadImage(str(in_dir / "case_0000.nii.gz"))
        out = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(first).shape, 3, np.uint8))
        out.CopyInformation(first)
        out_dir.mkdir()
        sitk.WriteImage(out, str(out_dir / "case.nii.gz"))

    with pytest.raises(InputError, match="unexpected label value"):
        gc_predict(1, tmp_path / "input", tmp_path / "output", bad)
    assert not (tmp_path / "output/images/mri-head-neck-segmentation/output.mha").exists()
