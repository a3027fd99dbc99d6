"""HNTS-MRG 2024 training layout -> nnU-Net v2 raw dataset, validated, atomic and resumable.

Source layout (one folder per patient, integer ids)::

    SRC/<id>/preRT/<id>_preRT_T2.nii.gz, <id>_preRT_mask.nii.gz
    SRC/<id>/midRT/<id>_midRT_T2.nii.gz, <id>_midRT_mask.nii.gz,
                   <id>_preRT_T2_registered.nii.gz, <id>_preRT_mask_registered.nii.gz

Any file may be a MetaImage instead (``.mha``, the challenge's container format). The dataset is always
NIfTI (``.nii.gz``, the one format the rest of vadice and the experiment's folders use): NIfTI sources are
copied byte for byte, MetaImage sources are read (with the same checks) and written as NIfTI with their
geometry.

Every case is validated in full before anything is written. Validated NIfTI files
are copied byte for byte (so the geometry of every written file is the
source's), each to a temporary name and then renamed. A manifest in the
dataset folder records the content hash of every source file, so a re-run
skips identical cases and completes a killed run; ``dataset.json`` is written
last, so a dataset without it is visibly unfinished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vadice.data.validate import InvalidInputs, check_image, check_mask, check_same_grid
from vadice.io import InputError, copy_file, read_mha, sha256_file, write_sitk, write_text

log = logging.getLogger(__name__)

# Relative path of every file of a case, by key.
SOURCE_FILES = {
    "preRT_T2": "preRT/{id}_preRT_T2.nii.gz",
    "preRT_mask": "preRT/{id}_preRT_mask.nii.gz",
    "midRT_T2": "midRT/{id}_midRT_T2.nii.gz",
    "midRT_mask": "midRT/{id}_midRT_mask.nii.gz",
    "preRT_T2_registered": "midRT/{id}_preRT_T2_registered.nii.gz",
    "preRT_mask_registered": "midRT/{id}_preRT_mask_registered.nii.gz",
}
# Keys whose file is a label map (validated as such even when used as an input channel).
MASK_KEYS = {"preRT_mask", "midRT_mask", "preRT_mask_registered"}
LABELS = {"background": 0, "GTVp": 1, "GTVn": 2}
FILE_ENDING = ".nii.gz"
ALT_ENDING = ".mha"  # the same file as a MetaImage
MANIFEST = "vadice_convert.json"
SKIPPED = "skipped_cases.json"
# Top-level files that may sit beside the case folders (our cohort table, archive notes).
METADATA_SUFFIXES = (".json", ".md", ".txt", ".csv", ".pdf")
AUDIT_DIR = "audit"  # vadice synth's structure maps beside the case folders: not a case, skipped

TASKS = {
    # task: (channel names, [(timepoint, channel keys, label key)] without / with extra mid-RT cases)
    1: ({"0": "T2"}, [("preRT", ("preRT_T2",), "preRT_mask")]),
    2: ({"0": "T2", "1": "T2_preRT_registered", "2": "noNorm"},
        [("midRT", ("midRT_T2", "preRT_T2_registered", "preRT_mask_registered"), "midRT_mask")]),
}
MIDRT_EXTRA = ("midRT", ("midRT_T2",), "midRT_mask")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def _twin(path: Path) -> Path:
    """The same file name in the other source format (``.nii.gz`` <-> ``.mha``)."""
    name = path.name
    if name.endswith(FILE_ENDING):
        return path.with_name(name[: -len(FILE_ENDING)] + ALT_ENDING)
    return path.with_name(name[: -len(ALT_ENDING)] + FILE_ENDING)


def source_files(case_dir: str | os.PathLike, case_id: int) -> dict[str, Path]:
    """Paths of the six files of one HNTS-MRG case folder, by key (see ``SOURCE_FILES``).

    A file present only as ``.mha`` is returned as such; otherwise the ``.nii.gz`` path (existing or not).
    """
    case_dir = Path(case_dir)
    out = {}
    for key, rel in SOURCE_FILES.items():
        path = case_dir / rel.format(id=case_id)
        out[key] = _twin(path) if not path.exists() and _twin(path).exists() else path
    return out


def file_ending(path: Path) -> str:
    return ALT_ENDING if path.name.endswith(ALT_ENDING) else FILE_ENDING


def case_name(case_id: int, timepoint: str) -> str:
    """nnU-Net case identifier, e.g. ``HNTS_012_midRT`` (the timepoint stays in the name)."""
    return f"HNTS_{case_id:03d}_{timepoint}"


def default_name(task: int) -> str:
    return f"HNTSMRGTask{task}"


@dataclass
class TrainingCase:
    name: str
    patient: int
    timepoint: str
    channels: list[Path]
    label: Path

    def outputs(self) -> dict[str, Path]:
        """Relative output path -> source path."""
        out = {f"imagesTr/{self.name}_{i:04d}{FILE_ENDING}": src for i, src in enumerate(self.channels)}
        out[f"labelsTr/{self.name}{FILE_ENDING}"] = self.label
        return out


@dataclass
class PatientResult:
    patient: int
    folder: Path
    cases: list[TrainingCase] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # source path relative to SRC -> sha256
    problem: tuple[Path, str] | None = None
    unchanged: bool = False


def check_task_args(task: int, dataset_id: int, name: str | None, out) -> tuple[int, int, str, Path]:
    """Validate conversion arguments; ``ValueError`` with a plain message when wrong."""
    if task not in TASKS:
        raise ValueError(f"task must be 1 or 2, got {task!r}")
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be an integer in 1..999, got {dataset_id!r}")
    name = default_name(task) if name is None else str(name)
    if not _NAME_RE.match(name):
        raise ValueError(f"dataset name {name!r} must be letters, digits, '_' or '-' (starting with a letter or digit)")
    if out is None:
        env = os.environ.get("nnUNet_raw")
        if not env:
            raise ValueError("no output folder: pass --out NNUNET_RAW or set the nnUNet_raw environment variable")
        out = env
    return task, dataset_id, name, Path(out)


def discover(src_dir: str | os.PathLike) -> tuple[dict[int, Path], list[tuple[Path, str]]]:
    """Case folders of an HNTS-MRG training folder, and unexpected top-level entries.

    Hidden entries (names starting with '.') are ignored; metadata files
    (``*.json``, ``*.md``, ``*.txt``, ``*.csv``, ``*.pdf``) beside the case folders are allowed.

    Raises:
      InputError: folder missing, not a folder, empty, or holding no case folder.
    """
    src = Path(src_dir)
    if not src.exists():
        raise InputError(src, "source folder not found")
    if not src.is_dir():
        raise InputError(src, "not a folder (expected the HNTS-MRG training folder of <id>/ case folders)")
    entries = sorted(p for p in src.iterdir() if not p.name.startswith("."))
    if not entries:
        raise InputError(src, "source folder is empty (expected <id>/preRT and <id>/midRT case folders)")
    cases: dict[int, Path] = {}
    unexpected: list[tuple[Path, str]] = []
    for p in entries:
        if p.is_dir() and p.name.isdigit():
            cases[int(p.name)] = p
        elif (p.is_file() and p.name.lower().endswith(METADATA_SUFFIXES)) or (p.is_dir() and p.name == AUDIT_DIR):
            continue
        else:
            unexpected.append((p, "unexpected entry in the source folder (case folders are named by their "
                                  "integer id, e.g. 2/)"))
    if not cases:
        if (src / "dataset.json").exists() and (src / "labelsTr").is_dir():
            raise InputError(src, "this is an nnU-Net dataset folder, not an HNTS-MRG source folder")
        nested = [p for p in entries if p.is_dir() and any(q.name.isdigit() for q in p.iterdir() if q.is_dir())]
        hint = f" (did you mean {nested[0]}?)" if len(nested) == 1 else ""
        raise InputError(src, f"no case folders found (expected <id>/preRT/<id>_preRT_T2.nii.gz ...){hint}")
    return dict(sorted(cases.items())), unexpected


def _unexpected_in_case(folder: Path, case_id: int) -> tuple[Path, str] | None:
    expected = set(source_files(folder, case_id).values())
    subdirs = {folder / "preRT", folder / "midRT"}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p in subdirs and p.is_dir():
            for q in sorted(p.iterdir()):
                if not q.name.startswith(".") and q not in expected:
                    if q.name.endswith((FILE_ENDING, ALT_ENDING)) and _twin(q) in expected:
                        return q, f"{_twin(q).name} exists too; keep one format (.nii.gz or .mha) per file"
                    return q, (f"unexpected file in case folder (expected only "
                               f"{', '.join(sorted(e.name for e in expected if e.parent == p))})")
        else:
            return p, "unexpected entry in case folder (expected preRT/ and midRT/)"
    return None


def training_units(task: int, include_midrt: bool) -> list[tuple[str, tuple[str, ...], str]]:
    units = list(TASKS[task][1])
    if include_midrt:
        if task != 1:
            raise ValueError("include_midrt applies to task 1 only (task 2 already trains on mid-RT)")
        units.append(MIDRT_EXTRA)
    return units


def _plan_patient(src: Path, case_id: int, folder: Path, units) -> PatientResult:
    files = source_files(folder, case_id)
    res = PatientResult(case_id, folder)
    for tp, channel_keys, label_key in units:
        res.cases.append(TrainingCase(case_name(case_id, tp), case_id, tp,
                                      [files[k] for k in channel_keys], files[label_key]))
    return res


def _hash_patient(res: PatientResult, src: Path) -> None:
    for case in res.cases:
        for p in list(case.channels) + [case.label]:
            rel = p.relative_to(src).as_posix()
            if rel not in res.hashes:
                res.hashes[rel] = sha256_file(p) if p.is_file() else ""


def _validate_patient(res: PatientResult, key_of: dict[Path, str]) -> None:
    """Full validation; sets ``res.problem`` to the first problem found."""
    try:
        unexpected = _unexpected_in_case(res.folder, res.patient)
        if unexpected:
            raise InputError(*unexpected)
        for case in res.cases:
            for p in list(case.channels) + [case.label]:
                if not p.exists():
                    raise InputError(p, "file not found")
            # The first channel (the native T2 of the timepoint) defines the grid; the file that
            # differs from it is the one named.
            infos = [check_mask(p) if key_of[p] in MASK_KEYS else check_image(p) for p in case.channels]
            infos.append(check_mask(case.label))
            for info in infos[1:]:
                check_same_grid(infos[0], info)
    except InputError as exc:
        res.problem = (exc.path if exc.path is not None else res.folder, exc.problem)


def _read_manifest(dataset: Path) -> dict | None:
    path = dataset / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable manifest ({exc}); remove the dataset folder and convert again") from None


def _is_unchanged(res: PatientResult, manifest: dict | None, dataset: Path) -> bool:
    if not manifest:
        return False
    entry = manifest.get("patients", {}).get(str(res.patient))
    if not entry or entry.get("sources") != res.hashes or "" in res.hashes.values():
        return False
    expected = {rel for case in res.cases for rel in case.outputs()}
    if set(entry.get("outputs", {})) != expected:
        return False
    for rel, size in entry["outputs"].items():
        p = dataset / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


def _settings(task: int, include_midrt: bool, name: str, dataset_id: int) -> dict:
    return {"task": task, "include_midrt": bool(include_midrt), "name": name, "dataset_id": dataset_id}


def convert(src_dir, task: int, dataset_id: int, out=None, name: str | None = None, include_midrt: bool = False,
            skip_invalid: bool = False, progress: bool = True, workers: int = 1) -> Path:
    """Convert an HNTS-MRG 2024 training folder into an nnU-Net v2 raw dataset.

    Task 1: channel ``_0000`` pre-RT T2, label pre-RT mask; ``include_midrt``
    adds every patient's mid-RT T2/mask as an extra case (``HNTS_<id>_midRT``).
    Task 2: ``_0000`` mid-RT T2, ``_0001`` registered pre-RT T2, ``_0002``
    registered pre-RT mask (channel name ``noNorm``), label mid-RT mask.

    Args:
      src_dir: HNTS-MRG training folder (``<id>/preRT``, ``<id>/midRT``).
      task: 1 or 2.
      dataset_id: nnU-Net dataset id, 1..999.
      out: nnU-Net raw folder; default ``$nnUNet_raw``.
      name: dataset name; default ``HNTSMRGTask1`` / ``HNTSMRGTask2``.
      include_midrt: task 1 only; add mid-RT cases.
      skip_invalid: convert the valid patients and list the others in
        ``<dataset>/skipped_cases.json`` instead of stopping.
      progress: progress bars.
      workers: threads validating/hashing patients in parallel.

    Returns:
      the dataset folder ``<out>/Dataset<ID:03d>_<NAME>``.

    Raises:
      ValueError: bad arguments.
      InputError: invalid source (one line per bad patient, naming the file
        and the problem; nothing written), a conflicting dataset id, or a
        dataset folder that vadice did not write.
    """
    task, dataset_id, name, out = check_task_args(task, dataset_id, name, out)
    units = training_units(task, include_midrt)
    src = Path(src_dir)
    dataset = out / f"Dataset{dataset_id:03d}_{name}"
    settings = _settings(task, include_midrt, name, dataset_id)

    if out.exists() and not out.is_dir():
        raise InputError(out, "output path exists and is not a folder")
    if out.is_dir():
        clash = sorted(p for p in out.glob(f"Dataset{dataset_id:03d}_*") if p != dataset)
        if clash:
            raise InputError(clash[0], f"dataset id {dataset_id} is already used by this folder; "
                                       "choose another --dataset-id")
    manifest = None
    if dataset.exists():
        manifest = _read_manifest(dataset)
        if manifest is None and any(dataset.iterdir()):
            raise InputError(dataset, "exists and was not written by vadice convert; remove it or choose another "
                                      "--dataset-id")
        if manifest is not None and manifest.get("settings") != settings:
            raise InputError(dataset, f"exists with different settings {manifest.get('settings')}; remove it or "
                                      "choose another --dataset-id")

    cases, problems = discover(src)
    patients = [_plan_patient(src, cid, folder, units) for cid, folder in cases.items()]
    key_of = {}
    for res in patients:
        for k, p in source_files(res.folder, res.patient).items():
            key_of[p] = k

    def check(res: PatientResult) -> PatientResult:
        _hash_patient(res, src)
        unexpected = _unexpected_in_case(res.folder, res.patient)
        if unexpected:
            res.problem = unexpected
        elif _is_unchanged(res, manifest, dataset):
            res.unchanged = True
        else:
            _validate_patient(res, key_of)
        return res

    bar = tqdm(total=len(patients), desc="validate", unit="case", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for _ in pool.map(check, patients):
            bar.update()
    bar.close()

    problems += [res.problem for res in patients if res.problem]
    valid = [res for res in patients if not res.problem]
    if problems and not skip_invalid:
        n_bad = len(problems)
        header = None if n_bad == 1 else (f"{n_bad} invalid inputs; nothing written "
                                          "(--skip-invalid converts the valid cases):")
        raise InvalidInputs(problems, header)
    if not valid:
        raise InvalidInputs(problems, f"no valid case to convert in {src}:")

    _write_dataset(dataset, src, valid, problems, settings, task, name, manifest, skip_invalid, progress)
    return dataset


def _write_dataset(dataset: Path, src: Path, valid: list[PatientResult], problems, settings: dict, task: int,
                   name: str, manifest: dict | None, skip_invalid: bool, progress: bool) -> None:
    for sub in ("imagesTr", "labelsTr"):
        (dataset / sub).mkdir(parents=True, exist_ok=True)
    # dataset.json marks a complete dataset: remove it while the content changes.
    with contextlib.suppress(FileNotFoundError):
        (dataset / "dataset.json").unlink()
    for leftover in [*dataset.glob(".*.part"), *dataset.glob("*/.*.part")]:
        leftover.unlink()

    state = {"settings": settings, "source": str(src.resolve()), "patients": {}}
    old = (manifest or {}).get("patients", {})
    wanted = {rel for res in valid for case in res.cases for rel in case.outputs()}
    # Outputs of patients no longer converted (removed from the source, or now invalid).
    for entry in old.values():
        for rel in entry.get("outputs", {}):
            if rel not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    (dataset / rel).unlink()
    for res in valid:
        if res.unchanged:
            state["patients"][str(res.patient)] = old[str(res.patient)]
    write_text(dataset / MANIFEST, json.dumps(state, indent=1))

    todo = [res for res in valid if not res.unchanged]
    bar = tqdm(total=len(todo), desc="write", unit="case", disable=not progress)
    for res in todo:
        outputs = {}
        for case in res.cases:
            for rel, source in case.outputs().items():
                if file_ending(source) == FILE_ENDING:
                    copy_file(source, dataset / rel)
                else:  # validated above; SimpleITK writes the MetaImage's geometry into the NIfTI header
                    write_sitk(read_mha(source), dataset / rel)
                outputs[rel] = (dataset / rel).stat().st_size
        state["patients"][str(res.patient)] = {
            "cases": {c.name: c.timepoint for c in res.cases},
            "sources": res.hashes,
            "outputs": outputs,
        }
        write_text(dataset / MANIFEST, json.dumps(state, indent=1))
        bar.update()
    bar.close()
    if len(todo) < len(valid):
        log.info("kept %d unchanged case(s) from an earlier run", len(valid) - len(todo))

    for sub in ("imagesTr", "labelsTr"):
        for p in sorted((dataset / sub).iterdir()):
            if f"{sub}/{p.name}" not in wanted and not p.name.startswith("."):
                log.warning("%s: not part of this conversion; nnU-Net will see it (remove it)", p)

    skipped = dataset / SKIPPED
    if skip_invalid:
        write_text(skipped, json.dumps({"skipped": [{"path": str(p), "problem": m} for p, m in problems]},
                                       indent=1))
    else:
        with contextlib.suppress(FileNotFoundError):
            skipped.unlink()
    n_training = sum(len(res.cases) for res in valid)
    dataset_json = {
        "name": name,
        "description": f"HNTS-MRG 2024 task {task} ({'pre-RT' if task == 1 else 'mid-RT'} segmentation), "
                       "converted by vadice",
        "reference": "HNTS-MRG 2024 challenge, Zenodo 11199559 (CC BY 4.0)",
        "channel_names": TASKS[task][0],
        "labels": dict(LABELS),
        "numTraining": n_training,
        "file_ending": FILE_ENDING,
    }
    write_text(dataset / "dataset.json", json.dumps(dataset_json, indent=2))
