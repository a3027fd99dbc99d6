"""Safe NIfTI (and MetaImage) input/output.

Reading goes through nibabel rather than SimpleITK because SimpleITK silently
zero-fills a truncated ``.nii.gz`` and turns NaN voxels into 0 (see
docs/data.md); nibabel raises on truncation and keeps NaN, so one read gives
both the data and an integrity check. Writing goes through SimpleITK, which
keeps the ITK geometry (spacing, origin, direction) that planning systems and
nnU-Net expect, and always lands atomically (temporary name, then rename).

MetaImage (``.mha``, the HNTS-MRG container format) is read with SimpleITK,
which does raise on a truncated ``.mha`` (checked), so the same guarantees hold.

Arrays are returned in (z, y, x) order; :class:`Geometry` keeps ITK's (x, y, z)
order and offers ``spacing_zyx`` for array-order work.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io as _stdio
import json
import math
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

NIFTI_SUFFIXES = (".nii.gz", ".nii")
METAIMAGE_SUFFIXES = (".mha",)

# Matches the tolerance nnU-Net's own integrity check uses for spacing/origin/direction.
GEOMETRY_ATOL = 1e-4


class InputError(ValueError):
    """Bad input. ``str(err)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if path is not None else problem)


@dataclass(frozen=True)
class Geometry:
    """ITK image geometry, all tuples in (x, y, z) order as SimpleITK reports them."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major 3x3

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing))

    @property
    def shape_zyx(self) -> tuple[int, ...]:
        return tuple(reversed(self.size))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @classmethod
    def of_sitk(cls, image: sitk.Image) -> "Geometry":
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(s) for s in image.GetOrigin()),
            direction=tuple(float(s) for s in image.GetDirection()),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def differences(self, other: "Geometry", atol: float = GEOMETRY_ATOL) -> list[str]:
        """Human-readable list of what differs (empty when the grids match)."""
        out = []
        if self.size != other.size:
            out.append(f"size {other.size} != {self.size}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=atol):
                out.append(f"{name} {_fmt(getattr(other, name))} != {_fmt(getattr(self, name))}")
        return out

    def to_dict(self) -> dict:
        return {k: list(getattr(self, k)) for k in ("size", "spacing", "origin", "direction")}


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _geometry_from_nibabel(img: nib.Nifti1Image) -> Geometry:
    return geometry_from_affine(img.affine, img.shape)


def geometry_from_affine(affine: np.ndarray, shape: Sequence[int]) -> Geometry:
    """:class:`Geometry` of a NIfTI image from nibabel's affine (voxel i, j, k -> RAS+ mm) and its shape."""
    # ITK works in LPS+, so flip x and y.
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    rot = affine[:3, :3]
    spacing = np.linalg.norm(rot, axis=0)
    spacing_safe = np.where(spacing > 0, spacing, 1.0)
    direction = rot / spacing_safe
    return Geometry(
        size=tuple(int(s) for s in shape[:3]),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(s) for s in affine[:3, 3]),
        direction=tuple(float(s) for s in direction.reshape(-1)),
    )


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def is_metaimage(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(METAIMAGE_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_nifti(path: str | os.PathLike, *, check_finite: bool = True) -> tuple[np.ndarray, Geometry]:
    """Read a 3-D NIfTI file fully and check it.

    Args:
      path: ``.nii`` or ``.nii.gz`` file.
      check_finite: reject NaN/Inf voxels (float images only).

    Returns:
      ``(array, geometry)``: array in (z, y, x) order with the file's dtype
      (scaled when the header carries a slope), and its :class:`Geometry`.

    Raises:
      InputError: missing file, not NIfTI, truncated or corrupt data, not 3-D,
        or non-finite voxels. The message names the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if not is_nifti(path):
        raise InputError(path, "not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for garbage headers
        raise InputError(path, f"unreadable NIfTI header ({_short(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, "not a NIfTI-1/2 image")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3-D image, got {len(img.shape)}-D shape {tuple(img.shape)}")
    if min(shape) < 1:
        raise InputError(path, f"empty image shape {tuple(shape)}")
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputError(path, f"truncated or corrupt image data ({_short(exc)})") from None
    data = data.reshape(shape, order="F")
    if check_finite and data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(path, f"{bad} non-finite voxels (NaN/Inf)")
    # nibabel gives (x, y, z) in Fortran order; the transpose is a C-contiguous (z, y, x) view.
    return data.T, _geometry_from_nibabel(img)


def read_mha(path: str | os.PathLike, *, check_finite: bool = True) -> sitk.Image:
    """Read a 3-D scalar MetaImage (``.mha``) and check its voxels are finite.

    Raises:
      InputError: missing, unreadable or truncated, not 3-D scalar, or non-finite voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        # For an existing file whose data block is short or corrupt, ITK says "File cannot be read ...
        # No such file or directory" (the detail goes to the C stderr only): say what it means instead.
        detail = " ".join(str(exc).split())
        if "cannot be read" in detail:
            raise InputError(path, "truncated or corrupt MetaImage (ITK could not read its header or voxel "
                                   "data)") from None
        raise InputError(path, f"unreadable image ({detail[-160:]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"expected a 3-D scalar image, got {image.GetDimension()}-D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    array = sitk.GetArrayViewFromImage(image)
    if check_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise InputError(path, f"{bad} non-finite voxels (NaN/Inf)")
    return image


def read_image(path: str | os.PathLike, *, check_finite: bool = True) -> tuple[np.ndarray, Geometry]:
    """Read a 3-D NIfTI (:func:`read_nifti`) or MetaImage (:func:`read_mha`) file, by its suffix.

    Returns:
      ``(array, geometry)``, array in (z, y, x) order with the file's dtype.

    Raises:
      InputError: as :func:`read_nifti` / :func:`read_mha`; a suffix that is neither.
    """
    if is_metaimage(path):
        image = read_mha(path, check_finite=check_finite)
        return sitk.GetArrayFromImage(image), Geometry.of_sitk(image)
    if not is_nifti(path):
        raise InputError(path, "not a NIfTI or MetaImage file (expected .nii.gz, .nii or .mha)")
    return read_nifti(path, check_finite=check_finite)


def read_geometry(path: str | os.PathLike) -> Geometry:
    """Geometry from the header only (no voxel data read)."""
    path = Path(path)
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except Exception as exc:
        raise InputError(path, f"unreadable NIfTI header ({_short(exc)})") from None
    return _geometry_from_nibabel(img)


def read_mask(
    path: str | os.PathLike,
    allowed_labels: Sequence[int] | None = (0, 1, 2),
) -> tuple[np.ndarray, Geometry]:
    """Read a label map and check it holds integer labels within ``allowed_labels``.

    Returns:
      ``(labels, geometry)`` with labels as uint8 (z, y, x).

    Raises:
      InputError: as :func:`read_nifti`, plus non-integer values or labels
        outside ``allowed_labels``.
    """
    data, geom = read_nifti(path)
    if data.dtype.kind == "f":
        if not np.array_equal(data, np.round(data)):
            raise InputError(path, "mask has non-integer values (e.g. "
                             f"{_first_non_integer(data):g}); expected integer labels")
        data = data.astype(np.int64)
    elif data.dtype.kind not in "iub":
        raise InputError(path, f"mask has unsupported dtype {data.dtype}")
    values = label_values(data)
    if allowed_labels is not None:
        stray = [v for v in values.tolist() if int(v) not in set(allowed_labels)]
        if stray:
            raise InputError(
                path,
                f"unexpected label value(s) {', '.join(f'{v:g}' for v in stray)}; "
                f"allowed {sorted(set(allowed_labels))}",
            )
    if values.size and (values.min() < 0 or values.max() > 255):
        raise InputError(path, "labels must lie in 0..255")
    return data.astype(np.uint8, copy=False), geom


def umask_mode(base: int = 0o666) -> int:
    """``base`` with the process umask applied: the mode a plain open()/mkdir() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _publish(tmp: str, path: Path) -> None:
    # mkstemp creates files 0600; give the final file the mode a plain open() would have.
    os.chmod(tmp, umask_mode())
    os.replace(tmp, path)


def label_values(data: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array, by bincount (np.unique sorts: ~10x slower on big masks)."""
    flat = data.reshape(-1)
    if flat.size == 0:
        return flat[:0]
    if data.dtype == np.uint8 or data.dtype == bool:
        return np.flatnonzero(np.bincount(flat.view(np.uint8), minlength=2))
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < 1 << 20:
        return np.flatnonzero(np.bincount((flat - lo).astype(np.intp, copy=False))) + lo
    return np.unique(flat)


def _first_non_integer(data: np.ndarray) -> float:
    flat = data.reshape(-1)
    idx = np.flatnonzero(flat != np.round(flat))
    return float(flat[idx[0]])


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """(z, y, x) array plus geometry -> SimpleITK image."""
    if tuple(array.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape_zyx}")
    return geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def write_nifti(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Write ``array`` (z, y, x) with ``geometry`` to ``path`` atomically."""
    return write_sitk(to_sitk(array, geometry), path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".part") -> Iterator[str]:
    """Yield a temporary sibling name of ``path``; on success it becomes ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_sitk(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write a SimpleITK image atomically (temporary sibling, then rename)."""
    path = Path(path)
    # SimpleITK picks the writer from the suffix, so the temporary name keeps it.
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else path.suffix
    with atomic_file(path, suffix=f".part{suffix}") as tmp:
        sitk.WriteImage(image, tmp, useCompression=str(path).endswith(".gz"))
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a binary file atomically."""
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a new directory under a temporary sibling name; rename it into place on success.

    On any exception the temporary directory is removed and ``final`` is left
    untouched. Without ``replace``, ``final`` must not exist yet. With
    ``replace``, an existing ``final`` (the caller has checked it may go) is
    renamed aside and removed only after the new folder is in place, so a
    crash leaves either the old or the new folder complete, never a mixture.

    Raises:
      FileExistsError: ``final`` exists and ``replace`` is false.
    """
    final = Path(final).absolute()
    if final.exists() and not replace:
        raise FileExistsError(f"{final}: already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp creates 0700
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / "x")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "x").exists() and not final.exists():
            os.replace(old / "x", final)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_dir_atomically(out_dir: str | os.PathLike, files: Mapping[str, str]) -> Path:
    """Write ``{name: text}`` as a new folder ``out_dir``, replacing an existing (checked) one atomically."""
    with atomic_dir(out_dir, replace=True) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out_dir).absolute()


def json_clean(obj):
    """NaN/inf -> None (an undefined precision, say), NumPy scalars -> Python, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Rows as CSV text with a header; a NaN float is written as an empty field.

    Raises:
      ValueError: a row holds a key outside ``columns``.
    """
    buf = _stdio.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="raise")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buf.getvalue()


def check_out_dir(out_dir: str | os.PathLike, marker: str, tag: str, own_files: Sequence[str]) -> Path:
    """Refuse an output path we must not replace.

    Accepted: a missing path, an empty directory, or an earlier output folder
    of the same tool (``marker`` file carrying ``"tool": tag`` and only files
    from ``own_files``), which is then replaced as a whole.

    Raises:
      InputError: the path is a file, or a non-empty folder that is not ours.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return out_dir
    if not out_dir.is_dir():
        raise InputError(out_dir, "output path exists and is a file, not a directory")
    entries = [p.name for p in out_dir.iterdir()]
    if not entries:
        return out_dir
    ours = False
    try:
        ours = json.loads((out_dir / marker).read_text(encoding="utf-8")).get("tool") == tag
    except (OSError, ValueError, AttributeError):
        pass
    if not ours or not set(entries) <= set(own_files):
        raise InputError(out_dir, f"output folder exists and is not a '{tag}' folder "
                                  "(refusing to overwrite; choose a new or empty folder)")
    return out_dir


def check_output_dir(path: str | os.PathLike) -> Path:
    """Refuse an output path that exists and is not a directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "output path exists and is a file, not a directory")
    return path


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` byte for byte, atomically (temporary sibling, then rename)."""
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
