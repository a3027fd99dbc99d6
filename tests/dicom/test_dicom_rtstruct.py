"""RTSTRUCT export, proven by reading the files back with code that shares nothing with the writer.

The independent reader: pydicom for the attributes, this file's own patient->pixel transform (from the
parameters the synthetic series was written with, dicom_synth.patient_to_pixel) and matplotlib's
Path.contains_points on voxel centres with even-odd combination of a plane's contours.
(dicompyler-core 0.5.6 does not import under pydicom 3; platipy 0.7.2 pins pydicom 2 — see docs/clinic.md.)
"""

from __future__ import annotations

import cc3d
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_synth import patient_to_pixel, rotation, write_series
from matplotlib.path import Path as MplPath

from vadice.dicom.rtstruct import format_ds, mask_contours, write_rtstruct
from vadice.dicom.series import read_series



def independent_rasterise(rs_path, written, shape) -> dict[str, np.ndarray]:
    """ROI name -> boolean (z, y, x) mask, from the file alone."""
    ds = pydicom.dcmread(rs_path)
    names = {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence}
    out = {}
    rr, cc = np.mgrid[0:shape[1], 0:shape[2]]
    centres = np.stack([rr.ravel(), cc.ravel()], axis=1)
    for roi in ds.ROIContourSequence:
        mask = np.zeros(shape, bool)
        for item in roi.get("ContourSequence", []):
            idx = patient_to_pixel(np.asarray(item.ContourData, float).reshape(-1, 3), written)
            k = int(round(idx[0, 0]))
            assert np.allclose(idx[:, 0], k, atol=1e-3), "contour not on a slice plane"
            inside = MplPath(idx[:, 1:]).contains_points(centres).reshape(shape[1:])
            mask[k] ^= inside
        out[names[int(roi.ReferencedROINumber)]] = mask
    return out


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _labels_with_everything(shape):
    """GTVp with a hole, two GTVn components on one slice, tiny nodes of 1, 2 and 9 voxels, a diagonal pair."""
    lab = np.zeros(shape, np.uint8)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    lab[((y - 12) ** 2 + (x - 12) ** 2 <= 49) & (z >= 1) & (z <= 4)] = 1
    lab[2, 11:14, 11:14] = 0                         # hole inside GTVp
    lab[2, 12, 12] = 1                               # island inside the hole
    lab[1:4, 3:6, 24:28] = 2                         # node A
    lab[2, 12:16, 25:29] = 2                         # node B, same slice as A
    lab[4, 20, 22] = 2                               # 1-voxel node
    lab[3, 2, 14:16] = 2                             # 2-voxel node
    lab[5, 17:20, 3:6] = 2                           # 9-voxel node
    lab[5, 22, 10] = lab[5, 23, 11] = 2              # diagonal neighbours
    return lab


@pytest.mark.parametrize("case", ["axial-1mm", "axial-3mm", "oblique-2mm"])
def test_round_trip_exact_with_independent_reader(tmp_path, case):
    spacing = {"axial-1mm": (0.9, 0.9, 1.0), "axial-3mm": (0.5, 0.6, 3.0), "oblique-2mm": (0.8, 0.7, 2.0)}[case]
    rot = rotation("y", 25) @ rotation("x", -10) if case.startswith("oblique") else None
    shape = (7, 26, 32)
    lab = _labels_with_everything(shape)
    w = write_series(tmp_path / "mr", np.full(shape, 100, np.uint16), spacing_xyz=spacing, rot=rot)
    series = read_series(tmp_path / "mr")
    write_rtstruct(lab, series, tmp_path / "rs.dcm")
    masks = independent_rasterise(tmp_path / "rs.dcm", w, shape)
    assert sorted(masks) == ["GTVn", "GTVp"]
    np.testing.assert_array_equal(masks["GTVp"], lab == 1)
    np.testing.assert_array_equal(masks["GTVn"], lab == 2)


