"""The report of an experiment run folder: :func:`build_report` (out-of-fold or test set; moved out of
:mod:`vadice.experiment`, which re-exports it, to keep that module under 600 lines)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from vadice import registry
from vadice.io import InputError, strip_nifti_suffix
from vadice.testset import n_patients, set_dir, set_label


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 notes: Sequence[str] = (), overlays_per_setup: int = 1, which: str = "oof") -> Path:
    """Write ``report.html`` (``which="oof"``: the out-of-fold predictions) or ``report_test.html``
    (``"test"``: the test set) for a collected run folder; the title says which, with the patient count."""
    from vadice.io import read_mask, read_nifti
    from vadice.report import ReportInputs, best_and_worst_cases, overlay_png, write_report

    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    comparison_path = run_dir / set_dir(which, "comparison") / "comparison.json"
    if not manifest_path.is_file():
        raise InputError(run_dir, "not an experiment run folder (no manifest.json)")
    if not comparison_path.is_file():
        what = "the test set" if which == "test" else "the run"
        raise InputError(comparison_path, f"missing: collect {what} first (vadice experiment … --collect)")
    manifest = json.loads(manifest_path.read_text())
    comparison = json.loads(comparison_path.read_text())
    if "verdicts" not in comparison:
        raise InputError(comparison_path, "written by an older vadice (no per-seed verdicts); "
                                          "run 'vadice experiment … --collect' again")
    settings = manifest["settings"]
    setups, seeds = settings["setups"], settings["seeds"]
    evaluations = {s: {seed: run_dir / set_dir(which, "evaluation") / s / f"seed_{seed}" for seed in seeds}
                   for s in setups}
    logs: dict[str, list] = {}
    for marker in sorted((run_dir / "units").glob("*.json")):
        info = json.loads(marker.read_text())
        unit = info["unit"]
        for log_file in sorted(Path(info["fold_dir"]).glob("training_log_*.txt")):
            logs.setdefault(unit["setup"], []).append((f"fold {unit['fold']}, seed {unit['seed']}", log_file))

    from vadice.nnunet.paths import resolve_dataset

    ref = resolve_dataset(settings["dataset"])
    if which == "test":
        test_dir = run_dir / "test_set" / f"Dataset{ref.id:03d}_TestSet"
        images, gt_dir, cases = test_dir / "imagesTr", test_dir / "labelsTr", manifest["test_set"]["cases"]
    else:
        images, gt_dir = ref.raw_dir / "imagesTr", run_dir / "gt"
        cases = sorted(strip_nifti_suffix(p.name) for p in gt_dir.glob("*.nii.gz"))
    label = set_label(which, n_patients(cases))
    overlays = []
    seed = seeds[0]
    for setup in setups:
        best, worst = best_and_worst_cases(evaluations[setup][seed], label=registry.NODE_LABEL, k=overlays_per_setup)
        for kind, picks in (("best", best), ("worst", worst)):
            for case, dsc in picks:
                png = run_dir / "overlays" / f"{which}_{setup}_seed{seed}_{kind}_{case}.png"
                if not png.is_file():
                    image, geom = read_nifti(images / f"{case}_0000.nii.gz")
                    pred, _ = read_mask(run_dir / set_dir(which, "predictions") / setup / f"seed_{seed}"
                                        / f"{case}.nii.gz")
                    gt, _ = read_mask(gt_dir / f"{case}.nii.gz")
                    overlay_png(image, pred, geom.spacing_zyx, png, gt=gt,
                                title=f"{setup}, {kind} {registry.NODE_LABEL} case {case} (DSC {dsc:.3f})")
                overlays.append((f"{setup} — {kind} {registry.NODE_LABEL} case {case}, seed {seed}, DSC {dsc:.3f} "
                                 "(solid: prediction, dashed: truth)", png))
    if which == "test":
        all_notes = [f"Evaluated on the test set ({label[len('test set ('):-1]}; {manifest['test_set']['source']}): "
                     "a cohort no training or fitting saw, predicted by each set-up and seed "
                     f"({manifest['test_set']['model']})."] + list(notes)
    else:
        all_notes = [f"Evaluated on the out-of-fold predictions ({label[len('out-of-fold ('):-1]}): each case "
                     "predicted by the fold model that did not train on it."] + list(notes)
    if manifest.get("cpu_preset"):
        all_notes.append(f"Preset {settings['preset']!r} is a width-reduced CPU network, not ResEnc M: "
                         "numbers illustrate the pipeline, not the method.")
    if settings.get("warm_start_iterations"):
        all_notes.append(f"Fine-tuned from a common baseline: every set-up started from one baseline phase of "
                         f"{settings['warm_start_iterations']} iterations (per fold and seed) and then trained "
                         f"{settings.get('iterations')} iterations with its own loss.")
    elif settings.get("warm_start_weights"):
        all_notes.append(f"Fine-tuned from a common baseline: every set-up started from one baseline checkpoint "
                         f"({settings['warm_start_weights'][:19]}…) and then trained {settings.get('iterations')} "
                         "iterations with its own loss.")
    froc_path = run_dir / set_dir(which, "froc_comparison") / "froc_comparison.json"
    froc = json.loads(froc_path.read_text()) if froc_path.is_file() else None
    inputs = ReportInputs(
        title=f"vadice experiment — {Path(settings['dataset']).name} — {label}", settings=settings, notes=all_notes,
        comparison=comparison, evaluations=evaluations, training_logs=logs,
        overlays=overlays, manifest=manifest, froc_comparison=froc,
    )
    return write_report(inputs, Path(out) if out else run_dir / set_dir(which, "report"))
