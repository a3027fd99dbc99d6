"""Synthetic head-and-neck T2 MR cohort in the exact HNTS-MRG 2024 training layout.

Every case is drawn first as a small description in physical millimetres (a
:class:`CaseSpec`: grids, body outline, anatomy, lesions with target volumes),
then rendered onto each grid with vectorised numpy work confined to bounding
boxes. Drawing is cheap, so the volume distributions can be checked on hundreds
of cases without rendering a voxel (:func:`draw_cohort`, :func:`lesion_table`).

Modules: :mod:`.draw` (the case description and the ``v1`` profile), :mod:`.clinical`
(the ``clinical`` profile, nodes after the imaging criteria of nodal metastasis),
:mod:`.cohort` (ids, per-case random streams, profile choice), :mod:`.render`
(images, masks, audit map), :mod:`.write` (files, ``cohort.json``, resume).

Distributions follow the published HNTS-MRG 2024 training statistics
(docs/data.md, "Lesion distributions"; 26-connectivity):

* pre-RT GTVp present in ~90 % of patients, log-normal volume, median 8.4 ml,
  IQR 4.3-16 ml, at most 50 ml;
* GTVn: ~92 % node-positive before RT; node count per positive patient from
  the published mid-RT histogram (1:70, 2:35, 3:13, 4:5, 5:2, 6:3, 10+:1);
  pre-RT node volume log-normal with median 2.65 ml and 31 % below 1 ml;
* mid-RT: ~7 % complete responders (empty mask), GTVp kept in ~88 % of the
  rest and shrunk (ratio median 0.31 -> mid median ~2.6 ml); nodes shrink
  more when large (log-linear, slope 0.75), giving mid-RT median ~2 ml with
  ~31 % below 1 ml; small nodes vanish more often.

Lesion voxel counts are set exactly (the blob is thresholded at the k-th
smallest value of its shape function, k = target volume / voxel volume), and
lesions are placed so that no two of them are 26-connected on any grid: the
ground-truth table written to ``cohort.json`` is what a connected-component
analysis of the written masks measures.

Sizes: ``full`` uses realistic grids (e.g. 512x512x75 at 0.5x0.5x2 mm, spacing
drawn from the real distribution). ``small`` renders the same physical scene
(same lesion volumes in ml) on a coarser grid cropped to at most 256 mm
in-plane: the real spacing times an integer factor so that the grid is at most
48x128x128 (z, y, x), typically 2x2x4 mm voxels. ``neck`` (the CPU demo's cohort)
crops the same scene to 160 mm in-plane around the neck at a finer grid (the real
spacing times an integer factor, nearest to 1.5 mm in-plane and 2.2 mm between
slices; typically 1.5x1.5x2 mm, about 107x107x75 voxels), so that a 0.1 ml node
keeps ~20 voxels and a median node ~600: what a CPU-sized network can learn.
"""

from __future__ import annotations

from vadice.data.synth.draw import (INTENSITY_SCALE, LABEL_GTVN, LABEL_GTVP, NECK_FOV_MM, NECK_SPACING_XY_MM,
                                    NECK_SPACING_Z_MM, NODE_COUNTS, REAL_SPACINGS, SIZES, SMALL_MAX_FOV_MM,
                                    SMALL_MAX_ZYX, TIMEPOINTS, TISSUE, BlobShape, CaseSpec, Grid, LesionSpec,
                                    Look, Structure)
from vadice.data.synth.cohort import PROFILES, draw_cohort, lesion_table
from vadice.data.synth.render import render_case
from vadice.data.synth.write import COHORT_FILE, default_workers, generate_cohort

__all__ = ["COHORT_FILE", "INTENSITY_SCALE", "LABEL_GTVN", "LABEL_GTVP", "NECK_FOV_MM", "NECK_SPACING_XY_MM",
           "NECK_SPACING_Z_MM", "NODE_COUNTS", "REAL_SPACINGS", "SIZES", "SMALL_MAX_FOV_MM", "SMALL_MAX_ZYX",
           "PROFILES", "TIMEPOINTS", "TISSUE", "BlobShape", "CaseSpec", "Grid", "LesionSpec", "Look", "Structure",
           "default_workers",
           "draw_cohort", "generate_cohort", "lesion_table", "render_case"]