def test_every_uid_and_attribute_references_the_series(tmp_path):
    shape = (7, 26, 32)
    lab = _labels_with_everything(shape)
    w = write_series(tmp_path / "mr", np.full(shape, 100, np.uint16), rot=rotation("z", 30))
    write_rtstruct(lab, read_series(tmp_path / "mr"), tmp_path / "rs.dcm")
    ds = pydicom.dcmread(tmp_path / "rs.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3" and ds.Modality == "RTSTRUCT"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == w.study_uid and ds.FrameOfReferenceUID == w.frame_uid
    assert ds.SeriesInstanceUID != w.series_uid and ds.SOPInstanceUID not in w.sop_uids
    assert ds.PatientID == "SYN001" and ds.PatientName == "Synthetic^Case"
    (frame,) = ds.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == w.frame_uid
    (study,) = frame.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == w.study_uid
    (series,) = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == w.series_uid
    assert sorted(i.ReferencedSOPInstanceUID for i in series.ContourImageSequence) == sorted(w.sop_uids)
    rois = {r.ROINumber: r for r in ds.StructureSetROISequence}
    assert len(rois) == 2 and {r.ROIName for r in rois.values()} == {"GTVp", "GTVn"}
    assert all(r.ReferencedFrameOfReferenceUID == w.frame_uid for r in rois.values())
    assert sorted(o.ReferencedROINumber for o in ds.RTROIObservationsSequence) == sorted(rois)
    colours = {rois[r.ReferencedROINumber].ROIName: list(r.ROIDisplayColor) for r in ds.ROIContourSequence}
    assert colours == {"GTVp": [255, 0, 0], "GTVn": [0, 255, 255]}
    n_items = 0
    for roi in ds.ROIContourSequence:
        for item in roi.ContourSequence:
            n_items += 1
            assert item.ContourGeometricType == "CLOSED_PLANAR"
            assert item.NumberOfContourPoints >= 3 and len(item.ContourData) == 3 * item.NumberOfContourPoints
            # the referenced slice is the one whose plane holds the points
            k = int(round(patient_to_pixel(np.asarray(item.ContourData, float).reshape(-1, 3), w)[0, 0]))
            assert item.ContourImageSequence[0].ReferencedSOPInstanceUID == w.sop_uids[k]
            assert item.ContourImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert n_items >= 10
    # decimal strings as stored in the file, at most 16 characters
    for roi in ds.ROIContourSequence:
        for item in roi.ContourSequence:
            assert all(len(v.original_string) <= 16 for v in item.ContourData)


def test_real_mask_dice_and_every_lesion(tmp_path, hntsmrg_case2):
    """The real HNTS-MRG mid-RT mask of patient 2 (cropped), on a 0.5 x 0.5 x 2 mm series."""
    full = np.asarray(nib.load(hntsmrg_case2 / "midRT" / "2_midRT_mask.nii.gz").dataobj).T  # (z, y, x)
    zz, yy, xx = np.nonzero(full)
    lab = np.ascontiguousarray(full[zz.min() - 1:zz.max() + 2, yy.min() - 3:yy.max() + 4, xx.min() - 3:xx.max() + 4])
    w = write_series(tmp_path / "mr", np.full(lab.shape, 50, np.uint16), spacing_xyz=(0.5, 0.5, 2.0))
    write_rtstruct(lab, read_series(tmp_path / "mr"), tmp_path / "rs.dcm")
    masks = independent_rasterise(tmp_path / "rs.dcm", w, lab.shape)
    for name, value in (("GTVp", 1), ("GTVn", 2)):
        assert dice(masks[name], lab == value) >= 0.95
        components, n = cc3d.connected_components(lab == value, connectivity=26, return_N=True)
        for i in range(1, n + 1):
            assert (masks[name] & (components == i)).any(), f"{name} lesion {i} lost"
    assert cc3d.connected_components(lab == 2, connectivity=26, return_N=True)[1] == 3


def test_single_voxel_contour_is_a_valid_polygon_around_the_centre():
    (poly,) = mask_contours(np.pad([[1]], 2))
    assert len(poly) >= 4
    centre = np.array([2.0, 2.0])
    assert MplPath(poly).contains_point(centre)
    # edges run half a pixel from the centre (corners cut by a quarter): bounding box [1.5, 2.5]
    np.testing.assert_allclose(poly.min(axis=0), [1.5, 1.5])
    np.testing.assert_allclose(poly.max(axis=0), [2.5, 2.5])
    x, y = poly[:, 1], poly[:, 0]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    assert area == pytest.approx(1 - 4 / 32)


def test_hole_gives_two_contours():
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    assert len(mask_contours(ring)) == 2
    assert mask_contours(np.zeros((4, 4))) == []


@pytest.mark.parametrize("value, text", [(0.0, "0"), (-0.00001, "0"), (12.5, "12.5"), (-123456.123456, "-123456.1235"),
                                         (1 / 3, "0.3333")])
def test_format_ds(value, text):
    assert format_ds(value) == text


def test_format_ds_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="16-character"):
        format_ds(-1e15)


def test_shape_mismatch_and_unknown_label_refused(tmp_path):
    write_series(tmp_path / "mr", np.zeros((3, 8, 8), np.uint16))
    series = read_series(tmp_path / "mr")
    with pytest.raises(ValueError, match="does not match"):
        write_rtstruct(np.zeros((3, 8, 9), np.uint8), series, tmp_path / "rs.dcm")
    lab = np.zeros((3, 8, 8), np.uint8)
    lab[1, 2, 2] = 3
    with pytest.raises(ValueError, match=r"label value\(s\) \[3\]"):
        write_rtstruct(lab, series, tmp_path / "rs.dcm")
    assert not (tmp_path / "rs.dcm").exists()
