"""Post-processing: remove predicted components smaller than a per-label minimum volume.

Two modules on two floors, so that prediction can apply a file without
importing the metrics that fitting needs:

- :mod:`vadice.postprocess.apply` (re-exported here): the post-processing
  file and its application; imports only ``io`` and ``lesions``, used by
  ``vadice.predict``.
- :mod:`vadice.postprocess.fit`: choosing the minimum volumes on
  cross-validation predictions with the evaluation's own lesion matching;
  imports ``vadice.metrics``. Import it explicitly.
"""

from vadice.postprocess.apply import (
    BUNDLED,
    BUNDLED_NAME,
    DEFAULT_GRID_MM3,
    FILE_VERSION,
    TOOL,
    PostProcessing,
    apply_to_file,
    apply_to_folder,
    check_out_file,
    load_postprocessing,
    remove_small_components,
    resolve_postprocessing,
    save_postprocessing,
)

__all__ = [
    "BUNDLED",
    "BUNDLED_NAME",
    "DEFAULT_GRID_MM3",
    "FILE_VERSION",
    "TOOL",
    "PostProcessing",
    "apply_to_file",
    "apply_to_folder",
    "check_out_file",
    "load_postprocessing",
    "remove_small_components",
    "resolve_postprocessing",
    "save_postprocessing",
]
