"""Lesion ids through nnU-Net's data pipeline: lazy 2-channel crops and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

blosc2 = pytest.importorskip("blosc2")
pytest.importorskip("nnunetv2")

from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd  # noqa: E402
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402

from vadice.lesions import label_components  # noqa: E402
from vadice.nnunet.augmentation import (  # noqa: E402
    LesionSpatialTransform,
    _fill_from_neighbours,
    lesion_training_transforms,
)
from vadice.nnunet.datasets import SegWithInstances  # noqa: E402


def _blob(shape, center, radii):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1


def _case(seed: int, shape=(20, 40, 40)):
    """Label map with a large label-1 lesion and several label-2 lesions, some touching each other."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int16)
    lab[_blob(shape, (10, 20, 14), (6, 9, 8))] = 1
    for _ in range(rng.integers(2, 6)):
        c = (rng.integers(2, shape[0] - 2), rng.integers(2, shape[1] - 2), rng.integers(2, shape[2] - 2))
        r = rng.uniform(1.2, 4.0)
        lab[_blob(shape, c, (r, r, r)) & (lab == 0)] = 2
    ids, _ = label_components(lab, (1, 2), 26)
    return lab, ids.astype(np.int16)


def _touching_case(seed: int, shape=(20, 40, 40)):
    """Nodes (2) pressed against the tumour (1) and against each other, ids shuffled.

    Shuffling makes a neighbouring lesion of the other label carry the larger id
    as often as the smaller one: a fill that takes the largest neighbouring id
    before looking at its label fails here.
    """
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int16)
    centre, radii = np.array((10, 20, 16)), np.array((6, 9, 8))
    lab[_blob(shape, centre, radii)] = 1
    for _ in range(rng.integers(3, 7)):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        r = rng.uniform(1.5, 4.0)
        c = np.clip(np.round(centre + direction * (radii + r * 0.6)), 1, np.array(shape) - 2)
        lab[_blob(shape, c, (r, r, r)) & (lab == 0)] = 2
    ids, component_label = label_components(lab, (1, 2), 26)
    n = len(component_label) - 1
    perm = np.concatenate([[0], rng.permutation(np.arange(1, n + 1))])
    return lab, perm[ids].astype(np.int16)


def _transforms(patch, dummy_2d=False):
    rotation = (-np.pi / 6, np.pi / 6)
    return nnUNetTrainer.get_training_transforms(
        patch, rotation, [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]], (0, 1, 2), dummy_2d,
        use_mask_for_norm=[False], is_cascaded=False, foreground_labels=[1, 2], regions=None, ignore_label=None)


