"""Synthetic lesion patches and a loop-based reference of the VA Dice definition.

The reference follows docs/va-loss.md literally (a Python loop over pools,
labels and lesions, float64 NumPy) so that the vectorised loss is checked
against an independent reading of the same formula.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROPS = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def place_boxes(rng, shape, n_lesions, labels=(1, 2), max_size=4, margin=0):
    """Label map and instance map with separated box lesions (distinct 26-connected components).

    Returns ``(y, ids, counts)`` with ids 1..K and counts[k] voxels of lesion k (index 0 unused).
    """
    shape = np.asarray(shape)
    y = np.zeros(shape, np.int64)
    ids = np.zeros(shape, np.int64)
    counts = [0]
    for _ in range(n_lesions * 20):
        if len(counts) - 1 == n_lesions:
            break
        size = rng.integers(1, np.minimum(max_size, shape - 2 * margin) + 1)
        lo = rng.integers(margin, shape - size - margin + 1)
        box = tuple(slice(a, a + s) for a, s in zip(lo, size))
        halo = tuple(slice(max(a - 1, 0), a + s + 1) for a, s in zip(lo, size))
        if y[halo].any():
            continue
        y[box] = rng.choice(labels)
        ids[box] = len(counts)
        counts.append(int(np.prod(size)))
    return y, ids, np.asarray(counts, np.float64)


def make_batch(seed, shape, batch=2, n_lesions=4, labels=(1, 2), channels=3, max_size=4, margin=0,
               case_volumes=False):
    """Random logits, targets, instances and per-sample volume tables (list of 1-D tensors).

    With ``case_volumes`` the volume of each lesion is drawn at or above its voxel count (as
    if the lesion extended beyond the patch); otherwise volume = voxel count (spacing 1 mm).
    """
    rng = np.random.default_rng(seed)
    ys, ids, vols = [], [], []
    for _ in range(batch):
        y, i, counts = place_boxes(rng, shape, n_lesions, labels, max_size, margin)
        if case_volumes:
            counts = counts * rng.uniform(1.0, 8.0, counts.shape)
        ys.append(y)
        ids.append(i)
        vols.append(torch.from_numpy(counts))
    logits = torch.from_numpy(rng.normal(0, 2, (batch, channels, *shape))).float()
    target = torch.from_numpy(np.stack(ys))[:, None]
    instances = torch.from_numpy(np.stack(ids))[:, None]
    return logits, target, instances, vols


def pad_volumes(vols):
    return torch.nn.utils.rnn.pad_sequence([torch.as_tensor(v, dtype=torch.float64) for v in vols], batch_first=True)


def reference_weights(target, instances, vols, va_labels, gamma=1.0, mode="mass", v_ref=None, v_min=10.0,
                      r_min=0.1, r_max=10.0, batch_dice=False):
    """(B, *S) float64 weight of every voxel in its own label's term, by loops over lesions."""
    y = np.asarray(target)[:, 0]
    ids = np.asarray(instances)[:, 0]
    vols = [np.asarray(v, np.float64) for v in vols]
    w = np.ones(y.shape)

    def clip(r):
        lo = -math.inf if r_min is None else r_min
        hi = math.inf if r_max is None else r_max
        return min(max(r, lo), hi)

    pools = [list(range(len(y)))] if batch_dice else [[b] for b in range(len(y))]
    for c in va_labels:
        for pool in pools:
            lesions = []  # (sample, id, voxel count in patch, volume)
            for b in pool:
                for k in np.unique(ids[b][y[b] == c]):
                    n = int(((ids[b] == k) & (y[b] == c)).sum())
                    lesions.append((b, int(k), n, max(float(vols[b][k]), v_min) if k else None))
            if not lesions:
                continue
            if v_ref is not None:
                ref = v_ref[c] if isinstance(v_ref, dict) else v_ref
            else:
                logs = [math.log(v) for (_, k, _, v) in lesions if k]
                ref = math.exp(sum(logs) / len(logs)) if logs else 1.0
            ratios = [clip((ref / v) ** gamma) if k else clip(1.0) for (_, k, _, v) in lesions]
            scale = 1.0
            if mode == "mass":
                scale = sum(n for (_, _, n, _) in lesions) / sum(r * n for r, (_, _, n, _) in zip(ratios, lesions))
            for r, (b, k, _, _) in zip(ratios, lesions):
                w[b][(ids[b] == k) & (y[b] == c)] = r * scale
    return w


def reference_dice_loss(probs, target, weights, batch_dice=False, do_bg=False, smooth=1e-5):
    """Minus mean weighted soft Dice from probabilities, float64 NumPy."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(target)[:, 0]
    onehot = np.stack([(y == c) for c in range(p.shape[1])], 1).astype(np.float64)
    wc = np.where(onehot > 0, np.asarray(weights)[:, None], 1.0)
    axes = tuple(range(2, p.ndim))
    inter = (wc * p * onehot).sum(axes)
    spred = (wc * p).sum(axes)
    sgt = (wc * onehot).sum(axes)
    if not do_bg:
        inter, spred, sgt = inter[:, 1:], spred[:, 1:], sgt[:, 1:]
    if batch_dice:
        inter, spred, sgt = inter.sum(0), spred.sum(0), sgt.sum(0)
    return -float(np.mean((2 * inter + smooth) / (sgt + spred + smooth)))


shapes = st.one_of(
    st.tuples(st.integers(6, 12), st.integers(6, 12)),
    st.tuples(st.integers(4, 8), st.integers(6, 12), st.integers(6, 12)),
)
seeds = st.integers(0, 2**31 - 1)
