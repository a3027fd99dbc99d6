"""Drawing a case: a pure description in physical millimetres (grids, body, anatomy, lesions), no voxels."""


from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vadice.io import Geometry

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


@dataclass(frozen=True)
class Look:
    """What a structure is, where, and the imaging cues it carries (recorded in the audit of ``cohort.json``).

    ``texture``, ``necrosis`` and ``hilum`` also say how it is painted: amplitude of its smoothed-noise
    texture (0: homogeneous), radius of a bright necrotic core and of an eccentric fatty hilum as a fraction
    of the structure's own radii (0: none), at the given relative T2 signals.
    """

    kind: str  # primary, metastatic_node, normal_node, reactive_node, parotid_gland, submandibular_gland, thyroid
    side: int = 0  # patient side: +1 left (+x in LPS), -1 right, 0 midline
    level: str | None = None  # cervical nodal level I..V (Som et al. 1999)
    texture: float = 0.0
    necrosis: float = 0.0
    necrosis_signal: float = 0.0
    hilum: float = 0.0
    hilum_offset: float = 0.0  # hilum centre along the short axis, fraction of the short semi-axis
    hilum_signal: float = 0.0
    irregular: bool = False


@dataclass
class LesionSpec:
    label: int
    center: np.ndarray  # (3,) mm, patient frame (x, y, z)
    shape: BlobShape  # nominal shape for 1 ml; scaled per target volume
    volume_pre_ml: float
    volume_mid_ml: float | None  # None: gone at mid-RT
    contrast: float  # per-lesion offset of the mean signal
    necrotic: bool  # v1 necrosis (core at 0.45 of the radius); the clinical profile says it in ``look``
    look: Look | None = None  # None: the v1 rendering (texture 0.5, necrosis as ``necrotic``)


@dataclass
class Structure:
    """Image-only structure (no label): gland, thyroid or lymph node (painted plain unless ``look`` says more)."""

    tissue: str
    center: np.ndarray
    shape: BlobShape
    look: Look | None = None


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
    primary_side: int = 0  # clinical profile: side of the primary (+1 left, -1 right); v1: 0 (not drawn)


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


def draw_frame(case_id: int, rng: np.random.Generator, size: str, fat_suppressed_share: float) -> CaseSpec:
    """Grids, patient frames and body outline of one case (no structures, no lesions yet)."""
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
        fat_suppressed=bool(rng.random() < fat_suppressed_share),
        complete_response=bool(rng.random() < 0.07),
        grids={"preRT": grid_pre, "midRT": grid_mid},
        frames=frames,
        body=body,
        structures=[],
        noise_sigma=float(rng.uniform(0.025, 0.05)),
    )
    return spec


def draw_case_v1(case_id: int, rng: np.random.Generator, size: str) -> CaseSpec:
    """The ``v1`` profile: look-alike normal nodes share the metastatic nodes' signal, size and place."""
    spec = draw_frame(case_id, rng, size, 0.4)
    _draw_structures(spec, rng)
    place_lesions(spec, rng, lesion_drafts(rng), _V1Lesions())
    return spec


def draw_glands(spec: CaseSpec, rng: np.random.Generator) -> None:
    """Submandibular and parotid glands and thyroid lobes, both sides, at their anatomical places."""
    cov, b0 = spec.body["coverage"], spec.body["b0"]
    out = spec.structures
    for side in (-1, 1):
        out.append(Structure("gland", np.array([side * rng.uniform(30, 38), -0.35 * b0, 0.30 * cov]),
                             _blob_shape(rng, rng.uniform(6, 10), axes=(1.3, 0.9, 0.85)),
                             Look("submandibular_gland", side)))
        out.append(Structure("gland", np.array([side * rng.uniform(42, 50), 0.05 * b0, 0.42 * cov]),
                             _blob_shape(rng, rng.uniform(12, 20), axes=(0.8, 1.2, 1.05)), Look("parotid_gland", side)))
        out.append(Structure("thyroid", np.array([side * rng.uniform(12, 16), -0.45 * b0, -0.25 * cov]),
                             _blob_shape(rng, rng.uniform(4, 8), axes=(0.8, 0.65, 1.9)), Look("thyroid", side)))


def _draw_structures(spec: CaseSpec, rng: np.random.Generator) -> None:
    draw_glands(spec, rng)
    cov, b0 = spec.body["coverage"], spec.body["b0"]
    # Normal lymph nodes: same signal as metastatic ones, unlabelled (false-positive bait).
    for _ in range(int(rng.integers(3, 9))):
        side = 1 if rng.random() < 0.5 else -1
        centre = np.array([side * rng.uniform(20, 45), rng.uniform(-0.3, 0.45) * b0,
                           rng.uniform(-0.35, 0.38) * cov])
        spec.structures.append(Structure("normal_node", centre,
                                         _blob_shape(rng, rng.uniform(0.15, 1.2), elongation=0.45),
                                         Look("normal_node", side)))


