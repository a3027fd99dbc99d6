"""Rendering a drawn case onto a grid: T2 intensities, partial volume, bias field, Rician noise, label masks."""

from __future__ import annotations

import math

import cc3d
import numpy as np
from scipy import ndimage

from vadice.data.synth.draw import (_MAX_SCALE, INTENSITY_SCALE, LABEL_GTVP, TIMEPOINTS, TISSUE, BlobShape, CaseSpec,
                                    Grid, LesionSpec, Look, _body_axes)


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


def _frame_coords(canvas: _Canvas, box, centre: np.ndarray, rotation: np.ndarray, radii) -> list[np.ndarray]:
    """Voxel positions inside ``box`` along the three axes of an ellipsoid, in units of its radii."""
    sz, sy, sx = box
    dx = canvas.axes[0][sx] - centre[0]
    dy = canvas.axes[1][sy] - centre[1]
    dz = canvas.axes[2][sz] - centre[2]
    return [(dz[:, None, None] * rotation[2, i] + dy[None, :, None] * rotation[1, i] + dx[None, None, :] * rotation[0, i])
            / np.float32(radii[i]) for i in range(3)]


def _blob_ratio(canvas: _Canvas, centre: np.ndarray, shape: BlobShape, scale_max: float):
    """Shape function of a blob inside its bounding box: voxel belongs to the blob at scale s iff ratio <= s."""
    reach = shape.max_radius(scale_max) + canvas.grid.voxel_diagonal
    box = canvas.box(centre - reach, centre + reach)
    if box is None:
        return None, None
    p = _frame_coords(canvas, box, centre, shape.rotation, shape.radii)
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
    for lesion, volume, shape, box, ratio, blob, level in _lesion_blobs(spec, canvas, mid_anatomy):
        view = mask[box]
        view[blob] = lesion.label
        if img is not None:
            tissue = "tumour" if lesion.label == LABEL_GTVP else "node"
            value = _tissue(tissue, fs) + lesion.contrast
            _paint_look(img, canvas, rng, box, ratio, level, lesion.center, shape, value, lesion_look(lesion, fs))
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


def _lesion_blobs(spec: CaseSpec, canvas: _Canvas, mid: bool):
    """Per lesion present at this timepoint: ``(lesion, volume ml, shape at that volume, box, ratio, blob, level)``."""
    for lesion in spec.lesions:
        volume = lesion.volume_mid_ml if mid else lesion.volume_pre_ml
        if volume is None:
            continue
        shape = lesion.shape.scaled(volume ** (1 / 3))
        box, ratio = _blob_ratio(canvas, lesion.center, shape, _MAX_SCALE)
        if box is None:
            continue
        blob, level = _select_voxels(ratio, volume * 1000.0 / canvas.grid.voxel_mm3, _MAX_SCALE)
        yield lesion, volume, shape, box, ratio, blob, level


def lesion_look(lesion: LesionSpec, fat_suppressed: bool) -> Look:
    """The look a lesion is painted with: its own (clinical profile) or v1's (texture 0.5; necrosis of large
    nodes as a core at 0.45 of the radius), with the side of the midline its centre lies on."""
    if lesion.look is not None:
        return lesion.look
    return Look("primary" if lesion.label == LABEL_GTVP else "metastatic_node", int(np.sign(lesion.center[0])),
                texture=0.5, necrosis=0.45 if lesion.necrotic else 0.0,
                necrosis_signal=_tissue("necrosis", fat_suppressed))


def _paint_look(img: np.ndarray, canvas: _Canvas, rng: np.random.Generator, box, ratio: np.ndarray, level: float,
                centre: np.ndarray, shape: BlobShape, value: float, look: Look) -> None:
    """Paint a blob (voxels with ``ratio <= level``) as ``look`` says: textured signal, fatty hilum, necrotic core."""
    radius = float(shape.radii.min())
    alpha = _soft(ratio, level, radius, canvas.pv)
    if look.texture:
        texture = ndimage.gaussian_filter(rng.standard_normal(ratio.shape).astype(np.float32), 1.0) * look.texture
        value = value * (1.0 + texture)
    _paint(img, box, alpha, value)
    if look.hilum:
        # Eccentric, at the node's surface along its short axis: fat entering the node at the hilum.
        radii = shape.radii * level
        centre_h = centre + shape.rotation[:, 1] * (look.hilum_offset * radii[1])
        p = _frame_coords(canvas, box, centre_h, shape.rotation, radii * look.hilum)
        r_h = np.sqrt(p[0] ** 2 + p[1] ** 2 + p[2] ** 2)
        _paint(img, box, _soft(r_h, 1.0, float(radii.min() * look.hilum), canvas.pv) * alpha, look.hilum_signal)
    if look.necrosis:
        _paint(img, box, _soft(ratio, level * look.necrosis, radius * look.necrosis, canvas.pv), look.necrosis_signal)


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


