"""``vadice demo``: the whole study in miniature on the CPU.

Synthetic cohort -> Task 1 conversion -> cpu-small plan -> baseline, dual and
selective-ln on fold 0 for a fixed iteration budget -> out-of-fold predictions
-> evaluation -> paired comparison -> report.html. Every stage resumes, so an
interrupted demo continues where it stopped.
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
DEMO_CASES = 20
DEMO_ITERATIONS = 120
DEMO_EPOCHS = 6  # nnU-Net decays the learning rate per epoch: several short epochs, not one long one
DEMO_VAL_ITERATIONS = 2

NOTE = ("This is a CPU-minute training of a width-reduced network (preset cpu-small, not ResEnc M) on a small "
        "synthetic cohort: it illustrates the pipeline, not the method. Differences between set-ups here "
        "are noise; see README for the real-data GPU workflow.")


def set_nnunet_roots(base: Path) -> dict[str, Path]:
    """Point nnU-Net's three folders into ``base`` (must run before nnunetv2 is imported)."""
    roots = {k: base / v for k, v in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                                      ("nnUNet_results", "nnUNet_results"))}
    for key, path in roots.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    return roots


def run_demo(out: str | os.PathLike = "demo_out", cases: int | None = None, iterations: int | None = None,
             seed: int = 0, progress: bool = True) -> Path:
    """Run the demo into ``out``; returns the path of report.html."""
    from vadice.data.hntsmrg import convert
    from vadice.data.synth import generate_cohort
    from vadice.experiment import Experiment, ExperimentSettings, build_report

    out = check_output_dir(out).resolve()
    cases = DEMO_CASES if cases is None else cases
    iterations = DEMO_ITERATIONS if iterations is None else iterations
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    roots = set_nnunet_roots(out)
    cohort = out / "cohort"
    if not (cohort / "cohort.json").is_file():
        _say(progress, f"[1/5] synthetic cohort: {cases} small cases -> {cohort}")
        generate_cohort(cohort, cases, seed, size="small", progress=progress)
    _say(progress, "[2/5] HNTS-MRG Task 1 -> nnU-Net raw dataset")
    dataset = convert(cohort, task=1, dataset_id=DEMO_DATASET_ID, out=roots["nnUNet_raw"], name=DEMO_NAME,
                      progress=progress)
    epochs = max(e for e in range(1, DEMO_EPOCHS + 1) if iterations % e == 0)
    settings = ExperimentSettings(dataset=str(dataset), preset="cpu-small", folds=(0,), seeds=(seed,),
                                  device="cpu", iterations=iterations, epochs=epochs,
                                  val_iterations=DEMO_VAL_ITERATIONS, val_mirroring=False)
    exp = Experiment.open(out / "run", settings, progress=progress)
    _say(progress, "[3/5] planning (cpu-small preset) and lesion preprocessing")
    exp.prepare(fingerprint_samples=1_000_000)
    _say(progress, f"[4/5] training baseline, dual, selective-ln on fold 0 ({iterations} iterations each)")
    exp.run_units()
    _say(progress, "[5/5] evaluating, comparing, reporting")
    result = exp.collect()
    report = build_report(exp.run_dir, notes=[NOTE])
    minutes = (time.time() - start) / 60
    print(result["comparison"]["markdown"])
    print(f"\n{NOTE}\n")
    print(f"demo finished in {minutes:.1f} min")
    print(f"comparison: {exp.run_dir / 'comparison' / 'comparison.md'}")
    print(f"report:     {report}")
    return report


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)
    else:
        log.info(text)
