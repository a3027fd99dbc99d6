"""Whole-case lesion ids, labelled once per case: the lesion cache beside nnU-Net's preprocessed data.

The volume-aware loss weights a lesion by its volume in the whole case, not by
what is left of it in an augmented patch (patches are cropped at lesion borders
and rescaled by 0.7-1.4). So lesions are labelled once per case on nnU-Net's
*preprocessed* segmentation (the array the network is trained on), and the
instance map travels with the segmentation as a second channel
(:mod:`vadice.nnunet.datasets` loads it, :mod:`vadice.nnunet.augmentation`
moves it). No connected-component labelling runs during training; weights are
looked up by id in the :class:`LesionTable` on the training device.

On-disk layout (next to nnU-Net's folders, never inside them)::

    <nnUNet_preprocessed>/<Dataset>/vadice_lesions/<data_identifier>/
        <case>_inst.b2nd     int16 (1, *shape) instance map, chunked like nnU-Net's seg
        lesions.json         lesion table (see :func:`preprocess_instances`)
        <case>_regions.b2nd  per-label Voronoi cells, CC-DiceCE only (see :func:`preprocess_regions`)
        regions.json         what each cell map was made from

nnU-Net's folders are off limits because ``nnUNetDatasetBlosc2.get_identifiers``
lists every ``*.b2nd`` that does not end in ``_seg.b2nd`` as a case and
``infer_dataset_class`` refuses a folder holding a ``.json``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import blosc2
import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm import tqdm

from vadice.io import InputError, sha256_file, write_text
from vadice.lesions import check_connectivity, label_lesions
from vadice.losses import median_lesion_volumes, voronoi_regions

log = logging.getLogger(__name__)

LESION_DIR = "vadice_lesions"
TABLE_NAME = "lesions.json"
INST_SUFFIX = "_inst.b2nd"
REGION_SUFFIX = "_regions.b2nd"   # per-label Voronoi cells (CC-DiceCE), see preprocess_regions
REGION_TABLE = "regions.json"
TABLE_VERSION = 1
# ids share the int16 array nnU-Net's data loader casts segmentations to
MAX_LESIONS_PER_CASE = int(np.iinfo(np.int16).max)


def lesion_folder(preprocessed_dataset_folder: str | os.PathLike, data_identifier: str) -> Path:
    """Folder holding the instance maps and lesion table of one configuration."""
    return Path(preprocessed_dataset_folder) / LESION_DIR / data_identifier


def lesion_folder_of(nnunet_case_folder: str | os.PathLike) -> Path:
    """Lesion folder belonging to nnU-Net's ``<dataset>/<data_identifier>`` case folder."""
    folder = Path(nnunet_case_folder)
    return lesion_folder(folder.parent, folder.name)


# ----------------------------------------------------------------------------------------------
# preprocessing


@dataclass(frozen=True)
class _Job:
    case: str
    case_folder: str
    out_folder: str
    spacing: tuple[float, ...]  # configuration spacing (array order); 2-D configs lack the first axis
    transpose_forward: tuple[int, ...]
    labels: tuple[int, ...]
    connectivity: int
    patch_size: tuple[int, ...]


def _seg_source(case_folder: Path, case: str) -> Path:
    for name in (f"{case}_seg.b2nd", f"{case}.npz", f"{case}_seg.npy"):
        if (case_folder / name).is_file():
            return case_folder / name
    raise InputError(case_folder / f"{case}_seg.b2nd", "preprocessed segmentation not found")


def _signature(path: Path) -> dict:
    # The content hash is what matters: nnU-Net rewrites the file with new content but the same shape
    # when it preprocesses again, and copies (rsync, cluster staging) change mtimes without changing content.
    st = path.stat()
    return {"file": path.name, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns),
            "sha256": sha256_file(path)}


def _signature_matches(stored: dict | None, path: Path) -> bool:
    """Whether ``path`` is the file a table entry was made from (content hash; size and mtime for old tables)."""
    if not isinstance(stored, dict) or stored.get("file") != path.name:
        return False
    if "sha256" in stored:
        return stored["size"] == path.stat().st_size and stored["sha256"] == sha256_file(path)
    # tables written before content hashes: the stored size and mtime are all there is to verify
    st = path.stat()
    return stored.get("size") == st.st_size and stored.get("mtime_ns") == st.st_mtime_ns