def _run(transforms, image, seg, seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    out = transforms(image=image.clone(), segmentation=seg.clone())
    return out["image"], out["segmentation"]


# ------------------------------------------------------------------------------------------ crops


def test_seg_with_instances_crops_like_stacked_array(tmp_path):
    lab, ids = _case(0)
    seg = blosc2.asarray(np.ascontiguousarray(lab[None].astype(np.int8)), urlpath=str(tmp_path / "s.b2nd"),
                         chunks=(1, 10, 20, 20), blocks=(1, 5, 10, 10))
    inst = blosc2.asarray(np.ascontiguousarray(ids[None]), urlpath=str(tmp_path / "i.b2nd"),
                          chunks=(1, 10, 20, 20), blocks=(1, 5, 10, 10))
    lazy = SegWithInstances(seg, inst)
    stacked = np.concatenate([lab[None], ids[None]]).astype(np.int16)
    assert lazy.shape == stacked.shape
    np.testing.assert_array_equal(np.asarray(lazy), stacked)
    np.testing.assert_array_equal(lazy[:, 3:9, 5:30, 0:7], stacked[:, 3:9, 5:30, 0:7])
    np.testing.assert_array_equal(lazy[1], stacked[1])
    # nnU-Net's own crop (with padding past the border, as its data loader does)
    for bbox in ([[-4, 12], [30, 50], [0, 40]], [[5, 15], [-10, 10], [35, 60]]):
        got = crop_and_pad_nd(lazy, bbox, -1, cast_cropped_to=np.int16)
        want = crop_and_pad_nd(stacked, bbox, -1, cast_cropped_to=np.int16)
        np.testing.assert_array_equal(got, want)


def test_seg_with_instances_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        SegWithInstances(np.zeros((1, 4, 4, 4)), np.zeros((1, 4, 4, 5)))


# ----------------------------------------------------------------------------------- augmentation


def test_only_the_spatial_transform_is_swapped():
    pipeline = _transforms((16, 32, 32))
    before = list(pipeline.transforms)
    original = next(t for t in before if type(t).__name__ == "SpatialTransform")
    ours = lesion_training_transforms(pipeline)
    assert len(ours.transforms) == len(before)
    for old, new in zip(before, ours.transforms):
        if old is original:
            assert type(new) is LesionSpatialTransform
            # every parameter nnU-Net chose is carried over as the very same object
            assert vars(new).keys() == vars(original).keys()
            assert all(vars(new)[k] is v for k, v in vars(original).items())
        else:
            assert new is old  # the other steps are nnU-Net's own objects, in nnU-Net's order


def _check_ids(labels_in, ids_in, labels_out, ids_out):
    lesion_label = {int(k): int(labels_in[ids_in == k][0]) for k in torch.unique(ids_in) if k > 0}
    for k in torch.unique(ids_out).tolist():
        if k == 0:
            continue
        assert k in lesion_label, f"id {k} invented"
        assert set(torch.unique(labels_out[ids_out == k]).tolist()) == {lesion_label[k]}


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), dummy_2d=st.booleans())
def test_augmented_ids_are_nearest_neighbour_and_consistent_with_labels(seed, dummy_2d):
    lab, ids = _case(seed % 50)
    image = torch.from_numpy(np.random.default_rng(seed).normal(size=(1, *lab.shape)).astype(np.float32))
    seg = torch.from_numpy(np.stack([lab, ids])).to(torch.int16)
    patch = (16, 32, 32)
    # rotation and scaling always on, so the interpolating path is exercised
    ours = lesion_training_transforms(_transforms(patch, dummy_2d))
    for t in ours.transforms:
        if isinstance(t, LesionSpatialTransform):
            t.p_rotation, t.p_scaling = 1.0, 1.0
    img_out, seg_out = _run(ours, image, seg, seed)
    assert isinstance(seg_out, list) and len(seg_out) == 3
    for scale in seg_out:
        assert scale.shape[0] == 2 and scale.dtype == torch.int16
        assert scale.min() >= 0  # the -1 padding was removed from both channels
        _check_ids(seg[0], seg[1], scale[0], scale[1])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), dummy_2d=st.booleans())
@example(seed=765, dummy_2d=True)  # a lone label voxel unconnected to its lesion (found by hypothesis in CI)
def test_every_foreground_voxel_keeps_an_id_when_structures_touch(seed, dummy_2d):
    """Strict: after rotation and scaling, no foreground voxel at any scale is left without an id."""
    lab, ids = _touching_case(seed)
    assert (lab == 2).any() and (ndimage_touch(lab)), "the case must have nodes touching the tumour"
    image = torch.zeros((1, *lab.shape))
    seg = torch.from_numpy(np.stack([lab, ids])).to(torch.int16)
    ours = lesion_training_transforms(_transforms((16, 32, 32), dummy_2d))
    for t in ours.transforms:
        if isinstance(t, LesionSpatialTransform):
            t.p_rotation, t.p_scaling = 1.0, 1.0
    _, seg_out = _run(ours, image, seg, seed)
    for scale in seg_out:
        _check_ids(seg[0], seg[1], scale[0], scale[1])
        fg = scale[0] > 0
        assert int((scale[1][fg] == 0).sum()) == 0


def ndimage_touch(lab: np.ndarray) -> bool:
    """Whether some label-2 voxel is 26-adjacent to a label-1 voxel."""
    from scipy import ndimage

    return bool((ndimage.binary_dilation(lab == 1, structure=np.ones((3, 3, 3))) & (lab == 2)).any())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_label_channel_and_image_identical_to_nnunet(seed):
    """Carrying ids must not change nnU-Net's augmentation of image and labels."""
    lab, ids = _case(seed)
    image = torch.from_numpy(np.random.default_rng(seed).normal(size=(1, *lab.shape)).astype(np.float32))
    seg2 = torch.from_numpy(np.stack([lab, ids])).to(torch.int16)
    patch = (16, 32, 32)
    plain, ours = _transforms(patch), lesion_training_transforms(_transforms(patch))
    for pipeline in (plain, ours):
        for t in pipeline.transforms:
            if type(t).__name__ in ("SpatialTransform", "LesionSpatialTransform"):
                t.p_rotation, t.p_scaling = 1.0, 1.0
    img_a, seg_a = _run(plain, image, seg2[:1], seed)
    img_b, seg_b = _run(ours, image, seg2, seed)
    torch.testing.assert_close(img_a, img_b)
    for a, b in zip(seg_a, seg_b):
        torch.testing.assert_close(a[0], b[0])


