"""A post-processed arm ("<set-up>+pp"): minimum component volumes fitted on one set of predictions, applied to
another set of the same model.

The studies compare every post-processed set-up against the baseline with the same kind of fitted
post-processing (``baseline+pp``), so that a post-processing effect is not read as a loss effect. One arm is
two steps, each skipped when its output exists (a resumed study redoes neither):

1. **fit** (:func:`vadice.postprocess.fit.fit_postprocessing`) on predictions of cases whose truth the fit may
   see — e.g. a unit's out-of-fold predictions (bench/va_study.py) or its training cases (bench/loss_bench.py) —
   saved atomically as a post-processing file that lists them;
2. **apply** the file to every label map of another folder — predictions the fit never saw (held-out or
   test-set cases) — into a new folder, built under a temporary name and renamed when complete. The file
   refuses the cases it was fitted on.

Names are not identities across cohorts: a second ``vadice synth`` cohort (an experiment's test set) reuses the
first one's case ids for other patients. Given the truth of the cases it is applied to, :func:`post_processed_arm`
lets a case through that only shares a fitting case's *name* — its truth label map differs in content from the
one the fit saw — and still refuses one whose truth is the same (the case the fit saw).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from vadice.io import InputError, sha256_file
from vadice.metrics.pairs import list_cases
from vadice.postprocess.apply import PostProcessing, apply_to_folder, load_postprocessing, save_postprocessing
from vadice.postprocess.fit import DEFAULT_OBJECTIVE, _truth_file, fit_postprocessing


def post_processed_arm(
    fit_predictions: Mapping[str, str | os.PathLike],
    truth_dir: str | os.PathLike,
    apply_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    pp_file: str | os.PathLike,
    objective: str = DEFAULT_OBJECTIVE,
    group: str = "all",
    source: Mapping | None = None,
    apply_truth_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Path:
    """Fit minimum component volumes on ``fit_predictions``, apply them to ``apply_dir`` (resumable).

    Args:
      fit_predictions: ``{case: prediction label map}`` the volumes are fitted on (one group: no
        cross-validation).
      truth_dir: their truth label maps ``<case>.nii.gz``.
      apply_dir: the label maps the fitted file is applied to (other cases).
      out_dir: the post-processed copies of ``apply_dir``'s label maps (a new folder; skipped when it exists).
      pp_file: the post-processing file (written when missing; an existing one must list exactly the cases of
        ``fit_predictions``).
      objective: the fit's objective (``"f1"`` or ``"precision@sens-drop:<D>"``).
      group: the name of the fitting group recorded in the file (``source.folds``).
      source: provenance recorded in the file (set-up, seed, model folder).
      apply_truth_dir: the truth of ``apply_dir``'s cases; with it, a case that shares a fitting case's name but
        not its truth (another patient) is post-processed too. Without it, any shared name is refused.
      progress: a progress bar over the fitting cases.

    Returns:
      ``out_dir``.

    Raises:
      InputError: an existing ``pp_file`` fitted on other cases; a case of ``apply_dir`` the file was fitted on
        (same name and, with ``apply_truth_dir``, the same truth); as :func:`fit_postprocessing` and
        :func:`vadice.postprocess.apply_to_folder`.
    """
    out_dir, pp_file = Path(out_dir), Path(pp_file)
    if out_dir.is_dir():
        return out_dir
    cases = sorted(fit_predictions)
    if not pp_file.is_file():
        pp = fit_postprocessing({group: {c: Path(fit_predictions[c]) for c in cases}}, truth_dir,
                                objective=objective, source=source, progress=progress)
        pp_file.parent.mkdir(parents=True, exist_ok=True)
        save_postprocessing(pp, pp_file)
    pp = load_postprocessing(pp_file)
    if sorted(pp.cases) != cases:
        raise InputError(pp_file, f"was fitted on {len(pp.cases)} other case(s) than the {len(cases)} given; "
                         "remove it to fit again")
    if apply_truth_dir is not None:
        # a missing apply_dir is left to apply_to_folder, which names it
        cases_applied = list(list_cases(apply_dir)) if Path(apply_dir).is_dir() else []
        pp = other_patients_cleared(pp, cases_applied, Path(apply_truth_dir))
    apply_to_folder(pp, apply_dir, out_dir, pp_path=pp_file)
    return out_dir


def other_patients_cleared(pp: PostProcessing, cases, truth_dir: Path) -> PostProcessing:
    """``pp`` without the fitting cases that ``cases`` only share a name with (their truth in ``truth_dir``
    differs in content from the truth the fit saw, ``pp.source["gt_dir"]``), so that its guard refuses only the
    cases it saw.

    Raises:
      InputError: a missing truth file; ``pp`` records no truth folder while a name is shared.
    """
    shared = pp.seen(cases)
    if not shared:
        return pp
    fit_truth = pp.source.get("gt_dir")
    if not fit_truth:
        raise InputError(None, f"the post-processing file records no truth folder; cannot tell case {shared[0]!r} "
                         "from the fitted case of that name")
    other = {c for c in shared
             if sha256_file(_truth_file(truth_dir, c)) != sha256_file(_truth_file(Path(fit_truth), c))}
    return replace(pp, cases=tuple(c for c in pp.cases if c not in other)) if other else pp
