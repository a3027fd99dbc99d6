"""The study: three loss set-ups x folds x seeds, trained, predicted, evaluated, compared.

(Over 500 lines: the run folder's life cycle — settings, units, evaluation,
provenance — is one object; code versions live in :mod:`vadice.provenance`, the test set and probabilities
in :mod:`vadice.testset`, the report in :mod:`vadice.experiment_report`.)

A *unit* is one set-up on one fold with one seed. Each unit trains through
nnU-Net (resuming an interrupted run with ``--c``), and its out-of-fold
predictions are nnU-Net's own final validation exports (full-resolution,
original geometry, no post-processing), copied into ``predictions/``. A unit
is finished when its marker ``units/<setup>__fold<F>__seed<S>.json`` exists;
markers are written last, so a killed run redoes at most the unit it was in.

Run folder::

    RUN_DIR/manifest.json              versions, code version at the start, arguments, plans hash, checkpoints
    RUN_DIR/nnUNet_results/seed_<S>/   nnU-Net results root of each seed
    RUN_DIR/warm_start/seed_<S>/       the common baseline phase every set-up starts from (if any)
    RUN_DIR/units/*.json               finished units (checkpoint sha256, warm start, code version, times, command)
    RUN_DIR/predictions/<setup>/seed_<S>/<case>.nii.gz   pooled out-of-fold predictions
    RUN_DIR/gt/<case>.nii.gz           the matching ground truth (links into labelsTr)
    RUN_DIR/evaluation/<setup>/seed_<S>/   cases.csv, lesions.csv, summary.json
    RUN_DIR/comparison/                comparison.{json,md,csv} (pairs by case; seeds pooled)
    RUN_DIR/seed_spread.json           per-seed values and differences of every metric
    RUN_DIR/report.html                out-of-fold: title "… — out-of-fold (N patients)"
    RUN_DIR/froc/<setup>/seed_<S>/     FROC per set-up and seed (with probabilities: <case>.npz beside predictions)
    RUN_DIR/test_set/, predictions_test/, evaluation_test/, comparison_test/, froc_test/, report_test.html
                                       the test set (--test-set; see :mod:`vadice.testset`)

One code version per run: the manifest records the git commit and whether
tracked files were changed (``code_version``) when the run starts, every unit
marker the version it trained on, and continuing a run on another version is
refused unless ``allow_code_change`` (``--allow-code-change``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from vadice import __version__, registry
from vadice.io import InputError, check_output_dir, copy_file, sha256_file, strip_nifti_suffix, write_text
from vadice.provenance import code_change, code_version, unit_code_versions
from vadice.experiment_report import build_report  # vadice.experiment.build_report, as before
from vadice.testset import TestSetMixin, n_patients, set_dir, set_label

log = logging.getLogger(__name__)

__all__ = ["Experiment", "ExperimentSettings", "Unit", "build_report", "compare_seeded", "evaluation_warm_start",
           "model_dir_from", "package_versions", "parse_unit"]

# Settings that must not change between invocations on one run folder: they define the study.
_FIXED_SETTINGS = ("dataset", "preset", "iterations", "epochs", "val_iterations", "val_mirroring", "folds", "seeds",
                   "setups", "warm_start_iterations", "warm_start_epochs", "warm_start_weights", "test_set",
                   "test_tta", "probabilities")
# What a run folder begun before a setting existed ran with.
_ABSENT = {"test_set": None, "test_tta": None, "probabilities": False}


@dataclass(frozen=True)
class Unit:
    setup: str
    fold: int | str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.setup}__fold{self.fold}__seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.setup}:{self.fold} (seed {self.seed})"


@dataclass
class ExperimentSettings:
    dataset: str
    preset: str = "resenc-m"
    folds: tuple = (0, 1, 2, 3, 4)
    seeds: tuple = (0,)
    setups: tuple = registry.STUDY_SETUPS
    device: str = "cuda"
    iterations: int | None = None
    epochs: int | None = None
    val_iterations: int | None = None
    val_mirroring: bool = True
    num_gpus: int = 1
    # A common warm start: per fold and seed, one baseline phase of this many iterations that every
    # set-up then continues from (all its network weights). None: each set-up trains from scratch.
    warm_start_iterations: int | None = None
    warm_start_epochs: int | None = None
    # Or a common warm start from a checkpoint made beforehand (single fold only: the checkpoint must not
    # have seen that fold's held-out cases; recorded in the manifest by SHA-256, not by path).
    warm_start_weights: str | None = None
    # A second cohort in HNTS-MRG layout, predicted by every set-up and seed and evaluated apart (vadice.testset).
    test_set: str | None = None
    # Keep class probabilities (<case>.npz) of every prediction and compute FROC per set-up and seed.
    probabilities: bool = False

    def units(self) -> list[Unit]:
        return [Unit(s, f, seed) for seed in self.seeds for f in self.folds for s in self.setups]

    def fixed(self) -> dict:
        d = asdict(self)
        if d["warm_start_weights"] is not None:
            d["warm_start_weights"] = "sha256:" + sha256_file(d["warm_start_weights"])
        if d["test_set"] is not None:
            d["test_set"] = str(Path(d["test_set"]).resolve())
        # test-time mirroring of the test set (vadice.testset): fixed, so that one folder never mixes both
        d["test_tta"] = None if self.test_set is None else bool(self.val_mirroring and self.device != "cpu")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k in _FIXED_SETTINGS}


def parse_unit(text: str, settings: ExperimentSettings) -> list[Unit]:
    """``dual:3`` -> that set-up and fold for every seed; ``dual:3:1`` -> one seed."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in settings.setups:
        raise InputError(None, f"--unit {text!r}: expected SETUP:FOLD[:SEED] with SETUP in {', '.join(settings.setups)}")
    try:
        fold = registry.parse_folds(parts[1], what=f"--unit {text!r}: fold")[0]
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    if fold not in settings.folds:
        raise InputError(None, f"--unit {text!r}: fold {fold} is not among --folds {list(settings.folds)}")
    seeds = settings.seeds if len(parts) == 2 else (_int(parts[2], f"--unit {text!r}: seed"),)
    if not set(seeds) <= set(settings.seeds):
        raise InputError(None, f"--unit {text!r}: seed not among --seeds {list(settings.seeds)}")
    return [Unit(parts[0], fold, s) for s in seeds]


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(None, f"{what} must be an integer, got {text!r}") from None


