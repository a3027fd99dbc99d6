"""The DICOM commands end to end, in-process: import-rtstruct, export-rtstruct, gc-predict, predict with DICOM in
and out (network injected)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from vadice.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))  # the synthetic-series writer lives there
from dicom_synth import rotation, write_series  # noqa: E402


def _series(tmp_path, shape=(5, 20, 24), rot=None, **kw):
    pix = np.random.default_rng(0).integers(0, 1000, shape).astype(np.uint16)
    return write_series(tmp_path / "mr", pix, spacing_xyz=(0.7, 0.8, 2.0), rot=rot, **kw), pix


def _labels(shape=(5, 20, 24)):
    lab = np.zeros(shape, np.uint8)
    lab[1:4, 4:12, 5:14] = 1
    lab[2, 15, 20] = 2
    return lab


def test_export_then_import_round_trip_through_the_cli(tmp_path, capsys):
    rot = rotation("z", 90) @ rotation("x", 10)
    w, pix = _series(tmp_path, rot=rot)
    # the label map on the series grid, geometry built here from the written parameters (LPS -> RAS for nibabel)
    affine = np.eye(4)
    affine[:3, :3] = np.column_stack([w.row_dir, w.col_dir, w.normal]) * np.array(w.spacing_xyz)
    affine[:3, 3] = w.origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    lab = _labels()
    nib.save(nib.Nifti1Image(lab.T.copy(), affine), tmp_path / "p1.nii.gz")

    assert main(["export-rtstruct", str(tmp_path / "mr"), str(tmp_path / "p1.nii.gz"), "--out-dir",
                 str(tmp_path / "dcm"), "--output-type", "rtstruct,seg"]) == 0
    assert sorted(p.name for p in (tmp_path / "dcm").iterdir()) == ["RS_p1.dcm", "SEG_p1.dcm"]
    assert pydicom.dcmread(tmp_path / "dcm/RS_p1.dcm").FrameOfReferenceUID == w.frame_uid

    assert main(["import-rtstruct", str(tmp_path / "mr"), str(tmp_path / "dcm/RS_p1.dcm"), "--out",
                 str(tmp_path / "back.nii.gz"), "--image-out", str(tmp_path / "img.nii.gz")]) == 0
    assert "GTVp -> 1" in capsys.readouterr().out
    back = nib.load(tmp_path / "back.nii.gz")
    np.testing.assert_array_equal(np.asarray(back.dataobj).T, lab)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "img.nii.gz").dataobj).T, pix)


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, capsys):
    w, _ = _series(tmp_path, modality="CT")
    rc = main(["import-rtstruct", str(tmp_path / "mr"), str(tmp_path / "none.dcm"), "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "modality CT, expected MR" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.nii.gz").exists()

    w2 = write_series(tmp_path / "mr2", np.zeros((5, 20, 24), np.uint16))
    off = sitk.GetImageFromArray(_labels((5, 20, 25)))
    sitk.WriteImage(off, str(tmp_path / "off.nii.gz"))
    rc = main(["export-rtstruct", str(w2.folder), str(tmp_path / "off.nii.gz"), "--out-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "off.nii.gz: not on the grid" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())

    rc = main(["export-rtstruct", str(w2.folder), str(tmp_path / "off.nii.gz"), "--out-dir", str(tmp_path / "d"),
               "--output-type", "rtstruct,pdf"])
    assert rc == 2 and "--output-type" in capsys.readouterr().err


def test_existing_output_refused_without_overwrite(tmp_path, capsys):
    _series(tmp_path)
    (tmp_path / "o.nii.gz").write_text("keep me")
    rc = main(["import-rtstruct", str(tmp_path / "mr"), str(tmp_path / "rs.dcm"), "--out", str(tmp_path / "o.nii.gz")])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "o.nii.gz").read_text() == "keep me"


def _fake_model(root: Path, channels: int, folds=(0, 1)) -> Path:
    model = root / "Trainer__Plans__3d_fullres"
    for f in folds:
        (model / f"fold_{f}").mkdir(parents=True)
        (model / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"")
    (model / "fold_4").mkdir()  # unfinished fold: no checkpoint
    (model / "dataset.json").write_text(json.dumps({"channel_names": {str(i): f"c{i}" for i in range(channels)}}))
    return model


def test_gc_predict_command_with_injected_network(tmp_path, monkeypatch, capsys):
    import vadice.predict

    seen = {}

    def fake_predict(in_dir, out_dir, model_dir, folds, device, overlays, checkpoint, progress, postprocessing):
        seen.update(folds=folds, device=device, overlays=overlays, inputs=sorted(p.name for p in Path(in_dir).iterdir()),
                    postprocessing=postprocessing)
        first = sitk.ReadImage(str(Path(in_dir) / "case_0000.nii.gz"))
        out = sitk.GetImageFromArray((sitk.GetArrayFromImage(first) > 0.5).astype(np.uint8))
        out.CopyInformation(first)
        Path(out_dir).mkdir()
        sitk.WriteImage(out, str(Path(out_dir) / "case.nii.gz"))

    monkeypatch.setattr(vadice.predict, "predict", fake_predict)
    img = sitk.GetImageFromArray(np.random.default_rng(1).uniform(0, 1, (4, 10, 12)).astype(np.float32))
    img.SetSpacing((0.5, 0.5, 2.0))
    (tmp_path / "input/images/pre-rt-t2w-head-neck").mkdir(parents=True)
    sitk.WriteImage(img, str(tmp_path / "input/images/pre-rt-t2w-head-neck/x.mha"))
    model = _fake_model(tmp_path, 1)
    args = ["gc-predict", "--task", "1", "--model", str(model), "--input", str(tmp_path / "input"),
            "--output", str(tmp_path / "output"), "--device", "cpu"]
    assert main(args) == 0
    assert seen == {"folds": (0, 1), "device": "cpu", "overlays": False, "inputs": ["case_0000.nii.gz"],
                    "postprocessing": None}
    out = sitk.ReadImage(str(tmp_path / "output/images/mri-head-neck-segmentation/output.mha"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(img) > 0.5)

    rc = main(["gc-predict", "--task", "2", "--model", str(model), "--input", str(tmp_path / "input"),
               "--output", str(tmp_path / "o2"), "--device", "cpu"])
    assert rc == 2 and "task 2 needs 3" in capsys.readouterr().err


def _fake_predict(input_dir, output_dir, model_dir, **kwargs):
    """Stand-in for vadice.predict.predict: <case>.nii.gz = channel 0 > 500, on the input's grid."""
    from types import SimpleNamespace

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(Path(input_dir).glob("*_0000.nii.gz")):
        image = sitk.ReadImage(str(path))
        lab = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) > 500).astype(np.uint8))
        lab.CopyInformation(image)
        written.append(out / (path.name[:-len("_0000.nii.gz")] + ".nii.gz"))
        sitk.WriteImage(lab, str(written[-1]))
    return SimpleNamespace(written=written, skipped=[])


