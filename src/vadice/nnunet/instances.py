"""Whole-case lesion ids carried through nnU-Net's training pipeline.

The volume-aware loss weights a lesion by its volume in the whole case, not by
what is left of it in an augmented patch (patches are cropped at lesion borders
and rescaled by 0.7-1.4). So lesions are labelled once per case on nnU-Net's
*preprocessed* segmentation (the array the network is trained on), and the
instance map travels with the segmentation as a second channel: nnU-Net's own
data loader crops it, the same spatial transform moves it (nearest neighbour,
see :class:`LesionSpatialTransform`), mirroring flips it and deep supervision
downsamples it (nearest-exact). No connected-component labelling runs during
training; weights are looked up by id on the training device.

On-disk layout (next to nnU-Net's folders, never inside them)::

    <nnUNet_preprocessed>/<Dataset>/vadice_lesions/<data_identifier>/
        <case>_inst.b2nd    int16 (1, *shape) instance map, chunked like nnU-Net's seg
        lesions.json        lesion table (see :func:`preprocess_instances`)

nnU-Net's folders are off limits because ``nnUNetDatasetBlosc2.get_identifiers``
lists every ``*.b2nd`` that does not end in ``_seg.b2nd`` as a case and
``infer_dataset_class`` refuses a folder holding a ``.json``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import blosc2
import numpy as np
import torch
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from nnunetv2.training.dataloading.nnunet_dataset import (
    comp_blosc2_params,
    infer_dataset_class,
    nnUNetDatasetBlosc2,
    nnUNetDatasetNumpy,
)
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
    done: dict = {}
    table_file = out / TABLE_NAME
    if table_file.is_file():
        try:
            old = json.loads(table_file.read_text())
        except json.JSONDecodeError:
            old = {}
        if all(old.get(k) == v for k, v in header.items()):
            done = old.get("cases", {})

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
        if num_processes == 1 or len(jobs) <= 1:
            for job in jobs:
                case, entry = _label_case(job)
                results[case] = entry
                bar.update()
                _write_table(out, header, results)
        else:
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
                for i, (case, entry) in enumerate(pool.imap_unordered(_label_case, jobs)):
                    results[case] = entry
                    bar.update()
                    if i % 16 == 0:
                        _write_table(out, header, results)
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
    table_path = folder / TABLE_NAME
    table = load_lesion_table(folder)
    raw = json.loads(table_path.read_text())["cases"]
    cases = sorted(raw) if cases is None else list(cases)
    missing = [c for c in cases if c not in raw]
    if missing:
        raise InputError(table_path, f"no lesion entry for case {missing[0]!r}: run preprocess_instances again")
    record_path = folder / REGION_TABLE
    header = {"version": 1, "labels": list(table.labels)}
    record = {}
    if record_path.is_file():
        try:
            old = json.loads(record_path.read_text())
            if all(old.get(k) == v for k, v in header.items()):
                record = old.get("cases", {})
        except json.JSONDecodeError:
            pass
    todo = [c for c in cases
            if not (folder / f"{c}{REGION_SUFFIX}").is_file()
            or record.get(c, {}).get("instances_sha256") != sha256_file(folder / f"{c}{INST_SUFFIX}")]
    jobs = [(str(folder), c, table.labels, table.lesion_labels[c], tuple(raw[c]["spacing_mm"])) for c in todo]

    def save():
        write_text(record_path, json.dumps({**header, "cases": {k: record[k] for k in sorted(record)}}, indent=1) + "\n")

    with tqdm(total=len(jobs), desc="Voronoi cells", disable=not progress) as bar:
        if num_processes == 1 or len(jobs) <= 1:
            results = map(_region_case, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs)))
            results = pool.imap_unordered(_region_case, jobs)
        try:
            for case, entry in results:
                record[case] = entry
                bar.update()
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            if jobs:
                save()
    return folder


# ----------------------------------------------------------------------------------------------
# the lesion table, as the trainer uses it


@dataclass(frozen=True)
class LesionTable:
    """Per-case lesion volumes, ready to become a padded (N, K+1) lookup table."""

    folder: Path
    connectivity: int
    labels: tuple[int, ...]
    volumes: dict[str, np.ndarray]       # case -> float64 (K+1,), index 0 = 0
    lesion_labels: dict[str, np.ndarray]  # case -> int64 (K+1,), index 0 = 0
    sources: dict[str, dict] = None       # case -> signature of the segmentation the ids were made from
    plans_identifier: str = ""
    configuration: str = ""

    def rebuild_command(self) -> str:
        """The call that relabels this table's cases (one line, for error messages)."""
        dataset = self.folder.parent.parent
        return (f"python -c \"from vadice.nnunet.instances import preprocess_instances; preprocess_instances("
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

    def padded(self, cases: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
        """``(table, row)``: float32 (len(cases), Kmax+1) volumes in mm³ and case -> row index."""
        missing = [c for c in cases if c not in self.volumes]
        if missing:
            raise InputError(self.folder / TABLE_NAME, f"no lesion entry for {len(missing)} case(s), e.g. "
                             f"{missing[0]!r}: run vadice.nnunet.instances.preprocess_instances again")
        width = max([len(self.volumes[c]) for c in cases] + [1])
        table = np.zeros((len(cases), width), dtype=np.float32)
        for i, c in enumerate(cases):
            table[i, : len(self.volumes[c])] = self.volumes[c]
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
        raise InputError(path, "lesion table not found: run vadice.nnunet.instances.preprocess_instances "
                               "after nnU-Net preprocessing")
    try:
        raw = json.loads(path.read_text())
        if raw.get("version") != TABLE_VERSION:
            raise ValueError(f"table version {raw.get('version')!r}, expected {TABLE_VERSION}")
        volumes, lesion_labels, sources = {}, {}, {}
        for case, entry in raw["cases"].items():
            sources[case] = entry.get("source")
            ids = [int(k) for k in entry["lesions"]]
            n = max(ids, default=0)
            vol = np.zeros(n + 1, dtype=np.float64)
            lab = np.zeros(n + 1, dtype=np.int64)
            for k, les in entry["lesions"].items():
                vol[int(k)] = float(les["volume_mm3"])
                lab[int(k)] = int(les["label"])
            volumes[case], lesion_labels[case] = vol, lab
        return LesionTable(folder, int(raw["connectivity"]), tuple(int(l) for l in raw["labels"]),
                           volumes, lesion_labels, sources, str(raw.get("plans_identifier", "")),
                           str(raw.get("configuration", "")))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise InputError(path, f"malformed lesion table ({exc})") from None


# ----------------------------------------------------------------------------------------------
# carrying ids through nnU-Net's data loader


class SegWithInstances:
    """Lazy view: nnU-Net's segmentation with the instance map stacked as channel 1 (and extra maps after).

    nnU-Net's data loader only asks for ``.shape`` and one ``[c, z0:z1, y0:y1,
    x0:x1]`` crop per sample (``crop_and_pad_nd``), so only the chunks of the
    blosc2 arrays under the crop are decompressed, not the whole case. ``extra``
    maps (e.g. the Voronoi cells of :func:`preprocess_regions`) follow the ids.
    """

    def __init__(self, seg, instances, *extra):
        for other in (instances, *extra):
            if tuple(seg.shape[1:]) != tuple(other.shape[1:]):
                raise ValueError(f"segmentation {tuple(seg.shape)} and lesion map {tuple(other.shape)} "
                                 f"differ in shape: rerun preprocess_instances")
        self.seg = seg
        self.instances = instances
        self.extra = extra
        self.shape = (seg.shape[0] + instances.shape[0] + sum(e.shape[0] for e in extra), *seg.shape[1:])
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.int16)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        spatial = (slice(None),) + tuple(key[1:]) + (slice(None),) * (self.ndim - max(len(key), 1))
        seg = np.asarray(self.seg[spatial]).astype(np.int16, copy=False)
        parts = [seg, self._instances(seg, spatial)]
        parts += [np.asarray(a[spatial]).astype(np.int16, copy=False) for a in self.extra]
        both = np.concatenate(parts)
        return both[key[0]] if key else both

    def _instances(self, seg: np.ndarray, spatial: tuple) -> np.ndarray:
        """The instance map under ``spatial``, read only inside the bounding box of the crop's foreground.

        Lesion ids are > 0 only on foreground voxels (labels > 0) of the segmentation they were made from
        (:func:`preprocess_instances`; the trainer verifies the segmentation's hash), so outside the box
        of ``seg > 0`` the map is 0 and need not be decompressed: a background-only crop reads nothing.
        """
        starts = []
        for k, n in zip(spatial[1:], self.shape[1:]):
            if not isinstance(k, slice) or k.step not in (None, 1) or seg.ndim != self.ndim:
                return np.asarray(self.instances[spatial]).astype(np.int16, copy=False)
            starts.append(k.indices(n)[0])
        out = np.zeros((self.instances.shape[0], *seg.shape[1:]), dtype=np.int16)
        fg = (seg > 0).any(0)
        box = []
        for axis in range(fg.ndim):
            hit = np.flatnonzero(fg.any(tuple(a for a in range(fg.ndim) if a != axis)))
            if not hit.size:
                return out
            box.append(slice(int(hit[0]), int(hit[-1]) + 1))
            fg = fg[(slice(None),) * axis + (box[-1],)]  # later axes reduce over the box only
        source = (slice(None),) + tuple(slice(s + b.start, s + b.stop) for s, b in zip(starts, box))
        out[(slice(None), *box)] = np.asarray(self.instances[source])
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)


