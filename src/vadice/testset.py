"""The experiment's test set and its saved class probabilities (a part of :class:`vadice.experiment.Experiment`).

**Test set** (``ExperimentSettings.test_set``, ``vadice experiment --test-set DIR``): a second cohort in the
HNTS-MRG layout that no training and no fitting sees. It is converted like the training dataset (same task,
same channels; :func:`vadice.data.hntsmrg.convert`, validated, resumable) into the run folder, never into
``nnUNet_raw``. Its *unit* is one set-up and one seed: the model is the ensemble of that seed's fold models
(softmax average, as ``nnUNetv2_predict`` with several folds; with one fold, that fold's model), loaded once
per unit (:func:`vadice.predict.predict`, resumable per case). Test-time mirroring follows the held-out
predictions (``val_mirroring``) on a GPU and is off on the CPU.

**Probabilities** (``ExperimentSettings.probabilities``, on for ``vadice experiment``, off with
``--no-probabilities``): every prediction the run makes keeps its class probabilities as ``<case>.npz``
beside the label map (key ``probabilities``, C×Z×Y×X float16, compressed: docs/nnunet.md). The held-out
ones come from nnU-Net's final validation (``--npz``, float32 plus a ``.pkl``): converted when a unit's
predictions are copied, the originals then removed. :meth:`TestSetMixin.compute_froc` writes the FROC of
every set-up and seed (:func:`vadice.metrics.froc.froc_folders`).

Run folder additions::

    RUN_DIR/test_set/Dataset<ID>_TestSet/         the converted test cohort (imagesTr: inputs, labelsTr: truth)
    RUN_DIR/predictions_test/<setup>/seed_<S>/    <case>.nii.gz (+ <case>.npz), .vadice_predict.json
    RUN_DIR/evaluation_test/<setup>/seed_<S>/     as evaluation/
    RUN_DIR/comparison_test/, seed_spread_test.json, report_test.html
    RUN_DIR/froc[_test]/<setup>/seed_<S>/         froc.csv, summary.json

Every result says which predictions it is on: "out-of-fold" or "test set" (:func:`set_label`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from vadice import registry
from vadice.io import InputError, sha256_file, strip_nifti_suffix

SETS = ("oof", "test")
TEST_DIR = "test_set"  # the converted cohort
TEST_NAME = "TestSet"
_PATIENT = re.compile(r"^HNTS_(\d+)_(preRT|midRT)$")
PROBABILITIES_DTYPE = np.float16  # as vadice.predict (docs/nnunet.md)
_DIRS = {
    "oof": {"predictions": "predictions", "evaluation": "evaluation", "comparison": "comparison",
            "froc": "froc", "froc_comparison": "froc_comparison", "spread": "seed_spread.json",
            "report": "report.html"},
    "test": {"predictions": "predictions_test", "evaluation": "evaluation_test", "comparison": "comparison_test",
             "froc": "froc_test", "froc_comparison": "froc_comparison_test", "spread": "seed_spread_test.json",
             "report": "report_test.html"},
}
# Folders holding test-set material; recorded in the manifest so that post-processing fits refuse them.
TEST_FOLDERS = (TEST_DIR, _DIRS["test"]["predictions"])


def check_set(which: str) -> str:
    if which not in SETS:
        raise InputError(None, f"which predictions: 'oof' (out-of-fold) or 'test' (test set), got {which!r}")
    return which


def set_dir(which: str, kind: str) -> str:
    """The run-folder entry of ``kind`` (predictions, evaluation, comparison, froc, froc_comparison, spread,
    report) for a set."""
    return _DIRS[check_set(which)][kind]


def set_label(which: str, n_patients: int | None = None) -> str:
    """``"out-of-fold (30 patients)"`` / ``"test set (20 patients)"``: how every result names its predictions."""
    name = "test set" if check_set(which) == "test" else "out-of-fold"
    return name if n_patients is None else f"{name} ({n_patients} patient{'s' if n_patients != 1 else ''})"


def n_patients(cases) -> int:
    """Patients among nnU-Net case names (``HNTS_012_preRT`` and ``HNTS_012_midRT`` are one patient)."""
    return len({m[1] if (m := _PATIENT.match(c)) else c for c in cases})


def dataset_task(raw_dir: Path) -> int:
    """The HNTS-MRG task of a training dataset: from ``vadice convert``'s record, else its channel names.

    Raises:
      InputError: a dataset that is neither (its channels cannot be built from the HNTS-MRG layout).
    """
    from vadice.data.hntsmrg import MANIFEST, TASKS

    try:
        return int(json.loads((raw_dir / MANIFEST).read_text())["settings"]["task"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        channels = json.loads((raw_dir / "dataset.json").read_text()).get("channel_names")
    except (OSError, ValueError):
        channels = None
    for task, (names, _) in TASKS.items():
        if channels == names:
            return task
    raise InputError(raw_dir / "dataset.json", "--test-set needs a training dataset made by `vadice convert` "
                     "(HNTS-MRG task 1 or 2 channels): the test cohort is converted the same way")


def _image_hashes(dataset: Path) -> dict[str, str]:
    """``{sha256: source file}`` of the images (not the masks) a ``vadice convert`` dataset was made from."""
    try:
        record = json.loads((dataset / "vadice_convert.json").read_text())
    except (OSError, ValueError):
        return {}
    return {digest: rel for patient in record.get("patients", {}).values()
            for rel, digest in patient.get("sources", {}).items() if digest and "_mask" not in rel}


class TestSetMixin:
    """Test set, probabilities and FROC of an experiment run (needs ``run_dir``, ``settings``, ``progress``,
    ``marker`` and ``prediction_dir`` from :class:`vadice.experiment.Experiment`)."""

    # ---- folders -----------------------------------------------------------------------
    def set_prediction_dir(self, which: str, setup: str, seed: int) -> Path:
        return self.run_dir / set_dir(which, "predictions") / setup / f"seed_{seed}"

    def set_evaluation_dir(self, which: str, setup: str, seed: int) -> Path:
        return self.run_dir / set_dir(which, "evaluation") / setup / f"seed_{seed}"

    def test_dataset_dir(self) -> Path:
        from vadice.nnunet.paths import resolve_dataset

        return self.run_dir / TEST_DIR / f"Dataset{resolve_dataset(self.settings.dataset).id:03d}_{TEST_NAME}"

    def test_gt_dir(self) -> Path:
        return self.test_dataset_dir() / "labelsTr"

    def test_cases(self) -> list[str]:
        return sorted(strip_nifti_suffix(p.name) for p in self.test_gt_dir().glob("*.nii.gz"))

    def sets(self, which: str | None = None) -> tuple[str, ...]:
        """``None``: both sets with a test set, else out-of-fold; ``"both"``; or one set.

        Raises:
          InputError: ``"test"``/``"both"`` for a run without a test set.
        """
        if which is None:
            which = "both" if self.settings.test_set is not None else "oof"
        chosen = SETS if which == "both" else (check_set(which),)
        if "test" in chosen and self.settings.test_set is None:
            raise InputError(self.run_dir, "this run has no test set (start it with --test-set DIR)")
        return chosen

    def test_tta(self) -> bool | None:
        """Test-time mirroring for the test set: the held-out predictions' on a GPU, off on the CPU."""
        if self.settings.test_set is None:
            return None
        return bool(self.settings.val_mirroring and self.settings.device != "cpu")

    # ---- test set ----------------------------------------------------------------------
    def prepare_test_set(self) -> Path | None:
        """Convert the test cohort into the run folder like the training dataset (idempotent).

        Raises:
          InputError: invalid test cohort (nothing written), a training dataset not in the HNTS-MRG task
            layout, or a test image that is also a training source (same content).
        """
        if self.settings.test_set is None:
            return None
        from vadice.data.hntsmrg import convert
        from vadice.nnunet.paths import resolve_dataset

        raw_dir = resolve_dataset(self.settings.dataset).raw_dir
        task = dataset_task(raw_dir)
        out = self.run_dir / TEST_DIR
        created = not out.exists()
        try:
            dataset = convert(self.settings.test_set, task, resolve_dataset(self.settings.dataset).id, out=out,
                              name=TEST_NAME, progress=self.progress)
            training = _image_hashes(raw_dir)
            for digest, rel in _image_hashes(dataset).items():
                if digest in training:
                    raise InputError(Path(self.settings.test_set) / rel, f"is also a training image "
                                     f"({training[digest]} of {raw_dir.name}): a test set must be other patients")
        except BaseException:
            if created:  # no partial output
                shutil.rmtree(out, ignore_errors=True)
                if self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                    self.run_dir.rmdir()
            raise
        return dataset

    def test_set_record(self) -> dict | None:
        """What the manifest records of the test set (read by post-processing fits, which refuse it)."""
        if self.settings.test_set is None:
            return None
        gt = self.test_gt_dir() if (self.run_dir / TEST_DIR).is_dir() else None
        cases = self.test_cases() if gt is not None and gt.is_dir() else []
        return {"source": str(Path(self.settings.test_set).resolve()), "n_cases": len(cases), "cases": cases,
                "truth_sha256": {c: sha256_file(gt / f"{c}.nii.gz") for c in cases},
                "folders": list(TEST_FOLDERS), "tta": self.test_tta(),
                "model": f"per set-up and seed, the ensemble of folds {list(self.settings.folds)}"}

    def unit_model_dir(self, setup: str, seed: int) -> Path:
        """The model folder holding every fold of a set-up and seed (from the unit markers).

        Raises:
          InputError: a fold unfinished, or folds trained into different model folders.
        """
        dirs = set()
        for fold in self.settings.folds:
            marker = self.marker(_unit(setup, fold, seed))
            if not marker.is_file():
                raise InputError(marker, "unit unfinished: the test set is predicted by every fold's model")
            dirs.add(json.loads(marker.read_text())["model_dir"])
        if len(dirs) != 1:
            raise InputError(self.run_dir / "units", f"{setup} seed {seed}: folds in different model folders")
        return Path(dirs.pop())

    def predict_test_set(self, seeds: Sequence[int] | None = None) -> dict[str, dict[int, Path]]:
        """Predict the test set with every set-up and seed (one model load each; resumable per case);
        ``seeds``: only these (one seed's piece of a study run seed by seed).

        Returns:
          ``{setup: {seed: prediction folder}}``.
        """
        from vadice.predict import predict

        dataset = self.prepare_test_set()
        if dataset is None:
            raise InputError(self.run_dir, "this run has no test set (start it with --test-set DIR)")
        folders: dict[str, dict[int, Path]] = {}
        for seed in self.settings.seeds if seeds is None else seeds:
            for setup in self.settings.setups:
                out = self.set_prediction_dir("test", setup, seed)
                predict(dataset / "imagesTr", out, self.unit_model_dir(setup, seed), folds=self.settings.folds,
                        device=self.settings.device, overlays=False, progress=self.progress, tta=self.test_tta(),
                        save_probabilities=self.settings.probabilities,
                        progress_bar=f"test set: {setup} seed {seed}")
                folders.setdefault(setup, {})[seed] = out
        return folders

    # ---- probabilities and FROC --------------------------------------------------------
    def copy_probabilities(self, validation: Path, cases: list[str], dest: Path, unit) -> list[Path]:
        """nnU-Net's validation ``<case>.npz`` (float32) -> ``dest/<case>.npz`` (float16), atomically.

        Raises:
          InputError: a held-out case without its ``.npz`` (trained without ``--npz``?), or one without
            the ``probabilities`` array.
        """
        written = []
        dest.mkdir(parents=True, exist_ok=True)
        for case in cases:
            src = validation / f"{case}.npz"
            if not src.is_file():
                raise InputError(src, f"{unit}: nnU-Net wrote no validation probabilities (trained without "
                                 "--npz? run with --no-probabilities, or in a new --out folder)")
            with np.load(src, allow_pickle=False) as npz:
                if "probabilities" not in npz.files:
                    raise InputError(src, "no 'probabilities' array")
                probs = npz["probabilities"].astype(PROBABILITIES_DTYPE)
            tmp = dest / f".{case}.npz.part"
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, probabilities=probs)
            os.replace(tmp, dest / f"{case}.npz")
            written.append(dest / f"{case}.npz")
        return written

    @staticmethod
    def drop_validation_probabilities(validation: Path, cases: list[str]) -> None:
        """Remove nnU-Net's float32 ``.npz`` and ``.pkl`` once converted (called after the unit's marker)."""
        for case in cases:
            for suffix in (".npz", ".pkl"):
                (validation / f"{case}{suffix}").unlink(missing_ok=True)

    def froc_dirs(self, which: str = "oof") -> dict[str, dict[int, Path]]:
        """``{setup: {seed: FROC folder}}`` of a set (``froc.csv``, ``summary.json`` once collected).

        Raises:
          InputError: a run without probabilities, or ``"test"`` without a test set.
        """
        self.sets(which)
        if not self.settings.probabilities:
            raise InputError(self.run_dir, "this run keeps no probabilities (started with --no-probabilities): "
                             "no FROC")
        return {setup: {seed: self.run_dir / set_dir(which, "froc") / setup / f"seed_{seed}"
                        for seed in self.settings.seeds} for setup in self.settings.setups}

    def compute_froc(self, which: str, gt_dir: Path, connectivity: int = 26, reuse: bool = False,
                     seeds: Sequence[int] | None = None) -> dict[str, dict[int, Path]]:
        """FROC of every set-up and seed of a set against ``gt_dir`` (:func:`vadice.metrics.froc.froc_folders`);
        ``reuse`` keeps a folder that already has its ``summary.json``; ``seeds``: only these."""
        from vadice.metrics.froc_io import froc_folders

        folders = self.froc_dirs(which)
        for setup, per_seed in folders.items():
            for seed, out in per_seed.items():
                if seeds is not None and seed not in seeds:
                    continue
                if reuse and (out / "summary.json").is_file():
                    continue
                froc_folders(gt_dir, self.set_prediction_dir(which, setup, seed), out, labels=dict(registry.LABELS),
                             connectivity=connectivity, progress=self.progress)
        return folders

    def compare_froc(self, which: str, paired: bool) -> dict | None:
        """The node FROC of every set-up against the first at matched operating points
        (:func:`vadice.metrics.froc_compare.compare_froc`, all nodes and nodes < 1 ml), written to
        ``froc_comparison[_test]/``; None with a single set-up.

        Args:
          which: ``"oof"`` or ``"test"`` (after :meth:`compute_froc`).
          paired: as the set's comparison decided (a shared per-seed warm start), so that both analyses pair alike.
        """
        from vadice.metrics.froc_compare import compare_froc
        from vadice.report.comparison import write_froc_comparison

        setups = list(self.settings.setups)
        if len(setups) < 2:
            return None
        folders = self.froc_dirs(which)
        runs = {setup: [folders[setup][seed] for seed in self.settings.seeds] for setup in setups}
        result = compare_froc(runs, reference=setups[0], label=registry.NODE_LABEL, paired=paired)
        write_froc_comparison(result, self.run_dir / set_dir(which, "froc_comparison"))
        return result


def _unit(setup: str, fold, seed: int):
    from vadice.experiment import Unit

    return Unit(setup, fold, seed)
