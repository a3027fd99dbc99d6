"""Framework-agnostic PyTorch losses (no nnunetv2 import at this layer)."""

from vadice.losses.blob import BlobDiceCELoss
from vadice.losses.catmil import CATMILLoss
from vadice.losses.cc_dice import CCDiceCELoss, voronoi_regions
from vadice.losses.fp_components import FalsePositiveComponentLoss, WithFalsePositiveTerm
from vadice.losses.va_dice import PRESETS, WEIGHTINGS, VolumeAwareDiceLoss, softmax_dim1
from vadice.losses.va_dice_ce import VolumeAwareDiceCELoss, loss_from_preset, median_lesion_volumes

__all__ = [
    "BlobDiceCELoss",
    "CATMILLoss",
    "CCDiceCELoss",
    "FalsePositiveComponentLoss",
    "PRESETS",
    "WEIGHTINGS",
    "VolumeAwareDiceCELoss",
    "VolumeAwareDiceLoss",
    "WithFalsePositiveTerm",
    "loss_from_preset",
    "median_lesion_volumes",
    "softmax_dim1",
    "voronoi_regions",
]
