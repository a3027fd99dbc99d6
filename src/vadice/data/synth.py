"""Synthetic head-and-neck T2 MR cohort in the exact HNTS-MRG 2024 training layout.

Every case is drawn first as a small description in physical millimetres (a
:class:`CaseSpec`: grids, body outline, anatomy, lesions with target volumes),
then rendered onto each grid with vectorised numpy work confined to bounding
boxes. Drawing is cheap, so the volume distributions can be checked on hundreds
of cases without rendering a voxel (:func:`draw_cohort`, :func:`lesion_table`).

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

import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from vadice.data.hntsmrg import source_files
from vadice.io import Geometry, write_nifti, write_text

SIZES = ("small", "neck", "full")

# (x, y, z) spacing in mm and its count over the 150 HNTS-MRG pre-RT images.
REAL_SPACINGS = (
    ((0.5, 0.5, 2.0), 114),
    ((0.985, 0.985, 1.2), 23),
    ((0.4, 0.4, 2.0), 5),
    ((0.8125, 0.8125, 1.0), 3),
    ((0.5, 0.5, 1.0), 3),
    ((0.5, 0.5, 2.5), 1),
    ((0.677, 0.677, 1.1), 1),
)
# Nodes per node-positive patient (published mid-RT histogram; "10+" drawn in 10..21).
NODE_COUNTS = ((1, 70), (2, 35), (3, 13), (4, 5), (5, 2), (6, 3), (10, 1))

SMALL_MAX_ZYX = (48, 128, 128)
SMALL_MAX_FOV_MM = 256.0
# ``neck``: the CPU demo's grid. A 160 mm in-plane crop keeps the whole neck (lateral nodes sit up to
# ~50 mm off the midline, the frame moves the neck up to 10 mm off the grid centre) and lets a ~1.5 mm
# in-plane grid stay as cheap as ``small``; a 0.1 ml node is then ~20 voxels instead of ~3.
NECK_FOV_MM = 160.0
NECK_SPACING_XY_MM = 1.5
NECK_SPACING_Z_MM = 2.2
INTENSITY_SCALE = 1000.0
LABEL_GTVP, LABEL_GTVN = 1, 2

# Relative T2 signal (muscle ~0.33) without / with fat suppression. Lesions and
# their look-alikes (normal nodes, glands, thyroid) overlap on purpose.
TISSUE = {
    "fat": (0.85, 0.12),
    "muscle": (0.33, 0.28),
    "air": (0.01, 0.01),
    "vertebra": (0.45, 0.20),
    "csf": (1.00, 1.00),
    "cord": (0.42, 0.40),
    "vessel": (0.08, 0.06),
    "muscle_t2": (0.42, 0.45),  # tongue / sternocleidomastoid: longer T2 than the deep muscles
    "mucosa": (0.55, 0.58),  # pharyngeal mucosa and lymphoid tissue (tonsils): a classic tumour mimic
    "gland": (0.58, 0.57),
    "thyroid": (0.52, 0.55),
    "normal_node": (0.52, 0.56),
    "tumour": (0.56, 0.57),
    "node": (0.56, 0.58),
    "necrosis": (0.88, 0.90),
}

TIMEPOINTS = ("preRT", "midRT", "preRT_registered")


# --------------------------------------------------------------------------- description


@dataclass(frozen=True)
class Grid:
    """Voxel grid with identity direction; ``shape_zyx`` array order, the rest ITK (x, y, z) order."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]

    @property
    def geometry(self) -> Geometry:
        return Geometry(
            size=tuple(reversed(self.shape_zyx)),
            spacing=self.spacing_xyz,
            origin=self.origin_xyz,
            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        )

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing_xyz))

    @property
    def voxel_diagonal(self) -> float:
        return float(np.linalg.norm(self.spacing_xyz))

    def axis_mm(self, axis_xyz: int) -> np.ndarray:
        n = self.shape_zyx[2 - axis_xyz]
        return (self.origin_xyz[axis_xyz] + self.spacing_xyz[axis_xyz] * np.arange(n)).astype(np.float32)

    def extent(self, axis_xyz: int) -> tuple[float, float]:
        n = self.shape_zyx[2 - axis_xyz]
        lo = self.origin_xyz[axis_xyz]
        return lo, lo + self.spacing_xyz[axis_xyz] * (n - 1)


@dataclass
class BlobShape:
    """Star-shaped blob: rotated ellipsoid whose radius is modulated by a few cosines of the direction."""

    radii: np.ndarray  # (3,) mm, for the nominal volume
    rotation: np.ndarray  # (3, 3), columns = blob axes in (x, y, z)
    amp: np.ndarray  # (K,)
    freq: np.ndarray  # (K, 3)
    phase: np.ndarray  # (K,)
    _reach: float | None = field(default=None, repr=False)

    def max_radius(self, scale: float = 1.0) -> float:
        """Largest distance (mm) from the centre to the blob's surface at ``scale``, with 5 % to spare."""
        if self._reach is None:
            n = _SPHERE
            pert = np.cos(n @ self.freq.T + self.phase) @ self.amp
            self._reach = float(((1.0 + pert) * np.linalg.norm(n * self.radii, axis=1)).max() * 1.05)
        return scale * self._reach

    def scaled(self, factor: float) -> "BlobShape":
        return BlobShape(self.radii * factor, self.rotation, self.amp, self.freq, self.phase)


