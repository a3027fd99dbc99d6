"""Drawing a whole cohort: case ids, one independent random stream per case, the profile's case drawer."""

from __future__ import annotations

import numpy as np

from vadice.data.synth import clinical
from vadice.data.synth.draw import CaseSpec, _check_size, draw_case_v1

# ``v1``: the generator of the shipped demo weights and of docs/evidence.md; ``clinical``: look-alike nodes
# that anatomy and the imaging criteria of nodal metastasis tell apart (docs/data.md).
PROFILES = ("v1", "clinical")


def _draw_case_of(profile: str):
    if profile == "v1":
        return draw_case_v1
    if profile == "clinical":
        return clinical.draw_case
    raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


def draw_cohort(n_cases: int, seed: int, size: str = "small", profile: str = "v1") -> list[CaseSpec]:
    """Draw the description of a cohort (no rendering; cheap).

    Args:
      n_cases: number of patients (>= 1).
      seed: any non-negative integer; the same seed always gives the same cohort.
      size: ``"small"``, ``"neck"`` or ``"full"`` (grids only; lesion volumes are the same).
      profile: ``"v1"`` (default; the cohort of the shipped demo weights and docs/evidence.md) or
        ``"clinical"`` (nodes after the imaging criteria of nodal metastasis, :mod:`.clinical`).

    Returns:
      one :class:`CaseSpec` per patient, sorted by case id. Case ids are
      distinct, non-contiguous integers from 2 upwards, as in HNTS-MRG.

    Raises:
      ValueError: bad count, seed, size or profile.
    """
    if int(n_cases) < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _check_size(size)
    draw_case = _draw_case_of(profile)
    root = np.random.SeedSequence(int(seed))
    id_seq, *case_seqs = root.spawn(n_cases + 1)
    pool = np.arange(2, 2 + max(200, 2 * n_cases))
    ids = np.sort(np.random.default_rng(id_seq).choice(pool, n_cases, replace=False))
    return [draw_case(int(cid), np.random.default_rng(s), size) for cid, s in zip(ids, case_seqs)]


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
