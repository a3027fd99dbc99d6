"""nnU-Net datasets that carry the whole-case lesion ids (and Voronoi cells) as extra segmentation channels.

nnU-Net's own data loader crops the stacked channels like the segmentation, so
the ids reach the augmentation (:mod:`vadice.nnunet.augmentation`) aligned with
the labels. The maps come from the lesion cache (:mod:`vadice.nnunet.lesion_cache`).
These classes pickle into nnU-Net's data-loader workers, so they live here, at a
real module path, not in the trainers file nnU-Net imports by path.
"""

from __future__ import annotations

import os

import blosc2
import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

from vadice.io import InputError
from vadice.nnunet.lesion_cache import INST_SUFFIX, REGION_SUFFIX, lesion_folder_of


class SegWithInstances:
    """Lazy view: nnU-Net's segmentation with the instance map stacked as channel 1 (and extra maps after).

    nnU-Net's data loader only asks for ``.shape`` and one ``[c, z0:z1, y0:y1,
    x0:x1]`` crop per sample (``crop_and_pad_nd``), so only the chunks of the
    blosc2 arrays under the crop are decompressed, not the whole case. ``extra``
    maps (e.g. the Voronoi cells of :func:`~vadice.nnunet.lesion_cache.preprocess_regions`) follow the ids.
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
        (:func:`~vadice.nnunet.lesion_cache.preprocess_instances`; the trainer verifies the segmentation's
        hash), so outside the box of ``seg > 0`` the map is 0 and need not be decompressed: a
        background-only crop reads nothing.
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
                raise InputError(path, f"lesion map not found: run vadice.nnunet.lesion_cache.{step} "
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