class Experiment(TestSetMixin):
    """One run folder. Create with :meth:`open`, then :meth:`run_units` and :meth:`collect`."""

    def __init__(self, run_dir: Path, settings: ExperimentSettings, progress: bool = True,
                 allow_code_change: bool = False):
        self.run_dir = run_dir
        self.settings = settings
        self.progress = progress
        self.allow_code_change = allow_code_change
        self.plan = None
        self.code = code_version()  # this invocation's; the run's own is the manifest's (see start_code)

    # ---- set-up -------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | os.PathLike, settings: ExperimentSettings, progress: bool = True,
             existing: bool = False, allow_code_change: bool = False) -> "Experiment":
        """Check the settings against the dataset and the run folder; creates nothing.

        The folder appears with the first file written into it, so a refused or
        failed start leaves no empty run folder. ``existing`` requires a started
        run (``--collect``). ``allow_code_change`` continues a run that started
        on another code version (its units then differ in code; the report says so).

        Raises:
          InputError: bad set-ups, folds outside the dataset's split, unknown
            dataset, settings differing from the run folder's, a run started
            on another code version (without ``allow_code_change``), or
            (``existing``) no run there.
        """
        run_dir = check_output_dir(run_dir)
        for setup in settings.setups:
            if setup not in registry.SETUPS:
                raise InputError(None, f"unknown set-up {setup!r}; choose from {', '.join(registry.SETUPS)}")
        if not settings.setups or settings.setups[0] != "baseline":
            raise InputError(None, "set-ups must start with 'baseline' (differences are taken against it)")
        if not settings.seeds or not settings.folds:
            raise InputError(None, "at least one fold and one seed are needed")
        if settings.warm_start_weights is not None:
            if settings.warm_start_iterations is not None:
                raise InputError(None, "warm start: give either a number of iterations or weights, not both")
            if not Path(settings.warm_start_weights).is_file():
                raise InputError(settings.warm_start_weights, "warm-start weights: no such checkpoint file")
            if len(settings.folds) != 1:
                raise InputError(settings.warm_start_weights, "warm-start weights serve one fold only (a "
                                 "checkpoint trained on one fold's training cases has seen the others' held-out "
                                 "cases); use --warm-start-iterations for several folds")
        manifest = run_dir / "manifest.json"
        if existing and not manifest.is_file():
            raise InputError(run_dir, "no experiment run here (no manifest.json): run `vadice experiment` "
                             "without --collect first")
        if manifest.exists():
            recorded = json.loads(manifest.read_text())
            old = recorded.get("settings", {})
            new = settings.fixed()
            diffs = [f"{k}: {old.get(k, _ABSENT.get(k))!r} -> {new[k]!r}" for k in new
                     if old.get(k, _ABSENT.get(k)) != new[k]]
            if diffs:
                hint = (" (or --no-probabilities: it began without them)"
                        if old.get("probabilities", False) is False and new["probabilities"] else "")
                raise InputError(manifest, "run folder was started with other settings (" + "; ".join(diffs)
                                 + f"); use a new --out folder{hint}")
        if settings.test_set is not None:
            from vadice.data.hntsmrg import discover

            discover(settings.test_set)  # the layout, before anything is written (the files: at prepare)
        from vadice.nnunet.paths import resolve_dataset
        from vadice.nnunet.train import check_folds

        ref = resolve_dataset(settings.dataset)  # an unknown dataset fails before the run folder exists
        check_folds(settings.folds, None if ref.paths.preprocessed is None else ref.preprocessed_dir)
        exp = cls(run_dir, settings, progress, allow_code_change)
        exp.check_code()
        return exp

    def prepare(self, fingerprint_samples: int | None = None):
        """Plan and preprocess the dataset for the preset (idempotent).

        ``fingerprint_samples`` lowers nnU-Net's 10^8 sampled foreground intensities
        (only CT normalisation uses them; the T2 channels are z-scored per case).
        """
        from vadice.nnunet.plan import plan

        self.prepare_test_set()  # an invalid test cohort fails before planning and training
        self.plan = plan(self.settings.dataset, preset=self.settings.preset, progress=self.progress,
                                fingerprint_samples=fingerprint_samples)
        self.write_manifest()
        return self.plan

    # ---- units --------------------------------------------------------------------------
    def marker(self, unit: Unit) -> Path:
        return self.run_dir / "units" / f"{unit.key}.json"

    def is_done(self, unit: Unit) -> bool:
        return self.marker(unit).is_file()

    def results_root(self, seed: int) -> Path:
        return self.run_dir / "nnUNet_results" / f"seed_{seed}"

    def prediction_dir(self, setup: str, seed: int) -> Path:
        return self.run_dir / "predictions" / setup / f"seed_{seed}"

    def start_code(self) -> dict:
        """The code version the run started on: the manifest's, or this invocation's for a new run."""
        path = self.run_dir / "manifest.json"
        return json.loads(path.read_text()).get("code_version") if path.is_file() else self.code

    def check_code(self) -> dict:
        """The code version now, checked against the run's start (units train in fresh subprocesses, so an
        edit during a long run reaches the units that start after it).

        Raises:
          InputError: another version, unless ``allow_code_change``.
        """
        now = code_version()
        change = code_change(self.start_code(), now)
        if change and not self.allow_code_change:
            raise InputError(self.run_dir / "manifest.json", f"run started on another code version ({change}); "
                             "its units must train on one: check that version out, or pass --allow-code-change")
        return now

    def run_units(self, units: Iterable[Unit] | None = None) -> list[Unit]:
        """Train and predict every unfinished unit; returns the units run now.

        Raises:
          InputError: the code version changed since the run started (checked before each unit), unless
            ``allow_code_change``; nnU-Net wrote no predictions.
        """
        if self.plan is None:
            self.prepare()
        todo = [u for u in (units or self.settings.units()) if not self.is_done(u)]
        done_now = []
        for i, unit in enumerate(todo, 1):
            log.info("[%d/%d] training %s", i, len(todo), unit)
            code = self.check_code()
            start = time.time()
            warm = self.warm_start(unit.fold, unit.seed)
            result = self._train(unit.setup, unit.fold, unit.seed, self.settings.iterations, self.settings.epochs,
                                 self.results_root(unit.seed), unit.key, warm_start=warm,
                                 probabilities=self.settings.probabilities)
            validation = Path(result.fold_dir) / "validation"
            preds = sorted(validation.glob("*.nii.gz"))
            if not preds:
                raise InputError(validation, f"{unit}: nnU-Net wrote no validation predictions")
            for path in preds:
                copy_file(path, self.prediction_dir(unit.setup, unit.seed) / path.name)
            cases = [strip_nifti_suffix(p.name) for p in preds]
            if self.settings.probabilities:
                self.copy_probabilities(validation, cases, self.prediction_dir(unit.setup, unit.seed), unit)
            info = {
                "unit": asdict(unit), "seconds": round(time.time() - start, 1),
                "model_dir": str(result.model_dir), "fold_dir": str(result.fold_dir),
                "checkpoint": str(result.checkpoint), "checkpoint_sha256": sha256_file(result.checkpoint),
                "cases": cases, "command": result.command,
                "warm_start_sha256": result.settings.get("warm_start_sha256"),
                "code_version": code,
            }
            write_text(self.marker(unit), json.dumps(info, indent=2))
            if self.settings.probabilities:  # converted above; nnU-Net's float32 copies go once the unit is done
                self.drop_validation_probabilities(validation, cases)
            done_now.append(unit)
        self.write_manifest()
        return done_now

    def warm_start(self, fold, seed: int) -> Path | None:
        """The common baseline phase of ``fold`` and ``seed`` (trained once, then reused); its checkpoint.

        Every set-up of this fold and seed starts from this checkpoint, so the set-ups differ only in
        the loss of the phase that follows. Returns None when the settings ask for no warm start.
        """
        if self.settings.warm_start_weights is not None:
            return Path(self.settings.warm_start_weights).resolve()
        if not self.settings.warm_start_iterations:
            return None
        result = self._train("baseline", fold, seed, self.settings.warm_start_iterations,
                             self.settings.warm_start_epochs, self.run_dir / "warm_start" / f"seed_{seed}",
                             f"warm_start__fold{fold}__seed{seed}")
        return Path(result.checkpoint)

    def _train(self, loss: str, fold, seed: int, iterations, epochs, results_dir: Path, log_name: str,
               warm_start: Path | None = None, probabilities: bool = False):
        """One resumable nnU-Net training with the run's fixed settings (a unit or a warm-start phase);
        ``probabilities``: its final validation also exports them (nnU-Net's ``--npz``)."""
        from vadice.nnunet.train import train

        return train(
            self.settings.dataset, loss=loss, fold=fold, preset=self.settings.preset, device=self.settings.device,
            iterations=iterations, epochs=epochs, val_iterations=self.settings.val_iterations,
            val_mirroring=self.settings.val_mirroring, seed=seed, resume=True, num_gpus=self.settings.num_gpus,
            results_dir=results_dir, log_file=self.run_dir / "logs" / f"{log_name}.log", progress=self.progress,
            warm_start=warm_start, save_probabilities=probabilities,
        )

    def missing(self, units: Iterable[Unit] | None = None) -> list[Unit]:
        return [u for u in (units or self.settings.units()) if not self.is_done(u)]

    # ---- evaluation ---------------------------------------------------------------------
    def collect(self, tolerances=(2.0,), connectivity: int = 26, workers: int = 1, pair_by: str = "case",
                which: str | None = None, size_bins_ml: Sequence[float] | None = None, reuse: bool = False,
                predict: bool = True) -> dict:
        """Evaluate every set-up and seed, compare, for each set of predictions: ``which`` is ``"oof"``
        (the pooled out-of-fold predictions), ``"test"`` (the test set, predicted here first; resumable)
        or ``"both"``; ``None``: both with a test set, else out-of-fold. With probabilities, also the FROC
        of every set-up and seed (:meth:`froc_dirs`). ``size_bins_ml`` and ``reuse`` (keep finished
        evaluations and FROC folders: a resumed study) as :meth:`evaluate`. ``predict=False`` skips predicting
        the test set: a study assembled from per-seed pieces whose evaluation and FROC folders are final (its
        models and probabilities stayed on the machines that ran the pieces; with ``reuse`` nothing reads them).

        Returns:
          ``{"sets": {which: {"evaluations", "comparison", "label"}}}`` plus the first set's
          ``evaluations`` and ``comparison`` at the top (out-of-fold when it is among them).
        """
        missing = self.missing()
        if missing:
            raise InputError(self.run_dir, f"{len(missing)} unit(s) unfinished: "
                             + ", ".join(str(u) for u in missing[:10]) + (" …" if len(missing) > 10 else ""))
        sets = self.sets(which)
        per_set = {}
        for name in sets:
            if name == "test" and predict:
                self.predict_test_set()
            evaluations = self.evaluate(self.settings.setups, tolerances=tolerances, connectivity=connectivity,
                                        workers=workers, which=name, size_bins_ml=size_bins_ml, reuse=reuse)
            comparison = compare_seeded(evaluations, self.settings.setups, self.run_dir / set_dir(name, "comparison"),
                                        pair_by=pair_by, spread_file=self.run_dir / set_dir(name, "spread"))
            if self.settings.probabilities:
                self.compute_froc(name, self.set_gt_dir(name), connectivity=connectivity, reuse=reuse)
                self.compare_froc(name, paired=comparison["result"]["settings"]["seed_pairing"]["paired"])
            n = n_patients(self.test_cases() if name == "test" else self._pooled_cases())
            per_set[name] = {"evaluations": evaluations, "comparison": comparison, "label": set_label(name, n)}
        self.write_manifest()
        return {**per_set[sets[0]], "sets": per_set}

    def evaluate(self, names: Sequence[str], tolerances=(2.0,), connectivity: int = 26, workers: int = 1,
                 size_bins_ml: Sequence[float] | None = None, reuse: bool = False,
                 which: str = "oof", seeds: Sequence[int] | None = None) -> dict[str, dict[int, Path]]:
        """Evaluate ``predictions/<name>/seed_<s>`` for every name and seed against the pooled ground truth
        (``which="test"``: ``predictions_test/`` against the test set's truth, into ``evaluation_test/``).

        Args:
          names: set-ups, or any other folder names under ``predictions/`` (e.g. post-processed copies).
          size_bins_ml: lesion size-bin edges for the size-stratified rows; ``None`` keeps evaluate's default.
          reuse: keep an evaluation folder that already has its ``summary.json`` (a resumed bench);
            ``collect`` re-evaluates so that changed metric settings always take effect.
          which: ``"oof"`` or ``"test"``.
          seeds: only these seeds (one seed's piece of a study run seed by seed); ``None``: every seed.

        Returns:
          ``{name: {seed: evaluation folder}}``, ready for :func:`compare_seeded`.

        Raises:
          InputError: the finished units predicted different case sets, or a case has no ground truth.
        """
        from vadice.metrics.evaluate import evaluate_folders

        gt_dir = self.set_gt_dir(which)
        extra = {} if size_bins_ml is None else {"size_bins_ml": tuple(size_bins_ml)}
        evaluations: dict[str, dict[int, Path]] = {}
        for name in names:
            for seed in self.settings.seeds if seeds is None else seeds:
                out = self.set_evaluation_dir(which, name, seed)
                if not (reuse and (out / "summary.json").is_file()):
                    evaluate_folders(gt_dir, self.set_prediction_dir(which, name, seed), out,
                                     tolerances=tuple(tolerances), connectivity=connectivity, workers=workers,
                                     progress=self.progress, **extra)
                evaluations.setdefault(name, {})[seed] = out
        return evaluations

    def set_gt_dir(self, which: str) -> Path:
        """Truth of a set: ``gt/`` (linked from labelsTr for the pooled out-of-fold cases) or the test set's."""
        if self.sets(which) == ("test",):
            return self.test_gt_dir()
        return self._link_ground_truth(self._pooled_cases())

    def _pooled_cases(self) -> list[str]:
        """The out-of-fold cases, read from the finished units' markers (a seed's piece has only its own)."""
        per_setup = {}
        for unit in self.settings.units():
            if not self.is_done(unit):
                continue
            info = json.loads(self.marker(unit).read_text())
            per_setup.setdefault((unit.setup, unit.seed), set()).update(info["cases"])
        sets = list(per_setup.values())
        if not sets:
            raise InputError(self.run_dir, "no finished unit: nothing was predicted out of fold yet")
        if any(s != sets[0] for s in sets):
            raise InputError(self.run_dir, "set-ups/seeds predicted different case sets; the folds differ")
        return sorted(sets[0])

    def _link_ground_truth(self, cases: Sequence[str]) -> Path:
        from vadice.nnunet.paths import resolve_dataset

        labels = resolve_dataset(self.settings.dataset).raw_dir / "labelsTr"
        gt_dir = self.run_dir / "gt"
        gt_dir.mkdir(parents=True, exist_ok=True)
        for case in cases:
            src = labels / f"{case}.nii.gz"
            if not src.is_file():
                raise InputError(src, "ground truth for a predicted case is missing")
            dst = gt_dir / src.name
            if not dst.exists():
                copy_file(src, dst)
        return gt_dir

    # ---- provenance ---------------------------------------------------------------------
    def write_manifest(self) -> Path:
        units, markers = {}, []
        for unit in self.settings.units():
            if self.is_done(unit):
                info = json.loads(self.marker(unit).read_text())
                units[unit.key] = {k: info[k] for k in ("checkpoint", "checkpoint_sha256", "seconds", "command")}
                markers.append((unit.key, info))
        manifest = {
            "vadice": __version__,
            # the version the run started on (kept below from the first manifest): what continuing is checked against
            "code_version": self.code,
            "unit_code_versions": unit_code_versions(markers),
            "versions": package_versions(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "settings": self.settings.fixed(),
            "device": self.settings.device,
            "num_gpus": self.settings.num_gpus,
            "plans": None if self.plan is None else {
                "identifier": self.plan.plans_identifier, "sha256": self.plan.plans_sha256,
                "configuration": self.plan.configuration,
            },
            "units": units,
            "cpu_preset": self.settings.preset != "resenc-m",
            # read by post-processing fits, which refuse these cases (vadice.postprocess.fit.refuse_test_set)
            "test_set": self.test_set_record(),
        }
        path = self.run_dir / "manifest.json"
        if path.exists():  # keep what an earlier invocation recorded (e.g. plans of a --unit run)
            old = json.loads(path.read_text())
            if manifest["plans"] is None:
                manifest["plans"] = old.get("plans")
            if "code_version" in old:
                manifest["code_version"] = old["code_version"]
            else:  # a run begun before code versions were recorded: its start is unknown
                manifest["code_version"] = {"commit": None, "dirty": None}
        return write_text(path, json.dumps(manifest, indent=2))


def compare_seeded(evaluations: dict[str, dict[int, Path]], setups: Sequence[str], out_dir: Path,
                   pair_by: str = "case", paired: bool | None = None, spread_file: Path | None = None) -> dict:
    """Compare set-ups against the first, pooling seeds (see :mod:`vadice.metrics.compare`).

    ``pair_by="case"`` (default) averages each case's per-case metric over
    seeds before the Wilcoxon test (patients are the independent units);
    ``"case-seed"`` pairs (case, seed) units, which is pseudo-replication and
    marked as such in the outputs. CIs come from the two-level (patients,
    then seeds) bootstrap; each difference gets its per-seed Δs and the
    verdict rule. ``seed_spread.json`` lists, per label and metric, each
    set-up's per-seed values and per-seed Δs to the first set-up. Seeds are
    paired when the unit markers record one warm start for seed k of every
    set-up (:func:`evaluation_warm_start`), unless ``paired`` decides. ``spread_file``: where
    ``seed_spread.json`` goes (default: beside ``out_dir``).

    Returns:
      ``{"result": compare_runs output, "seed_spread": {...}, "markdown": str}``.
    """
    from vadice.report.comparison import compare_folders as compare_runs
    from vadice.io import json_clean

    seeds = sorted(next(iter(evaluations.values())))
    groups = [[evaluations[s][seed] for seed in seeds] for s in setups]
    pair_key = ("case", "seed") if pair_by == "case-seed" else ("case",)
    warm = [[evaluation_warm_start(folder) for folder in group] for group in groups]
    result = compare_runs(groups, names=list(setups), out_dir=out_dir, pair_key=pair_key, paired=paired,
                          warm_starts=warm)
    spread: dict = {}
    for row in result["rows"]:
        entry = spread.setdefault(row["label"], {}).setdefault(row["metric"], {})
        for setup in setups:
            entry[setup] = {"seeds": seeds, "values": row["seed_values"][setup],
                            "diffs": row["seed_diffs"][setup], "verdict": row["verdict"][setup]}
    # Beside, not inside, the comparison folder: compare_runs only replaces folders holding its own files.
    write_text(spread_file or out_dir.parent / "seed_spread.json", json.dumps(json_clean(spread), indent=2))
    markdown = (out_dir / "comparison.md").read_text()
    return {"result": result, "seed_spread": spread, "markdown": markdown}


def model_dir_from(path: str | os.PathLike, setup: str | None = None, seed: int = 0) -> Path:
    """A trained model folder, given either itself or an experiment run folder plus a set-up."""
    path = Path(path)
    if (path / "manifest.json").is_file() and (path / "units").is_dir():
        if setup is None:
            raise InputError(path, "this is an experiment run folder: choose a model with --setup")
        for marker in sorted((path / "units").glob(f"{setup}__fold*__seed{seed}.json")):
            return Path(json.loads(marker.read_text())["model_dir"])
        raise InputError(path, f"no finished unit for set-up {setup!r} and seed {seed}")
    if setup is not None:
        raise InputError(path, "--setup only applies to an experiment run folder")
    if not path.is_dir():
        raise InputError(path, "model folder not found")
    return path


def evaluation_warm_start(folder: str | os.PathLike) -> str | None:
    """The warm start behind an experiment's evaluation folder ``RUN_DIR/evaluation/<name>/seed_<S>``.

    Read from the unit markers of seed S (those of set-up ``<name>``; for a derived folder such as a
    post-processed copy, those of every set-up of seed S, which must agree): per fold, the SHA-256 of the
    checkpoint the unit continued from. Two folders with the same answer hold twin models.

    Returns:
      ``"fold 0: <sha256>; ..."``, or None when the folder is not an experiment's evaluation or a unit has
      no warm start recorded.
    """
    folder = Path(folder).resolve()
    run_dir, name, seed = folder.parent.parent.parent, folder.parent.name, folder.name
    if folder.parent.parent.name not in ("evaluation", set_dir("test", "evaluation")) or not seed.startswith("seed_") or not (run_dir / "units").is_dir():
        return None
    markers = sorted((run_dir / "units").glob(f"{name}__fold*__seed{seed[5:]}.json"))
    markers = markers or sorted((run_dir / "units").glob(f"*__fold*__seed{seed[5:]}.json"))
    per_fold: dict[str, set] = {}
    for marker in markers:
        fold = marker.stem.split("__")[1]
        per_fold.setdefault(fold, set()).add(json.loads(marker.read_text()).get("warm_start_sha256"))
    if not per_fold or any(len(v) != 1 or None in v for v in per_fold.values()):
        return None
    return "; ".join(f"{fold.replace('fold', 'fold ')}: {next(iter(v))}" for fold, v in sorted(per_fold.items()))


def package_versions() -> dict:
    """Versions of vadice and of the packages a run's numbers depend on (training and evaluation)."""
    from vadice.metrics.evaluate import versions

    return versions(("torch", "nnunetv2", "numpy", "scipy", "SimpleITK", "connected-components-3d", "nibabel",
                     "scikit-image"))
