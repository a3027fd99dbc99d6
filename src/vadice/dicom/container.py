"""The HNTS-MRG 2024 grand-challenge container interface: ``.mha`` in, ``output.mha`` out.

Task 1 reads ``<input>/images/pre-rt-t2w-head-neck/*.mha``; Task 2 reads
``mid-rt-t2w-head-neck``, ``registered-pre-rt-head-neck`` and
``registered-pre-rt-head-neck-segmentation`` (in that channel order, the order
``vadice convert --task 2`` trains with). Both write
``<output>/images/mri-head-neck-segmentation/output.mha``: uint8, compressed,
with the first input's exact size, spacing, origin and direction.

The network call is injected (``segment``), so this module stays free of
nnU-Net; the command line passes :func:`vadice.predict.predict`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from vadice.io import Geometry, InputError, atomic_file, read_mask, read_mha

log = logging.getLogger(__name__)

TASK_INPUTS: dict[int, tuple[str, ...]] = {
    1: ("pre-rt-t2w-head-neck",),
    2: ("mid-rt-t2w-head-neck", "registered-pre-rt-head-neck", "registered-pre-rt-head-neck-segmentation"),
}
OUTPUT_PATH = Path("images") / "mri-head-neck-segmentation" / "output.mha"
CASE = "case"


def find_inputs(input_root: str | os.PathLike, task: int) -> list[Path]:
    """The one ``.mha`` file of each input folder of ``task``, in channel order.

    Raises:
      InputError: unknown task, a missing folder, a folder without ``.mha`` or with several.
    """
    if task not in TASK_INPUTS:
        raise InputError(None, f"task must be 1 or 2, got {task}")
    files = []
    for name in TASK_INPUTS[task]:
        folder = Path(input_root) / "images" / name
        if not folder.is_dir():
            raise InputError(folder, f"input folder for task {task} not found")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".mha" and not p.name.startswith("."))
        if len(found) != 1:
            raise InputError(folder, f"expected exactly one .mha file, found {len(found)}")
        files.append(found[0])
    return files


def gc_predict(task: int, input_root: str | os.PathLike, output_root: str | os.PathLike,
               segment: Callable[[Path, Path], object]) -> Path:
    """Run one grand-challenge case: stage the ``.mha`` inputs as NIfTI channels, segment, write ``output.mha``.

    Args:
      task: 1 (pre-RT) or 2 (mid-RT with registered pre-RT image and mask).
      input_root: the container's ``/input``.
      output_root: the container's ``/output``.
      segment: ``segment(in_dir, out_dir)`` writes ``out_dir/case.nii.gz`` from
        ``in_dir/case_0000.nii.gz`` … (nnU-Net naming).

    Returns:
      The path of the written ``output.mha``.

    Raises:
      InputError: bad inputs (see :func:`find_inputs`, :func:`read_mha`),
        channels on different grids, or a prediction missing, off-grid or with
        labels outside 0..2. Nothing is written then.
    """
    files = find_inputs(input_root, task)
    images = [read_mha(p) for p in files]
    reference = Geometry.of_sitk(images[0])
    for path, image in zip(files[1:], images[1:]):
        if diffs := reference.differences(Geometry.of_sitk(image)):
            raise InputError(path, f"grid differs from {files[0].name}: " + "; ".join(diffs))
    target = Path(output_root) / OUTPUT_PATH
    with tempfile.TemporaryDirectory(prefix="vadice-gc-") as tmp:
        staged, produced_dir = Path(tmp) / "in", Path(tmp) / "out"
        staged.mkdir()
        for c, image in enumerate(images):
            sitk.WriteImage(image, str(staged / f"{CASE}_{c:04d}.nii.gz"), useCompression=True)
        segment(staged, produced_dir)
        produced = produced_dir / f"{CASE}.nii.gz"
        if not produced.is_file():
            raise InputError(produced, "the model produced no prediction")
        labels, geom = read_mask(produced, allowed_labels=(0, 1, 2))
    if diffs := reference.differences(geom, atol=1e-3):
        raise InputError(files[0], "prediction grid differs from the input: " + "; ".join(diffs))
    out = sitk.GetImageFromArray(labels.astype(np.uint8))
    out.CopyInformation(images[0])  # the input's exact geometry, not the NIfTI round trip's
    with atomic_file(target, suffix=".part.mha") as tmp_out:
        sitk.WriteImage(out, tmp_out, useCompression=True)
    log.info("wrote %s (%s voxels GTVp, %s GTVn)", target, int((labels == 1).sum()), int((labels == 2).sum()))
    return target