def test_predict_dicom_input_writes_rtstruct_and_seg(tmp_path, monkeypatch, capsys):
    import highdicom as hd

    import vadice.predict

    monkeypatch.setattr(vadice.predict, "predict", _fake_predict)
    (tmp_path / "model").mkdir()
    w, pix = _series(tmp_path, rot=rotation("y", 15))
    rc = main(["predict", "-i", str(tmp_path / "mr"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "model"),
               "--output-type", "nifti,rtstruct,seg"])
    assert rc == 0, capsys.readouterr().err
    assert {"SYN001.nii.gz", "RS_SYN001.dcm", "SEG_SYN001.dcm"} <= {p.name for p in (tmp_path / "out").iterdir()}
    rs = pydicom.dcmread(tmp_path / "out/RS_SYN001.dcm")
    assert rs.FrameOfReferenceUID == w.frame_uid
    ref = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == w.series_uid
    seg = hd.seg.segread(tmp_path / "out/SEG_SYN001.dcm")
    for k, uid in enumerate(w.sop_uids):
        got = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1],
                                                combine_segments=True, skip_overlap_checks=True)[0]
        np.testing.assert_array_equal(got, pix[k] > 500)


def test_predict_output_types_need_a_dicom_input(tmp_path, monkeypatch, capsys):
    import vadice.predict

    monkeypatch.setattr(vadice.predict, "predict", _fake_predict)
    (tmp_path / "model").mkdir()
    (tmp_path / "nii").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32)), str(tmp_path / "nii/a_0000.nii.gz"))
    rc = main(["predict", "-i", str(tmp_path / "nii"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "model"),
               "--output-type", "rtstruct"])
    assert rc == 2 and "DICOM" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    _series(tmp_path, modality="CT")
    rc = main(["predict", "-i", str(tmp_path / "mr"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "model")])
    assert rc == 2 and "modality CT" in capsys.readouterr().err


def test_predict_refuses_an_existing_rtstruct_before_inference(tmp_path, monkeypatch, capsys):
    import vadice.predict

    def must_not_run(*args, **kwargs):
        raise AssertionError("inference ran although the RTSTRUCT output exists")

    monkeypatch.setattr(vadice.predict, "predict", must_not_run)
    (tmp_path / "model").mkdir()
    _series(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "RS_SYN001.dcm").write_bytes(b"the clinic's file")
    rc = main(["predict", "-i", str(tmp_path / "mr"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "model"),
               "--output-type", "rtstruct"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "RS_SYN001.dcm: already exists" in err[0]
    assert (tmp_path / "out" / "RS_SYN001.dcm").read_bytes() == b"the clinic's file"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["RS_SYN001.dcm"]
