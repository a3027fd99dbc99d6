from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vadice.overlay import overlay_figure, overlay_png, pick_slice

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image(shape=(6, 20, 30), seed=0):
    return np.random.default_rng(seed).normal(100, 20, size=shape).astype(np.float32)


def test_pick_slice_largest_burden():
    labels = np.zeros((7, 16, 16), np.uint8)
    labels[1, 2:5, 2:5] = 1  # 9 voxels
    labels[4, 0:4, 0:4] = 2  # 16 voxels: largest
    labels[5, 8:10, 8:12] = 1  # 8 voxels
    assert pick_slice(labels) == 4


def test_pick_slice_counts_truth_union():
    labels = np.zeros((5, 8, 8), np.uint8)
    gt = np.zeros_like(labels)
    labels[1, :2, :2] = 1  # 4 voxels predicted on slice 1
    gt[3, :, :3] = 2  # a missed 24-voxel node on slice 3
    assert pick_slice(labels) == 1
    assert pick_slice(labels, gt) == 3


def test_pick_slice_empty_is_middle():
    assert pick_slice(np.zeros((9, 4, 4), np.uint8)) == 4


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=8))
def test_pick_slice_matches_bruteforce(counts):
    # Slice z gets counts[z] foreground voxels; the pick must be the first slice with the maximum.
    labels = np.zeros((len(counts), 4, 4), np.uint8)
    for z, n in enumerate(counts):
        labels[z].reshape(-1)[:n] = 1 + z % 2
    expected = counts.index(max(counts)) if max(counts) > 0 else len(counts) // 2
    assert pick_slice(labels) == expected


def test_pick_slice_rejects_bad_shapes():
    with pytest.raises(ValueError, match="3-D"):
        pick_slice(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        pick_slice(np.zeros((4, 4, 4), np.uint8), gt=np.zeros((4, 4, 5), np.uint8))


def test_overlay_writes_png_and_titles_slice(tmp_path):
    labels = np.zeros((6, 20, 30), np.uint8)
    labels[2, 5:10, 5:12] = 1
    labels[2, 12:15, 20:24] = 2
    labels[4, 0:3, 0:3] = 2
    gt = np.zeros_like(labels)
    gt[2, 6:11, 5:12] = 1
    out = overlay_png(_image(), labels, (3.0, 0.5, 0.5), tmp_path / "sub" / "c1.png", gt=gt, title="case c1")
    assert out == tmp_path / "sub" / "c1.png"
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert not [p for p in out.parent.iterdir() if p.name != "c1.png"]  # no temporary file left behind
    fig = overlay_figure(_image(), labels, (3.0, 0.5, 0.5), gt=gt, title="case c1")
    title = fig.axes[0].get_title()
    assert "case c1" in title and "z=2" in title
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "GTVp prediction" in legend and "GTVn truth" in legend
    # Slice 2 holds predicted GTVp and GTVn (solid) and true GTVp (dashed): three contour sets.
    contours = list(fig.axes[0].collections)
    assert len(contours) == 3
    dashed = [c for c in contours if any(dash is not None for _, dash in c.get_linestyle())]
    assert len(dashed) == 1
    # The predicted GTVp contour encloses voxels y 5..9, x 5..11 (level 0.5 lies half a voxel outside).
    verts = np.concatenate([p.vertices for p in contours[0].get_paths()])
    assert verts[:, 0].min() == pytest.approx(4.5) and verts[:, 0].max() == pytest.approx(11.5)
    assert verts[:, 1].min() == pytest.approx(4.5) and verts[:, 1].max() == pytest.approx(9.5)


def test_overlay_empty_labels(tmp_path):
    labels = np.zeros((5, 10, 10), np.uint8)
    fig = overlay_figure(_image((5, 10, 10)), labels, (2.0, 1.0, 1.0))
    title = fig.axes[0].get_title()
    assert "z=2" in title and "no structure predicted" in title and "truth" not in title
    with_truth = overlay_figure(_image((5, 10, 10)), labels, (2.0, 1.0, 1.0), gt=labels).axes[0].get_title()
    assert "no structure in truth or prediction" in with_truth
    out = overlay_png(_image((5, 10, 10)), labels, (2.0, 1.0, 1.0), tmp_path / "empty.png")
    assert out.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("spacing", [(3.0, 0.5, 0.5), (2.0, 1.2, 0.4), (1.0, 0.8, 2.4)])
def test_overlay_aspect_follows_in_plane_spacing(spacing):
    labels = np.zeros((3, 12, 16), np.uint8)
    labels[1, 4:8, 4:8] = 1
    fig = overlay_figure(_image((3, 12, 16)), labels, spacing)
    ax = fig.axes[0]
    assert ax.get_aspect() == pytest.approx(spacing[1] / spacing[2])
    # Displayed pixel shape: height/width of one pixel on screen equals y/x spacing.
    fig.canvas.draw()
    bbox = ax.get_window_extent()
    px_h = bbox.height / 12
    px_w = bbox.width / 16
    assert px_h / px_w == pytest.approx(spacing[1] / spacing[2], rel=0.03)


def test_overlay_handles_constant_and_nan_image(tmp_path):
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1, 2:4, 2:4] = 2
    image = np.full((3, 8, 8), 5.0)
    image[0, 0, 0] = np.nan
    out = overlay_png(image, labels, (1, 1, 1), tmp_path / "const.png")
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_overlay_rejects_mismatch(tmp_path):
    with pytest.raises(ValueError, match="image shape"):
        overlay_png(np.zeros((3, 8, 9)), np.zeros((3, 8, 8), np.uint8), (1, 1, 1), tmp_path / "x.png")
    with pytest.raises(ValueError):
        overlay_png(np.zeros((3, 8, 8)), np.zeros((3, 8, 8), np.uint8), (1, 1), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