@dataclass
class LesionSpec:
    label: int
    center: np.ndarray  # (3,) mm, patient frame (x, y, z)
    shape: BlobShape  # nominal shape for 1 ml; scaled per target volume
    volume_pre_ml: float
    volume_mid_ml: float | None  # None: gone at mid-RT
    contrast: float  # per-lesion offset of the mean signal
    necrotic: bool


@dataclass
class Structure:
    """Image-only structure (no label): gland, thyroid or normal lymph node."""

    tissue: str
    center: np.ndarray
    shape: BlobShape


@dataclass
class CaseSpec:
    case_id: int
    seed: int  # for render-time noise
    fat_suppressed: bool
    complete_response: bool
    grids: dict[str, Grid]  # preRT, midRT
    frames: dict[str, np.ndarray]  # patient-frame origin (mm, scanner coordinates) per timepoint key
    body: dict  # neck outline parameters
    structures: list[Structure]
    lesions: list[LesionSpec] = field(default_factory=list)
    noise_sigma: float = 0.04


# A blob is cut at the level of its k-th smallest shape value (k = target voxel
# count), never above this scale: bounds how far its voxels can reach.
_MAX_SCALE = 1.15


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


_SPHERE = _fibonacci_sphere(600)


def _check_size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return size


def _draw_spacing(rng: np.random.Generator) -> tuple[float, float, float]:
    weights = np.array([w for _, w in REAL_SPACINGS], dtype=float)
    return REAL_SPACINGS[int(rng.choice(len(REAL_SPACINGS), p=weights / weights.sum()))][0]


def _draw_grid(rng: np.random.Generator, size: str, spacing: tuple[float, float, float]) -> Grid:
    sx, _, sz = spacing
    # Real protocols: 0.985 mm scans cover ~520 mm, the rest ~256 mm or a 512 matrix.
    fov = 520.0 if abs(sx - 0.985) < 1e-6 else max(256.0, 512 * sx)
    n_xy = int(round(fov / sx))
    coverage = float(np.clip(rng.normal(150.0, 15.0), 114.0, 200.0))
    n_z = int(np.clip(round(coverage / sz), 57, 162))
    if size == "small":
        fov = min(fov, SMALL_MAX_FOV_MM)
        k_xy = math.ceil(fov / sx / SMALL_MAX_ZYX[2])
        k_z = math.ceil(n_z / SMALL_MAX_ZYX[0])
        sx, sz = sx * k_xy, sz * k_z
        n_xy = math.ceil(fov / sx)
        n_z = math.ceil(n_z / k_z)
    elif size == "neck":
        fov = min(fov, NECK_FOV_MM)
        k_xy = max(1, round(NECK_SPACING_XY_MM / sx))
        k_z = max(1, round(NECK_SPACING_Z_MM / sz))
        sx, sz = sx * k_xy, sz * k_z
        n_xy = math.ceil(fov / sx)
        n_z = math.ceil(n_z / k_z)
    shape = (n_z, n_xy, n_xy)
    # NIfTI headers store float32: use representable values so that volumes in cohort.json are
    # exactly what is measured on the written files.
    spacing_xyz = tuple(float(np.float32(v)) for v in (sx, sx, sz))
    centre = np.array([rng.uniform(-8, 8), rng.uniform(-30, 0), rng.uniform(-420, -300)])
    half = (np.array([n_xy, n_xy, n_z]) - 1) / 2.0 * np.array(spacing_xyz)
    origin = tuple(float(np.float32(round(v, 4))) for v in centre - half)
    return Grid(shape, spacing_xyz, origin)


def _grid_centre(grid: Grid) -> np.ndarray:
    return np.array([sum(grid.extent(a)) / 2.0 for a in range(3)])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _blob_shape(rng: np.random.Generator, volume_ml: float, elongation: float = 0.25,
                roughness: float = 0.1, axes: tuple[float, float, float] | None = None) -> BlobShape:
    ratios = np.array(axes) if axes is not None else np.exp(rng.uniform(-elongation, elongation, 3))
    ratios = ratios / np.prod(ratios) ** (1 / 3)
    r = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1 / 3)
    k = 3
    freq = rng.standard_normal((k, 3))
    freq *= (rng.uniform(1.5, 3.5, k) / np.linalg.norm(freq, axis=1))[:, None]
    return BlobShape(
        radii=r * ratios,
        rotation=_random_rotation(rng) if axes is None else np.eye(3),
        amp=rng.uniform(-roughness, roughness, k),
        freq=freq,
        phase=rng.uniform(0, 2 * math.pi, k),
    )


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float) -> float:
    for _ in range(50):
        v = median * math.exp(sigma * rng.standard_normal())
        if lo <= v <= hi:
            return float(v)
    return float(np.clip(v, lo, hi))