def _case_spacing(job: _Job, properties: dict, ndim: int) -> tuple[float, ...]:
    spacing = list(job.spacing)
    if len(spacing) < ndim:
        # 2-D configurations keep each case's own slice spacing (nnU-Net's DefaultPreprocessor does the same)
        original = [properties["spacing"][i] for i in job.transpose_forward]
        spacing = original[: ndim - len(spacing)] + spacing
    return tuple(float(s) for s in spacing)


def _label_case(job: _Job) -> tuple[str, dict]:
    case_folder = Path(job.case_folder)
    source = _seg_source(case_folder, job.case)
    dataset = infer_dataset_class(str(case_folder))(str(case_folder), [job.case])
    _, seg, _, properties = dataset.load_case(job.case)
    seg = np.asarray(seg[:])
    if seg.ndim != 4 or seg.shape[0] != 1:
        raise InputError(source, f"expected a (1, z, y, x) segmentation, got shape {seg.shape}")
    spacing = _case_spacing(job, properties, seg.ndim - 1)
    # nnU-Net marks voxels outside the nonzero mask with -1: not a foreground label, so never a lesion
    instances, lesions = label_lesions(seg[0], spacing, labels=job.labels, connectivity=job.connectivity)
    if len(lesions) > MAX_LESIONS_PER_CASE:
        raise InputError(source, f"{len(lesions)} lesions, more than the {MAX_LESIONS_PER_CASE} int16 ids allow")
    inst = np.ascontiguousarray(instances[None].astype(np.int16))
    blocks, chunks = comp_blosc2_params(inst.shape, job.patch_size, inst.itemsize)
    final = Path(job.out_folder) / f"{job.case}{INST_SUFFIX}"
    partial = final.with_name(f"{job.case}_inst.partial.b2nd")
    partial.unlink(missing_ok=True)
    blosc2.asarray(inst, urlpath=str(partial), chunks=chunks, blocks=blocks,
                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1})
    os.replace(partial, final)
    entry = {
        "spacing_mm": list(spacing),
        "shape": list(inst.shape[1:]),
        "source": _signature(source),
        "lesions": {
            str(les.lesion_id): {"label": les.label, "voxels": les.voxels, "volume_mm3": les.volume_mm3}
            for les in lesions
        },
    }
    return job.case, entry


def _medians(cases: dict, labels: Iterable[int]) -> dict:
    tables = [entry["lesions"].values() for entry in cases.values()]
    return {str(k): v for k, v in median_lesion_volumes(tables, labels, allow_missing=True).items()}


def _write_table(folder: Path, header: dict, cases: dict) -> None:
    table = dict(header)
    table["median_volume_mm3"] = _medians(cases, header["labels"])
    table["cases"] = {k: cases[k] for k in sorted(cases)}
    write_text(folder / TABLE_NAME, json.dumps(table, indent=1) + "\n")


def _previous_cases(path: Path, header: dict) -> dict:
    """The ``cases`` of a record written with the same header, else none: what a resumed run may keep."""
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
    if not isinstance(old, dict) or any(old.get(k) != v for k, v in header.items()):
        return {}
    return old.get("cases", {})


def _run_cases(work: Callable, jobs: list, record: dict, save: Callable[[], None], num_processes: int,
               bar: tqdm) -> None:
    """Runs ``work(job) -> (case, entry)`` on every job and puts each entry into ``record[case]``.

    Jobs run in this process, or in a spawn pool of ``num_processes`` (spawn: the caller may hold
    torch and CUDA). ``save`` writes the record after every case in this process, every 16 cases
    from a pool, and once at the end, also when a case fails: a rerun resumes after the cases
    already done instead of redoing a long run.
    """
    if not jobs:
        return
    serial = num_processes == 1 or len(jobs) <= 1
    every = 1 if serial else 16
    pool = None if serial else multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs)))
    try:
        results = map(work, jobs) if pool is None else pool.imap_unordered(work, jobs)
        for i, (case, entry) in enumerate(results, 1):
            record[case] = entry
            bar.update()
            if i % every == 0:
                save()
    finally:
        if pool is not None:
            pool.terminate()  # all results are in, or one failed: no worker should keep running
            pool.join()
        save()