class _LesionChannel:
    """Mixin for nnU-Net datasets: ``load_case`` returns the segmentation with the ids as channel 1."""

    extra_suffixes: tuple[str, ...] = ()  # per-case maps of the lesion folder stacked after the ids

    def load_case(self, identifier):
        data, seg, seg_prev, properties = super().load_case(identifier)
        mmap = {} if os.name == "nt" else {"mmap_mode": "r"}
        maps = []
        for suffix in (INST_SUFFIX, *self.extra_suffixes):
            path = lesion_folder_of(self.source_folder) / f"{identifier}{suffix}"
            if not path.is_file():
                step = "preprocess_instances" if suffix == INST_SUFFIX else "preprocess_regions"
                raise InputError(path, f"lesion map not found: run vadice.nnunet.instances.{step} "
                                       "after nnU-Net preprocessing")
            maps.append(blosc2.open(urlpath=str(path), mode="r", dparams={"nthreads": 1}, **mmap))
        return data, SegWithInstances(seg, *maps), seg_prev, properties


class _RegionChannels(_LesionChannel):
    extra_suffixes = (REGION_SUFFIX,)


class LesionDatasetBlosc2(_LesionChannel, nnUNetDatasetBlosc2):
    pass


class LesionDatasetNumpy(_LesionChannel, nnUNetDatasetNumpy):
    pass


