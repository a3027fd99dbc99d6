"""``vadice demo``: the whole study in miniature on the CPU.

Synthetic cohort (``neck`` grid: a 160 mm crop around the neck at ~1.5x1.5x2 mm,
so that small nodes keep tens to hundreds of voxels) -> Task 1 conversion ->
cpu-small plan -> baseline, dual and selective-ln, each fine-tuned from one
common baseline checkpoint on fold 0 -> predictions of fold 0's held-out cases
-> evaluation -> paired comparison -> report.html. Every stage resumes, so an
interrupted demo continues where it stopped.

Why a common warm start, and why shipped weights: on two CPU cores one
training iteration of the cpu-small network costs one to a few seconds, and
nnU-Net's networks predict nothing for their first few hundred iterations
(docs/benchmarks.md). Three networks trained from scratch within the demo's
quarter of an hour would all be empty. So the demo starts every set-up from one
baseline checkpoint that ships with vadice (``demo_weights/``: the weights, the
exact command and training log that made them, their SHA-256, and the cases
they were trained on — fold 0's training cases of this very cohort, never its
held-out cases, which the demo checks). ``from_scratch=True`` (``vadice demo
--from-scratch``) trains that common baseline inside the demo instead, with
as many iterations as the shipped one saw, in one schedule (about 35 min on two
quiet cores: nnU-Net's network predicted no voxel at all after 1500 iterations,
the tumour appeared after ~2000, docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from vadice.io import InputError, check_output_dir, sha256_file
from vadice.nnunet.train import DEMO_WEIGHTS

log = logging.getLogger(__name__)

DEMO_DATASET_ID = 990
DEMO_NAME = "VadiceDemo"
DEMO_SIZE = "neck"
DEMO_CASES = 30
DEMO_SEED = 0
DEMO_ITERATIONS = 90  # each set-up's own phase after the common warm start
DEMO_EPOCHS = 3  # nnU-Net decays the learning rate per epoch: several short epochs, not one long one
DEMO_VAL_ITERATIONS = 3
# The common baseline trained with from_scratch=True: as many iterations as the shipped checkpoint saw
# (bench/make_demo_weights.py: 1500 + 1500 + 2000 in three stages), here as one schedule.
WARM_ITERATIONS = 5000
WARM_EPOCHS = 100
WEIGHTS_FILE = DEMO_WEIGHTS  # also `vadice train --warm-start demo`
WEIGHTS_DIR = WEIGHTS_FILE.parent
PROVENANCE_FILE = WEIGHTS_DIR / "baseline_fold0.json"


def demo_note(cases: int, warm: str, iterations: int, seed: int) -> str:
    """What the demo shows and what it does not, for the report and the terminal."""
    held_out = max(1, round(cases / 5))
    return (f"Demo: one seed ({seed}), one fold (fold 0: about {held_out} held-out cases of {cases} synthetic "
            f"ones), the width-reduced CPU preset cpu-small (not ResEnc M), {warm}, then {iterations} "
            "iterations per set-up with its own loss. It shows the pipeline and networks that segment; it "
            "cannot show an effect of the loss: the set-ups differ only in their short last phase, and with one "
            "seed and a handful of held-out cases every difference is within noise. See docs/evidence.md for "
            "the seeded study and README for the real-data GPU workflow.")


def shipped_weights(cases: int, seed: int, weights: Path = WEIGHTS_FILE,
                    provenance: Path = PROVENANCE_FILE) -> Path | None:
    """The shipped common-baseline checkpoint, if it exists and was made for this cohort; else None.

    Raises:
      InputError: the checkpoint's bytes differ from the SHA-256 recorded beside it.
    """
    if not (weights.is_file() and provenance.is_file()):
        return None
    info = json.loads(provenance.read_text())
    if info["cohort"] != {"cases": cases, "seed": seed, "size": DEMO_SIZE}:
        return None
    if sha256_file(weights) != info["sha256"]:
        raise InputError(weights, "does not match the SHA-256 in its provenance file; reinstall vadice")
    return weights


def check_held_out(preprocessed_dir: Path, fold: int = 0, provenance: Path = PROVENANCE_FILE) -> list[str]:
    """Refuse when the shipped weights were trained on any case this fold holds out; returns the held-out cases.

    Raises:
      InputError: no split yet, or a held-out case among the weights' training cases.
    """
    splits = preprocessed_dir / "splits_final.json"
    if not splits.is_file():
        raise InputError(splits, "no split yet: the held-out cases of the demo cannot be checked")
    held_out = sorted(json.loads(splits.read_text())[fold]["val"])
    seen = set(json.loads(provenance.read_text())["train_cases"]) & set(held_out)
    if seen:
        raise InputError(provenance, f"weights were trained on held-out case(s) {', '.join(sorted(seen))}; the demo "
                         "would score cases the network has seen")
    return held_out


def set_nnunet_roots(base: Path) -> dict[str, Path]:
    """Point nnU-Net's three folders into ``base`` (must run before nnunetv2 is imported)."""
    roots = {k: base / v for k, v in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                                      ("nnUNet_results", "nnUNet_results"))}
    for key, path in roots.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    return roots


