"""Evaluation metrics: overlap, surface distances, lesion-wise detection, folder evaluation, comparison.

Pure functions on NumPy arrays plus spacing (array axis order); see
docs/evaluation.md for definitions and empty-mask conventions.
"""

from vadice.metrics.lesionwise import LesionMatch, match_lesions, parse_match, size_stratified_sensitivity
from vadice.metrics.overlap import Overlap, dice, dscagg, overlap
from vadice.metrics.surface import (
    SurfaceDistances,
    hausdorff_distance,
    mean_surface_distance,
    surface_dice,
    surface_distances,
    surface_metrics,
)

__all__ = [
    "LesionMatch", "Overlap", "SurfaceDistances", "dice", "dscagg", "hausdorff_distance", "match_lesions",
    "mean_surface_distance", "overlap", "parse_match", "size_stratified_sensitivity", "surface_dice",
    "surface_distances", "surface_metrics", "evaluate_case", "evaluate_folders", "compare_runs",
]


def __getattr__(name):
    # evaluate/compare pull in SimpleITK, tqdm and statsmodels; load them only when asked for.
    if name in ("evaluate_case", "evaluate_folders"):
        from vadice.metrics import evaluate
        return getattr(evaluate, name)
    if name == "compare_runs":
        from vadice.metrics.compare import compare_runs
        return compare_runs
    raise AttributeError(f"module 'vadice.metrics' has no attribute {name!r}")
