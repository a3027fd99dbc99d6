"""``vadice demo``: the whole study in miniature on the CPU.

Synthetic cohort (``neck`` grid: a 160 mm crop around the neck at ~1.5x1.5x2 mm,
so that small nodes keep tens to hundreds of voxels) -> Task 1 conversion ->
cpu-small plan -> one common baseline phase on fold 0 -> baseline, dual and
selective-ln each fine-tuned from it -> predictions of fold 0's held-out cases
-> evaluation -> paired comparison -> report.html. Every stage resumes, so an
interrupted demo continues where it stopped.

Why a common warm start: on two CPU cores one training iteration of the
cpu-small network costs about a second, and nnU-Net's networks predict nothing
for their first few hundred iterations (docs/benchmarks.md). Training three
networks from scratch inside the demo's time would leave all three empty; one
shared baseline phase followed by a short phase per set-up gives three
networks that segment, at the price that the set-ups differ only in their last
phase (the report says so).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from vadice.io import check_output_dir

log = logging.getLogger(__name__)

DEMO_DATASET_ID = 990
DEMO_NAME = "VadiceDemo"
DEMO_SIZE = "neck"
DEMO_CASES = 30
DEMO_WARM_ITERATIONS = 600  # the common baseline phase
DEMO_WARM_EPOCHS = 12  # nnU-Net decays the learning rate per epoch: several short epochs, not one long one
DEMO_ITERATIONS = 90  # each set-up's own phase after the warm start
DEMO_EPOCHS = 3
DEMO_VAL_ITERATIONS = 3


def demo_note(cases: int, warm: int, iterations: int, seed: int) -> str:
    """What the demo shows and what it does not, for the report and the terminal."""
    held_out = max(1, round(cases / 5))
    return (f"Demo: one seed ({seed}), one fold (fold 0: about {held_out} held-out cases of {cases} synthetic "
            f"ones), the width-reduced CPU preset cpu-small (not ResEnc M), {warm} common baseline iterations "
            f"then {iterations} per set-up. It shows the pipeline and networks that segment; it cannot show an "
            "effect of the loss: the set-ups differ only in their short last phase, and with one seed and a "
            "handful of held-out cases every difference is within noise. See docs/evidence.md for the seeded "
            "study and README for the real-data GPU workflow.")


def set_nnunet_roots(base: Path) -> dict[str, Path]:
    """Point nnU-Net's three folders into ``base`` (must run before nnunetv2 is imported)."""
    roots = {k: base / v for k, v in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                                      ("nnUNet_results", "nnUNet_results"))}
    for key, path in roots.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    return roots


def run_demo(out: str | os.PathLike = "demo_out", cases: int | None = None, iterations: int | None = None,
             seed: int = 0, progress: bool = True, warm_start_iterations: int | None = None) -> Path:
    """Run the demo into ``out``; returns the path of report.html.

    Args:
      out: demo folder (absent, empty, or an interrupted demo with the same arguments).
      cases: synthetic cases (default :data:`DEMO_CASES`).
      iterations: each set-up's own training phase (default :data:`DEMO_ITERATIONS`).
      seed: cohort and training seed.
      progress: progress bars and stage lines.
      warm_start_iterations: the common baseline phase (default :data:`DEMO_WARM_ITERATIONS`).
    """
    from vadice.data.hntsmrg import convert
    from vadice.data.synth import generate_cohort
    from vadice.experiment import Experiment, ExperimentSettings, build_report

    out = check_output_dir(out).resolve()
    cases = DEMO_CASES if cases is None else cases
    iterations = DEMO_ITERATIONS if iterations is None else iterations
    warm = DEMO_WARM_ITERATIONS if warm_start_iterations is None else warm_start_iterations
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    roots = set_nnunet_roots(out)
    cohort = out / "cohort"
    if not (cohort / "cohort.json").is_file():
        _say(progress, f"[1/6] synthetic cohort: {cases} cases on the {DEMO_SIZE} grid -> {cohort}")
        generate_cohort(cohort, cases, seed, size=DEMO_SIZE, progress=progress)
    _say(progress, "[2/6] HNTS-MRG Task 1 -> nnU-Net raw dataset")
    dataset = convert(cohort, task=1, dataset_id=DEMO_DATASET_ID, out=roots["nnUNet_raw"], name=DEMO_NAME,
                      progress=progress)
    settings = ExperimentSettings(
        dataset=str(dataset), preset="cpu-small", folds=(0,), seeds=(seed,), device="cpu",
        iterations=iterations, epochs=_epochs(iterations, DEMO_EPOCHS), val_iterations=DEMO_VAL_ITERATIONS,
        val_mirroring=False, warm_start_iterations=warm, warm_start_epochs=_epochs(warm, DEMO_WARM_EPOCHS))
    exp = Experiment.open(out / "run", settings, progress=progress)
    _say(progress, "[3/6] planning (cpu-small preset) and lesion preprocessing")
    exp.prepare(fingerprint_samples=1_000_000)
    _say(progress, f"[4/6] common baseline phase on fold 0 ({warm} iterations)")
    exp.warm_start(0, seed)
    _say(progress, f"[5/6] baseline, dual, selective-ln fine-tuned from it ({iterations} iterations each), "
                   "then their predictions of fold 0's held-out cases")
    exp.run_units()
    _say(progress, "[6/6] evaluating, comparing, reporting")
    result = exp.collect()
    note = demo_note(cases, warm, iterations, seed)
    report = build_report(exp.run_dir, notes=[note])
    minutes = (time.time() - start) / 60
    print(result["comparison"]["markdown"])
    print(f"\n{note}\n")
    print(f"demo finished in {minutes:.1f} min")
    print(f"comparison: {exp.run_dir / 'comparison' / 'comparison.md'}")
    print(f"report:     {report}")
    return report


def _epochs(iterations: int, most: int) -> int:
    """The largest epoch count <= ``most`` that divides ``iterations`` (nnU-Net's schedule is per epoch)."""
    return max(e for e in range(1, most + 1) if iterations % e == 0)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)
    else:
        log.info(text)
