"""The loss object of the lesion trainers: a per-scale loss that also takes the batch's lesion maps.

nnU-Net's ``train_step`` and ``validation_step`` call ``self.loss(output, target)``
and nothing else. A lesion loss also needs the batch's ids (and volumes, cells or
voxel counts), so the trainer hands them to the loss object through
:meth:`LesionLoss.batch_inputs` around nnU-Net's own step: the attribute
``self.loss`` stays one object for the whole training, and nnU-Net's step code
(AMP, grad scaler, clipping, pseudo Dice) runs unchanged, however often it calls
the loss within the step.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class LesionLoss(torch.nn.Module):
    """A loss of ``(output, target, **inputs)`` that nnU-Net can call as ``loss(output, target)``.

    Inside ``with loss.batch_inputs(**inputs):`` a call without keyword inputs gets
    these; a call with keyword inputs (tests, benchmarks) uses those instead. A call
    with neither fails: training on a batch without its lesion maps must not pass
    silently. ``set_epoch`` reaches the wrapped loss (CATMIL's warm-up).
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss
        self._batch: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    @contextmanager
    def batch_inputs(self, **inputs):
        """Binds one batch's lesion maps to the calls made inside the ``with`` block."""
        if self._batch is not None:
            raise RuntimeError("lesion maps of another batch are still bound to the loss")
        self._batch = inputs
        try:
            yield self
        finally:
            self._batch = None

    def _inputs(self, given: dict) -> dict:
        if given:
            return given
        if self._batch is None:
            raise RuntimeError(f"{type(self.loss).__name__} needs the batch's lesion maps: call it inside "
                               "batch_inputs() (the lesion trainers' train/validation steps do)")
        return self._batch

    def forward(self, net_output, target, **inputs):
        return self.loss(net_output, target, **self._inputs(inputs))


class DeepSupervisionLesionLoss(LesionLoss):
    """nnU-Net's DeepSupervisionWrapper for a loss that takes lesion maps too.

    ``forward(outputs, targets, **inputs)``: an input given as a list holds one
    map per scale (ids, Voronoi cells); any other input (a per-case table) is
    passed to every scale. Scales of weight 0 are skipped, as nnU-Net does.
    """

    def __init__(self, loss: torch.nn.Module, weights):
        super().__init__(loss)
        self.weights = tuple(float(w) for w in weights)

    def forward(self, net_output, target, **inputs):
        inputs = self._inputs(inputs)
        lengths = {k: len(v) for k, v in inputs.items() if isinstance(v, (list, tuple))}
        # zip would silently drop the scales past the shortest list
        if any(n != len(self.weights) for n in (len(net_output), len(target), *lengths.values())):
            raise ValueError(f"deep supervision: {len(net_output)} outputs, {len(target)} targets, "
                             + "".join(f"{n} {k}, " for k, n in lengths.items()) + f"{len(self.weights)} weights")
        total = 0
        for i, (w, o, t) in enumerate(zip(self.weights, net_output, target)):
            if w != 0:
                total = total + w * self.loss(o, t, **{k: (v[i] if k in lengths else v) for k, v in inputs.items()})
        return total
