"""Helpers for the comparator-loss tests: tiny lines of voxels with chosen probabilities."""

from __future__ import annotations

import torch


def line(labels, ids, probs):
    """(1, 1, 1, 1, N) labels and ids, and (1, C, 1, 1, N) float64 logits whose softmax is ``probs``.

    ``probs``: per voxel, the probabilities of channels 0..C-1 (each row sums to 1), or for two
    channels just the probability of label 1. log(p) is a valid logit vector: softmax(log p) = p.
    """
    y = torch.tensor(labels, dtype=torch.long).view(1, 1, 1, 1, -1)
    inst = torch.tensor(ids, dtype=torch.long).view(1, 1, 1, 1, -1)
    p = torch.tensor(probs, dtype=torch.float64)
    if p.ndim == 1:
        p = torch.stack([1 - p, p], 1)
    logits = p.log().T.reshape(1, p.shape[1], 1, 1, -1).contiguous()
    return y, inst, logits


def random_case(seed: int = 0, channels: int = 3, shape=(3, 5, 5), dtype=torch.float64):
    """Batch of 2 with two label-1 lesions and one label-2 lesion in sample 0, nothing in sample 1."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, *shape, generator=g, dtype=dtype)
    y = torch.zeros(2, 1, *shape, dtype=torch.long)
    ids = torch.zeros_like(y)
    y[0, 0, 0, 0:2, 0:2] = 1
    ids[0, 0, 0, 0:2, 0:2] = 1
    y[0, 0, 2, 3:5, 3:5] = 1
    ids[0, 0, 2, 3:5, 3:5] = 2
    y[0, 0, 1, 0, 4] = 2
    ids[0, 0, 1, 0, 4] = 3
    return logits, y, ids