class LesionRegionDatasetBlosc2(_RegionChannels, nnUNetDatasetBlosc2):
    pass


class LesionRegionDatasetNumpy(_RegionChannels, nnUNetDatasetNumpy):
    pass


def lesion_dataset_class(dataset_class: type, regions: bool = False) -> type:
    """The instance-carrying variant of an nnU-Net dataset class (with the Voronoi cells if ``regions``)."""
    variants = ((nnUNetDatasetBlosc2, LesionRegionDatasetBlosc2 if regions else LesionDatasetBlosc2),
                (nnUNetDatasetNumpy, LesionRegionDatasetNumpy if regions else LesionDatasetNumpy))
    for base, variant in variants:
        if issubclass(dataset_class, _LesionChannel) and issubclass(dataset_class, _RegionChannels) == regions:
            return dataset_class
        if issubclass(dataset_class, base):
            return variant
    raise TypeError(f"unsupported nnU-Net dataset class {dataset_class.__name__}")


# ----------------------------------------------------------------------------------------------
# augmentation


@contextmanager
def _mode_seg(transform: SpatialTransform, mode: str):
    old = transform.mode_seg
    transform.mode_seg = mode
    try:
        yield
    finally:
        transform.mode_seg = old


def _fill_from_neighbours(ids: torch.Tensor, labels: torch.Tensor, lut: torch.Tensor,
                          orphans: torch.Tensor) -> None:
    """In place: give each orphan voxel the id of a lesion of its own label connected to it.

    ``ids``, ``labels``, ``orphans``: (C, *S) with 2 or 3 spatial axes; channels
    are independent; ``lut[id]`` is the label of lesion ``id``. Each round, an
    orphan takes the largest id among its 3^n neighbours whose lesion has the
    orphan's label (so a touching lesion of another label never blocks the
    fill); filled orphans are sources for the next round, until nothing
    changes. Orphans connected to a lesion of their label through orphans of
    that label get its id this way; the few others take the id of the nearest
    voxel of a lesion of their label in the patch. Orphans stay at 0 only where
    the patch holds no voxel of any lesion of their label. Orphans are a
    thin shell, so the neighbours are gathered at the orphans only: no pass
    over the patch per round.
    """
    spatial = ids.ndim - 1
    coords = orphans.nonzero()  # (n, 1 + spatial): channel, then spatial indices
    want = labels[orphans].to(lut.dtype)
    steps = torch.cartesian_prod(*[torch.tensor([-1, 0, 1])] * spatial).reshape(-1, spatial)
    upper = torch.tensor(ids.shape[1:]) - 1
    flat_ids = ids.view(-1)
    strides = torch.tensor(ids.stride())
    while coords.shape[0]:
        # neighbours past the border are clamped onto the border voxel, itself a neighbour: max unchanged
        near = torch.minimum((coords[:, None, 1:] + steps[None]).clamp_min(0), upper)
        index = coords[:, :1] * strides[0] + (near * strides[1:]).sum(-1)
        cand = flat_ids[index].long()
        cand = torch.where(lut[cand] == want[:, None], cand, torch.zeros_like(cand)).amax(1)
        take = cand > 0
        if not take.any():
            break
        flat_ids[(coords[take] * strides).sum(1)] = cand[take].to(ids.dtype)
        coords, want = coords[~take], want[~take]
    # What is left is not connected to a lesion of its label (e.g. a lone voxel the interpolated labels
    # put between the tumour and a node): the nearest voxel of a lesion of that label in the patch gives
    # the id. Such orphans are a handful per batch, so a scan per orphan costs nothing.
    for coord, label in zip(coords.tolist(), want.tolist()):
        channel = ids[coord[0]]
        pos = ((lut[channel.long()] == label) & (channel > 0)).nonzero()
        if pos.shape[0]:
            nearest = pos[((pos - torch.tensor(coord[1:])) ** 2).sum(1).argmin()]
            channel[tuple(coord[1:])] = channel[tuple(nearest.tolist())]


