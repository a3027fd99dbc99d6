"""Component-adaptive Tversky + multiple-instance (CATMIL) loss (arXiv 2604.08015),
written from the paper's formulas.

Voxel weights, per label c: ``w_v = (|C_k| + 5)^-1`` on the voxels of lesion k of label c,
``w_v = 0.01`` everywhere else (background and other labels). On weighted soft counts
(p = softmax probability of channel c, y = 1 on label c)::

    TP = Σ w p y,  FP = Σ w p (1 - y),  FN = Σ w (1 - p) y
    CAT_c = 1 - (TP + δ) / (TP + 0.3 FP + 0.7 FN + δ)          (FP weight 0.3, FN weight 0.7)
    MIL   = -(1/K) Σ_k log max(max_{v ∈ C_k} p_v, ε)            (p of the lesion's own label)
    L     = L_DiceCE + λ_CAT(t) · mean_c CAT_c + 0.2 · MIL,
    λ_CAT(t) = 0.1 · min(1, t / 50)                              (t = epoch: linear warm-up)

L_DiceCE is nnU-Net's DC_and_CE_loss. δ = 1e-5 and ε = 1e-6 are our choices (the notes do
not give them). ``|C_k|`` is the lesion's voxel count on the whole case when the caller
passes ``sizes`` (vadice's trainer does: a lesion cut by the patch keeps its weight, as in
the VA loss), else its voxel count in the patch. A label voxel without an id (none after
vadice's augmentation) weighs as a lesion of size 0, i.e. 1/5.

Multi-class: CAT per label one-vs-rest, averaged uniformly over ``catmil_labels`` (default
all foreground labels; the other label's voxels are background of channel c, weight 0.01);
MIL over the lesions of those labels, each scored on its own label's channel. CAT sums run
per sample (pooled over the batch with ``batch_dice``) and are averaged over samples.
"""

from __future__ import annotations

from typing import Iterable

import torch
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

__all__ = ["CATMILLoss"]


