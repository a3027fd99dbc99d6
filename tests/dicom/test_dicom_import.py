"""Importing an RTSTRUCT onto a series grid: hand-built contours through voxel centres and our own export."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_synth import rotation, write_series
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from vadice.dicom.rtstruct import parse_roi_map, read_rtstruct, write_rtstruct
from vadice.dicom.series import read_series
from vadice.io import InputError


def _hand_rtstruct(path, written, contours_by_roi, frame_uid=None):
    """A minimal RTSTRUCT written with pydicom: {name: [(slice k, [(row, col), ...]), ...]} in pixel units."""
    ds = Dataset()
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3", generate_uid()
    rois, roi_contours = [], []
    dx, dy, dz = written.spacing_xyz
    for number, (name, contours) in enumerate(contours_by_roi.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = frame_uid or written.frame_uid
        rois.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = number
        items = []
        for k, pts in contours:
            pts = np.asarray(pts, float)
            xyz = (written.origin + k * dz * written.normal + np.outer(pts[:, 1] * dx, written.row_dir)
                   + np.outer(pts[:, 0] * dy, written.col_dir))
            item = Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(pts)
            item.ContourData = [f"{v:.6f}" for v in xyz.reshape(-1)]
            items.append(item)
        rc.ContourSequence = DicomSequence(items)
        roi_contours.append(rc)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _square(r0, c0, r1, c1):
    return [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]


@pytest.mark.parametrize("pixel_spacing", [0.9, 1.0, 0.8999999762])
def test_contours_through_voxel_centres_include_their_boundary(tmp_path, pixel_spacing):
    """OpenCV-style contours (vertices on boundary voxel centres) must fill the same whatever the float noise."""
    shape = (3, 40, 44)
    w = write_series(tmp_path / "mr", np.zeros(shape, np.uint16), spacing_xyz=(pixel_spacing, pixel_spacing, 2.0))
    outer = _square(5, 6, 25, 30)
    hole = _square(10, 12, 14, 20)  # traced along the structure's pixels around a 3x7 hole
    diamond = [(30, 10), (33, 13), (30, 16), (27, 13)]
    # rt-utils 1.2.7 writes 1- and 2-point CLOSED_PLANAR contours for nodes of 1 and 2 voxels
    dot, pair = [(36, 40)], [(2, 30), (2, 31)]
    path = _hand_rtstruct(tmp_path / "rs.dcm", w, {"GTVp_1": [(1, outer), (1, hole)],
                                                   "GTVn": [(2, diamond), (0, dot), (0, pair)]})
    labels, used = read_rtstruct(path, read_series(tmp_path / "mr"))
    assert used == {"GTVp_1": 1, "GTVn": 2}
    expected = np.zeros(shape, np.uint8)
    expected[1, 5:26, 6:31] = 1
    expected[1, 11:14, 13:20] = 0
    rr, cc = np.mgrid[0:shape[1], 0:shape[2]]
    expected[2][np.abs(rr - 30) + np.abs(cc - 13) <= 3] = 2  # the diamond with its edge voxels
    expected[0, 36, 40] = expected[0, 2, 30] = expected[0, 2, 31] = 2
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("rot", [None, rotation("x", 30) @ rotation("y", -20)])
def test_own_export_imports_back_exactly(tmp_path, rot):
    shape = (5, 24, 28)
    lab = np.zeros(shape, np.uint8)
    lab[1:4, 4:15, 5:16] = 1
    lab[2, 7:10, 8:12] = 0
    lab[2, 18, 20] = 2
    lab[3, 18:21, 2:4] = 2
    write_series(tmp_path / "mr", np.zeros(shape, np.uint16), spacing_xyz=(0.7, 0.6, 3.0), rot=rot)
    series = read_series(tmp_path / "mr")
    write_rtstruct(lab, series, tmp_path / "rs.dcm")
    labels, used = read_rtstruct(tmp_path / "rs.dcm", series)
    assert used == {"GTVp": 1, "GTVn": 2}
    np.testing.assert_array_equal(labels, lab)
    only_nodes, used = read_rtstruct(tmp_path / "rs.dcm", series, "gtvn=5")
    np.testing.assert_array_equal(only_nodes, np.where(lab == 2, 5, 0))


def test_parse_roi_map():
    assert parse_roi_map("GTVp*=1, GTVn*=2") == [("gtvp*", 1), ("gtvn*", 2)]
    for bad, why in (("GTVp", "PATTERN=LABEL"), ("GTVp=x", "not an integer"), ("GTVp=0", "1..255"), ("=1", "PATTERN")):
        with pytest.raises(InputError, match=why):
            parse_roi_map(bad)


def test_bad_rtstruct_inputs(tmp_path):
    shape = (3, 10, 10)
    w = write_series(tmp_path / "mr", np.zeros(shape, np.uint16))
    series = read_series(tmp_path / "mr")
    square = _square(2, 2, 5, 5)
    other = _hand_rtstruct(tmp_path / "other.dcm", w, {"GTVp": [(1, square)]}, frame_uid=generate_uid())
    with pytest.raises(InputError, match="frame of reference"):
        read_rtstruct(other, series)
    cord = _hand_rtstruct(tmp_path / "cord.dcm", w, {"SpinalCord": [(1, square)]})
    with pytest.raises(InputError, match="no ROI matches.*SpinalCord"):
        read_rtstruct(cord, series)
    off = _hand_rtstruct(tmp_path / "off.dcm", w, {"GTVp": [(1.5, square)]})
    with pytest.raises(InputError, match="not on a slice plane"):
        read_rtstruct(off, series)
    with pytest.raises(InputError, match="not an RTSTRUCT"):
        read_rtstruct(w.files[0], series)
    (tmp_path / "junk.dcm").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable DICOM"):
        read_rtstruct(tmp_path / "junk.dcm", series)
