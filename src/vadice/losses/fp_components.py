"""A loss-side precision lever: every false-positive component of the prediction costs the same.

VA Dice gives each ground-truth lesion the same weight, so a missed small node costs as much as a missed large
one; nothing in it makes a spurious small component cost anything beyond its few voxels, and the VA set-ups
buy sensitivity with such components. Following the idea of BiCC (arXiv 2609.30223: a second partition of the
volume derived from the *prediction*, so that false-positive components are penalised), this term partitions
the prediction instead of the truth:

* the predicted map of label ``c`` (arg max over classes, no gradient) is split into connected components;
* a component that shares no voxel with the ground truth of label ``c`` is a false-positive component ``Q``;
* its cost is the mean predicted probability of ``c`` over its voxels, ``m_Q = (1/|Q|) sum_{v in Q} p_c(v)``,
  so a 5-voxel spurious node and a 500-voxel one cost alike (the equal-cost idea of VA, applied to the
  prediction's components);
* the term is the mean of ``m_Q`` over all false-positive components of the batch and of the chosen labels
  (0 when there are none), in ``[0, 1]``.

This is our own construction in BiCC's spirit, not a reproduction of BiCC's formula (which we have not
implemented); the docs say so. Components are computed per batch from the prediction, which changes every
step; ground-truth components are not needed (only the label map).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from vadice.lesions import label_components
from vadice.losses.components import check_label_set
from vadice.losses.va_dice import softmax_dim1

CONNECTIVITY = {2: (4, 8), 3: (6, 18, 26)}


class FalsePositiveComponentLoss(nn.Module):
    """Mean predicted probability over each false-positive connected component, averaged over components.

    Args:
      labels: foreground labels whose false-positive components are penalised (default GTVp 1 and GTVn 2).
      connectivity: component connectivity, 6/18/26 in 3-D (4/8 in 2-D), as vadice's lesion definition (26).

    Raises:
      ValueError: empty or non-positive labels, or an unknown connectivity.
    """

    def __init__(self, labels: Iterable[int] = (1, 2), connectivity: int = 26):
        super().__init__()
        if labels is None:
            raise ValueError("labels must name at least one foreground label, got None")
        labels = check_label_set("labels", labels)
        if connectivity not in (4, 6, 8, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26 (3-D) or 4, 8 (2-D), got {connectivity}")
        self.labels = labels
        self.connectivity = int(connectivity)

    def extra_repr(self) -> str:
        return f"labels={self.labels}, connectivity={self.connectivity}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args:
          logits: (B, C, *S) network output before softmax, S two- or three-dimensional.
          target: (B, 1, *S) or (B, *S) integer label map.

        Returns:
          Scalar tensor: the mean of ``m_Q`` over false-positive components (0, still attached to the graph,
          when there is none).

        Raises:
          ValueError: shapes that do not match, a label outside the logits' classes, or a connectivity that
            does not fit the spatial dimension.
        """
        if logits.ndim not in (4, 5):
            raise ValueError(f"logits must be (B, C, *S) with 2 or 3 spatial dims, got shape {tuple(logits.shape)}")
        if target.ndim == logits.ndim:
            if target.shape[1] != 1:
                raise ValueError(f"target must have one channel, got shape {tuple(target.shape)}")
            target = target[:, 0]
        if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        if max(self.labels) >= logits.shape[1]:
            raise ValueError(f"label {max(self.labels)} is not among the {logits.shape[1]} classes of the logits")
        spatial = logits.ndim - 2
        if self.connectivity not in CONNECTIVITY[spatial]:
            raise ValueError(f"connectivity {self.connectivity} does not fit {spatial}-D data")

        probs = softmax_dim1(logits)
        # Components come from the hard prediction, which has no gradient; one host transfer per batch.
        pred = probs.detach().argmax(1).cpu().numpy().astype(np.uint8)
        truth = target.detach().cpu().numpy()
        # vadice.lesions names connectivities in 3-D terms (6/18/26) and maps them to 4/8 on 2-D maps.
        connectivity = {4: 6, 8: 26}.get(self.connectivity, self.connectivity)
        means = []
        for c in self.labels:
            comp = np.zeros(pred.shape, dtype=np.int64)
            offset = 0
            for b in range(pred.shape[0]):
                ids, component_label = label_components(pred[b] == c, connectivity=connectivity)
                n = component_label.size - 1
                if n == 0:
                    continue
                hit = np.unique(ids[(truth[b] == c) & (ids > 0)])
                keep = np.ones(n + 1, dtype=bool)
                keep[0] = False
                keep[hit] = False  # components touching the truth of c are not false positives
                fp_ids = np.flatnonzero(keep)
                if fp_ids.size == 0:
                    continue
                remap = np.zeros(n + 1, dtype=np.int64)
                remap[fp_ids] = np.arange(1, fp_ids.size + 1) + offset
                comp[b] = remap[ids]
                offset += fp_ids.size
            if offset == 0:
                continue
            index = torch.from_numpy(comp.reshape(-1)).to(probs.device)
            p = probs[:, c].reshape(-1)
            sums = torch.zeros(offset + 1, dtype=p.dtype, device=p.device).index_add_(0, index, p)
            counts = torch.bincount(index, minlength=offset + 1).to(p.dtype)
            means.append(sums[1:] / counts[1:])
        if not means:
            return logits.sum() * 0.0
        return torch.cat(means).mean()


class WithFalsePositiveTerm(nn.Module):
    """``main(...) + weight * FalsePositiveComponentLoss(logits, target)``.

    Wraps any loss whose first two arguments are the logits and the label map (e.g. VA Dice + CE, which
    also takes lesion ids and volumes: they are passed through to it unchanged).

    Args:
      main: the segmentation loss.
      fp: the false-positive component term.
      weight: its weight (> 0).

    Raises:
      ValueError: a weight that is not positive and finite.
    """

    def __init__(self, main: nn.Module, fp: FalsePositiveComponentLoss, weight: float = 1.0):
        super().__init__()
        weight = float(weight)
        if not np.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight must be positive and finite, got {weight}")
        self.main = main
        self.fp = fp
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.main(logits, target, *args, **kwargs) + self.weight * self.fp(logits, target)