class CATMILLoss(nn.Module):
    """nnU-Net's Dice + CE + warmed-up component-adaptive Tversky + MIL lesion-detection term.

    Args:
      lambda_cat: final weight of the Tversky term (paper: 0.1).
      lambda_mil: weight of the MIL term (paper: 0.2).
      warmup_epochs: epochs over which the Tversky weight rises linearly from
        0 to ``lambda_cat`` (paper: 50; 0 = full weight from the start). The
        trainer calls :meth:`set_epoch`.
      fp_weight, fn_weight: Tversky weights of FP and FN (paper: 0.3, 0.7).
      size_offset: the 5 of ``(|C_k| + 5)^-1``.
      background_weight: weight of non-lesion voxels (paper: 0.01).
      catmil_labels: labels with CAT and MIL terms (``None``: all foreground).
      smooth: Tversky δ; eps: floor of the MIL max probability.
      batch_dice, ddp: of the global Dice; ``batch_dice`` also pools the CAT sums.

    Raises:
      ValueError: any negative / non-finite option, eps outside (0, 1), a bad label set.
    """

    def __init__(self, lambda_cat: float = 0.1, lambda_mil: float = 0.2, warmup_epochs: int = 50,
                 fp_weight: float = 0.3, fn_weight: float = 0.7, size_offset: float = 5.0,
                 background_weight: float = 0.01, catmil_labels: Iterable[int] | None = None,
                 smooth: float = 1e-5, eps: float = 1e-6, batch_dice: bool = False, ddp: bool = False):
        super().__init__()
        self.lambda_cat = check_number("lambda_cat", lambda_cat)
        self.lambda_mil = check_number("lambda_mil", lambda_mil)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.fp_weight = check_number("fp_weight", fp_weight)
        self.fn_weight = check_number("fn_weight", fn_weight)
        self.size_offset = check_number("size_offset", size_offset, strict=True)
        self.background_weight = check_number("background_weight", background_weight)
        self.catmil_labels = check_label_set("catmil_labels", catmil_labels)
        self.smooth = check_number("smooth", smooth, strict=True)
        self.eps = check_number("eps", eps, strict=True)
        if self.eps >= 1:
            raise ValueError(f"eps must be < 1, got {eps!r}")
        self.batch_dice = bool(batch_dice)
        self.main = VolumeAwareDiceCELoss(va_labels=(), smooth=1e-5, batch_dice=batch_dice, ddp=ddp)
        self.epoch = 0

    def extra_repr(self) -> str:
        return (f"lambda_cat={self.lambda_cat}, lambda_mil={self.lambda_mil}, warmup_epochs={self.warmup_epochs}, "
                f"fp_weight={self.fp_weight}, fn_weight={self.fn_weight}, catmil_labels={self.catmil_labels}")

    def set_epoch(self, epoch: int) -> None:
        """Sets t of the Tversky warm-up (nnU-Net's ``current_epoch``, from 0)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        self.epoch = epoch

    @property
    def cat_weight(self) -> float:
        """λ_CAT(t) = lambda_cat · min(1, t / warmup_epochs)."""
        if self.warmup_epochs == 0:
            return self.lambda_cat
        return self.lambda_cat * min(1.0, self.epoch / self.warmup_epochs)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, instances: torch.Tensor,
                sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Loss value.

        Args:
          logits: (B, C, *S) network output.
          target: (B, 1, *S) or (B, *S) integer labels in [0, C).
          instances: (B, 1, *S) or (B, *S) lesion ids (0 = none, unique per sample).
          sizes: optional (B, K+1) lesion sizes in voxels indexed by id (index 0
            unused), e.g. whole-case counts; ``None``: counts in the patch.

        Returns:
          0-d float tensor (float64 for float64 logits).

        Raises:
          ValueError: mismatched shapes, negative ids, ids beyond ``sizes``.
        """
        y = label_map(logits, target)
        ids = id_map(instances, y)
        loss = logits.new_zeros((), dtype=torch.promote_types(logits.dtype, torch.float32))
        loss = loss + self.main(logits, y)
        cat_w = self.cat_weight
        if cat_w or self.lambda_mil:
            cat, mil = self.terms(logits, y, ids, sizes)
            loss = loss + cat_w * cat + self.lambda_mil * mil
        return loss

    def terms(self, logits: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
              sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(CAT, MIL)`` before their weights; ``y`` (B, 1, *S) long, ``ids`` (B, N) long."""
        dtype = torch.promote_types(logits.dtype, torch.float32)
        x = logits.to(dtype)
        channels = x.shape[1]
        labels = self.catmil_labels if self.catmil_labels is not None else tuple(range(1, channels))
        if max(labels) >= channels:
            raise ValueError(f"catmil_labels {labels} name a label the output's {channels} channels lack")
        p = torch.softmax(x, 1).flatten(2)
        yf = y.flatten(1)
        width = num_ids(ids)
        ones = torch.ones(ids.shape, dtype=dtype, device=ids.device)
        patch_size = scatter_sum(ids, ones, width)
        if sizes is None:
            size = patch_size
        else:
            if sizes.ndim != 2 or sizes.shape[0] != ids.shape[0] or sizes.shape[1] < width:
                raise ValueError(f"sizes must be (B, K+1) with B = {ids.shape[0]} and K+1 >= {width} "
                                 f"(the largest id + 1), got {tuple(sizes.shape)}")
            size = sizes.to(device=ids.device, dtype=dtype)[:, :width]
        size = torch.cat([torch.zeros_like(size[:, :1]), size[:, 1:]], 1)
        lesion_w = (size + self.size_offset).reciprocal().gather(1, ids)  # (B, N)

        cats = []
        for c in labels:
            g = (yf == c).to(dtype)
            w = torch.where(g > 0, lesion_w, torch.full_like(lesion_w, self.background_weight))
            pc = p[:, c]
            tp, fp, fn = (w * pc * g).sum(1), (w * pc * (1 - g)).sum(1), (w * (1 - pc) * g).sum(1)
            if self.batch_dice:
                tp, fp, fn = tp.sum(0, keepdim=True), fp.sum(0, keepdim=True), fn.sum(0, keepdim=True)
            ti = (tp + self.smooth) / (tp + self.fp_weight * fp + self.fn_weight * fn + self.smooth)
            cats.append(1 - ti)
        cat = torch.stack(cats).mean()

        lab = id_labels(yf, ids, width)
        p_own = p.gather(1, lab.gather(1, ids).unsqueeze(1)).squeeze(1)
        peak = torch.zeros(ids.shape[0], width, dtype=dtype, device=ids.device)
        peak = peak.scatter_reduce(1, ids, p_own, reduce="amax", include_self=False)
        wanted = torch.zeros(channels, dtype=torch.bool, device=lab.device)
        wanted[list(labels)] = True
        present = (patch_size > 0) & (lab > 0) & wanted[lab]
        mil = component_mean(-peak.clamp_min(self.eps).log(), present)
        return cat, mil
