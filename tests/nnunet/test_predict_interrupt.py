"""`vadice predict` with a real nnU-Net model: Ctrl-C keeps finished cases, a rerun predicts only the rest.

Slow: plans and trains a cpu-small model for 2 iterations on the tiny dataset of test_plan_train.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from test_plan_train import NNUNET_VARS, write_tiny_dataset  # tests/nnunet is on sys.path under pytest

from vadice.nnunet.plan import plan
from vadice.nnunet.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt")
    folder = write_tiny_dataset(root / "nnUNet_raw", dataset_id=986)
    saved = {k: os.environ.pop(k) for k in NNUNET_VARS if k in os.environ}
    try:
        plan(folder, preset="cpu-small", num_processes=1, progress=False, fingerprint_samples=100_000)
        result = train(folder, loss="baseline", fold=0, preset="cpu-small", device="cpu", iterations=2,
                       val_iterations=1, val_mirroring=False, progress=False, threads=1)
    finally:
        os.environ.update(saved)
    return result.model_dir


def test_sigint_keeps_finished_cases_and_rerun_completes_only_the_rest(model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    cases = [f"p{i}" for i in range(4)]
    for case in cases:  # 18 sliding-window tiles x 8 mirrorings: seconds per case, so Ctrl-C lands mid-run
        image = sitk.GetImageFromArray((rng.normal(0, 1, (24, 64, 64)) + 10).astype(np.float32))
        image.SetSpacing((1.0, 1.0, 1.5))
        sitk.WriteImage(image, str(inputs / f"{case}_0000.nii.gz"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "p3.nii.gz").write_bytes(b"not ours")  # e.g. a ground-truth label someone keeps here
    cmd = [sys.executable, "-m", "vadice", "predict", "-i", str(inputs), "-o", str(out), "-m", str(model),
           "--device", "cpu", "--no-overlays"]

    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "p3.nii.gz: exists" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == ["p3.nii.gz"]
    (out / "p3.nii.gz").rename(tmp_path / "p3_kept.nii.gz")
    (out / "notes.txt").write_text("keep me")

    # pytest-xdist workers ignore SIGINT and an ignored signal stays ignored across exec, so under `make
    # test` (-n 2) the child would never see Ctrl-C: give it the default disposition, as a terminal would.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    while not (out / "p0.nii.gz").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    finished = sorted(p.name for p in out.glob("p*.nii.gz"))
    assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
    assert "p0.nii.gz" in finished and len(finished) < len(cases)
    assert not [p for p in out.iterdir() if p.name.startswith(".vadice-predict-")]  # no temporary folder left
    before = {name: (out / name).read_bytes() for name in finished}

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    predicted = [line.split(": ")[1].split(",")[0] for line in rerun.stderr.splitlines() if line.startswith("case ")]
    assert predicted == [c for c in cases if f"{c}.nii.gz" not in finished]
    assert {name: (out / name).read_bytes() for name in finished} == before
    assert sorted(p.name for p in out.glob("p*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    assert (out / "notes.txt").read_text() == "keep me"
    manifest = json.loads((out / ".vadice_predict.json").read_text())
    assert sorted(manifest["cases"]) == cases and manifest["settings"]["tta"] is True
