"""DICOM SEG of a label map, written with highdicom.

highdicom (maintained by the Imaging Data Commons team) builds the
Segmentation IOD from the source MR slices: patient/study attributes, the
frame of reference, per-frame plane positions and the source-image references
come from the slices themselves, so the SEG lines up with the series in any
viewer that reads SEG.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from vadice import __version__
from vadice.dicom.series import MRSeries
from vadice.io import atomic_file

log = logging.getLogger(__name__)

# label -> (segment label, property type code, anatomic region or None)
DEFAULT_SEGMENTS: Mapping[int, tuple[str, object, object]] = {
    1: ("GTVp", codes.SCT.NeoplasmPrimary, None),
    2: ("GTVn", codes.SCT.NeoplasmSecondary, codes.SCT.LymphNodeOfHeadAndNeck),
}


def build_seg(labels: np.ndarray, series: MRSeries,
              segments: Mapping[int, tuple[str, object, object]] = DEFAULT_SEGMENTS) -> hd.seg.Segmentation:
    """A binary DICOM SEG with one segment per entry of ``segments`` (empty segments included).

    Args:
      labels: integer label map (z, y, x) on the series grid.
      series: the source MR series (slice order = ``labels``' z order).
      segments: {label: (name, SNOMED property type, anatomic region or None)}.

    Returns:
      The highdicom Segmentation dataset.

    Raises:
      ValueError: shape mismatch or labels without a segment description.
    """
    labels = np.asarray(labels)
    if labels.shape != series.array.shape:
        raise ValueError(f"label map shape {labels.shape} does not match the series {series.array.shape}")
    present = {int(v) for v in np.unique(labels)} - {0}
    if unknown := sorted(present - set(segments)):
        raise ValueError(f"label value(s) {unknown} have no segment description; known {sorted(segments)}")
    algorithm = hd.AlgorithmIdentificationSequence(name="vadice", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions, stack = [], []
    for number, (label, (name, prop_type, region)) in enumerate(sorted(segments.items()), start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=prop_type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, anatomic_regions=[region] if region is not None else None))
        stack.append(labels == label)
    # (frames, rows, columns, segments): one boolean plane per segment keeps empty segments describable.
    pixel_array = np.stack(stack, axis=-1)
    return hd.seg.Segmentation(
        source_images=list(series.slices), pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=int(series.slices[0].get("SeriesNumber", 0) or 0) + 1001,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="vadice",
        manufacturer_model_name="vadice", software_versions=__version__, device_serial_number="none",
        series_description="vadice GTVp/GTVn", omit_empty_frames=True)


def write_seg(labels: np.ndarray, series: MRSeries, path: str | os.PathLike,
              segments: Mapping[int, tuple[str, object, object]] = DEFAULT_SEGMENTS) -> None:
    """Write :func:`build_seg`'s segmentation to ``path`` atomically."""
    seg = build_seg(labels, series, segments)
    with atomic_file(path, suffix=".part.dcm") as tmp:
        seg.save_as(tmp)
    log.info("%s: DICOM SEG with %d segment(s)", path, len(segments))
