"""The ``clinical`` profile: lymph nodes drawn after the imaging criteria of cervical nodal metastasis.

Sources (docs/data.md gives the full references): short-axis size (van den Brekel et al. 1990), long/short
axis ratio (Steinkamp et al. 1995, "Solbiati index": metastatic nodes round, ratio < 2; normal nodes oval,
ratio > 2), the fatty hilum of normal nodes, central necrosis (King et al. 2004: seen on MRI even in small
nodes), irregular margins of extracapsular spread, nodal levels I-V (Som et al. 1999; Grégoire et al. 2014)
and drainage mostly to ipsilateral levels II-III. Lesion volumes and counts are the published HNTS-MRG ones
(:func:`.draw.lesion_drafts`); only where nodes sit, their shape and their signal change.

Every cue strength is a field of :class:`ClinicalCues`, the one place a pilot tunes them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from vadice.data.synth.draw import (LABEL_GTVP, TISSUE, BlobShape, CaseSpec, Look, Structure, _blob_shape,
                                    _body_axes, _lognormal, _random_rotation, draw_frame, draw_glands, lesion_drafts,
                                    place_lesions, placement_margin, shared_slab)

LEVELS = ("I", "II", "III", "IV", "V")
# Per level: |x| range (mm off the midline), y range (fraction of the neck's antero-posterior semi-axis b0,
# negative anterior) and z range (fraction of the scanned coverage, positive cranial), in the patient frame of
# draw.py (airway at y = -0.35 b0, vertebra at +0.25 b0, jaw at z ~ +0.22 coverage, shoulders at -0.32).
_LEVEL_BOX = {
    "I": ((5.0, 26.0), (-0.85, -0.60), (0.18, 0.34)),  # submental / submandibular
    "II": ((22.0, 40.0), (-0.25, 0.15), (0.08, 0.32)),  # upper jugular
    "III": ((22.0, 38.0), (-0.30, 0.05), (-0.10, 0.10)),  # mid jugular
    "IV": ((22.0, 38.0), (-0.30, 0.05), (-0.32, -0.12)),  # lower jugular
    "V": ((32.0, 46.0), (0.15, 0.45), (-0.30, 0.25)),  # posterior triangle
}


@dataclass(frozen=True)
class ClinicalCues:
    """Cue strengths of the ``clinical`` profile (starting values documented in docs/data.md).

    Shares are probabilities per node; ``(median, sigma)`` pairs are log-normal; ratios are long/short axis.
    Signals are relative T2 without fat suppression (muscle 0.33, fat 0.85: :data:`.draw.TISSUE`).
    """

    fat_suppressed_share: float = 0.0  # the hilum test needs fat bright: non-fat-suppressed T2 throughout
    # Normal (unlabelled) nodes: oval, short axis mostly < 10 mm, fatty hilum, homogeneous, bilateral I-V.
    normal_nodes_per_case: tuple[int, int] = (6, 12)  # inclusive range
    normal_short_axis_mm: tuple[float, float] = (6.0, 0.25)  # clipped to 3-9.5 mm
    normal_ratio: tuple[float, float] = (2.6, 0.2)  # clipped to 1.7-4.5
    normal_level_weights: tuple[float, ...] = (0.2, 0.3, 0.2, 0.1, 0.2)  # I..V
    hilum_absent_share: float = 0.2  # normal nodes whose hilum is not seen
    reactive_share: float = 0.15  # larger reactive nodes, hilum kept
    reactive_short_axis_mm: tuple[float, float] = (8.0, 12.0)  # uniform
    reactive_ratio: tuple[float, float] = (2.3, 0.12)  # clipped to 1.7-3.0
    normal_texture: float = 0.1  # homogeneous (v1 lesions: 0.5)
    hilum_size: float = 0.6  # hilum radii as a fraction of the node's
    hilum_offset: float = 0.7  # hilum centre along the short axis, fraction of the short semi-axis
    hilum_signal: float = TISSUE["fat"][0]
    # Metastatic nodes: round, no hilum, heterogeneous, necrosis growing with size, some irregular margins.
    ipsilateral_share: float = 0.85  # nodes on the primary's side
    level_weights: tuple[float, ...] = (0.10, 0.45, 0.25, 0.10, 0.10)  # I..V, first node of a cluster
    cluster_share: float = 0.5  # a further node joins the level and side of a node already placed
    round_ratio: tuple[float, float] = (1.35, 0.15)  # clipped to 1.0-2.2
    signless_share_small: float = 0.3  # nodes < 1 ml with no sign at all (oval, homogeneous, no necrosis)
    necrosis_by_volume: tuple[tuple[float, float], ...] = ((1.0, 0.2), (5.0, 0.4), (math.inf, 0.65))
    necrosis_core: float = 0.5  # core radii as a fraction of the node's
    necrosis_signal: float = TISSUE["necrosis"][0]
    metastatic_texture: float = 0.8  # heterogeneous (v1 lesions: 0.5)
    irregular_share: float = 0.25  # extracapsular spread: irregular margin
    irregular_roughness: float = 0.22
    regular_roughness: float = 0.04
    normal_node_attempts: int = 200  # placement tries before a normal node is left out


CLINICAL = ClinicalCues()


def draw_case(case_id: int, rng: np.random.Generator, size: str, cues: ClinicalCues = CLINICAL) -> CaseSpec:
    """One case of the ``clinical`` profile (same grids, body and lesion volumes as ``v1``).

    Args:
      case_id: HNTS-MRG id.
      rng: the case's own generator (cases do not depend on one another).
      size: ``small``, ``neck`` or ``full``.
      cues: cue strengths.

    Returns:
      the case description; its structures and lesions carry a :class:`.draw.Look`.
    """
    spec = draw_frame(case_id, rng, size, cues.fat_suppressed_share)
    draw_glands(spec, rng)
    primary_side = 1 if rng.random() < 0.5 else -1
    spec.primary_side = primary_side
    placed = place_lesions(spec, rng, lesion_drafts(rng), _ClinicalLesions(cues, primary_side))
    _draw_normal_nodes(spec, rng, cues, placed)
    return spec


def _node_shape(rng: np.random.Generator, ratio: float, volume_ml: float, roughness: float) -> BlobShape:
    # Long axis = ratio x short axis; the third axis lies between them, as in an oval node.
    axes = (ratio, 1.0, float(rng.uniform(1.0, 1.25)))
    shape = _blob_shape(rng, volume_ml, roughness=roughness, axes=axes)
    return BlobShape(shape.radii, _random_rotation(rng), shape.amp, shape.freq, shape.phase)


def _in_box(rng: np.random.Generator, spec: CaseSpec, level: str, side: int) -> np.ndarray:
    (x0, x1), (y0, y1), (z0, z1) = _LEVEL_BOX[level]
    b0, cov = spec.body["b0"], spec.body["coverage"]
    return np.array([side * rng.uniform(x0, x1), rng.uniform(y0, y1) * b0, rng.uniform(z0, z1) * cov])


def _clear_of_bright(spec: CaseSpec, centre: np.ndarray, r: float) -> bool:
    """Whether a node of bounding radius ``r`` stays in muscle, off the bright neighbours a hilum test would see.

    Bright neighbours: subcutaneous fat, parapharyngeal fat, the jugular vein where it is bright (flow), the
    airway with its mucosa, the spinal canal. Partial volume with them would put fat-like voxels on a node's rim.
    """
    body = spec.body
    a, b = _body_axes(body, np.array([centre[2]]), thin=body["thin_mid"])
    x, y = abs(float(centre[0])), float(centre[1])
    inner_a, inner_b = a[0] - body["fat"] - r, b[0] - body["fat"] - r
    if inner_a <= 0 or inner_b <= 0 or (x / inner_a) ** 2 + (y / inner_b) ** 2 > 1.0:
        return False
    b0 = body["b0"]
    ra, rb = body["airway"]
    obstacles = [(17.0, -0.15 * b0, 6.0, 8.0), (0.0, -0.35 * b0, ra + 9.0, rb + 9.0), (0.0, 0.25 * b0 + 18.0, 7.0, 6.0)]
    if body["vessel_bright"]:  # a dark jugular vein only darkens a rim, which the hilum test does not look for
        obstacles.append((30.0, 0.0, 5.5, 4.5))
    return all(((x - cx) / (ax + r)) ** 2 + ((y - cy) / (ay + r)) ** 2 > 1.0 for cx, cy, ax, ay in obstacles)


class _ClinicalLesions:
    """Placement policy of the ``clinical`` profile for :func:`.draw.place_lesions`."""

    def __init__(self, cues: ClinicalCues, primary_side: int):
        self.cues = cues
        self.primary_side = primary_side
        self.nodes: list[tuple[str, int]] = []  # (level, side) of the nodes planned so far
        self.level: str | None = None  # level of the last position drawn

    def plan(self, rng: np.random.Generator, spec: CaseSpec, label: int, v_pre: float):
        c = self.cues
        if label == LABEL_GTVP:
            return _blob_shape(rng, 1.0, elongation=0.35), Look("primary", self.primary_side, texture=0.5)
        if self.nodes and rng.random() < c.cluster_share:
            level, side = self.nodes[int(rng.integers(len(self.nodes)))]
        else:
            side = self.primary_side if rng.random() < c.ipsilateral_share else -self.primary_side
            level = LEVELS[int(rng.choice(len(LEVELS), p=np.array(c.level_weights) / sum(c.level_weights)))]
        self.nodes.append((level, side))
        if v_pre < 1.0 and rng.random() < c.signless_share_small:
            ratio = _lognormal(rng, *c.normal_ratio, 1.7, 4.5)
            look = Look("metastatic_node", side, level, texture=c.normal_texture)
            return _node_shape(rng, ratio, 1.0, c.regular_roughness), look
        ratio = _lognormal(rng, *c.round_ratio, 1.0, 2.2)
        p_necrosis = next(p for v_max, p in c.necrosis_by_volume if v_pre < v_max)
        necrosis = c.necrosis_core if rng.random() < p_necrosis else 0.0
        irregular = bool(rng.random() < c.irregular_share)
        look = Look("metastatic_node", side, level, texture=c.metastatic_texture, necrosis=necrosis,
                    necrosis_signal=c.necrosis_signal, irregular=irregular)
        return _node_shape(rng, ratio, 1.0, c.irregular_roughness if irregular else c.regular_roughness), look

    def position(self, rng: np.random.Generator, spec: CaseSpec, label: int, look: Look, attempt: int) -> np.ndarray:
        if label == LABEL_GTVP:
            # Oro-/hypopharynx, lateralised to its side of the midline.
            b0, cov = spec.body["b0"], spec.body["coverage"]
            return np.array([look.side * rng.uniform(3.0, 12.0), -0.35 * b0 + rng.uniform(-4, 14),
                             rng.uniform(-0.15, 0.38) * cov])
        # A level too crowded or too small for a large node gives way before place_lesions starts shrinking
        # nodes (every 100 tries), so that the published volumes stay: a neighbouring level on the same side,
        # then anywhere on that side (the v1 box), recorded as level None.
        level = look.level
        if attempt % 100 >= 70:
            b0, cov = spec.body["b0"], spec.body["coverage"]
            self.level = None
            return np.array([look.side * rng.uniform(20, 48), rng.uniform(-0.4, 0.45) * b0,
                             rng.uniform(-0.35, 0.38) * cov])
        if attempt % 100 >= 40:
            i = LEVELS.index(level) + int(rng.choice((-1, 1)))
            level = LEVELS[min(max(i, 0), len(LEVELS) - 1)]
        self.level = level  # the audit records where the node went
        return _in_box(rng, spec, level, look.side)

    def clear(self, spec: CaseSpec, label: int, centre: np.ndarray, r_bound: float, attempt: int) -> bool:
        # Nodes keep off bright fat and vessels while they can; the largest ones may have to lean on them.
        return label == LABEL_GTVP or attempt % 100 >= 40 or _clear_of_bright(spec, centre, r_bound)

    def lesion(self, rng: np.random.Generator, label: int, v_pre: float, look: Look) -> dict:
        if label != LABEL_GTVP:
            look = dataclasses.replace(look, level=self.level)
        return {"contrast": float(rng.normal(0.0, 0.06)), "necrotic": look.necrosis > 0, "look": look}


def _outside(structure: Structure, point: np.ndarray, distance: float) -> bool:
    """Whether ``point`` is more than ``distance`` mm off ``structure`` (its ellipsoid, bumps included, grown by
    ``distance`` along every axis holds all points that close): tighter than a bounding sphere for a long gland."""
    shape = structure.shape
    local = shape.rotation.T @ (point - structure.center)
    reach = shape.radii * (1.0 + float(np.abs(shape.amp).sum())) + distance
    return float(np.sum((local / reach) ** 2)) > 1.0


def _draw_normal_nodes(spec: CaseSpec, rng: np.random.Generator, cues: ClinicalCues,
                       placed: list[tuple[np.ndarray, float]]) -> None:
    """Unlabelled normal and reactive nodes, bilateral in levels I-V, kept apart from lesions and each other."""
    margin = placement_margin(spec)
    gap = spec.grids["preRT"].voxel_diagonal
    z_lo, z_hi = shared_slab(spec)
    taken = list(placed)
    weights = np.array(cues.normal_level_weights) / sum(cues.normal_level_weights)
    lo, hi = cues.normal_nodes_per_case
    for _ in range(int(rng.integers(lo, hi + 1))):
        side = 1 if rng.random() < 0.5 else -1
        level = LEVELS[int(rng.choice(len(LEVELS), p=weights))]
        if rng.random() < cues.reactive_share:
            kind, hilum = "reactive_node", True
            short = float(rng.uniform(*cues.reactive_short_axis_mm))
            ratio = _lognormal(rng, *cues.reactive_ratio, 1.7, 3.0)
        else:
            kind, hilum = "normal_node", bool(rng.random() >= cues.hilum_absent_share)
            short = _lognormal(rng, *cues.normal_short_axis_mm, 3.0, 9.5)
            ratio = _lognormal(rng, *cues.normal_ratio, 1.7, 4.5)
        shape = _node_shape(rng, ratio, 1.0, cues.regular_roughness)
        shape = shape.scaled(short / 2.0 / float(shape.radii[1]))
        look = Look(kind, side, level, texture=cues.normal_texture,
                    hilum=cues.hilum_size if hilum else 0.0, hilum_offset=cues.hilum_offset,
                    hilum_signal=cues.hilum_signal if not spec.fat_suppressed else TISSUE["fat"][1])
        r_bound = shape.max_radius()  # painted at its own size (lesions alone are cut up to _MAX_SCALE)
        for attempt in range(cues.normal_node_attempts):
            if attempt and attempt % 50 == 0:  # a crowded level: try another one
                level = LEVELS[int(rng.choice(len(LEVELS), p=weights))]
                look = dataclasses.replace(look, level=level)
            centre = _in_box(rng, spec, level, side)
            if not (z_lo + r_bound <= centre[2] <= z_hi - r_bound) or not _clear_of_bright(spec, centre, r_bound):
                continue
            # Off the lesions by the lesions' own margin; off other structures by a voxel, so that every
            # structure keeps its own voxels in the audit map.
            if all(np.linalg.norm(centre - c) > r_bound + r + margin for c, r in taken) and all(
                    _outside(s, centre, r_bound + gap) for s in spec.structures):
                taken.append((centre, r_bound))
                spec.structures.append(Structure("normal_node", centre, shape, look))
                break
