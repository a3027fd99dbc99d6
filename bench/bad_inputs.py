"""Feed bad inputs to every vadice command and tabulate what each does (docs/bad-inputs.md).

Usage: python bench/bad_inputs.py SCRATCH_DIR [MODEL_DIR] > table.md

SCRATCH_DIR is created and filled with small synthetic data; MODEL_DIR (optional) is a trained
nnU-Net model folder (Trainer__Plans__3d_fullres) for the predict rows that need one. Each row:
command line, exit code, the last stderr line, and whether anything was left behind at the output
path. Runs every command in a fresh process, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from vadice.io import Geometry, write_nifti

EYE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def run(argv, env, out=None):
    """(exit code, last stderr line, 'nothing' / what exists at ``out``)."""
    res = subprocess.run([sys.executable, "-m", "vadice", "-q", *argv], env=env, capture_output=True, text=True,
                         timeout=600)
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    left = "-"
    if out is not None:
        out = Path(out)
        left = "nothing" if not out.exists() else (
            "unchanged" if out.is_file() else f"{len(list(out.iterdir()))} entries")
    return res.returncode, lines[-1] if lines else (res.stdout.strip().splitlines() or [""])[-1], left


def main(scratch: Path, model: Path | None) -> None:
    scratch = scratch.resolve()
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    roots = {k: str(scratch / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    env_roots = {**env, **roots}

    # data: a 3-case cohort, its conversion, a file, a truncated mask, label maps of two grids
    subprocess.run([sys.executable, "-m", "vadice", "-q", "synth", str(scratch / "cohort"), "--cases", "3",
                    "--seed", "1"], env=env, check=True)
    subprocess.run([sys.executable, "-m", "vadice", "-q", "convert", str(scratch / "cohort"), "--task", "1",
                    "--dataset-id", "601", "--out", roots["nnUNet_raw"], "--workers", "1"], env=env, check=True)
    raw = Path(roots["nnUNet_raw"]) / "Dataset601_HNTSMRGTask1"
    (scratch / "afile").write_text("x")
    bad_cohort = scratch / "bad_cohort"
    shutil.copytree(scratch / "cohort", bad_cohort)
    for mask in sorted(bad_cohort.glob("*/preRT/*_preRT_mask.nii.gz"))[:2]:
        mask.write_bytes(mask.read_bytes()[:200])
    empty_raw = Path(roots["nnUNet_raw"]) / "Dataset602_Empty"
    (empty_raw / "imagesTr").mkdir(parents=True)
    (empty_raw / "labelsTr").mkdir()
    (empty_raw / "dataset.json").write_text(json.dumps(json.loads((raw / "dataset.json").read_text())))
    gt, pred = scratch / "gt", scratch / "pred"
    m = np.zeros((8, 12, 12), np.uint8)
    m[1:4, 3:7, 3:7] = 1
    write_nifti(m, Geometry((12, 12, 8), (1, 1, 2), (0, 0, 0), EYE), gt / "a.nii.gz")
    write_nifti(m[:6], Geometry((12, 12, 6), (1, 1, 2), (0, 0, 0), EYE), pred / "a.nii.gz")
    spacing = scratch / "pred_spacing"
    write_nifti(m, Geometry((12, 12, 8), (1, 1, 3), (0, 0, 0), EYE), spacing / "a.nii.gz")
    label3 = scratch / "pred_label3"
    write_nifti(np.where(m, 3, 0).astype(np.uint8), Geometry((12, 12, 8), (1, 1, 2), (0, 0, 0), EYE),
                label3 / "a.nii.gz")
    images = scratch / "images"
    write_nifti(np.random.default_rng(0).normal(size=(8, 12, 12)).astype(np.float32),
                Geometry((12, 12, 8), (1, 1, 2), (0, 0, 0), EYE), images / "a_0000.nii.gz")
    txt_in = scratch / "images_txt"
    txt_in.mkdir()
    (txt_in / "notes.txt").write_text("hello")
    broken_in = scratch / "images_broken"
    broken_in.mkdir()
    (broken_in / "b_0000.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    fake_run = scratch / "a_run"
    (fake_run / "units").mkdir(parents=True)
    (fake_run / "manifest.json").write_text("{}")
    foreign = scratch / "pred_foreign"
    foreign.mkdir()
    shutil.copy(gt / "a.nii.gz", foreign / "a.nii.gz")
    planned_cpu = scratch / "planned"  # nnUNet_preprocessed with cpu-small plans only
    (planned_cpu / "Dataset601_HNTSMRGTask1").mkdir(parents=True)
    (planned_cpu / "Dataset601_HNTSMRGTask1" / "vadiceCPUSmallPlans.json").write_text(
        json.dumps({"configurations": {"3d_fullres": {"data_identifier": "d"}}}))
    (planned_cpu / "Dataset601_HNTSMRGTask1" / "d").mkdir()
    env_planned = {**env_roots, "nnUNet_preprocessed": str(planned_cpu)}
    run_dir = scratch / "run"
    s = str(scratch)
    # a post-processing file fitted on case "a" (truth against itself): applying it to "a" must be refused
    subprocess.run([sys.executable, "-m", "vadice", "-q", "postprocess", "fit", str(gt), "--gt", str(gt), "--out",
                    f"{s}/pp_seen.json"], env=env, check=True, stdout=subprocess.DEVNULL)

    rows = [
        ("synth", ["synth", f"{s}/syn", "--cases", "0", "--seed", "1"], env, f"{s}/syn"),
        ("synth", ["synth", f"{s}/afile", "--cases", "2", "--seed", "1"], env, f"{s}/afile"),
        ("synth", ["synth", f"{s}/syn", "--cases", "2", "--seed", "-3"], env, f"{s}/syn"),
        ("convert", ["convert", f"{s}/nowhere", "--task", "1", "--dataset-id", "603", "--out", f"{s}/r"], env,
         f"{s}/r"),
        ("convert", ["convert", str(bad_cohort), "--task", "1", "--dataset-id", "603", "--out", f"{s}/r"], env,
         f"{s}/r"),
        ("convert", ["convert", str(scratch / "cohort"), "--task", "1", "--dataset-id", "1000", "--out", f"{s}/r"],
         env, f"{s}/r"),
        ("stats", ["stats", f"{s}/nowhere", "--out", f"{s}/st"], env, f"{s}/st"),
        ("stats", ["stats", str(bad_cohort), "--out", f"{s}/st"], env, f"{s}/st"),
        ("stats", ["stats", "699", "--out", f"{s}/st"], env_roots, f"{s}/st"),
        ("stats", ["stats", f"{s}/afile", "--out", f"{s}/st"], env, f"{s}/st"),
        ("plan", ["plan", "699"], env_roots, None),
        ("plan", ["plan", "601"], env, None),
        ("plan", ["plan", "602", "--preset", "cpu-small"], env_roots, None),
        ("plan", ["plan", "601", "--num-processes", "0"], env_roots, None),
        ("train", ["train", "601", "--loss", "dual", "--fold", "0", "--device", "cpu"], env_planned,
         roots["nnUNet_results"]),
        ("train", ["train", "601", "--loss", "baseline", "--fold", "7", "--device", "cpu", "--preset", "cpu-small"],
         env_planned, roots["nnUNet_results"]),
        ("train", ["train", "601", "--loss", "dual", "--fold", "-1", "--device", "cpu"], env_planned, None),
        ("train", ["train", "601", "--loss", "focal", "--fold", "0"], env_planned, None),
        ("train", ["train", "601", "--loss", "dual", "--fold", "0", "--device", "cuda", "--preset", "cpu-small"],
         env_planned, roots["nnUNet_results"]),
        ("train", ["train", "601", "--loss", "dual", "--fold", "0", "--iterations", "0", "--device", "cpu"],
         env_planned, None),
        ("evaluate", ["evaluate", "--gt", f"{s}/nowhere", "--pred", str(pred), "--out", f"{s}/ev"], env, f"{s}/ev"),
        ("evaluate", ["evaluate", "--gt", str(gt), "--pred", str(spacing), "--out", f"{s}/ev"], env, f"{s}/ev"),
        ("evaluate", ["evaluate", "--gt", str(gt), "--pred", str(label3), "--out", f"{s}/ev"], env, f"{s}/ev"),
        ("evaluate", ["evaluate", "--gt", str(gt), "--pred", str(pred), "--out", f"{s}/ev", "--strict-geometry"],
         env, f"{s}/ev"),
        ("evaluate", ["evaluate", "--gt", str(gt), "--pred", str(pred), "--out", f"{s}/ev"], env, f"{s}/ev"),
        ("evaluate", ["evaluate", "--gt", str(gt), "--pred", str(gt), "--out", f"{s}/ev2", "--tolerance", "-1"],
         env, f"{s}/ev2"),
        ("evaluate", ["evaluate", "--gt", str(gt), "--pred", str(gt), "--out", f"{s}/afile"], env, f"{s}/afile"),
        ("compare", ["compare", f"{s}/ev", "--out", f"{s}/cmp"], env, f"{s}/cmp"),
        ("compare", ["compare", f"{s}/ev", f"{s}/gt", "--out", f"{s}/cmp"], env, f"{s}/cmp"),
        ("compare", ["compare", f"{s}/ev", f"{s}/ev", "--names", "a", "--out", f"{s}/cmp"], env, f"{s}/cmp"),
        ("experiment", ["experiment", "601", "--out", str(run_dir), "--folds", "0,9", "--preset", "cpu-small",
                        "--device", "cpu"], env_roots, run_dir),
        ("experiment", ["experiment", "601", "--out", str(run_dir), "--unit", "bogus:0", "--preset", "cpu-small",
                        "--device", "cpu"], env_roots, run_dir),
        ("experiment", ["experiment", "601", "--out", str(run_dir), "--collect", "--preset", "cpu-small",
                        "--device", "cpu"], env_roots, run_dir),
        ("experiment", ["experiment", "601", "--out", str(run_dir), "--setups", "dual,baseline", "--device", "cpu"],
         env_roots, run_dir),
        ("experiment", ["experiment", "699", "--out", str(run_dir), "--device", "cpu"], env_roots, run_dir),
        ("report", ["report", f"{s}/nowhere"], env, None),
        ("report", ["report", str(gt)], env, None),
        ("demo", ["demo", "--out", f"{s}/afile"], env, f"{s}/afile"),
        ("predict", ["predict", "-i", f"{s}/nowhere", "-o", f"{s}/p", "-m", f"{s}/nowhere_model"], env, f"{s}/p"),
        ("postprocess", ["postprocess", "fit", f"{s}/nowhere", "--out", f"{s}/pp.json"], env, f"{s}/pp.json"),
        ("postprocess", ["postprocess", "fit", str(label3), "--gt", str(gt), "--out", f"{s}/pp.json"], env,
         f"{s}/pp.json"),
        ("postprocess", ["postprocess", "fit", str(gt), "--gt", str(gt), "--out", f"{s}/pp.json", "--objective",
                         "recall"], env, f"{s}/pp.json"),
        ("postprocess", ["postprocess", "fit", str(gt), "--gt", str(gt), "--out", f"{s}/pp.json", "--grid", "0,-5"],
         env, f"{s}/pp.json"),
        ("postprocess", ["postprocess", "fit", str(gt), "--gt", str(gt), "--out", f"{s}/afile"], env, f"{s}/afile"),
        ("postprocess", ["postprocess", "apply", f"{s}/afile", "-i", str(gt), "-o", f"{s}/ppo"], env, f"{s}/ppo"),
        ("postprocess", ["postprocess", "apply", f"{s}/pp_seen.json", "-i", str(gt), "-o", f"{s}/ppo"], env,
         f"{s}/ppo"),
        ("export-model", ["export-model", f"{s}/nowhere_model", "--out", f"{s}/m.zip"], env, f"{s}/m.zip"),
        ("export-model", ["export-model", str(fake_run), "--out", f"{s}/m.zip"], env, f"{s}/m.zip"),
        ("import-rtstruct", ["import-rtstruct", f"{s}/nowhere", f"{s}/rs.dcm", "--out", f"{s}/rt.nii.gz"], env,
         f"{s}/rt.nii.gz"),
        ("import-rtstruct", ["import-rtstruct", str(images), f"{s}/afile", "--out", f"{s}/rt.nii.gz"], env,
         f"{s}/rt.nii.gz"),
        ("export-rtstruct", ["export-rtstruct", str(images), f"{s}/gt/a.nii.gz", "--out-dir", f"{s}/rto"], env,
         f"{s}/rto"),
        ("gc-predict", ["gc-predict", "--task", "1", "--model", f"{s}/nowhere_model", "--input", f"{s}/nowhere",
                        "--output", f"{s}/gco"], env, f"{s}/gco"),
    ]
    if model is not None:
        m_ = str(model)
        rows += [
            ("predict", ["predict", "-i", f"{s}/nowhere", "-o", f"{s}/p", "-m", m_], env, f"{s}/p"),
            ("predict", ["predict", "-i", str(txt_in), "-o", f"{s}/p", "-m", m_], env, f"{s}/p"),
            ("predict", ["predict", "-i", str(broken_in), "-o", f"{s}/p", "-m", m_], env, f"{s}/p"),
            ("predict", ["predict", "-i", str(images), "-o", f"{s}/p", "-m", str(fake_run)], env, f"{s}/p"),
            ("predict", ["predict", "-i", str(images), "-o", f"{s}/p", "-m", m_, "--folds", "3"], env, f"{s}/p"),
            ("predict", ["predict", "-i", str(images), "-o", f"{s}/afile", "-m", m_], env, f"{s}/afile"),
            ("predict", ["predict", "-i", str(images), "-o", str(foreign), "-m", m_], env, str(foreign)),
            ("predict", ["predict", "-i", str(images), "-o", f"{s}/p", "-m", m_, "--device", "cuda"], env,
             f"{s}/p"),
            ("predict", ["predict", "-i", str(images), "-o", f"{s}/p", "-m", m_, "--postprocessing",
                         f"{s}/pp_seen.json"], env, f"{s}/p"),
            ("predict", ["predict", "-i", str(images), "-o", f"{s}/p", "-m", m_, "--postprocessing", "bundled"],
             env, f"{s}/p"),
            ("export-model", ["export-model", m_, "--out", f"{s}/afile"], env, f"{s}/afile"),
            ("export-model", ["export-model", m_, "--out", f"{s}/m.zip", "--postprocessing", f"{s}/afile"], env,
             f"{s}/m.zip"),
        ]
    print("| command | bad input (arguments) | exit | what it says (last line on stderr) | left at the output |")
    print("|---|---|---|---|---|")
    for command, argv, e, out in rows:
        rc, line, left = run(argv, e, out)
        shown = " ".join(a.replace(s, "S") for a in argv[1:])
        line = line.replace(s, "S").replace("|", "\\|")
        if model is not None:
            shown, line = shown.replace(str(model), "MODEL"), line.replace(str(model), "MODEL")
        print(f"| {command} | `{shown}` | {rc} | {line} | {left} |", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