def run_demo(out: str | os.PathLike = "demo_out", cases: int | None = None, iterations: int | None = None,
             seed: int = DEMO_SEED, progress: bool = True, from_scratch: bool = False,
             warm_start_iterations: int | None = None) -> Path:
    """Run the demo into ``out``; returns the path of report.html.

    Args:
      out: demo folder (absent, empty, or an interrupted demo with the same arguments).
      cases: synthetic cases (default :data:`DEMO_CASES`).
      iterations: each set-up's own training phase (default :data:`DEMO_ITERATIONS`).
      seed: cohort and training seed.
      progress: progress bars and stage lines.
      from_scratch: train the common baseline here instead of starting from the shipped weights.
        Implied when the shipped weights were made for another cohort (other ``cases`` or ``seed``).
      warm_start_iterations: length of that in-demo baseline phase (default :data:`WARM_ITERATIONS`).
    """
    from vadice.data.hntsmrg import convert
    from vadice.data.synth import generate_cohort
    from vadice.experiment import Experiment, ExperimentSettings, build_report

    out = check_output_dir(out).resolve()
    cases = DEMO_CASES if cases is None else cases
    iterations = DEMO_ITERATIONS if iterations is None else iterations
    weights = None if from_scratch or warm_start_iterations else shipped_weights(cases, seed)
    warm = WARM_ITERATIONS if warm_start_iterations is None else warm_start_iterations
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
    common = dict(dataset=str(dataset), preset="cpu-small", folds=(0,), seeds=(seed,), device="cpu",
                  iterations=iterations, epochs=_epochs(iterations, DEMO_EPOCHS),
                  val_iterations=DEMO_VAL_ITERATIONS, val_mirroring=False,
                  probabilities=True)  # the report's FROC section: set-ups at matched operating points
    if weights is not None:
        settings = ExperimentSettings(**common, warm_start_weights=str(weights))
        warm_text = "fine-tuned from the shipped common baseline checkpoint (vadice/demo_weights)"
    else:
        settings = ExperimentSettings(**common, warm_start_iterations=warm,
                                      warm_start_epochs=_epochs(warm, WARM_EPOCHS))
        warm_text = f"fine-tuned from a common baseline trained here ({warm} iterations)"
    exp = Experiment.open(out / "run", settings, progress=progress)
    _say(progress, "[3/6] planning (cpu-small preset) and lesion preprocessing")
    exp.prepare(fingerprint_samples=1_000_000)
    if weights is None:
        _say(progress, f"[4/6] common baseline phase on fold 0 ({warm} iterations; minutes per 100 on 2 cores)")
        exp.warm_start(0, seed)
    else:
        _say(progress, f"[4/6] common baseline: shipped checkpoint {weights.name} (sha256 {sha256_file(weights)[:12]}…)")
    _say(progress, f"[5/6] baseline, dual, selective-ln fine-tuned from it ({iterations} iterations each), "
                   "then their predictions of fold 0's held-out cases")
    exp.run_units()
    if weights is not None:
        check_held_out(Path(os.environ["nnUNet_preprocessed"]) / f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_NAME}")
    _say(progress, "[6/6] evaluating, comparing, reporting")
    result = exp.collect()
    note = demo_note(cases, warm_text, iterations, seed)
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
