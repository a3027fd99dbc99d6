"""nnU-Net's spatial augmentation for a segmentation that carries lesion ids.

The same spatial transform moves labels and ids (ids by nearest neighbour, see
:class:`LesionSpatialTransform`); mirroring then flips them and deep
supervision downsamples them (nearest-exact) unchanged. Like the datasets, the
transform pickles into nnU-Net's data-loader workers, so it lives at a real
module path.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

from vadice.nnunet.lesion_cache import MAX_LESIONS_PER_CASE


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
    :func:`~vadice.nnunet.lesion_cache.preprocess_regions`, one per label): they go through nearest
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
