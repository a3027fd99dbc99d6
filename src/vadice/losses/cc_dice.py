"""CC-DiceCE: Dice + CE per Voronoi region of each ground-truth component (arXiv 2511.17146),
written from the paper's formula.

CC-Metrics score a prediction P per ground-truth component C inside C's Voronoi region
R_C (every voxel assigned to its nearest component): ``Q_m(P, G) = 1/|G| Σ_C m(P ∩ R_C, C)``.
CC-DiceCE trains on the same partition:

    L = L_DiceCE(P, G) + lambda_cc * mean over samples (with a component) of
        mean over components C of [CE over R_C - softDice(P_c ∩ R_C, G_c ∩ R_C)]

with nnU-Net's sign convention (``CE - Dice``), so the first term is nnU-Net's DC_and_CE_loss.
``lambda_cc`` defaults to 1 (our choice; the reference notes give no value).

Multi-class: one partition per label. For label c, R_C are the Voronoi cells of the
label-c components only (a node's cell is not cut by the tumour); the region term of a
label-c component is the soft Dice of channel c and the multi-class CE over its cell.
``cc_labels`` restricts which labels get region terms (default: all).

The partition comes in as ``regions``: (B, L, *S), channel j holding, at every voxel, the
id of the nearest component of label ``region_labels[j]`` (0: no such component in the
case). :func:`voronoi_regions` computes it once per case with an exact Euclidean distance
transform in mm; vadice's CC trainer carries it through augmentation beside the lesion-id
map (nearest neighbour, like the ids), so the training loop does no partitioning at all.
A component whose cell is in the patch but whose own voxels are not (cropped away) gets no
term; its cell's voxels still count in the global term. Without ``regions`` the loss falls
back to partitioning the PATCH on the CPU (slow, and nearest-component assignment ignores
components outside the patch).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from vadice.lesions import check_connectivity, label_components
from vadice.losses.components import check_label_set, check_number, component_mean, label_map, scatter_sum
from vadice.losses.va_dice_ce import VolumeAwareDiceCELoss

__all__ = ["CCDiceCELoss", "voronoi_regions"]


def voronoi_regions(instances: np.ndarray, component_label: Sequence[int] | np.ndarray,
                    labels: Sequence[int], spacing: Sequence[float] | None = None) -> np.ndarray:
    """Per-label Voronoi partition of a case by its lesions (exact Euclidean, in mm).

    Args:
      instances: (*S) integer lesion-id map, 0 = background (2-D or 3-D).
      component_label: ``component_label[id]`` = label of lesion ``id`` (index 0 unused).
      labels: the labels to partition for, one output channel each.
      spacing: voxel size per axis in mm (``None``: isotropic 1).

    Returns:
      int32 (len(labels), *S): channel j holds, at each voxel, the id of the nearest
      lesion of label ``labels[j]`` (ties broken by the distance transform's scan
      order), or 0 everywhere when the case has no such lesion. A lesion's own
      voxels always hold its id.

    Raises:
      ValueError: ids outside ``component_label``, mismatched spacing.
    """
    inst = np.asarray(instances)
    lut = np.asarray(component_label, dtype=np.int64)
    if inst.size and (inst.min() < 0 or inst.max() >= len(lut)):
        raise ValueError(f"lesion ids must lie in [0, {len(lut)}) (the length of component_label)")
    if spacing is not None and len(spacing) != inst.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {inst.ndim}-D map")
    out = np.zeros((len(labels), *inst.shape), dtype=np.int32)
    voxel_label = lut[inst]
    voxel_label[inst == 0] = 0
    for j, c in enumerate(labels):
        feature = voxel_label == c
        if not feature.any():
            continue
        # indices of the nearest feature voxel; int32 halves the index array of a 20 M-voxel case
        index = np.zeros((inst.ndim, *inst.shape), dtype=np.int32)
        ndimage.distance_transform_edt(~feature, sampling=spacing, return_distances=False,
                                       return_indices=True, indices=index)
        out[j] = inst[tuple(index)]
    return out


class CCDiceCELoss(nn.Module):
    """nnU-Net's Dice + CE plus the mean per-component Dice + CE inside each component's Voronoi cell.

    Args:
      region_labels: label of each channel of the ``regions`` input (vadice's
        CC trainer: the lesion table's labels, e.g. (1, 2)).
      cc_labels: labels whose components get region terms (``None``: all of
        ``region_labels``).
      lambda_cc: weight of the region term.
      smooth: the Dice ``s`` (1e-5), global and per region.
      batch_dice, ddp: of the GLOBAL Dice (nnU-Net's plans setting).
      connectivity: for the patch fallback's connected components.

    Raises:
      ValueError: bad labels (``cc_labels`` not within ``region_labels``), weight or smooth.
    """

    def __init__(self, region_labels: Iterable[int] = (1, 2), cc_labels: Iterable[int] | None = None,
                 lambda_cc: float = 1.0, smooth: float = 1e-5, batch_dice: bool = False, ddp: bool = False,
                 connectivity: int = 26):
        super().__init__()
        self.region_labels = check_label_set("region_labels", region_labels)
        if self.region_labels is None:
            raise ValueError("region_labels must name the label of each regions channel")
        cc = check_label_set("cc_labels", cc_labels)
        if cc is not None and not set(cc) <= set(self.region_labels):
            raise ValueError(f"cc_labels {cc} must be among region_labels {self.region_labels}")
        self.cc_labels = cc if cc is not None else self.region_labels
        self.lambda_cc = check_number("lambda_cc", lambda_cc)
        self.smooth = check_number("smooth", smooth)
        self.connectivity = check_connectivity(connectivity)
        self.main = VolumeAwareDiceCELoss(va_labels=(), smooth=self.smooth, batch_dice=batch_dice, ddp=ddp)

    def extra_repr(self) -> str:
        return (f"region_labels={self.region_labels}, cc_labels={self.cc_labels}, "
                f"lambda_cc={self.lambda_cc}, smooth={self.smooth}")

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                regions: torch.Tensor | None = None) -> torch.Tensor:
        """Loss value.

        Args:
          logits: (B, C, *S) network output.
          target: (B, 1, *S) or (B, *S) integer labels in [0, C).
          regions: (B, L, *S) integer Voronoi cells, L = len(region_labels),
            channel j: id of the nearest component of label region_labels[j]
            (0 = none); ``None``: computed from the patch's own components (CPU).

        Returns:
          0-d float tensor (float64 for float64 logits).

        Raises:
          ValueError: mismatched shapes, negative region ids, a label beyond C.
        """
        y = label_map(logits, target)
        if regions is None:
            regions = self.patch_regions(y)
        if regions.shape != (y.shape[0], len(self.region_labels), *y.shape[2:]):
            raise ValueError(f"regions must be (B, {len(self.region_labels)}, *S) = "
                             f"{(y.shape[0], len(self.region_labels), *y.shape[2:])}, got {tuple(regions.shape)}")
        loss = logits.new_zeros((), dtype=torch.promote_types(logits.dtype, torch.float32))
        loss = loss + self.main(logits, y)
        if self.lambda_cc:
            loss = loss + self.lambda_cc * self._region_term(logits, y, regions.to(y.device).long())
        return loss

    def patch_regions(self, y: torch.Tensor) -> torch.Tensor:
        """The fallback partition: components and Voronoi cells of the patch itself, (B, L, *S), on the CPU."""
        out = []
        for sample in y[:, 0].detach().cpu().numpy():
            inst, comp_label = label_components(sample.astype(np.int64), self.region_labels, self.connectivity)
            out.append(torch.from_numpy(voronoi_regions(inst, comp_label, self.region_labels)))
        return torch.stack(out).to(y.device)

    def _region_term(self, logits: torch.Tensor, y: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        x = logits.to(dtype)
        if max(self.cc_labels) >= x.shape[1]:
            raise ValueError(f"cc_labels {self.cc_labels} name a label the output's {x.shape[1]} channels lack")
        if regions.numel() and int(regions.min()) < 0:
            raise ValueError("region ids must be >= 0")
        p = torch.softmax(x, 1).flatten(2)
        ce = F.cross_entropy(x, y[:, 0], reduction="none").flatten(1)
        yf = y.flatten(1)
        terms, present = [], []
        for j, c in enumerate(self.region_labels):
            if c not in self.cc_labels:
                continue
            r = regions[:, j].flatten(1)
            width = int(r.max()) + 1 if r.numel() else 1
            g = (yf == c).to(dtype)
            inter = scatter_sum(r, p[:, c] * g, width)
            pred = scatter_sum(r, p[:, c], width)
            gt = scatter_sum(r, g, width)
            ce_sum = scatter_sum(r, ce, width)
            n = scatter_sum(r, torch.ones_like(ce), width)
            dice = (2 * inter + self.smooth) / (pred + gt + self.smooth).clamp_min(1e-8)
            terms.append((ce_sum / n.clamp_min(1) - dice)[:, 1:])
            # a component counts where its label voxels are in the patch (its cell alone is not enough)
            present.append(gt[:, 1:] > 0)
        if not terms:
            return x.new_zeros(())
        return component_mean(torch.cat(terms, 1), torch.cat(present, 1))
