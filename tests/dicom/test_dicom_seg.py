"""DICOM SEG export, read back by highdicom's reader voxel for voxel, per source slice."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_synth import rotation, write_series

from vadice.dicom.seg import write_seg
from vadice.dicom.series import read_series


@pytest.mark.parametrize("rot", [None, rotation("x", 25)])
def test_seg_round_trip_voxel_for_voxel(tmp_path, rot):
    shape = (6, 20, 22)
    lab = np.zeros(shape, np.uint8)
    lab[1:4, 3:12, 4:14] = 1
    lab[2, 6:8, 7:9] = 0
    lab[4, 15, 18] = 2
    lab[2, 14:17, 2:5] = 2
    w = write_series(tmp_path / "mr", np.zeros(shape, np.uint16), spacing_xyz=(0.6, 0.6, 2.0), rot=rot)
    write_seg(lab, read_series(tmp_path / "mr"), tmp_path / "seg.dcm")

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.StudyInstanceUID == w.study_uid and seg.FrameOfReferenceUID == w.frame_uid
    assert seg.SeriesInstanceUID != w.series_uid
    assert (seg.ReferencedSeriesSequence[0].SeriesInstanceUID == w.series_uid)
    names = {d.segment_number: d.segment_label for d in seg.SegmentSequence}
    assert names == {1: "GTVp", 2: "GTVn"}
    for k, uid in enumerate(w.sop_uids):  # w.sop_uids are in position order
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1, 2],
                                                   combine_segments=True, skip_overlap_checks=True)
        np.testing.assert_array_equal(pixels[0], lab[k], err_msg=f"slice {k}")
    raw = pydicom.dcmread(tmp_path / "seg.dcm")
    assert raw.Modality == "SEG" and raw.SegmentationType == "BINARY"


def test_empty_label_map_still_writes_described_segments(tmp_path):
    shape = (3, 8, 8)
    write_series(tmp_path / "mr", np.zeros(shape, np.uint16))
    lab = np.zeros(shape, np.uint8)  # a case without tumour or nodes is a valid prediction
    write_seg(lab, read_series(tmp_path / "mr"), tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [d.segment_label for d in seg.SegmentSequence] == ["GTVp", "GTVn"]
    assert not seg.get_volume(combine_segments=True, skip_overlap_checks=True).array.any()
