"""blob loss (Kofler et al. 2022, "blob loss: instance imbalance aware loss functions for
semantic segmentation", arXiv 2205.08209), written from the paper's formula.

    L = alpha * L_global + beta * L_blob,
    L_blob = mean over samples (that have a lesion) of mean over their lesions k of L(P_k, G_k)

where, for lesion k of label c, ``P_k``/``G_k`` are the output and label with every OTHER
ground-truth component of label c masked out (background and lesion k stay). The paper's
main set-up combines a soft-Dice and a cross-entropy criterion with alpha = 2, beta = 1;
here the criterion is nnU-Net's: ``L = CE - softDice`` (nnU-Net's sign convention, so
``L_global`` is exactly nnU-Net's DC_and_CE_loss), and alpha = 2, beta = 1 by default.

Multi-class (GTVp 1 and GTVn 2 in one softmax network): one-vs-rest per lesion. The
blob term of a lesion of label c is the soft Dice of channel c plus the multi-class
cross-entropy, both over the voxels left after masking the other label-c lesions; voxels
of other labels stay in (as background of channel c). ``blob_labels`` restricts which
labels' lesions get a blob term (default: all), like the VA loss's selective-ln set-up.

Cost: one softmax, one per-voxel CE and a handful of scatter-adds over the id map
(no Python loop over lesions, unlike the paper's reference code); one host sync for
the id-table width.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vadice.losses.components import (
    check_label_set,
    check_number,
    component_mean,
    id_labels,
    id_map,
    label_map,
    num_ids,
    scatter_sum,
)
from vadice.losses.va_dice_ce import VolumeAwareDiceCELoss

__all__ = ["BlobDiceCELoss"]


class BlobDiceCELoss(nn.Module):
    """``alpha * (CE - softDice) + beta * mean_lesions (CE_k - softDice_k)`` with other lesions masked.

    Args:
      alpha: weight of the global Dice + CE term (paper: 2).
      beta: weight of the blob term (paper: 1).
      blob_labels: foreground labels whose lesions get a blob term (``None``: all).
      smooth: the Dice ``s`` (nnU-Net: 1e-5), in the global and the blob Dice.
      batch_dice: pool the GLOBAL Dice over the batch (nnU-Net's plans
        setting); blob terms are always per lesion.
      ddp: as :class:`vadice.losses.VolumeAwareDiceLoss` (global term only).

    Raises:
      ValueError: a negative or non-finite weight, a bad label set or smooth.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, blob_labels: Iterable[int] | None = None,
                 smooth: float = 1e-5, batch_dice: bool = False, ddp: bool = False):
        super().__init__()
        self.alpha = check_number("alpha", alpha)
        self.beta = check_number("beta", beta)
        self.blob_labels = check_label_set("blob_labels", blob_labels)
        self.smooth = check_number("smooth", smooth)
        self.main = VolumeAwareDiceCELoss(va_labels=(), smooth=self.smooth, batch_dice=batch_dice, ddp=ddp)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, blob_labels={self.blob_labels}, smooth={self.smooth}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
        """Loss value.

        Args:
          logits: (B, C, *S) network output (C includes background).
          target: (B, 1, *S) or (B, *S) integer labels in [0, C).
          instances: (B, 1, *S) or (B, *S) lesion ids (0 = none; ids unique per
            sample, each id within one label), e.g. vadice's whole-case id map
            carried through augmentation.

        Returns:
          0-d float tensor (float64 for float64 logits). Equals ``alpha`` times
          nnU-Net's DC+CE when the batch has no lesion.

        Raises:
          ValueError: mismatched shapes, negative ids.
        """
        y = label_map(logits, target)
        ids = id_map(instances, y)
        loss = logits.new_zeros((), dtype=torch.promote_types(logits.dtype, torch.float32))
        if self.alpha:
            loss = loss + self.alpha * self.main(logits, y)
        if self.beta:
            loss = loss + self.beta * self._blob_term(logits, y, ids)
        return loss

    def _blob_term(self, logits: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        x = logits.to(dtype)
        channels = x.shape[1]
        p = torch.softmax(x, 1).flatten(2)                            # (B, C, N)
        ce = F.cross_entropy(x, y[:, 0], reduction="none").flatten(1)  # (B, N)
        yf = y.flatten(1)
        width = num_ids(ids)
        lab = id_labels(yf, ids, width)                                # (B, K)
        voxel_lab = lab.gather(1, ids)                                 # label of the voxel's lesion, 0 if none
        # I_k = Σ_{v∈C_k} p_c(v), with c the lesion's own label; |C_k|; Σ_{v∈C_k} CE(v)
        p_own = p.gather(1, voxel_lab.unsqueeze(1)).squeeze(1)
        inter = scatter_sum(ids, p_own, width)
        size = scatter_sum(ids, torch.ones_like(p_own), width)
        ce_in = scatter_sum(ids, ce, width)
        # Sums over the voxels outside every lesion of label c, per (sample, c): what a lesion of label c
        # keeps besides itself once the other label-c lesions are masked out.
        labels = self.blob_labels if self.blob_labels is not None else tuple(range(1, channels))
        p_out = x.new_zeros(x.shape[0], channels)
        ce_out = x.new_zeros(x.shape[0], channels)
        n_out = x.new_zeros(x.shape[0], channels)
        if max(labels) >= channels:
            raise ValueError(f"blob_labels {labels} name a label the output's {channels} channels do not have")
        for c in labels:
            keep = (voxel_lab != c).to(dtype)
            p_out[:, c] = (p[:, c] * keep).sum(1)
            ce_out[:, c] = (ce * keep).sum(1)
            n_out[:, c] = keep.sum(1)
        s = self.smooth
        dice = (2 * inter + s) / (p_out.gather(1, lab) + inter + size + s).clamp_min(1e-8)
        ce_k = (ce_out.gather(1, lab) + ce_in) / (n_out.gather(1, lab) + size).clamp_min(1)
        wanted = torch.zeros(channels, dtype=torch.bool, device=lab.device)
        wanted[list(labels)] = True
        present = (size > 0) & (lab > 0) & wanted[lab]
        return component_mean(ce_k - dice, present)
