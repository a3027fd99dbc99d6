#!/usr/bin/env python
"""rt-utils 1.2.7 against vadice's RTSTRUCT writer on tiny nodes (the evidence in docs/clinic.md).

rt-utils is not a vadice dependency (it pins the full opencv-python), so the comparison runs in two steps:

    python3.11 -m venv /tmp/rtu && /tmp/rtu/bin/pip install 'rt-utils==1.2.7' 'numpy<2'
    /tmp/rtu/bin/python bench/rtutils_compare.py write --out /tmp/rtu_eval    # series + rt-utils RTSTRUCT
    .venv/bin/python bench/rtutils_compare.py check --out /tmp/rtu_eval       # vadice's writer and importer

Measured (2026-11): rt-utils writes the 1- and 2-voxel nodes as 1- and 2-point CLOSED_PLANAR contours, its own
reader then crashes in cv2.fillPoly, and it returns masks as (columns, rows, slices); vadice writes >= 8 points
for every node and imports both files back exactly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "dicom"))
from dicom_synth import write_series  # noqa: E402

SHAPE = (6, 40, 48)  # z, y, x


def labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    lab[((y - 15) ** 2 + (x - 15) ** 2 <= 64) & (z >= 1) & (z <= 4)] = 1
    lab[2, 30, 30] = 2          # 1 voxel
    lab[3, 30, 34:36] = 2       # 2 voxels
    lab[4, 25:28, 40:43] = 2    # 9 voxels
    return lab


def points(path: Path) -> dict:
    import pydicom

    ds = pydicom.dcmread(path)
    names = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    return {names[r.ReferencedROINumber]: sorted(int(c.NumberOfContourPoints) for c in r.ContourSequence)
            for r in ds.ROIContourSequence}


def write(out: Path) -> None:
    from rt_utils import RTStructBuilder

    lab = labels()
    write_series(out / "mr", np.full(SHAPE, 100, np.uint16), spacing_xyz=(0.9, 0.9, 2.0))
    rs = RTStructBuilder.create_new(dicom_series_path=str(out / "mr"))
    for value, name in ((1, "GTVp"), (2, "GTVn")):
        rs.add_roi(mask=np.transpose(lab == value, (1, 2, 0)), name=name)  # rt-utils wants (rows, cols, slices)
    rs.save(str(out / "rs_rtutils.dcm"))
    print("rt-utils points per contour:", points(out / "rs_rtutils.dcm"))
    try:
        back = RTStructBuilder.create_from(dicom_series_path=str(out / "mr"), rt_struct_path=str(out / "rs_rtutils.dcm"))
        print("rt-utils reader mask shape:", back.get_roi_mask_by_name("GTVp").shape, "expected", (40, 48, 6))
        print("rt-utils reader GTVn:", back.get_roi_mask_by_name("GTVn").sum())
    except Exception as exc:  # noqa: BLE001 - the point is to report how it fails
        print("rt-utils reader failed:", type(exc).__name__, str(exc).strip().splitlines()[-1][:160])


def check(out: Path) -> None:
    from vadice.dicom.rtstruct import read_rtstruct, write_rtstruct
    from vadice.dicom.series import read_series

    lab, series = labels(), read_series(out / "mr")
    write_rtstruct(lab, series, out / "rs_vadice.dcm")
    print("vadice points per contour:", points(out / "rs_vadice.dcm"))
    for name in ("rs_rtutils.dcm", "rs_vadice.dcm"):
        back, _ = read_rtstruct(out / name, series)
        dice = {v: round(2 * np.sum((back == v) & (lab == v)) / (np.sum(back == v) + np.sum(lab == v)), 3)
                for v in (1, 2)}
        print(f"vadice importer on {name}: Dice GTVp {dice[1]}, GTVn {dice[2]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("write", "check"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (write if args.step == "write" else check)(args.out)