def preprocess_instances(
    preprocessed_dataset_folder: str | os.PathLike,
    configuration: str = "3d_fullres",
    plans_identifier: str = "nnUNetResEncUNetMPlans",
    connectivity: int = 26,
    num_processes: int = 1,
    progress: bool = True,
) -> Path:
    """Labels lesions once per case on nnU-Net's preprocessed segmentations.

    Lesions are 26-connected (default) components of each foreground label,
    with volumes in mm³ from the configuration's target spacing in array
    order (nnU-Net transposes arrays by ``transpose_forward`` and resamples
    to that spacing; 2-D configurations keep each case's slice spacing).
    Resumable: a case whose instance map exists and whose table entry matches
    the current segmentation file (SHA-256 of its bytes) is skipped, so rerunning
    after nnU-Net re-preprocesses relabels exactly the changed cases.

    The table ``lesions.json`` holds ``version``, ``plans_identifier``,
    ``configuration``, ``data_identifier``, ``connectivity``, ``labels``,
    ``median_volume_mm3`` ({label: median over all cases, null if none}) and
    ``cases`` ({case: {spacing_mm, shape, source, lesions: {id: {label,
    voxels, volume_mm3}}}}).

    Args:
      preprocessed_dataset_folder: ``$nnUNet_preprocessed/DatasetXXX_Name``.
      configuration: plans configuration, e.g. ``3d_fullres``.
      plans_identifier: plans file name without ``.json``.
      connectivity: 6, 18 or 26.
      num_processes: worker processes (1: in this process).
      progress: show a tqdm bar.

    Returns:
      The lesion folder ``<dataset>/vadice_lesions/<data_identifier>``.

    Raises:
      InputError: missing plans / dataset.json / preprocessed cases, region-based
        labels, a case that cannot be read.
      ValueError: bad connectivity or num_processes.
    """
    connectivity = check_connectivity(connectivity)
    if int(num_processes) < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    base = Path(preprocessed_dataset_folder)
    plans_file = base / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise InputError(plans_file, "plans file not found (run nnU-Net planning first)")
    dataset_json_file = base / "dataset.json"
    if not dataset_json_file.is_file():
        raise InputError(dataset_json_file, "dataset.json not found in the preprocessed dataset folder")
    plans_manager = PlansManager(str(plans_file))
    if configuration not in plans_manager.available_configurations:
        raise InputError(plans_file, f"no configuration {configuration!r} "
                                     f"(has {', '.join(plans_manager.available_configurations)})")
    cm = plans_manager.get_configuration(configuration)
    label_manager = plans_manager.get_label_manager(json.loads(dataset_json_file.read_text()))
    if label_manager.has_regions:
        raise InputError(dataset_json_file, "region-based labels are not supported by the volume-aware loss")
    labels = tuple(int(l) for l in label_manager.foreground_labels if l != label_manager.ignore_label)

    case_folder = base / cm.data_identifier
    if not case_folder.is_dir():
        raise InputError(case_folder, f"preprocessed data not found (run nnU-Net preprocessing of {configuration})")
    try:
        cases = sorted(infer_dataset_class(str(case_folder)).get_identifiers(str(case_folder)))
    except (AssertionError, KeyError) as exc:
        raise InputError(case_folder, f"not an nnU-Net preprocessed folder ({exc})") from None
    if not cases:
        raise InputError(case_folder, "no preprocessed cases")

    out = lesion_folder(base, cm.data_identifier)
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "version": TABLE_VERSION,
        "plans_identifier": plans_identifier,
        "configuration": configuration,
        "data_identifier": cm.data_identifier,
        "connectivity": connectivity,
        "labels": list(labels),
    }
    done = _previous_cases(out / TABLE_NAME, header)

    def up_to_date(case: str) -> bool:
        entry = done.get(case)
        return (entry is not None and "sha256" in entry.get("source", {})
                and (out / f"{case}{INST_SUFFIX}").is_file()
                and _signature_matches(entry.get("source"), _seg_source(case_folder, case)))

    kept = {c: done[c] for c in cases if up_to_date(c)}
    todo = [c for c in cases if c not in kept]
    jobs = [_Job(c, str(case_folder), str(out), tuple(cm.spacing), tuple(plans_manager.transpose_forward),
                 labels, connectivity, tuple(cm.patch_size)) for c in todo]
    results = dict(kept)
    if kept and not todo:
        log.info("lesion instances up to date for %d cases in %s", len(kept), out)
    with tqdm(total=len(cases), initial=len(kept), desc="Labelling lesions", disable=not progress) as bar:
        _run_cases(_label_case, jobs, results, lambda: _write_table(out, header, results), num_processes, bar)
    # cases nnU-Net no longer has are dropped from the table; their files are removed
    for stale in set(done) - set(cases):
        (out / f"{stale}{INST_SUFFIX}").unlink(missing_ok=True)
    _write_table(out, header, results)
    return out


# ----------------------------------------------------------------------------------------------
# Voronoi cells per label (CC-DiceCE), once per case


