"""Shared fixtures.

``small_cohort``: a 5-case synthetic HNTS-MRG cohort (size "small", seed 1: two empty mid-RT masks, one case without GTVp,
one without nodes, mixed fat suppression, one case whose pre-RT and mid-RT spacings differ), built once per test session
(per xdist worker). Treat it as read-only; copy it (``shutil.copytree``) before changing anything.

``hntsmrg_case2``: the real pre-RT and mid-RT masks of HNTS-MRG 2024 training patient 2, kept in the repository
(``tests/data/hntsmrg_case2``, CC BY 4.0, see its README.md) so that no test depends on files outside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SMALL_COHORT_CASES = 5
SMALL_COHORT_SEED = 1
HNTSMRG_CASE2 = Path(__file__).parent / "data" / "hntsmrg_case2"


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """Folder ``<id>/preRT``, ``<id>/midRT`` + ``cohort.json`` (see vadice.data.synth)."""
    from vadice.data.synth import generate_cohort

    out = tmp_path_factory.mktemp("small_cohort") / "cohort"
    return generate_cohort(out, SMALL_COHORT_CASES, SMALL_COHORT_SEED, size="small", progress=False)


@pytest.fixture(scope="session")
def hntsmrg_case2() -> Path:
    """Folder ``preRT/2_preRT_mask.nii.gz``, ``midRT/2_midRT_mask.nii.gz`` (read-only: copy before changing)."""
    return HNTSMRG_CASE2


@pytest.fixture
def model(tmp_path) -> Path:
    """A stand-in nnU-Net model folder (one-channel dataset.json, a fold_0 checkpoint of fake bytes), for tests
    that replace inference (``vadice.nnunet.inference.Predictor``) and check what predict does around it."""
    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "file_ending": ".nii.gz"}))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    return folder
