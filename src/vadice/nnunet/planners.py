"""Plan presets: nnU-Net's ResEnc M planner unchanged, and a reduced CPU variant.

``resenc-m`` is ``nnUNetPlannerResEncM`` as shipped (plans ``nnUNetResEncUNetMPlans``):
the network the study trains, a GPU job (about 12 h per 1000-epoch fold on one A100).

``cpu-small`` keeps everything nnU-Net derives from the data fingerprint (target
spacing, normalisation, resampling, pooling topology, patch aspect ratio) and
shrinks only what decides the cost of a training step: 8 base features capped at
80 (ResEnc M: 32 capped at 320), a patch of at most 32x64x64 voxels and batch 2.
A train step then takes about a second on two CPU cores (docs/training.md), which
is what the CPU demo and tests need. Its plans are called ``vadiceCPUSmallPlans``
on purpose: a model trained with them is not ResEnc M and must not be reported as
such.

The override relies on two things of nnU-Net's ExperimentPlanner, which
pyproject.toml pins to 2.8.x: the planner calls ``self.static_estimate_VRAM_usage``
while it shrinks the patch, and ``get_plans_for_configuration`` returns the plan as a
dict with ``batch_size``. ``tests/nnunet/test_plan_train.py`` checks the resulting patch
and batch on a real dataset.

Both presets keep ResEnc planners' data identifier for ``3d_fullres``
(``nnUNetPlans_3d_fullres``): preprocessing depends only on spacing and
normalisation, which the presets share, so the two reuse one preprocessed copy.
"""

from __future__ import annotations

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncM,
)

from vadice import registry


class vadiceCPUSmallPlanner(nnUNetPlannerResEncM):  # noqa: N801 - nnU-Net finds planners by class name
    """ResEnc M planning with the width, patch and batch reduced for CPU training.

    nnU-Net picks the patch by shrinking it, axis by axis along the median-shape
    aspect ratio, until its memory estimate fits a GPU target. We keep that loop
    and add a voxel cap to it (reported as an over-budget estimate), so the patch
    keeps nnU-Net's aspect logic instead of an arbitrary fixed shape.
    """

    base_num_features = 8
    max_num_features = 80
    max_patch_voxels_3d = 32 * 64 * 64
    max_patch_voxels_2d = 128 * 128  # 2d is always planned by nnU-Net; never trained here
    batch_size = 2

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor",
                 plans_name: str = registry.PRESETS["cpu-small"].plans_identifier,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.UNet_base_num_features = self.base_num_features
        self.UNet_max_features_3d = self.max_num_features
        self.UNet_max_features_2d = self.max_num_features

    # nnU-Net calls this staticmethod through ``self``, so a classmethod can override it and read the cap.
    # Only the patch is named; the other arguments go through as given, whatever nnU-Net passes.
    @classmethod
    def static_estimate_VRAM_usage(cls, patch_size, *args, **kwargs):
        cap = cls.max_patch_voxels_3d if len(patch_size) == 3 else cls.max_patch_voxels_2d
        if int(np.prod(patch_size, dtype=np.int64)) > cap:
            return float("inf")
        return super().static_estimate_VRAM_usage(patch_size, *args, **kwargs)

    def get_plans_for_configuration(self, *args, **kwargs):
        # *args: the parameter list changed between nnU-Net releases (2.8 added ``_cache``)
        plan = super().get_plans_for_configuration(*args, **kwargs)
        # The GPU heuristic would raise the batch for a narrow network; on CPU the step time grows with it.
        plan["batch_size"] = self.batch_size
        return plan


# Preset name -> nnU-Net planner class. Names, plans identifiers and descriptions live in vadice.registry.PRESETS.
PLANNERS: dict[str, type] = {
    "resenc-m": nnUNetPlannerResEncM,
    "cpu-small": vadiceCPUSmallPlanner,
}


def planner_class(name: str) -> type:
    """The nnU-Net planner class of plan preset ``name``.

    Raises:
        ValueError: a preset vadice.registry does not know (message lists the known ones).
    """
    registry.preset(name)
    return PLANNERS[name]