@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (1, 1, 8)], ids=["3d", "2d-channels"])
def test_fill_follows_orphan_chains_and_never_takes_another_labels_id(shape):
    # x:       0  1  2  3  4  5  6  7
    # labels:  1  1  1  1  1  2  0  1      lesion 1 (label 1) at 0-1, lesion 5 (label 2) at 5
    # ids:     1  1  0  0  0  5  0  0      orphans (label > 0, id 0): 2, 3, 4 and 7
    # Voxel 4 touches lesion 5, the larger id, but of label 2: it must wait for lesion 1's id to arrive along
    # the chain 2 -> 3 -> 4 (three rounds). Voxel 7 is connected to no label-1 lesion: it takes the id of the
    # nearest label-1 lesion voxel (voxel 4, filled in round 3), never lesion 5's (closer, but label 2).
    labels = torch.tensor([1, 1, 1, 1, 1, 2, 0, 1], dtype=torch.int16).view(shape)
    ids = torch.tensor([1, 1, 0, 0, 0, 5, 0, 0], dtype=torch.int16).view(shape)
    lut = torch.zeros(8, dtype=torch.int16)
    lut[1], lut[5] = 1, 2
    _fill_from_neighbours(ids, labels, lut, (labels > 0) & (ids == 0))
    assert ids.flatten().tolist() == [1, 1, 1, 1, 1, 5, 0, 1]
    # An orphan whose label has no lesion voxel anywhere in the patch has nothing to take: it stays 0.
    labels = torch.tensor([2, 2, 0, 1, 0, 0, 0, 0], dtype=torch.int16).view(shape)
    ids = torch.tensor([5, 5, 0, 0, 0, 0, 0, 0], dtype=torch.int16).view(shape)
    _fill_from_neighbours(ids, labels, lut, (labels > 0) & (ids == 0))
    assert ids.flatten().tolist() == [5, 5, 0, 0, 0, 0, 0, 0]


