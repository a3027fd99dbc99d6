#!/usr/bin/env python
"""The three set-ups on a GPU in about ten minutes: one command, nothing downloaded.

Generates a full-size synthetic cohort (>= 40 cases), converts it (Task 1),
plans with nnU-Net's real ResEnc M planner (nnUNetResEncUNetMPlans), trains
baseline, dual and selective-ln on fold 0 for a fixed iteration budget with at
least two seeds, evaluates the pooled out-of-fold predictions and writes the
comparison (JSON + Markdown), the CPU study's evidence table and figures
(bench/cpu_study.py: per set-up sensitivity overall and per size bin, precision,
DSCagg, DSC, HD95, Δ with CI, per-seed Δ and sign agreement) and the stage
timings under ``--out`` (default ``$OUT``).

    python bench/gpu_experiment.py                       # on the GPU machine
    python bench/gpu_experiment.py --tiny --out /tmp/g   # CPU smoke run of the same script

The budget (250 iterations per unit, no test-time mirroring in the final
validation) is sized from the measured ResEnc M step (84 ms at patch
32x224x192, batch 2, fp16 on an H200): training is seconds per unit, so the
run is dominated by cohort rendering, preprocessing and validation inference.
A 250-iteration model is far from converged: the table shows that the
pipeline runs on real hardware at real scale, not the study's result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default $OUT)")
    p.add_argument("--work", default=None, help="scratch folder for data and models (default OUT/../vadice_gpu_work)")
    p.add_argument("--cases", type=int, default=40)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--iterations", type=int, default=250, help="training iterations per unit")
    p.add_argument("--epochs", type=int, default=5, help="epochs the iterations are spread over")
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="resenc-m", choices=("resenc-m", "cpu-small"))
    p.add_argument("--size", default="full", choices=("full", "small"))
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke test: 10 small cases, cpu-small preset, 2 iterations, device cpu")
    args = p.parse_args(argv)
    if args.tiny:
        args.cases, args.iterations, args.epochs = 10, 2, 1
        args.device, args.preset, args.size = "cpu", "cpu-small", "small"
    if not args.out:
        p.error("--out is required when $OUT is not set")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    if len(seeds) < 2:
        p.error("use at least two seeds: one seed cannot show the seed-to-seed spread")
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out.parent / "vadice_gpu_work"
    out.mkdir(parents=True, exist_ok=True)

    from vadice.demo import set_nnunet_roots

    roots = set_nnunet_roots(work)
    from vadice.data.hntsmrg import convert
    from vadice.data.synth import generate_cohort
    from vadice.experiment import Experiment, ExperimentSettings
    from vadice.io import write_text

    timings: dict[str, float] = {}
    device_name = args.device
    if args.device == "cuda":
        import torch

        device_name = torch.cuda.get_device_name(0)

    t = time.time()
    cohort = work / "cohort"
    if not (cohort / "cohort.json").is_file():
        generate_cohort(cohort, args.cases, seed=2026, size=args.size, workers=args.workers)
    timings["cohort_s"] = time.time() - t
    t = time.time()
    dataset = convert(cohort, task=1, dataset_id=991, out=roots["nnUNet_raw"], name="VadiceGPU",
                      workers=args.workers)
    timings["convert_s"] = time.time() - t
    settings = ExperimentSettings(dataset=str(dataset), preset=args.preset, folds=(0,), seeds=seeds,
                                  device=args.device, iterations=args.iterations, epochs=args.epochs,
                                  val_iterations=5, val_mirroring=False)
    exp = Experiment.open(work / "run", settings)
    t = time.time()
    plan = exp.prepare()
    timings["plan_s"] = time.time() - t
    t = time.time()
    exp.run_units()
    timings["train_and_validate_s"] = time.time() - t
    t = time.time()
    result = exp.collect(workers=min(args.workers, 8))["comparison"]
    timings["evaluate_compare_s"] = time.time() - t
    units = {}
    for marker in sorted((exp.run_dir / "units").glob("*.json")):
        info = json.loads(marker.read_text())
        units[marker.stem] = info["seconds"]
    summary = {
        "device": device_name, "plans": plan.plans_identifier, "cases": args.cases, "size": args.size,
        "seeds": list(seeds), "iterations_per_unit": args.iterations, "timings_s": timings,
        "unit_seconds": units, "comparison": result["result"], "seed_spread": result["seed_spread"],
    }
    write_text(out / "gpu_experiment.json", json.dumps(summary, indent=2, default=str))
    header = (f"# vadice GPU experiment\n\ndevice: {device_name}; plans: {plan.plans_identifier}; "
              f"{args.cases} {args.size} synthetic cases; fold 0; seeds {list(seeds)}; "
              f"{args.iterations} iterations per unit\n\n"
              + "\n".join(f"- {k}: {v:.0f} s" for k, v in timings.items()) + "\n\n")
    # the same evidence table and figures as the CPU study (docs/evidence.md), so the two read side by side
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cpu_study

    comparison = json.loads((exp.run_dir / "comparison" / "comparison.json").read_text())
    pngs = cpu_study.figures(exp.run_dir, out)
    table = cpu_study.evidence_table(comparison) + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs)
    write_text(out / "gpu_experiment.md", header + table + "\n\n## Full comparison\n\n" + result["markdown"])
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