class LesionSpatialTransform(SpatialTransform):
    """nnU-Net's SpatialTransform for a segmentation whose second half of channels are lesion ids.

    Label channels go through the parent unchanged (nnU-Net's interpolated
    one-hot argmax), id channels through nearest neighbour, so ids are never
    invented and never averaged. The two samplings can disagree on a thin
    shell at lesion borders; there ids are made consistent with the labels:
    an id whose lesion has another label is dropped, and a foreground voxel
    left without an id takes the id of a lesion of its label connected to it. After
    this, wherever id > 0 the label equals that lesion's label.

    The id/label correspondence is read from the input crop itself (each id
    has one label: the input label at the voxel an id is sampled from), so the
    transform needs no lesion table. Ids are sampled only where the resampled
    label is foreground, and a plain crop (no rotation or scaling) crops all
    channels at once; see :meth:`_nearest_ids_on_foreground`. With
    ``Convert3DTo2DTransform`` (dummy 2-D augmentation) channels become
    (channel, z) pairs in channel-major order, so equal groups still hold
    labels, ids and each extra map.

    ``extra_maps`` more id-like maps may follow the ids (the Voronoi cells of
    :func:`preprocess_regions`, one per label): they go through nearest
    neighbour like the ids and are taken as they come (a cell map has no
    label to agree with).
    """

    extra_maps: int = 0

    @classmethod
    def from_transform(cls, transform: SpatialTransform, extra_maps: int = 0) -> "LesionSpatialTransform":
        """Same parameters as an existing SpatialTransform (so nnU-Net's augmentation stays identical)."""
        new = cls.__new__(cls)
        new.__dict__.update(transform.__dict__)
        if extra_maps:  # the class default (0) otherwise: the copy keeps exactly nnU-Net's attributes
            new.extra_maps = int(extra_maps)
        return new

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        n = segmentation.shape[0]
        groups = 2 + self.extra_maps
        if n % groups:
            raise ValueError(f"expected label and id channels (and {self.extra_maps} extra maps) in equal number, "
                             f"got {n} segmentation channels")
        per = n // groups
        labels_in, ids_in, extra_in = segmentation[:per], segmentation[per:2 * per], segmentation[2 * per:]
        if params["grid"] is None:  # a plain crop (no rotation or scaling): one crop of all channels, aligned
            return super()._apply_to_segmentation(segmentation, **params)
        labels = super()._apply_to_segmentation(labels_in, **params)
        with _mode_seg(self, "nearest"):
            extra = (super()._apply_to_segmentation(extra_in, **params) if self.extra_maps
                     else labels[:0])
        ids, lut, orphans = self._nearest_ids_on_foreground(labels_in, ids_in, labels, params["grid"])
        if orphans is not None:
            _fill_from_neighbours(ids, labels, lut, orphans)
        return torch.cat((labels, ids, extra.to(ids.dtype)))

    def _nearest_ids_on_foreground(self, labels_in: torch.Tensor, ids_in: torch.Tensor, labels: torch.Tensor,
                                   grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-neighbour ids at the foreground voxels of ``labels`` where their lesion's label agrees, 0 elsewhere.

        The ids are exactly what the parent's ``mode_seg='nearest'`` path gives at those voxels (same
        grid points, padding and corner convention; ``grid_sample`` reads each output point on its
        own, so sampling only some points changes no value). The input labels are sampled at the same
        points in the same pass: the label of the source voxel is the label of the lesion whose id it
        holds, so an id is kept where that label equals the voxel's (interpolated) label, and dropped
        otherwise. Background and padding voxels (label <= 0) would have every id dropped, so they are
        not sampled at all: the pass costs the foreground, not the patch, and no table of the input's
        ids is built.

        Returns:
          ``(ids, lut, orphans)``: ids shaped like ``labels``; ``lut[id]``, the label of each id in ``ids``
          (0 for others); the foreground voxels left without an id (a bool mask), ``None`` if there are none.
        """
        ids = torch.zeros_like(labels)
        lut = torch.zeros(MAX_LESIONS_PER_CASE + 1, dtype=labels.dtype)
        fg = (labels > 0).any(0)
        points = grid[fg]  # grid: (*patch, dim), the sample point of each output voxel
        if not points.shape[0]:
            return ids, lut, None
        dim, per = points.shape[1], labels_in.shape[0]
        padding_mode = self._get_grid_sample_padding_mode(self.border_mode_seg)
        # as SpatialTransform's nearest path: grid_sample pads with zeros, shifted to make that the padding label
        shift = float(self.padding_value_seg if self.border_mode_seg == "constant" else 0) \
            if padding_mode == "zeros" else 0.
        source = torch.cat((labels_in, ids_in))[None].float()
        if shift:
            source -= shift
        sampled = torch.nn.functional.grid_sample(
            source, points.view(1, -1, *([1] * (dim - 1)), dim), mode="nearest",
            padding_mode=padding_mode, align_corners=self.align_corners)[0].reshape(2 * per, -1)
        if shift:
            sampled += shift
        sampled = sampled.to(ids.dtype)
        want = labels[:, fg]
        got = torch.where((sampled[per:] > 0) & (sampled[:per] == want), sampled[per:], 0)
        ids[:, fg] = got
        lut.scatter_(0, got.reshape(-1).long(), want.reshape(-1))  # got 0 collects the rest; reset below
        lut[0] = 0
        left = (want > 0) & (got == 0)
        if not left.any():
            return ids, lut, None
        orphans = torch.zeros(labels.shape, dtype=torch.bool)
        orphans[:, fg] = left
        return ids, lut, orphans


def lesion_training_transforms(transforms, extra_maps: int = 0):
    """nnU-Net's training transforms with its SpatialTransform swapped for :class:`LesionSpatialTransform`.

    ``extra_maps``: number of id-like maps after the ids in the segmentation channels.
    """
    steps = getattr(transforms, "transforms", None)
    if steps is None:
        raise TypeError(f"expected a ComposeTransforms, got {type(transforms).__name__}")
    swapped = 0
    for i, t in enumerate(steps):
        if type(t) is SpatialTransform:
            steps[i] = LesionSpatialTransform.from_transform(t, extra_maps)
            swapped += 1
    if swapped != 1:
        raise RuntimeError(f"expected exactly one SpatialTransform in nnU-Net's training transforms, found {swapped}")
    return transforms