def _pharynx(body: dict, w: np.ndarray):
    """``(centre y, a, b)`` per height ``w`` of the mucosa with its tonsillar widening, then of the airway inside."""
    ra, rb = body["airway"]
    wobble = 1.0 + 0.25 * np.sin(w / 17.0)
    tonsil = 2.5 + 6.0 / (1.0 + np.exp(-(w - 0.15 * body["coverage"]) / 8.0))
    cv = -0.35 * body["b0"]
    return (cv, ra * wobble + tonsil, rb * wobble + tonsil), (cv, ra * wobble, rb * wobble)


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
    (cv, outer_a, outer_b), (_, air_a, air_b) = _pharynx(body, w)
    _paint_tube(img, canvas, 0.0, cv, outer_a, outer_b, _tissue("mucosa", fs))
    _paint_tube(img, canvas, 0.0, cv, air_a, air_b, _tissue("air", fs))
    for s in spec.structures:
        box, ratio = _blob_ratio(canvas, s.center, s.shape, 1.0)
        if box is not None:
            _paint_look(img, canvas, rng, box, ratio, 1.0, s.center, s.shape, _tissue(s.tissue, fs), s.look or Look(""))
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


def render_audit(spec: CaseSpec) -> tuple[np.ndarray, list[int | None]]:
    """Structure id per voxel of the pre-RT grid, for measuring cues without the generator.

    Ids: lesions ``1..L`` in ``spec.lesions`` order (their voxels are exactly the mask's), unlabelled
    structures ``L+1..L+S`` in ``spec.structures`` order (voxels inside their surface), then the pharyngeal
    mucosa with its tonsils ``L+S+1`` (the rim around the airway). Later ones cover earlier ones where they
    overlap: mucosa first, lesions last, as the image is painted.

    Args:
      spec: case description.

    Returns:
      ``(ids, lesion_numbers)``: uint16 array (z, y, x) and, per lesion of ``spec.lesions``, its number in the
      pre-RT mask (raster order of first voxel, as in ``cohort.json``) or None when it is not on the grid.
    """
    grid = spec.grids["preRT"]
    canvas = _Canvas(grid, spec.frames["preRT"])
    n_lesions, n_structures = len(spec.lesions), len(spec.structures)
    # The mucosa tube minus the airway, drawn as opacity so that its edge is where the image's is.
    rim = np.zeros(grid.shape_zyx, dtype=np.float32)
    (cv, outer_a, outer_b), (_, air_a, air_b) = _pharynx(spec.body, canvas.axes[2])
    _paint_tube(rim, canvas, 0.0, cv, outer_a, outer_b, 1.0)
    _paint_tube(rim, canvas, 0.0, cv, air_a, air_b, 0.0)
    ids = np.where(rim >= 0.5, n_lesions + n_structures + 1, 0).astype(np.uint16)
    for j, s in enumerate(spec.structures):
        box, ratio = _blob_ratio(canvas, s.center, s.shape, 1.0)
        if box is not None:
            ids[box][ratio <= 1.0] = n_lesions + 1 + j
    first_voxels: dict[int, int] = {}
    index = {id(lesion): i for i, lesion in enumerate(spec.lesions)}
    for lesion, _, _, box, _, blob, _ in _lesion_blobs(spec, canvas, mid=False):
        i = index[id(lesion)]
        ids[box][blob] = i + 1
        coords = np.stack(np.nonzero(blob), axis=1) + np.array([b.start for b in box])
        first_voxels[i] = int(np.ravel_multi_index(coords.T, grid.shape_zyx).min())
    numbers: list[int | None] = [None] * n_lesions
    for k, i in enumerate(sorted(first_voxels, key=first_voxels.get), start=1):
        numbers[i] = k
    return ids, numbers