def lesion_drafts(rng: np.random.Generator) -> list[tuple[int, float]]:
    """``(label, pre-RT volume in ml)`` of one case's lesions, after the published HNTS-MRG statistics."""
    drafts: list[tuple[int, float]] = []
    if rng.random() < 0.90:
        drafts.append((LABEL_GTVP, _lognormal(rng, 8.4, 0.97, 0.5, 50.0)))
    if rng.random() < 0.92:
        counts = np.array([w for _, w in NODE_COUNTS], dtype=float)
        n = NODE_COUNTS[int(rng.choice(len(NODE_COUNTS), p=counts / counts.sum()))][0]
        if n >= 10:
            n = int(rng.integers(10, 22))
        drafts += [(LABEL_GTVN, _lognormal(rng, 2.65, 1.9, 0.1, 60.0)) for _ in range(n)]
    return drafts


class _V1Lesions:
    """Placement policy of the ``v1`` profile (see :func:`place_lesions` for the hooks)."""

    def plan(self, rng: np.random.Generator, spec: CaseSpec, label: int, v_pre: float):
        return _blob_shape(rng, 1.0, elongation=0.3 if label == LABEL_GTVN else 0.35), None

    def position(self, rng, spec: CaseSpec, label: int, extra, attempt: int) -> np.ndarray:
        return _draw_position(rng, spec, label, spec.body["coverage"])

    def clear(self, spec: CaseSpec, label: int, centre: np.ndarray, r_bound: float, attempt: int) -> bool:
        return True

    def lesion(self, rng, label: int, v_pre: float, extra) -> dict:
        return {"contrast": float(rng.normal(0.0, 0.06)),
                "necrotic": bool(label == LABEL_GTVN and v_pre > 3.0 and rng.random() < 0.4)}


def placement_margin(spec: CaseSpec) -> float:
    """Gap (mm) kept between bounding spheres: one voxel diagonal on every grid plus the registration shift."""
    return 1.05 * max(g.voxel_diagonal for g in spec.grids.values()) + 2.5


def place_lesions(spec: CaseSpec, rng: np.random.Generator, drafts: list[tuple[int, float]],
                  policy) -> list[tuple[np.ndarray, float]]:
    """Place the drafted lesions in ``spec`` so that no two can touch on any grid.

    Args:
      spec: the case; its ``lesions`` list is extended.
      rng: the case's generator.
      drafts: ``(label, pre-RT volume ml)`` from :func:`lesion_drafts`.
      policy: a profile's hooks: ``plan(rng, spec, label, v_pre) -> (nominal 1 ml BlobShape, extra)``,
        ``position(rng, spec, label, extra, attempt) -> centre``, ``clear(spec, label, centre, r_bound,
        attempt) -> bool`` (a profile's own exclusion zones) and ``lesion(rng, label, v_pre, extra) -> dict`` (the
        remaining :class:`LesionSpec` fields).

    Returns:
      ``(centre, bounding radius mm)`` of every placed lesion.
    """
    placed: list[tuple[np.ndarray, float]] = []  # (centre, bounding radius)
    margin = placement_margin(spec)
    z_lo, z_hi = shared_slab(spec)
    # Primary tumour first (its site is the most constrained), then nodes, largest first.
    for label, v_pre in sorted(drafts, key=lambda d: (d[0], -d[1])):
        v_mid = _mid_volume(rng, label, v_pre, spec.complete_response)
        v_max = max(v_pre, v_mid or 0.0)
        shape, extra = policy.plan(rng, spec, label, v_pre)
        for attempt in range(300):
            if attempt and attempt % 100 == 0:
                v_pre, v_mid = v_pre * 0.6, (None if v_mid is None else v_mid * 0.6)
                v_max = max(v_pre, v_mid or 0.0)
            r_bound = shape.max_radius(_MAX_SCALE * v_max ** (1 / 3))
            centre = policy.position(rng, spec, label, extra, attempt)
            a, b = _body_axes(spec.body, np.array([centre[2]]), thin=spec.body["thin_mid"])
            inside = (centre[0] / max(a[0] - r_bound * 0.5, 5)) ** 2 + (centre[1] / max(b[0] - r_bound * 0.5, 5)) ** 2
            if inside > 1.0 or not (z_lo + r_bound <= centre[2] <= z_hi - r_bound):
                continue
            if not policy.clear(spec, label, centre, r_bound, attempt):
                continue
            if all(np.linalg.norm(centre - c) > r_bound + r + margin for c, r in placed):
                placed.append((centre, r_bound))
                spec.lesions.append(LesionSpec(
                    label=label, center=centre, shape=shape, volume_pre_ml=float(v_pre),
                    volume_mid_ml=None if v_mid is None else float(v_mid), **policy.lesion(rng, label, v_pre, extra)))
                break
    return placed


def shared_slab(spec: CaseSpec) -> tuple[float, float]:
    """Patient-frame z range (mm) seen by both the pre-RT and the mid-RT grid, 1.5 mm inside."""
    z_lo = max(spec.grids[k].extent(2)[0] - spec.frames[k][2] for k in ("preRT", "midRT")) + 1.5
    z_hi = min(spec.grids[k].extent(2)[1] - spec.frames[k][2] for k in ("preRT", "midRT")) - 1.5
    return z_lo, z_hi


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