def _body_axes(body: dict, w: np.ndarray, thin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Semi-axes (lateral, antero-posterior) of the neck outline at heights ``w`` (mm, patient frame)."""
    cov = body["coverage"]
    shoulders = 1.0 / (1.0 + np.exp((w + 0.32 * cov) / 7.0))
    jaw = 1.0 / (1.0 + np.exp(-(w - 0.22 * cov) / 9.0))
    a = (body["a0"] * thin + body["shoulder"] * shoulders + 8.0 * jaw).astype(np.float32)
    b = (body["b0"] * thin + 12.0 * jaw + 8.0 * shoulders).astype(np.float32)
    return a, b


def _draw_case(case_id: int, rng: np.random.Generator, size: str) -> CaseSpec:
    spacing_pre = _draw_spacing(rng)
    grid_pre = _draw_grid(rng, size, spacing_pre)
    spacing_mid = spacing_pre if rng.random() < 0.75 else _draw_spacing(rng)
    grid_mid = _draw_grid(rng, size, spacing_mid)
    frames = {}
    for key, grid in (("preRT", grid_pre), ("midRT", grid_mid)):
        frames[key] = _grid_centre(grid) + np.array(
            [rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-8, 8)])
    # Registration leaves a small residual shift; the registered files live on the mid-RT grid.
    frames["preRT_registered"] = frames["midRT"] + rng.uniform(-1.0, 1.0, 3)
    cov_pre = grid_pre.extent(2)[1] - grid_pre.extent(2)[0]
    cov_mid = grid_mid.extent(2)[1] - grid_mid.extent(2)[0]
    body = {
        "coverage": float(min(cov_pre, cov_mid)),
        "a0": float(rng.uniform(52, 66)),
        "b0": float(rng.uniform(44, 56)),
        "shoulder": float(rng.uniform(60, 90)),
        "fat": float(rng.uniform(5, 13)),
        "thin_mid": float(rng.uniform(0.92, 1.0)),
        "airway": (float(rng.uniform(7, 11)), float(rng.uniform(4, 8))),
        "vessel_bright": bool(rng.random() < 0.3),
    }
    spec = CaseSpec(
        case_id=case_id,
        seed=int(rng.integers(2**31)),
        fat_suppressed=bool(rng.random() < 0.4),
        complete_response=bool(rng.random() < 0.07),
        grids={"preRT": grid_pre, "midRT": grid_mid},
        frames=frames,
        body=body,
        structures=[],
        noise_sigma=float(rng.uniform(0.025, 0.05)),
    )
    _draw_structures(spec, rng)
    _draw_lesions(spec, rng)
    return spec


def _draw_structures(spec: CaseSpec, rng: np.random.Generator) -> None:
    cov, b0 = spec.body["coverage"], spec.body["b0"]
    out = spec.structures
    for side in (-1, 1):
        out.append(Structure("gland", np.array([side * rng.uniform(30, 38), -0.35 * b0, 0.30 * cov]),
                             _blob_shape(rng, rng.uniform(6, 10), axes=(1.3, 0.9, 0.85))))
        out.append(Structure("gland", np.array([side * rng.uniform(42, 50), 0.05 * b0, 0.42 * cov]),
                             _blob_shape(rng, rng.uniform(12, 20), axes=(0.8, 1.2, 1.05))))
        out.append(Structure("thyroid", np.array([side * rng.uniform(12, 16), -0.45 * b0, -0.25 * cov]),
                             _blob_shape(rng, rng.uniform(4, 8), axes=(0.8, 0.65, 1.9))))
    # Normal lymph nodes: same signal as metastatic ones, unlabelled (false-positive bait).
    for _ in range(int(rng.integers(3, 9))):
        side = 1 if rng.random() < 0.5 else -1
        centre = np.array([side * rng.uniform(20, 45), rng.uniform(-0.3, 0.45) * b0,
                           rng.uniform(-0.35, 0.38) * cov])
        out.append(Structure("normal_node", centre, _blob_shape(rng, rng.uniform(0.15, 1.2), elongation=0.45)))


def _draw_lesions(spec: CaseSpec, rng: np.random.Generator) -> None:
    drafts: list[tuple[int, float]] = []  # (label, pre volume)
    if rng.random() < 0.90:
        drafts.append((LABEL_GTVP, _lognormal(rng, 8.4, 0.97, 0.5, 50.0)))
    if rng.random() < 0.92:
        counts = np.array([w for _, w in NODE_COUNTS], dtype=float)
        n = NODE_COUNTS[int(rng.choice(len(NODE_COUNTS), p=counts / counts.sum()))][0]
        if n >= 10:
            n = int(rng.integers(10, 22))
        drafts += [(LABEL_GTVN, _lognormal(rng, 2.65, 1.9, 0.1, 60.0)) for _ in range(n)]

    placed: list[tuple[np.ndarray, float]] = []  # (centre, bounding radius)
    margin = 1.05 * max(g.voxel_diagonal for g in spec.grids.values()) + 2.5  # + residual registration shift
    z_lo = max(spec.grids[k].extent(2)[0] - spec.frames[k][2] for k in ("preRT", "midRT")) + 1.5
    z_hi = min(spec.grids[k].extent(2)[1] - spec.frames[k][2] for k in ("preRT", "midRT")) - 1.5
    cov = spec.body["coverage"]
    # Primary tumour first (its site is the most constrained), then nodes, largest first.
    for label, v_pre in sorted(drafts, key=lambda d: (d[0], -d[1])):
        v_mid = _mid_volume(rng, label, v_pre, spec.complete_response)
        v_max = max(v_pre, v_mid or 0.0)
        shape = _blob_shape(rng, 1.0, elongation=0.3 if label == LABEL_GTVN else 0.35)
        for attempt in range(300):
            if attempt and attempt % 100 == 0:
                v_pre, v_mid = v_pre * 0.6, (None if v_mid is None else v_mid * 0.6)
                v_max = max(v_pre, v_mid or 0.0)
            r_bound = shape.max_radius(_MAX_SCALE * v_max ** (1 / 3))
            centre = _draw_position(rng, spec, label, cov)
            a, b = _body_axes(spec.body, np.array([centre[2]]), thin=spec.body["thin_mid"])
            inside = (centre[0] / max(a[0] - r_bound * 0.5, 5)) ** 2 + (centre[1] / max(b[0] - r_bound * 0.5, 5)) ** 2
            if inside > 1.0 or not (z_lo + r_bound <= centre[2] <= z_hi - r_bound):
                continue
            if all(np.linalg.norm(centre - c) > r_bound + r + margin for c, r in placed):
                placed.append((centre, r_bound))
                spec.lesions.append(LesionSpec(
                    label=label, center=centre, shape=shape, volume_pre_ml=float(v_pre),
                    volume_mid_ml=None if v_mid is None else float(v_mid),
                    contrast=float(rng.normal(0.0, 0.06)),
                    necrotic=bool(label == LABEL_GTVN and v_pre > 3.0 and rng.random() < 0.4),
                ))
                break


def _mid_volume(rng: np.random.Generator, label: int, v_pre: float, complete_response: bool) -> float | None:
    if complete_response:
        return None
    if label == LABEL_GTVP:
        if rng.random() > 0.88:
            return None
        ratio = float(np.clip(0.31 * math.exp(0.6 * rng.standard_normal()), 0.03, 1.0))
        return max(v_pre * ratio, 0.1)
    if rng.random() > (0.85 if v_pre < 1.0 else 0.97):
        return None
    # Large nodes shrink proportionally more than small ones (slope 0.75 on the log scale).
    v = math.exp(-0.013 + 0.75 * math.log(v_pre) + 0.5 * rng.standard_normal())
    return float(np.clip(v, 0.08, 1.2 * v_pre))


def _draw_position(rng: np.random.Generator, spec: CaseSpec, label: int, cov: float) -> np.ndarray:
    b0 = spec.body["b0"]
    if label == LABEL_GTVP:
        return np.array([rng.normal(0, 6), -0.35 * b0 + rng.uniform(-4, 14), rng.uniform(-0.15, 0.38) * cov])
    side = 1 if rng.random() < 0.5 else -1
    return np.array([side * rng.uniform(20, 48), rng.uniform(-0.4, 0.45) * b0, rng.uniform(-0.35, 0.38) * cov])


def draw_cohort(n_cases: int, seed: int, size: str = "small") -> list[CaseSpec]:
    """Draw the description of a cohort (no rendering; cheap).

    Args:
      n_cases: number of patients (>= 1).
      seed: any non-negative integer; the same seed always gives the same cohort.
      size: ``"small"``, ``"neck"`` or ``"full"`` (grids only; lesion volumes are the same).

    Returns:
      one :class:`CaseSpec` per patient, sorted by case id. Case ids are
      distinct, non-contiguous integers from 2 upwards, as in HNTS-MRG.
    """
    if int(n_cases) < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _check_size(size)
    root = np.random.SeedSequence(int(seed))
    id_seq, *case_seqs = root.spawn(n_cases + 1)
    pool = np.arange(2, 2 + max(200, 2 * n_cases))
    ids = np.sort(np.random.default_rng(id_seq).choice(pool, n_cases, replace=False))
    return [_draw_case(int(cid), np.random.default_rng(s), size) for cid, s in zip(ids, case_seqs)]


def lesion_table(specs: list[CaseSpec]) -> list[dict]:
    """Target lesion volumes of drawn cases (``timepoint`` preRT / midRT), without rendering."""
    rows = []
    for spec in specs:
        for lesion in spec.lesions:
            rows.append({"case": spec.case_id, "timepoint": "preRT", "label": lesion.label,
                         "volume_ml": lesion.volume_pre_ml})
            if lesion.volume_mid_ml is not None:
                rows.append({"case": spec.case_id, "timepoint": "midRT", "label": lesion.label,
                             "volume_ml": lesion.volume_mid_ml})
    return rows


# --------------------------------------------------------------------------- rendering


class _Canvas:
    """One grid seen from one patient frame: 1-D patient-frame coordinates per axis."""

    def __init__(self, grid: Grid, frame: np.ndarray):
        self.grid = grid
        self.axes = [grid.axis_mm(a) - np.float32(frame[a]) for a in range(3)]  # x, y, z
        self.pv = float(min(grid.spacing_xyz))

    def index_range(self, axis: int, lo: float, hi: float) -> slice:
        coords = self.axes[axis]
        i0 = int(np.searchsorted(coords, lo, side="left"))
        i1 = int(np.searchsorted(coords, hi, side="right"))
        return slice(i0, max(i0, i1))

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        sx, sy, sz = (self.index_range(a, lo[a], hi[a]) for a in range(3))
        if sx.stop <= sx.start or sy.stop <= sy.start or sz.stop <= sz.start:
            return None
        return sz, sy, sx


def _blob_ratio(canvas: _Canvas, centre: np.ndarray, shape: BlobShape, scale_max: float):
    """Shape function of a blob inside its bounding box: voxel belongs to the blob at scale s iff ratio <= s."""
    reach = shape.max_radius(scale_max) + canvas.grid.voxel_diagonal
    box = canvas.box(centre - reach, centre + reach)
    if box is None:
        return None, None
    sz, sy, sx = box
    dx = canvas.axes[0][sx] - centre[0]
    dy = canvas.axes[1][sy] - centre[1]
    dz = canvas.axes[2][sz] - centre[2]
    rot = shape.rotation
    p = [(dz[:, None, None] * rot[2, i] + dy[None, :, None] * rot[1, i] + dx[None, None, :] * rot[0, i])
         / np.float32(shape.radii[i]) for i in range(3)]
    d = np.sqrt(p[0] ** 2 + p[1] ** 2 + p[2] ** 2)
    d_safe = np.maximum(d, 1e-6)
    pert = np.zeros_like(d)
    for a, f, ph in zip(shape.amp, shape.freq, shape.phase):
        pert += np.float32(a) * np.cos((p[0] * f[0] + p[1] * f[1] + p[2] * f[2]) / d_safe + np.float32(ph))
    return box, d / (1.0 + pert)


def _paint(img: np.ndarray, box, alpha: np.ndarray, value) -> None:
    view = img[box]
    view += alpha * (np.asarray(value, dtype=np.float32) - view)


def _soft(ratio: np.ndarray, level: float, radius_mm: float, pv: float) -> np.ndarray:
    # Partial-volume edge about one voxel wide, centred where the mask boundary is.
    return np.clip(0.5 + (level - ratio) / level * radius_mm / pv, 0.0, 1.0).astype(np.float32)


def _paint_tube(img, canvas: _Canvas, cu, cv, a, b, value, z_range=None) -> None:
    """Elliptic cylinder along z with height-dependent centre (cu, cv) and semi-axes (a, b) per slice."""
    w = canvas.axes[2]
    cu, cv, a, b = (np.broadcast_to(np.asarray(t, dtype=np.float32), w.shape) for t in (cu, cv, a, b))
    zs = slice(0, len(w)) if z_range is None else canvas.index_range(2, *z_range)
    if zs.stop <= zs.start:
        return
    pad = canvas.pv * 2
    xs = canvas.index_range(0, float((cu - a)[zs].min()) - pad, float((cu + a)[zs].max()) + pad)
    ys = canvas.index_range(1, float((cv - b)[zs].min()) - pad, float((cv + b)[zs].max()) + pad)
    if xs.stop <= xs.start or ys.stop <= ys.start:
        return
    col = (slice(None), None, None)
    u = (canvas.axes[0][xs][None, None, :] - cu[zs][col]) / a[zs][col]
    v = (canvas.axes[1][ys][None, :, None] - cv[zs][col]) / b[zs][col]
    r = np.sqrt(u * u + v * v)
    alpha = _soft(r, 1.0, float(np.min(np.minimum(a[zs], b[zs]))), canvas.pv)
    _paint(img, (zs, ys, xs), alpha, value)


def _separable_field(rng: np.random.Generator, canvas: _Canvas, n_terms: int, wavelength: tuple[float, float],
                     amplitude: float) -> np.ndarray:
    """Smooth random field as a sum of separable cosine products (one full-size multiply-add per term)."""
    x, y, z = canvas.axes
    out = np.zeros(canvas.grid.shape_zyx, dtype=np.float32)
    for _ in range(n_terms):
        k = 2 * math.pi / rng.uniform(*wavelength, 3)
        ph = rng.uniform(0, 2 * math.pi, 3)
        fx = np.cos(k[0] * x + ph[0]).astype(np.float32)
        fy = np.cos(k[1] * y + ph[1]).astype(np.float32)
        fz = np.cos(k[2] * z + ph[2]).astype(np.float32)
        out += (amplitude / math.sqrt(n_terms)) * (fz[:, None, None] * fy[None, :, None]) * fx[None, None, :]
    return out


def _tissue(name: str, fat_suppressed: bool) -> float:
    return TISSUE[name][1 if fat_suppressed else 0]


def render_case(spec: CaseSpec, timepoint: str, images: bool = True) -> tuple[np.ndarray | None, np.ndarray, list[dict]]:
    """Render one timepoint of a case.

    Args:
      spec: case description from :func:`draw_cohort`.
      timepoint: ``"preRT"``, ``"midRT"`` or ``"preRT_registered"`` (pre-RT
        anatomy on the mid-RT grid).
      images: also render the T2 image (masks alone are much cheaper).

    Returns:
      ``(image, mask, lesions)``: image float32 (z, y, x) in arbitrary T2
      units (or None), mask uint8, and one dict per rendered lesion with
      ``label``, ``voxels``, ``volume_ml``, ``target_volume_ml``,
      ``centroid_zyx`` (voxel) and ``first_voxel`` (flat C-order index).
    """
    if timepoint not in TIMEPOINTS:
        raise ValueError(f"timepoint must be one of {TIMEPOINTS}, got {timepoint!r}")
    mid_anatomy = timepoint == "midRT"
    grid = spec.grids["midRT" if timepoint != "preRT" else "preRT"]
    canvas = _Canvas(grid, spec.frames[timepoint])
    rng = np.random.default_rng([spec.seed, TIMEPOINTS.index(timepoint)])
    fs = spec.fat_suppressed
    mask = np.zeros(grid.shape_zyx, dtype=np.uint8)
    img = _render_anatomy(spec, canvas, rng, mid_anatomy) if images else None

    records = []
    for lesion in spec.lesions:
        volume = lesion.volume_mid_ml if mid_anatomy else lesion.volume_pre_ml
        if volume is None:
            continue
        scale = volume ** (1 / 3)
        box, ratio = _blob_ratio(canvas, lesion.center, lesion.shape.scaled(scale), _MAX_SCALE)
        if box is None:
            continue
        blob, level = _select_voxels(ratio, volume * 1000.0 / grid.voxel_mm3, _MAX_SCALE)
        view = mask[box]
        view[blob] = lesion.label
        if img is not None:
            tissue = "tumour" if lesion.label == LABEL_GTVP else "node"
            value = _tissue(tissue, fs) + lesion.contrast
            texture = ndimage.gaussian_filter(rng.standard_normal(ratio.shape).astype(np.float32), 1.0) * 0.5
            radius = float(lesion.shape.radii.min() * scale)
            _paint(img, box, _soft(ratio, level, radius, canvas.pv), value * (1.0 + texture))
            if lesion.necrotic:
                _paint(img, box, _soft(ratio, level * 0.45, radius * 0.45, canvas.pv), _tissue("necrosis", fs))
        idx = np.nonzero(blob)
        offset = np.array([s.start for s in box])
        coords = np.stack(idx, axis=1) + offset
        voxels = int(coords.shape[0])
        records.append({
            "label": lesion.label,
            "voxels": voxels,
            "volume_ml": voxels * grid.voxel_mm3 / 1000.0,
            "target_volume_ml": float(volume),
            "centroid_zyx": [float(c) for c in coords.mean(axis=0)],
            "first_voxel": int(np.ravel_multi_index(coords.T, grid.shape_zyx).min()),
        })
    n_components = cc3d.connected_components(mask, connectivity=26, return_N=True)[1]
    if n_components != len(records):  # placement guarantees separation; never silently write a wrong table
        raise RuntimeError(f"case {spec.case_id} {timepoint}: {len(records)} lesions drawn but {n_components} "
                           "connected components rendered")
    if img is not None:
        img = _finish_image(img, spec, canvas, rng, registered=timepoint == "preRT_registered")
    # Number lesions in raster order of their first voxel, as connected-component labelling does.
    records.sort(key=lambda r: r["first_voxel"])
    for i, r in enumerate(records, start=1):
        r["lesion"] = i
        del r["first_voxel"]
    return img, mask, records


def _select_voxels(ratio: np.ndarray, n_target: float, scale_max: float) -> tuple[np.ndarray, float]:
    """The ``n_target`` voxels with the smallest shape function, as one 26-connected component."""
    k = max(1, int(round(n_target)))
    flat = ratio.reshape(-1)
    k = min(k, flat.size)
    level = float(np.partition(flat, k - 1)[k - 1])
    level = min(level, scale_max)
    blob = ratio <= level
    if not blob.any():  # lesion smaller than the voxel the centre falls into
        blob = ratio == ratio.min()
        level = float(ratio.min())
    if blob.sum() > 1:
        blob = cc3d.largest_k(blob.view(np.uint8), k=1, connectivity=26).astype(bool)
    return blob, max(level, 1e-3)


def _render_anatomy(spec: CaseSpec, canvas: _Canvas, rng: np.random.Generator, mid: bool) -> np.ndarray:
    fs = spec.fat_suppressed
    body = spec.body
    w = canvas.axes[2]
    img = np.full(canvas.grid.shape_zyx, _tissue("air", fs), dtype=np.float32)
    a, b = _body_axes(body, w, thin=body["thin_mid"] if mid else 1.0)
    _paint_tube(img, canvas, 0.0, 0.0, a, b, _tissue("fat", fs))
    _paint_tube(img, canvas, 0.0, 0.0, a - body["fat"], b - body["fat"], _tissue("muscle", fs))
    # Parapharyngeal fat, vertebra with canal and cord, airway, carotid/jugular vessels.
    for side in (-1, 1):
        _paint_tube(img, canvas, side * 17.0, -0.15 * body["b0"], 6.0, 8.0, _tissue("fat", fs))
        _paint_tube(img, canvas, side * 22.0, -0.05 * body["b0"], 3.5, 3.5, _tissue("vessel", fs))
        jug = _tissue("csf" if body["vessel_bright"] else "vessel", fs)
        _paint_tube(img, canvas, side * 30.0, 0.0, 5.5, 4.5, jug)
    vy = 0.25 * body["b0"]
    _paint_tube(img, canvas, 0.0, vy, 14.0, 12.0, _tissue("vertebra", fs))
    _paint_tube(img, canvas, 0.0, vy + 18.0, 7.0, 6.0, _tissue("csf", fs))
    _paint_tube(img, canvas, 0.0, vy + 18.0, 4.0, 3.5, _tissue("cord", fs))
    for side in (-1, 1):
        _paint_tube(img, canvas, side * (body["a0"] - 18.0), -0.1 * body["b0"], 9.0, 5.5, _tissue("muscle_t2", fs))
    cov = body["coverage"]
    _paint_tube(img, canvas, 0.0, -0.3 * body["b0"], 22.0, 13.0, _tissue("muscle_t2", fs), z_range=(0.2 * cov, cov))
    ra, rb = body["airway"]
    wobble = 1.0 + 0.25 * np.sin(w / 17.0)
    tonsil = 2.5 + 6.0 / (1.0 + np.exp(-(w - 0.15 * cov) / 8.0))
    _paint_tube(img, canvas, 0.0, -0.35 * body["b0"], ra * wobble + tonsil, rb * wobble + tonsil,
                _tissue("mucosa", fs))
    _paint_tube(img, canvas, 0.0, -0.35 * body["b0"], ra * wobble, rb * wobble, _tissue("air", fs))
    for s in spec.structures:
        box, ratio = _blob_ratio(canvas, s.center, s.shape, 1.0)
        if box is not None:
            _paint(img, box, _soft(ratio, 1.0, float(s.shape.radii.min()), canvas.pv), _tissue(s.tissue, fs))
    return img


def _finish_image(img: np.ndarray, spec: CaseSpec, canvas: _Canvas, rng: np.random.Generator,
                  registered: bool) -> np.ndarray:
    img *= 1.0 + _separable_field(rng, canvas, 4, (8.0, 30.0), 0.06)  # tissue texture
    bias = _separable_field(rng, canvas, 2, (250.0, 600.0), 0.25)
    img *= np.exp(bias)
    sigma = np.float32(spec.noise_sigma)
    noise_re = rng.standard_normal(img.shape, dtype=np.float32)
    noise_im = rng.standard_normal(img.shape, dtype=np.float32)
    img += sigma * noise_re
    img *= img
    img += (sigma * noise_im) ** 2
    np.sqrt(img, out=img)  # magnitude of complex Gaussian noise: Rician
    img *= np.float32(INTENSITY_SCALE)
    if registered:
        # Resampling in deformable registration smooths the image slightly.
        img = ndimage.gaussian_filter(img, 0.6)
    return img


# --------------------------------------------------------------------------- writing


COHORT_FILE = "cohort.json"
_PARTIAL_DIR = ".vadice_synth.partial"


def _write_case(spec: CaseSpec, out_dir: Path) -> dict:
    files = source_files(out_dir / str(spec.case_id), spec.case_id)
    grids = {"preRT": spec.grids["preRT"], "midRT": spec.grids["midRT"], "preRT_registered": spec.grids["midRT"]}
    targets = {"preRT": ("preRT_T2", "preRT_mask"), "midRT": ("midRT_T2", "midRT_mask"),
               "preRT_registered": ("preRT_T2_registered", "preRT_mask_registered")}
    lesions = []
    for tp in TIMEPOINTS:
        img, mask, recs = render_case(spec, tp)
        geom = grids[tp].geometry
        # Native scans are stored as integers; the registered (resampled) image as float32.
        if tp == "preRT_registered":
            img_out = img.astype(np.float32)
        else:
            img_out = np.clip(np.rint(img), 0, 32767).astype(np.int16)
        write_nifti(img_out, geom, files[targets[tp][0]])
        write_nifti(mask, geom, files[targets[tp][1]])
        origin = np.array(geom.origin)
        spacing_zyx = np.array(geom.spacing_zyx)
        for r in recs:
            c = np.array(r["centroid_zyx"])
            r["centroid_mm"] = [float(v) for v in origin + (c * spacing_zyx)[::-1]]
            lesions.append({"case": spec.case_id, "timepoint": tp, **r})
    return {
        "case": {
            "id": spec.case_id,
            "fat_suppressed": spec.fat_suppressed,
            "complete_response": spec.complete_response,
            "grids": {k: {"shape_zyx": list(g.shape_zyx), "spacing_xyz": list(g.spacing_xyz),
                          "origin_xyz": list(g.origin_xyz)} for k, g in spec.grids.items()},
        },
        "lesions": lesions,
    }


def generate_cohort(out_dir, n_cases: int, seed: int, size: str = "small", progress: bool = True,
                    workers: int = 1) -> Path:
    """Write a synthetic cohort in the HNTS-MRG 2024 training layout.

    Writes ``OUT_DIR/<id>/preRT/<id>_preRT_{T2,mask}.nii.gz`` and
    ``OUT_DIR/<id>/midRT/<id>_{midRT_T2,midRT_mask,preRT_T2_registered,preRT_mask_registered}.nii.gz``
    plus ``OUT_DIR/cohort.json`` (ground-truth lesion table, written last).
    Every file is written atomically. An interrupted run is resumed: cases
    already finished are kept (their records sit in a hidden folder until the
    table is complete).

    Args:
      out_dir: output folder; must be absent, empty, or an unfinished run with
        the same parameters. A finished run with the same parameters is left
        as it is.
      n_cases, seed, size: see :func:`draw_cohort`.
      progress: show a progress bar.
      workers: cases rendered in parallel threads (numpy and zlib release the GIL).

    Returns:
      ``out_dir`` as a Path.

    Raises:
      FileExistsError: ``out_dir`` holds something else.
      ValueError: bad arguments.
    """
    out_dir = Path(out_dir)
    specs = draw_cohort(n_cases, seed, size)
    params = {"n_cases": int(n_cases), "seed": int(seed), "size": size}
    partial = out_dir / _PARTIAL_DIR
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir}: exists and is not a directory")
        cohort = out_dir / COHORT_FILE
        if cohort.exists():
            try:
                done = json.loads(cohort.read_text())
            except (OSError, ValueError):
                done = {}
            if {k: done.get(k) for k in params} == params:
                return out_dir
            raise FileExistsError(f"{out_dir}: already holds a different cohort ({COHORT_FILE}); choose a new folder")
        if any(out_dir.iterdir()):
            params_file = partial / "params.json"
            if not params_file.exists() or json.loads(params_file.read_text()) != params:
                raise FileExistsError(f"{out_dir}: not empty; choose a new or empty folder")
    partial.mkdir(parents=True, exist_ok=True)
    write_text(partial / "params.json", json.dumps(params))

    def one(spec: CaseSpec) -> dict:
        record_file = partial / f"{spec.case_id}.json"
        if record_file.exists():
            return json.loads(record_file.read_text())
        # A killed run can leave temporary files of an atomic write behind.
        for leftover in (out_dir / str(spec.case_id)).glob("*/.*.part*"):
            leftover.unlink()
        record = _write_case(spec, out_dir)
        write_text(record_file, json.dumps(record))
        return record

    bar = tqdm(total=len(specs), desc="synth", unit="case", disable=not progress)
    records = []
    if workers <= 1:
        for spec in specs:
            records.append(one(spec))
            bar.update()
    else:
        with ThreadPoolExecutor(max_workers=int(workers)) as pool:
            for rec in pool.map(one, specs):
                records.append(rec)
                bar.update()
    bar.close()

    table = {
        "generator": "vadice.data.synth",
        **params,
        "layout": "HNTS-MRG 2024 training",
        "labels": {"background": 0, "GTVp": 1, "GTVn": 2},
        "volume_unit": "ml",
        "centroid_zyx": "voxel indices (z, y, x) of the file's grid",
        "centroid_mm": "physical (x, y, z) mm, ITK/LPS",
        "cases": [r["case"] for r in records],
        "lesions": [lesion for r in records for lesion in r["lesions"]],
    }
    write_text(out_dir / COHORT_FILE, json.dumps(table, indent=1))
    shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
