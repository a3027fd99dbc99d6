"""`vadice predict` output folder safety: never replace foreign files, keep finished cases, resume.

nnU-Net's inference (``vadice.nnunet.inference.Predictor``) is replaced by a stand-in that
thresholds the image, so these tests run in seconds; the real model path is covered by
the slow tests in test_pipeline.py. What is tested here is vadice's own bookkeeping
around it: staging, collision checks, the manifest, atomic per-case moves and resume.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from vadice.cli import main
from vadice.io import Geometry, read_mask, read_nifti, write_nifti
from vadice.nnunet import inference
from vadice.predict import MANIFEST, plan_cases, prediction_settings, collect_inputs

GEOM = Geometry((20, 16, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
CASES = ("caseA", "caseB", "caseC")


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    for case in CASES:
        write_nifti(rng.normal(size=(8, 16, 20)).astype(np.float32), GEOM, folder / f"{case}_0000.nii.gz")
    return folder


class FakeInference:
    """Stand-in for inference.Predictor: label 1 where the image > 1, label 2 where < -1; records its calls.

    Called like the class (returns itself as the predictor); ``predict_case`` predicts one case.
    """

    def __init__(self, fail_on: str | None = None, exc: type[BaseException] = KeyboardInterrupt):
        self.calls: list[dict] = []
        self.built: list[dict] = []
        self.fail_on, self.exc = fail_on, exc

    def __call__(self, model_dir, folds=(0,), device="cpu", tta=True, checkpoint="checkpoint_final.pth"):
        self.built.append({"model_dir": model_dir, "folds": folds, "tta": tta})
        return self

    def predict_case(self, files, output_file=None, probabilities=False):
        case = Path(output_file).name[: -len(".nii.gz")]
        self.calls.append({"cases": [case], "use_mirroring": self.built[-1]["tta"]})
        if self.fail_on == case:
            raise self.exc("stopped")
        image, geom = read_nifti(files[0])
        labels = np.where(image > 1, 1, np.where(image < -1, 2, 0)).astype(np.uint8)
        write_nifti(labels, geom, Path(output_file))
        probs = np.stack([labels == k for k in range(3)]).astype(np.float32) if probabilities else None
        return inference.CasePrediction(labels, probs, Path(output_file))

    @property
    def cases(self) -> list[str]:
        return [c for call in self.calls for c in call["cases"]]


def _predict(inputs, out, model, *extra) -> int:
    return main(["-q", "predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "--device", "cpu", *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_predict_writes_every_case_and_records_it(monkeypatch, inputs, model, tmp_path):
    fake = FakeInference()
    monkeypatch.setattr(inference, "Predictor", fake)
    out = tmp_path / "out"
    assert _predict(inputs, out, model) == 0
    assert fake.cases == list(CASES)  # one case per inference call, in order
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([MANIFEST] + [f"{c}.nii.gz" for c in CASES] + [f"{c}_overlay.png" for c in CASES])
    image, _ = read_nifti(inputs / "caseB_0000.nii.gz")
    labels, geom = read_mask(out / "caseB.nii.gz")
    assert geom.differences(GEOM) == []
    assert np.array_equal(labels, np.where(image > 1, 1, np.where(image < -1, 2, 0)))


def test_existing_files_are_refused_and_left_byte_identical(monkeypatch, inputs, model, tmp_path, capsys):
    fake = FakeInference()
    monkeypatch.setattr(inference, "Predictor", fake)
    out = tmp_path / "out"
    out.mkdir()
    write_nifti(np.ones((8, 16, 20), np.uint8), GEOM, out / "caseB.nii.gz")  # e.g. a ground-truth label
    (out / "caseC_overlay.png").write_bytes(b"someone else's picture")
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(out)
    assert _predict(inputs, out, model) == 2
    line = _one_error_line(capsys)
    assert "caseB.nii.gz: exists" in line and "first of 2 such files" in line and "--overwrite" in line
    assert _snapshot(out) == before  # nothing replaced, nothing added, no temporary folder left
    assert fake.calls == []  # refused before any inference


def test_overwrite_replaces_only_the_colliding_outputs(monkeypatch, inputs, model, tmp_path):
    monkeypatch.setattr(inference, "Predictor", FakeInference())
    out = tmp_path / "out"
    out.mkdir()
    write_nifti(np.ones((8, 16, 20), np.uint8), GEOM, out / "caseB.nii.gz")
    (out / "notes.txt").write_text("keep me")
    assert _predict(inputs, out, model, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "keep me"
    image, _ = read_nifti(inputs / "caseB_0000.nii.gz")
    assert np.array_equal(read_mask(out / "caseB.nii.gz")[0], np.where(image > 1, 1, np.where(image < -1, 2, 0)))


def test_interrupted_run_keeps_finished_cases_and_rerun_does_only_the_rest(monkeypatch, inputs, model, tmp_path,
                                                                           capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(inference, "Predictor", FakeInference(fail_on="caseB"))
    assert _predict(inputs, out, model) == 130  # Ctrl-C during the second case
    assert "interrupted" in capsys.readouterr().err
    first = _snapshot(out)
    assert sorted(first) == sorted([MANIFEST, "caseA.nii.gz", "caseA_overlay.png"])  # no temp folder left

    fake = FakeInference()
    monkeypatch.setattr(inference, "Predictor", fake)
    assert main(["predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "--device", "cpu"]) == 0
    assert fake.cases == ["caseB", "caseC"]
    assert "wrote 2 label map(s)" in capsys.readouterr().out
    after = _snapshot(out)
    assert {k: after[k] for k in ("caseA.nii.gz", "caseA_overlay.png")} == \
        {k: first[k] for k in ("caseA.nii.gz", "caseA_overlay.png")}

    fake = FakeInference()  # a third run finds everything done
    monkeypatch.setattr(inference, "Predictor", fake)
    assert _predict(inputs, out, model) == 0
    assert fake.calls == [] and _snapshot(out) == after


def test_failure_in_a_new_folder_before_any_case_leaves_nothing(monkeypatch, inputs, model, tmp_path, capsys):
    monkeypatch.setattr(inference, "Predictor", FakeInference(fail_on="caseA"))
    out = tmp_path / "new" / "out"
    assert _predict(inputs, out, model) == 130
    assert not out.exists()


def test_other_settings_are_not_resumed_into_the_same_folder(monkeypatch, inputs, model, tmp_path, capsys):
    monkeypatch.setattr(inference, "Predictor", FakeInference())
    out = tmp_path / "out"
    assert _predict(inputs, out, model) == 0
    before = _snapshot(out)
    fake = FakeInference()
    monkeypatch.setattr(inference, "Predictor", fake)
    assert _predict(inputs, out, model, "--disable-tta") == 2
    assert "caseA.nii.gz" in _one_error_line(capsys)
    assert _snapshot(out) == before and fake.calls == []
    assert _predict(inputs, out, model, "--disable-tta", "--overwrite") == 0
    assert fake.cases == list(CASES) and {c["use_mirroring"] for c in fake.calls} == {False}


def test_an_output_edited_after_the_run_is_not_ours_any_more(monkeypatch, inputs, model, tmp_path, capsys):
    monkeypatch.setattr(inference, "Predictor", FakeInference())
    out = tmp_path / "out"
    assert _predict(inputs, out, model) == 0
    write_nifti(np.zeros((8, 16, 20), np.uint8), GEOM, out / "caseC.nii.gz")  # hand-corrected by a user
    before = _snapshot(out)
    assert _predict(inputs, out, model) == 2
    assert "caseC.nii.gz" in _one_error_line(capsys)
    assert _snapshot(out) == before


def test_a_changed_input_is_predicted_again(monkeypatch, inputs, model, tmp_path):
    monkeypatch.setattr(inference, "Predictor", FakeInference())
    out = tmp_path / "out"
    assert _predict(inputs, out, model) == 0
    write_nifti(np.full((8, 16, 20), 5.0, np.float32), GEOM, inputs / "caseB_0000.nii.gz")
    fake = FakeInference()
    monkeypatch.setattr(inference, "Predictor", fake)
    assert _predict(inputs, out, model) == 0
    assert fake.cases == ["caseB"]
    assert np.all(read_mask(out / "caseB.nii.gz")[0] == 1)


def test_a_foreign_file_named_like_the_manifest_is_refused(monkeypatch, inputs, model, tmp_path, capsys):
    monkeypatch.setattr(inference, "Predictor", FakeInference())
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text("not json")
    assert _predict(inputs, out, model) == 2
    assert MANIFEST in _one_error_line(capsys)
    assert (out / MANIFEST).read_text() == "not json"


def test_files_of_a_case_stopped_between_its_moves_count_as_ours(inputs, model, tmp_path, monkeypatch):
    # The manifest is written before a case's files move; a stop after the overlay moved leaves it alone
    # in OUT_DIR: the rerun must redo that case (replacing its own overlay), not call it foreign.
    monkeypatch.setattr(inference, "Predictor", FakeInference())
    out = tmp_path / "out"
    assert _predict(inputs, out, model) == 0
    (out / "caseB.nii.gz").unlink()
    cases = collect_inputs(inputs, 1)
    settings = prediction_settings(model, (0,), "checkpoint_final.pth", True)
    todo, done, _ = plan_cases(cases, out, settings, overlays=True)
    assert [c.case for c, _ in todo] == ["caseB"] and [c.case for c in done] == ["caseA", "caseC"]


def test_progress_says_case_k_of_n_and_time_left(monkeypatch, inputs, model, tmp_path, caplog):
    monkeypatch.setattr(inference, "Predictor", FakeInference())
    with caplog.at_level(logging.INFO, logger="vadice.predict"):
        assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model),
                     "--device", "cpu", "--no-overlays"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "vadice.predict"]
    assert lines[0] == "case 1 of 3: caseA"
    assert lines[1].startswith("case 2 of 3: caseB, about ") and lines[1].endswith(" left")
    assert lines[2].startswith("case 3 of 3: caseC, about ")


def test_disable_tta_reaches_nnunet(monkeypatch, inputs, model, tmp_path):
    fake = FakeInference()
    monkeypatch.setattr(inference, "Predictor", fake)
    assert _predict(inputs, tmp_path / "a", model) == 0
    assert _predict(inputs, tmp_path / "b", model, "--disable-tta") == 0
    assert [c["use_mirroring"] for c in fake.calls] == [True] * 3 + [False] * 3


def test_save_probabilities_after_a_run_without_them_adds_the_missing_files(monkeypatch, inputs, model, tmp_path):
    monkeypatch.setattr(inference, "Predictor", FakeInference())
    out = tmp_path / "out"
    assert _predict(inputs, out, model, "--no-overlays") == 0
    labels_before = {c: (out / f"{c}.nii.gz").read_bytes() for c in CASES}
    assert not list(out.glob("*.npz"))
    fake = FakeInference()
    monkeypatch.setattr(inference, "Predictor", fake)
    assert _predict(inputs, out, model, "--no-overlays", "--save-probabilities") == 0
    assert fake.cases == list(CASES)  # each case lacked its .npz: predicted again, label map rewritten alike
    for case in CASES:
        assert (out / f"{case}.nii.gz").read_bytes() == labels_before[case]
        with np.load(out / f"{case}.npz") as npz:
            probabilities = npz["probabilities"]
        labels, _ = read_mask(out / f"{case}.nii.gz")
        assert probabilities.dtype == np.float16 and probabilities.shape == (3, *labels.shape)
        assert np.array_equal(probabilities.argmax(axis=0), labels)
    # the other way round: a run without them finds every case done and leaves the .npz files alone
    fake = FakeInference()
    monkeypatch.setattr(inference, "Predictor", fake)
    before = _snapshot(out)
    assert _predict(inputs, out, model, "--no-overlays") == 0
    assert fake.calls == [] and _snapshot(out) == before


def test_a_foreign_probabilities_file_is_refused(monkeypatch, inputs, model, tmp_path, capsys):
    monkeypatch.setattr(inference, "Predictor", FakeInference())
    out = tmp_path / "out"
    out.mkdir()
    (out / "caseA.npz").write_bytes(b"someone else's")
    assert _predict(inputs, out, model, "--save-probabilities") == 2
    assert "caseA.npz: exists" in _one_error_line(capsys)
    assert (out / "caseA.npz").read_bytes() == b"someone else's"