def test_plain_crop_keeps_ids_exactly():
    lab, ids = _case(7)
    seg = torch.from_numpy(np.stack([lab, ids])).to(torch.int16)
    t = LesionSpatialTransform.from_transform(
        next(t for t in _transforms((16, 32, 32)).transforms if type(t).__name__ == "SpatialTransform"))
    t.p_rotation = t.p_scaling = t.p_elastic_deform = 0.0
    torch.manual_seed(0)
    out = t(image=torch.zeros((1, *lab.shape)), segmentation=seg.clone())["segmentation"]
    z0, y0, x0 = [(s - p) // 2 for s, p in zip(lab.shape, (16, 32, 32))]
    torch.testing.assert_close(out, seg[:, z0:z0 + 16, y0:y0 + 32, x0:x0 + 32])


def test_odd_channel_count_is_rejected():
    t = LesionSpatialTransform.from_transform(
        next(t for t in _transforms((8, 8, 8)).transforms if type(t).__name__ == "SpatialTransform"))
    with pytest.raises(ValueError, match="label and id channels"):
        t(image=torch.zeros((1, 8, 8, 8)), segmentation=torch.zeros((3, 8, 8, 8), dtype=torch.int16))


def _reference_lesion_spatial(t, segmentation, params):
    """The full-patch formulation: nearest-neighbour ids over the whole patch, then the consistency rule."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    from vadice.nnunet.augmentation import _mode_seg
    from vadice.nnunet.lesion_cache import MAX_LESIONS_PER_CASE

    per = segmentation.shape[0] // 2
    labels_in, ids_in = segmentation[:per], segmentation[per:]
    labels = SpatialTransform._apply_to_segmentation(t, labels_in, **params)
    with _mode_seg(t, "nearest"):
        ids = SpatialTransform._apply_to_segmentation(t, ids_in, **params)
    if params["grid"] is None:
        return torch.cat((labels, ids))
    ids = ids.clamp_min(0).contiguous()
    lut = torch.zeros(MAX_LESIONS_PER_CASE + 1, dtype=labels.dtype)
    lut.scatter_(0, ids_in.reshape(-1).long().clamp_(min=0), labels_in.reshape(-1).to(labels.dtype))
    lut[0] = 0
    ids[lut[ids.long()] != labels] = 0
    orphans = (labels > 0) & (ids == 0)
    if orphans.any():
        _fill_from_neighbours(ids, labels, lut, orphans)
    return torch.cat((labels, ids))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), dummy_2d=st.booleans(), touching=st.booleans())
def test_foreground_only_id_sampling_equals_the_full_patch_pass(seed, dummy_2d, touching):
    """Sampling ids only at foreground voxels gives exactly the ids of a nearest pass over the whole patch."""
    lab, ids = (_touching_case if touching else _case)(seed % 200)
    seg = torch.from_numpy(np.stack([lab, ids])).to(torch.int16)
    t = LesionSpatialTransform.from_transform(
        next(t for t in _transforms((16, 32, 32), dummy_2d).transforms if type(t).__name__ == "SpatialTransform"))
    t.p_rotation, t.p_scaling = 1.0, 1.0
    if dummy_2d:  # as Convert3DTo2DTransform hands it over: (channel, z) pairs as channels, 2-D patches
        seg = seg.reshape(-1, *seg.shape[2:])
    torch.manual_seed(seed)
    np.random.seed(seed)
    params = t.get_parameters(image=seg[:1].float(), segmentation=seg)
    assert params["grid"] is not None
    got = t._apply_to_segmentation(seg.clone(), **params)
    want = _reference_lesion_spatial(t, seg.clone(), params)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # and a plain crop is a plain crop
    params = dict(params, grid=None)
    torch.testing.assert_close(t._apply_to_segmentation(seg.clone(), **params),
                               _reference_lesion_spatial(t, seg.clone(), params), rtol=0, atol=0)


def test_instance_crop_reads_only_the_foreground_box(tmp_path):
    """Crops without foreground never decompress the instance map; others equal the stacked array."""
    lab, ids = _case(3)
    lab[:, :2] = -1  # nnU-Net's outside-the-mask value is not foreground
    seg = blosc2.asarray(np.ascontiguousarray(lab[None].astype(np.int8)), urlpath=str(tmp_path / "s.b2nd"),
                         chunks=(1, 10, 20, 20), blocks=(1, 5, 10, 10))
    inst = blosc2.asarray(np.ascontiguousarray(ids[None]), urlpath=str(tmp_path / "i.b2nd"),
                          chunks=(1, 10, 20, 20), blocks=(1, 5, 10, 10))
    reads = []

    class Counting:
        shape = inst.shape

        def __getitem__(self, key):
            reads.append(key)
            return inst[key]

    lazy = SegWithInstances(seg, Counting())
    stacked = np.concatenate([lab[None], ids[None]]).astype(np.int16)
    empty = [[0, 20], [0, 5], [0, 40]]
    assert not (lab[:, :5] > 0).any()
    np.testing.assert_array_equal(crop_and_pad_nd(lazy, empty, -1), crop_and_pad_nd(stacked, empty, -1))
    assert reads == []
    rng = np.random.default_rng(0)
    for _ in range(30):
        bbox = [[int(a), int(max(a + rng.integers(1, s), 1))] for s in lab.shape for a in [rng.integers(-4, s - 1)]]
        np.testing.assert_array_equal(crop_and_pad_nd(lazy, bbox, -1, cast_cropped_to=np.int16),
                                      crop_and_pad_nd(stacked, bbox, -1, cast_cropped_to=np.int16))


def test_case_loop_keeps_finished_cases_when_one_fails():
    """A run that fails part-way has saved every case finished before the failure, so a rerun resumes there."""
    from vadice.nnunet.lesion_cache import _run_cases

    def work(case):
        if case == "c2":
            raise RuntimeError("unreadable case")
        return case, {"done": True}

    class Bar:
        n = 0

        def update(self):
            self.n += 1

    record, saved = {"c0": {"done": "earlier run"}}, []
    with pytest.raises(RuntimeError, match="unreadable"):
        _run_cases(work, ["c1", "c2", "c3"], record, lambda: saved.append(dict(record)), 1, Bar())
    assert saved and saved[-1] == {"c0": {"done": "earlier run"}, "c1": {"done": True}}
    saved.clear()
    _run_cases(work, [], record, lambda: saved.append(dict(record)), 1, Bar())
    assert saved == []  # nothing to do: the record is not rewritten