def _region_case(job: tuple) -> tuple[str, dict]:
    folder, case, labels, lut, spacing = job
    folder = Path(folder)
    inst_path = folder / f"{case}{INST_SUFFIX}"
    inst_file = blosc2.open(urlpath=str(inst_path), mode="r")
    inst = np.asarray(inst_file[:])[0]
    cells = voronoi_regions(inst, lut, labels, spacing).astype(np.int16)  # ids < 2^15 (MAX_LESIONS_PER_CASE)
    final = folder / f"{case}{REGION_SUFFIX}"
    # one partial file per process: DDP ranks may compute the same case at once, each replace is atomic
    partial = final.with_name(f"{case}_regions.partial{os.getpid()}.b2nd")
    partial.unlink(missing_ok=True)
    # one chunk row per label, the instance map's chunks otherwise: a patch crop reads the same blocks
    chunks = (1, *inst_file.chunks[1:])
    blocks = (1, *inst_file.blocks[1:])
    blosc2.asarray(np.ascontiguousarray(cells), urlpath=str(partial), chunks=chunks, blocks=blocks,
                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1})
    os.replace(partial, final)
    return case, {"instances_sha256": sha256_file(inst_path)}


def preprocess_regions(folder: str | os.PathLike, cases: Sequence[str] | None = None,
                       num_processes: int = 1, progress: bool = False) -> Path:
    """Per-label Voronoi cells of every case, computed once and cached beside the instance maps.

    For each case and each label of the lesion table, ``<case>_regions.b2nd`` holds an int16
    (L, *S) map: at each voxel, the id of the nearest lesion of that label (exact Euclidean
    distance in mm at the configuration spacing, :func:`vadice.losses.voronoi_regions`), 0 when
    the case has none. The CC-DiceCE trainer stacks it after the id channel, so augmentation
    moves it like the ids and the loss reads each lesion's cell off the batch. ``regions.json``
    records the SHA-256 of the instance map each file was made from; a case whose map changed
    (or that has no file) is recomputed, the others are skipped.

    Args:
      folder: a lesion folder (:func:`lesion_folder`) made by :func:`preprocess_instances`.
      cases: cases to (re)compute if stale; ``None``: every case of the lesion table.
      num_processes: worker processes (1: in this process).
      progress: show a tqdm bar.

    Returns:
      ``folder``.

    Raises:
      InputError: missing or malformed lesion table, a case not in it.
    """
    folder = Path(folder)
    table = load_lesion_table(folder)
    cases = sorted(table.spacing) if cases is None else list(cases)
    missing = [c for c in cases if c not in table.spacing]
    if missing:
        raise InputError(folder / TABLE_NAME,
                         f"no lesion entry for case {missing[0]!r}: run preprocess_instances again")
    record_path = folder / REGION_TABLE
    header = {"version": 1, "labels": list(table.labels)}
    record = _previous_cases(record_path, header)
    todo = [c for c in cases
            if not (folder / f"{c}{REGION_SUFFIX}").is_file()
            or record.get(c, {}).get("instances_sha256") != sha256_file(folder / f"{c}{INST_SUFFIX}")]
    jobs = [(str(folder), c, table.labels, table.lesion_labels[c], table.spacing[c]) for c in todo]

    def save():
        write_text(record_path, json.dumps({**header, "cases": {k: record[k] for k in sorted(record)}}, indent=1) + "\n")

    with tqdm(total=len(jobs), desc="Voronoi cells", disable=not progress) as bar:
        _run_cases(_region_case, jobs, record, save, num_processes, bar)
    return folder


# ----------------------------------------------------------------------------------------------
# the lesion table, as the trainer uses it


