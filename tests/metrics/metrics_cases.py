"""Generated test cases for the metrics tests (anisotropic spacing, several lesions, realistic errors)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SPACINGS = ((2.0, 0.5, 0.5), (1.2, 0.985, 0.7), (3.0, 0.8, 1.1))


def blobs(rng: np.random.Generator, shape, n: int, max_iter: int = 3) -> np.ndarray:
    """Union of ``n`` random dilated seeds: irregular, sometimes touching, blobs."""
    out = np.zeros(shape, bool)
    for _ in range(n):
        seed = np.zeros(shape, bool)
        seed[tuple(rng.integers(0, s) for s in shape)] = True
        k = int(rng.integers(0, max_iter + 1))
        # iterations=0 would mean "dilate until nothing changes" in scipy.
        out |= ndimage.binary_dilation(seed, iterations=k) if k else seed
    return out


def perturb(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Prediction-like copy: shifted, partly eroded/dilated, plus a false positive now and then."""
    shift = tuple(int(v) for v in rng.integers(-1, 2, size=3))
    out = np.roll(mask, shift, axis=(0, 1, 2))
    if rng.random() < 0.5:
        out = ndimage.binary_dilation(out) & (rng.random(mask.shape) < 0.8) | out
    else:
        out = out & ~(ndimage.binary_dilation(~out) & (rng.random(mask.shape) < 0.4))
    if rng.random() < 0.5:
        out |= blobs(rng, mask.shape, 1, 1)
    return out


def label_pair(seed: int, shape=(14, 22, 20)):
    """(gt, pred, spacing) uint8 label maps with GTVp (1) and GTVn (2)."""
    rng = np.random.default_rng(seed)
    spacing = SPACINGS[seed % len(SPACINGS)]
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    pt = blobs(rng, shape, 2, 3)
    ln = blobs(rng, shape, int(rng.integers(1, 5)), 2) & ~pt
    gt[pt] = 1
    gt[ln] = 2
    ppt, pln = perturb(rng, pt), perturb(rng, ln)
    pred[pln] = 2
    pred[ppt] = 1
    return gt, pred, spacing
