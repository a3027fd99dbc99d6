"""Carry a study run seed by seed across machines that keep nothing but the repository.

A session here lasts three hours on a fresh 2-core machine, and a run folder does not outlive it; the VA study
needs about six hours. Its seeds are independent pieces (each seed has its own warm start and its own set-ups),
so one seed can run in one session. What a later step needs of a finished piece is small — unit markers,
training logs, label maps, evaluation and FROC folders, post-processing fits — and is kept; what it does not
need is large (checkpoints, probabilities) or can be made again exactly from the design (the cohorts, the
converted and preprocessed datasets) and is left behind. ``export_state`` copies the small part of a study
folder into the repository, ``restore_state`` copies one or more pieces back into a study folder, and
``input_hashes`` lets a later piece check that the cohorts it regenerated are the ones the earlier pieces used.

The rules of a frozen study still hold: every piece runs from a clean checkout of the same tagged commit, and
the pieces record it (:mod:`va_study` refuses to combine pieces of different commits or designs).
"""

from __future__ import annotations

import filecmp
import json
import shutil
import time
from pathlib import Path

# Suffixes of the files a later step reads; everything else (checkpoints .pth, probabilities .npz, nnU-Net's
# .pkl, progress plots) stays behind.
KEEP_SUFFIXES = (".json", ".csv", ".txt", ".log", ".nii.gz", ".md")
# A FROC folder's per-case counts per threshold (kilobytes): what the FROC comparison reads instead of probabilities.
KEEP_NAMES = ("counts.npz",)
# Folders made again from the design (cohorts, datasets, the converted test set and linked truth) or drawn again
# from what is kept (overlays).
REGENERATED = ("cohort", "test_cohort", "nnUNet_raw", "nnUNet_preprocessed", "run/test_set", "run/gt",
               "run/overlays")
# Records every piece writes for itself: they may differ between pieces (start time, listed units); the first
# restored is kept, and the caller checks what must agree (design, code version, plans) in the piece records.
PER_PIECE = ("va_study_start.json", "run/manifest.json")
PIECE_FILE = "piece.json"
FILES = "files"
INPUTS = ("cohort", "test_cohort")


def state_files(root: Path) -> list[Path]:
    """The files of study folder ``root`` that a piece keeps, relative to ``root``, sorted."""
    root = Path(root)
    keep = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(rel.as_posix() == d or rel.as_posix().startswith(d + "/") for d in REGENERATED):
            continue
        if path.name.endswith(KEEP_SUFFIXES) or path.name in KEEP_NAMES:
            keep.append(rel)
    return keep


def input_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of the cohorts in ``root`` (``cohort/``, ``test_cohort/``), by relative path."""
    from vadice.io import sha256_file

    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for d in INPUTS for p in sorted((root / d).rglob("*")) if p.is_file()}


def export_state(root: Path, dest: Path, record: dict) -> Path:
    """Copy the kept files of study folder ``root`` into the new folder ``dest`` (``dest/files/…``) with
    ``dest/piece.json``: ``record`` plus the cohorts' hashes and the list of files.

    Raises:
      SystemExit: ``dest`` exists (a piece is exported once; delete it to export again).
    """
    root, dest = Path(root), Path(dest)
    if dest.exists():
        raise SystemExit(f"study_state: {dest} exists; a piece is exported once (delete it to export again)")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    files = state_files(root)
    for rel in files:
        target = tmp / FILES / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    piece = {**record, "exported_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "inputs_sha256": input_hashes(root), "files": [r.as_posix() for r in files]}
    (tmp / PIECE_FILE).write_text(json.dumps(piece, indent=2) + "\n")
    tmp.rename(dest)  # a stopped export leaves only the .partial folder, never a half piece under its name
    return dest


def read_piece(state: Path) -> dict:
    """``piece.json`` of an exported piece, its files checked present.

    Raises:
      SystemExit: not a piece folder, or a listed file missing.
    """
    state = Path(state)
    path = state / PIECE_FILE
    if not path.is_file():
        raise SystemExit(f"study_state: {state} is not an exported piece (no {PIECE_FILE})")
    piece = json.loads(path.read_text())
    missing = [f for f in piece["files"] if not (state / FILES / f).is_file()]
    if missing:
        raise SystemExit(f"study_state: {state}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
    return piece


def restore_state(states: list[Path], root: Path) -> list[dict]:
    """Copy the files of each exported piece into study folder ``root``; returns the pieces' records.

    A file already there must be identical, except the per-piece records (:data:`PER_PIECE`), of which the
    first is kept. Nothing is copied when any piece conflicts.

    Raises:
      SystemExit: a folder is not a piece, or a file differs from one already in ``root`` or in an earlier piece.
    """
    root = Path(root)
    pieces, plan = [], {}
    for state in states:
        piece = read_piece(state)
        pieces.append(piece)
        for rel in piece["files"]:
            src, dst = Path(state) / FILES / rel, root / rel
            if rel in PER_PIECE:
                if not dst.exists():
                    plan.setdefault(rel, src)
                continue
            first = plan.get(rel, dst if dst.exists() else None)
            if first is not None and not filecmp.cmp(first, src, shallow=False):
                raise SystemExit(f"study_state: {src} differs from {first}; pieces of one study share no other file")
            plan.setdefault(rel, src)
    for rel, src in plan.items():
        dst = root / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return pieces


def check_inputs(root: Path, pieces: list[dict]) -> None:
    """The cohorts regenerated in ``root`` are byte for byte those every piece trained and was tested on.

    Raises:
      SystemExit: a file added, missing or different.
    """
    now = input_hashes(root)
    for piece in pieces:
        if piece["inputs_sha256"] != now:
            diff = sorted(set(now) ^ set(piece["inputs_sha256"])) or sorted(
                k for k in now if now[k] != piece["inputs_sha256"][k])
            raise SystemExit(f"study_state: the regenerated cohorts differ from seed {piece.get('seed')}'s "
                             f"({len(diff)} file(s), e.g. {diff[0]}): the pieces cannot be combined")