@dataclass(frozen=True)
class LesionTable:
    """``lesions.json`` as its readers use it: per-case lesion volumes, voxel counts and labels by id.

    Every reader of the table goes through :func:`load_lesion_table`, so the file format
    is known in this module only. Per-id arrays have index 0 (background) = 0.
    """

    folder: Path
    connectivity: int
    labels: tuple[int, ...]
    volumes: dict[str, np.ndarray]       # case -> float64 (K+1,) mm³
    lesion_labels: dict[str, np.ndarray]  # case -> int64 (K+1,)
    voxels: dict[str, np.ndarray]        # case -> int64 (K+1,) voxel counts at the configuration spacing
    spacing: dict[str, tuple[float, ...]]  # case -> spacing (mm, array order) the volumes were measured at
    sources: dict[str, dict] = None       # case -> signature of the segmentation the ids were made from
    plans_identifier: str = ""
    configuration: str = ""

    def rebuild_command(self) -> str:
        """The call that relabels this table's cases (one line, for error messages)."""
        dataset = self.folder.parent.parent
        return (f"python -c \"from vadice.nnunet.lesion_cache import preprocess_instances; preprocess_instances("
                f"'{dataset}', '{self.configuration}', '{self.plans_identifier}')\" (or `vadice plan` again)")

    def verify_sources(self, case_folder: str | os.PathLike, cases: Sequence[str]) -> None:
        """Refuses instance maps made from another segmentation than the one nnU-Net now holds.

        Same shapes with new content (``nnUNetv2_preprocess`` run again) would
        otherwise train on stale ids: a node voxel holding the tumour's id gets
        the tumour's volume. Costs one SHA-256 of each case's (compressed)
        segmentation file.

        Raises:
          InputError: naming the first stale case and the rebuild command.
        """
        case_folder = Path(case_folder)
        for case in cases:
            source = _seg_source(case_folder, case)
            if not _signature_matches((self.sources or {}).get(case), source):
                raise InputError(source, f"changed since lesion ids of case {str(case)!r} were made; "
                                         f"rebuild them: {self.rebuild_command()}")

    def padded(self, cases: Sequence[str], what: str = "volumes") -> tuple[np.ndarray, dict[str, int]]:
        """``(table, row)``: float32 (len(cases), Kmax+1) of ``what`` per lesion id and case -> row index.

        ``what``: ``"volumes"`` (mm³) or ``"voxels"`` (counts); both give the same rows and width.
        """
        if what not in ("volumes", "voxels"):
            raise ValueError(f"what must be 'volumes' or 'voxels', got {what!r}")
        values = getattr(self, what)
        missing = [c for c in cases if c not in values]
        if missing:
            raise InputError(self.folder / TABLE_NAME, f"no lesion entry for {len(missing)} case(s), e.g. "
                             f"{missing[0]!r}: run vadice.nnunet.lesion_cache.preprocess_instances again")
        width = max([len(values[c]) for c in cases] + [1])
        table = np.zeros((len(cases), width), dtype=np.float32)
        for i, c in enumerate(cases):
            table[i, : len(values[c])] = values[c]
        return table, {c: i for i, c in enumerate(cases)}

    def lesion_tables(self, cases: Sequence[str]) -> list[list[dict]]:
        """One list of ``{label, volume_mm3}`` per case, as :func:`vadice.losses.median_lesion_volumes` takes."""
        return [[{"label": int(lab), "volume_mm3": float(vol)}
                 for lab, vol in zip(self.lesion_labels[c][1:], self.volumes[c][1:]) if lab > 0] for c in cases]


def load_lesion_table(folder: str | os.PathLike) -> LesionTable:
    """Reads ``lesions.json`` of a lesion folder.

    Raises:
      InputError: missing or malformed table.
    """
    folder = Path(folder)
    path = folder / TABLE_NAME
    if not path.is_file():
        raise InputError(path, "lesion table not found: run vadice.nnunet.lesion_cache.preprocess_instances "
                               "after nnU-Net preprocessing")
    try:
        raw = json.loads(path.read_text())
        if raw.get("version") != TABLE_VERSION:
            raise ValueError(f"table version {raw.get('version')!r}, expected {TABLE_VERSION}")
        volumes, lesion_labels, voxels, spacing, sources = {}, {}, {}, {}, {}
        for case, entry in raw["cases"].items():
            sources[case] = entry.get("source")
            spacing[case] = tuple(float(s) for s in entry["spacing_mm"])
            ids = [int(k) for k in entry["lesions"]]
            n = max(ids, default=0)
            vol = np.zeros(n + 1, dtype=np.float64)
            lab = np.zeros(n + 1, dtype=np.int64)
            vox = np.zeros(n + 1, dtype=np.int64)
            for k, les in entry["lesions"].items():
                vol[int(k)] = float(les["volume_mm3"])
                lab[int(k)] = int(les["label"])
                vox[int(k)] = int(les["voxels"])
            volumes[case], lesion_labels[case], voxels[case] = vol, lab, vox
        return LesionTable(folder, int(raw["connectivity"]), tuple(int(l) for l in raw["labels"]),
                           volumes, lesion_labels, voxels, spacing, sources,
                           str(raw.get("plans_identifier", "")), str(raw.get("configuration", "")))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise InputError(path, f"malformed lesion table ({exc})") from None
