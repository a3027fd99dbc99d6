"""Framework-agnostic PyTorch losses (no nnunetv2 import at this layer)."""

from vadice.losses.va_dice import (
    PRESETS,
    WEIGHTINGS,
    VolumeAwareDiceCELoss,
    VolumeAwareDiceLoss,
    loss_from_preset,
    median_lesion_volumes,
    softmax_dim1,
)

__all__ = [
    "PRESETS",
    "WEIGHTINGS",
    "VolumeAwareDiceCELoss",
    "VolumeAwareDiceLoss",
    "loss_from_preset",
    "median_lesion_volumes",
    "softmax_dim1",
]
