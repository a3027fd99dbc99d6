import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vadice.lesions import label_components, label_lesions, lesion_volumes_mm3

STRUCTURES = {6: ndi.generate_binary_structure(3, 1), 18: ndi.generate_binary_structure(3, 2),
              26: ndi.generate_binary_structure(3, 3)}


@settings(max_examples=40, deadline=None, derandomize=True)
@given(arrays(np.uint8, (5, 6, 7), elements=st.integers(0, 2)), st.sampled_from([6, 18, 26]))
def test_components_match_scipy_per_label(mask, connectivity):
    instances, comp_label = label_components(mask, connectivity=connectivity)
    expected_total = 0
    for label in (1, 2):
        ref, n = ndi.label(mask == label, structure=STRUCTURES[connectivity])
        expected_total += n
        # same partition: each scipy component maps to exactly one of ours and vice versa
        pairs = np.unique(np.stack([ref[ref > 0], instances[ref > 0]]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
        assert np.all(comp_label[pairs[1]] == label)
    assert len(comp_label) - 1 == expected_total
    assert np.array_equal(instances > 0, mask > 0)


def test_corner_touching_lesions_depend_on_connectivity():
    m = np.zeros((3, 3, 3), np.uint8)
    m[0, 0, 0] = 2
    m[1, 1, 1] = 2
    assert len(label_lesions(m, (1, 1, 1), connectivity=26)[1]) == 1
    assert len(label_lesions(m, (1, 1, 1), connectivity=6)[1]) == 2


def test_volumes_centroids_and_label_filter():
    m = np.zeros((10, 10, 10), np.uint8)
    m[1:3, 1:4, 1:5] = 1  # 24 voxels
    m[6, 6, 6] = 2
    inst, lesions = label_lesions(m, (2.0, 0.5, 0.5))
    assert [(l.label, l.voxels) for l in lesions] == [(1, 24), (2, 1)]
    assert lesions[0].volume_mm3 == pytest.approx(24 * 0.5)
    assert lesions[0].centroid == pytest.approx((1.5, 2.0, 2.5))
    assert lesions[0].bbox == (1, 3, 1, 4, 1, 5)
    vols = lesion_volumes_mm3(inst, (2.0, 0.5, 0.5))
    assert vols[1:].tolist() == pytest.approx([12.0, 0.5])
    inst2, only_nodes = label_lesions(m, (1, 1, 1), labels=[2])
    assert [l.label for l in only_nodes] == [2] and inst2[1, 1, 1] == 0


def test_bad_arguments():
    m = np.zeros((3, 3, 3), np.uint8)
    with pytest.raises(ValueError, match="connectivity"):
        label_components(m, connectivity=8)
    with pytest.raises(ValueError, match="integer"):
        label_components(m.astype(float))
    with pytest.raises(ValueError, match="spacing"):
        label_lesions(m, (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        label_lesions(m, (1, 0, 1))


def test_empty_mask():
    inst, lesions = label_lesions(np.zeros((4, 4, 4), np.uint8), (1, 1, 1))
    assert lesions == [] and not inst.any()


@pytest.mark.parametrize("connectivity, structure", [(6, 1), (18, 2), (26, 2)])
@pytest.mark.parametrize("shape", [(1, 9), (7, 1), (6, 8)])
def test_2d_components_match_scipy_including_single_rows(connectivity, structure, shape):
    # cc3d's own 2-D path mislabelled background pixels of single-row images under 8-connectivity
    rng = np.random.default_rng(sum(shape) + connectivity)
    for _ in range(30):
        mask = (rng.random(shape) < 0.5).astype(np.uint8)
        instances, comp_label = label_components(mask, connectivity=connectivity)
        ref, n = ndi.label(mask, structure=ndi.generate_binary_structure(2, structure))
        assert instances.shape == mask.shape
        assert np.array_equal(instances > 0, mask > 0)
        assert len(comp_label) - 1 == n
        pairs = np.unique(np.stack([ref[ref > 0], instances[ref > 0]]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
