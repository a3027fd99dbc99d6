"""Lesion preprocessing on real nnU-Net output, and the trainers built in-process (no training loop)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")
from scipy import ndimage  # noqa: E402

from vadice.io import Geometry, InputError, write_nifti  # noqa: E402

DATASET_ID = 987
NAME = f"Dataset{DATASET_ID:03d}_VadiceUnit"


def _blob(shape, center, radii):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1


def write_tiny_raw_dataset(raw: Path, name: str, n_cases: int = 5, shape=(16, 56, 56), seed: int = 0) -> Path:
    """nnU-Net raw dataset: one T2-like channel, a primary tumour (1) and 2-3 nodes (2) per case."""
    rng = np.random.default_rng(seed)
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    geo = Geometry(size=tuple(reversed(shape)), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                   direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    for i in range(n_cases):
        lab = np.zeros(shape, np.uint8)
        lab[_blob(shape, (8, 28 + rng.integers(-4, 4), 18), (4, 9, 8))] = 1
        for _ in range(rng.integers(2, 4)):
            r = rng.uniform(1.5, 4.5)
            c = (rng.integers(4, shape[0] - 4), rng.integers(8, shape[1] - 8), rng.integers(32, shape[2] - 6))
            lab[_blob(shape, c, (max(r / 2, 1.0), r, r)) & (lab == 0)] = 2
        img = rng.normal(100, 10, shape).astype(np.float32) + 60 * (lab == 1) + 40 * (lab == 2)
        write_nifti(img, geo, folder / "imagesTr" / f"case{i:02d}_0000.nii.gz")
        write_nifti(lab, geo, folder / "labelsTr" / f"case{i:02d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": {"background": 0, "GTVp": 1, "GTVn": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return folder


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    """A tiny dataset planned (reduced CPU plans) and preprocessed by nnU-Net, env vars pointing at it."""
    root = tmp_path_factory.mktemp("nnunet")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "res"), "nnUNet_n_proc_DA": "1", "nnUNet_compile": "f",
           "nnUNet_def_n_proc": "1"}
    with mock.patch.dict(os.environ, env):  # restores the whole environment after the module
        os.environ.pop("VADICE_TRAINER_OPTIONS", None)
        # nnU-Net 2.8 reads its roots from the environment on each use
        write_tiny_raw_dataset(root / "raw", NAME)
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprint_dataset, plan_experiment_dataset, preprocess_dataset)
        from vadice.nnunet.planners import vadiceCPUSmallPlanner

        extract_fingerprint_dataset(DATASET_ID, num_processes=1, verbose=False, show_progress_bar=False)
        _, plans_id = plan_experiment_dataset(DATASET_ID, vadiceCPUSmallPlanner)
        preprocess_dataset(DATASET_ID, plans_id, ("3d_fullres",), [1], verbose=False, show_progress_bar=False)
        # single-threaded augmentation from here (0 would break planning: torch.set_num_threads(0))
        os.environ["nnUNet_n_proc_DA"] = "0"
        yield {"root": root, "pre": root / "pre" / NAME, "plans_id": plans_id}


@pytest.fixture(scope="module")
def lesions(nnunet_env):
    from vadice.nnunet.lesion_cache import preprocess_instances

    folder = preprocess_instances(nnunet_env["pre"], "3d_fullres", nnunet_env["plans_id"], progress=False)
    return folder


# ------------------------------------------------------------------------------- preprocessing


def _preprocessed_seg(pre: Path, case: str) -> np.ndarray:
    import blosc2

    return np.asarray(blosc2.open(str(pre / "nnUNetPlans_3d_fullres" / f"{case}_seg.b2nd"))[:])[0]


def test_lesion_table_matches_independent_labelling(nnunet_env, lesions):
    import blosc2

    from vadice.nnunet.lesion_cache import load_lesion_table

    table = json.loads((lesions / "lesions.json").read_text())
    loaded = load_lesion_table(lesions)
    plans = json.loads((nnunet_env["pre"] / f"{nnunet_env['plans_id']}.json").read_text())
    spacing = plans["configurations"]["3d_fullres"]["spacing"]
    assert table["connectivity"] == 26 and table["labels"] == [1, 2]
    assert sorted(table["cases"]) == [f"case{i:02d}" for i in range(5)]
    all_vols = {1: [], 2: []}
    for case, entry in table["cases"].items():
        seg = _preprocessed_seg(nnunet_env["pre"], case)
        inst = np.asarray(blosc2.open(str(lesions / f"{case}_inst.b2nd"))[:])[0]
        assert inst.shape == seg.shape and inst.dtype == np.int16
        assert entry["spacing_mm"] == pytest.approx(spacing)
        assert loaded.spacing[case] == pytest.approx(spacing)
        # scipy, full 3x3x3 structure, one label at a time
        want = []
        for label in (1, 2):
            comps, n = ndimage.label(seg == label, structure=np.ones((3, 3, 3)))
            want += sorted(np.bincount(comps.ravel())[1:].tolist())
            for k in range(1, n + 1):
                ids = np.unique(inst[comps == k])
                assert len(ids) == 1 and ids[0] > 0  # one lesion, one id
                les = entry["lesions"][str(ids[0])]
                assert les["label"] == label and les["voxels"] == (comps == k).sum()
                assert loaded.voxels[case][ids[0]] == (comps == k).sum() and loaded.lesion_labels[case][ids[0]] == label
                assert les["volume_mm3"] == pytest.approx((comps == k).sum() * np.prod(spacing))
                all_vols[label].append(les["volume_mm3"])
        assert len(want) == len(entry["lesions"])
        assert int((loaded.voxels[case] > 0).sum()) == len(want) and loaded.voxels[case][0] == 0
        assert ((inst > 0) == (seg > 0)).all()
    for label in (1, 2):
        assert table["median_volume_mm3"][str(label)] == pytest.approx(np.median(all_vols[label]))


def test_preprocess_instances_is_resumable(nnunet_env, lesions):
    from vadice.nnunet.lesion_cache import preprocess_instances

    files = {p.name: p.stat().st_mtime_ns for p in lesions.glob("*_inst.b2nd")}
    preprocess_instances(nnunet_env["pre"], "3d_fullres", nnunet_env["plans_id"], progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in lesions.glob("*_inst.b2nd")} == files
    # a new modification time alone (a copy, a touch) is no reason to relabel: the content decides
    seg_file = nnunet_env["pre"] / "nnUNetPlans_3d_fullres" / "case01_seg.b2nd"
    os.utime(seg_file, ns=(seg_file.stat().st_atime_ns, seg_file.stat().st_mtime_ns + 10**9))
    preprocess_instances(nnunet_env["pre"], "3d_fullres", nnunet_env["plans_id"], progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in lesions.glob("*_inst.b2nd")} == files
    # nnU-Net's own folder is untouched: it still infers its dataset class
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2

    cls = infer_dataset_class(str(nnunet_env["pre"] / "nnUNetPlans_3d_fullres"))
    assert cls is nnUNetDatasetBlosc2
    assert sorted(cls.get_identifiers(str(nnunet_env["pre"] / "nnUNetPlans_3d_fullres"))) == \
        [f"case{i:02d}" for i in range(5)]


def _rewrite_seg(path: Path, change) -> None:
    """Rewrite an nnU-Net segmentation in place with new content and the same shape, as re-preprocessing does."""
    import blosc2

    old = blosc2.open(str(path), mode="r")
    seg, chunks, blocks = np.asarray(old[:]), old.chunks, old.blocks
    del old
    path.unlink()
    blosc2.asarray(np.ascontiguousarray(change(seg)), urlpath=str(path), chunks=chunks, blocks=blocks)


def test_changed_segmentation_is_refused_at_trainer_start_then_relabelled(nnunet_env, lesions, tmp_path):
    """Same shape, new content: the trainer must not train on the old ids (a node would get the tumour's id)."""
    import shutil

    from vadice.nnunet.lesion_cache import preprocess_instances

    seg_file = nnunet_env["pre"] / "nnUNetPlans_3d_fullres" / "case03_seg.b2nd"
    backup = tmp_path / "case03_seg.b2nd"
    shutil.copy2(seg_file, backup)
    files = {p.name: p.stat().st_mtime_ns for p in lesions.glob("*_inst.b2nd")}
    try:
        _rewrite_seg(seg_file, lambda s: np.where(s == 2, 1, np.where(s == 1, 2, s)).astype(s.dtype))
        tr = _trainer(nnunet_env, "nnUNetTrainerVADual")
        with pytest.raises(InputError, match=r"case03_seg\.b2nd: changed since lesion ids of case 'case03' "
                                             r"were made; rebuild them: .*preprocess_instances\(") as err:
            tr.initialize()
        assert "\n" not in str(err.value)
        preprocess_instances(nnunet_env["pre"], "3d_fullres", nnunet_env["plans_id"], progress=False)
        after = {p.name: p.stat().st_mtime_ns for p in lesions.glob("*_inst.b2nd")}
        assert [k for k in files if after[k] != files[k]] == ["case03_inst.b2nd"]
        _trainer(nnunet_env, "nnUNetTrainerVADual").initialize()
    finally:
        shutil.copy2(backup, seg_file)
        preprocess_instances(nnunet_env["pre"], "3d_fullres", nnunet_env["plans_id"], progress=False)


def test_preprocess_instances_errors(nnunet_env, tmp_path):
    from vadice.nnunet.lesion_cache import preprocess_instances

    with pytest.raises(InputError, match="plans file not found"):
        preprocess_instances(nnunet_env["pre"], "3d_fullres", "NoSuchPlans", progress=False)
    with pytest.raises(InputError, match="no configuration"):
        preprocess_instances(nnunet_env["pre"], "3d_lowres_x", nnunet_env["plans_id"], progress=False)
    with pytest.raises(ValueError, match="connectivity"):
        preprocess_instances(nnunet_env["pre"], "3d_fullres", nnunet_env["plans_id"], connectivity=8)


# ------------------------------------------------------------------------------------ trainers


def _trainer(nnunet_env, cls_name, patch=None, continuing: bool = False):
    """A trainer of ``cls_name`` (a name in vadice.nnunet.trainers or .comparator_trainers, or a class)
    on the tiny planned dataset."""
    from vadice.nnunet import comparator_trainers, trainers

    if isinstance(cls_name, str):
        cls = getattr(trainers, cls_name, None) or getattr(comparator_trainers, cls_name)
    else:
        cls = cls_name
    plans = json.loads((nnunet_env["pre"] / f"{nnunet_env['plans_id']}.json").read_text())
    plans["continue_training"] = continuing  # what nnUNetv2_train --c sets
    if patch is not None:
        plans["configurations"]["3d_fullres"]["patch_size"] = list(patch)
    dataset_json = json.loads((nnunet_env["pre"] / "dataset.json").read_text())
    return cls(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))


def use_options(monkeypatch, tmp_path, **options) -> Path:
    """Point ``VADICE_TRAINER_OPTIONS`` at a file holding ``options``, as ``vadice train`` does."""
    from vadice.nnunet.trainer_options import OPTIONS_ENV, TrainerOptions, write

    path = write(tmp_path / "trainer_options.json", TrainerOptions(**options))
    monkeypatch.setenv(OPTIONS_ENV, str(path))
    return path


def test_schedule_and_seed_from_the_options_file(nnunet_env, monkeypatch, tmp_path):
    use_options(monkeypatch, tmp_path, epochs=3, iterations_per_epoch=7, val_iterations=2, seed=5,
                val_mirroring=False)
    tr = _trainer(nnunet_env, "nnUNetTrainerBudget")
    assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == (3, 7, 2)
    assert tr.vadice_seed == 5 and tr.vadice_val_mirroring is False
    assert set(tr.my_init_kwargs) == {"plans", "configuration", "fold", "dataset_json", "device"}
    a = torch.rand(3)
    _trainer(nnunet_env, "nnUNetTrainerBudget")
    assert torch.equal(a, torch.rand(3))
    use_options(monkeypatch, tmp_path, seed=6)  # another seed, other numbers
    _trainer(nnunet_env, "nnUNetTrainerBudget")
    assert not torch.equal(a, torch.rand(3))
    monkeypatch.delenv("VADICE_TRAINER_OPTIONS")
    tr = _trainer(nnunet_env, "nnUNetTrainerBudget")
    assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == (1000, 250, 50)
    assert tr.vadice_seed is None and tr.vadice_val_mirroring is True
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochs": "zero"}))
    monkeypatch.setenv("VADICE_TRAINER_OPTIONS", str(bad))
    with pytest.raises(ValueError, match=f"^{bad}: epochs: must be an integer >= 1"):
        _trainer(nnunet_env, "nnUNetTrainerBudget")


def test_variables_of_older_versions_change_nothing(nnunet_env, monkeypatch):
    """The VADICE_* variables vadice's trainers read before the options file are ignored, stale or not."""
    stale = {"VADICE_EPOCHS": "3", "VADICE_ITERS_PER_EPOCH": "7", "VADICE_VAL_ITERS": "2", "VADICE_SEED": "5",
             "VADICE_VAL_MIRRORING": "0", "VADICE_TORCH_THREADS": "zero", "VADICE_WARM_START": "/nowhere.pth",
             "VADICE_CATMIL_WARMUP_EPOCHS": "4", "VADICE_VA_CONFIG": "/nowhere.json"}
    for key, value in stale.items():
        monkeypatch.setenv(key, value)
    for name in ("nnUNetTrainerBudget", "nnUNetTrainerVA", "nnUNetTrainerCATMIL"):
        tr = _trainer(nnunet_env, name)
        assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == (1000, 250, 50)
        assert tr.vadice_seed is None and tr.vadice_val_mirroring is True and tr.vadice_options_file is None
    assert tr.loss_options["warmup_epochs"] == 50
    assert _trainer(nnunet_env, "nnUNetTrainerVA").va_options_source == "defaults (dual preset)"


def test_options_a_trainer_does_not_read_are_refused(nnunet_env, monkeypatch, tmp_path):
    path = use_options(monkeypatch, tmp_path, seed=1, va={"gamma": 0.5})
    for name in ("nnUNetTrainerVADual", "nnUNetTrainerBudget", "nnUNetTrainerCATMIL"):
        with pytest.raises(ValueError, match=f"^{path}: va: not an option of {name} "):
            _trainer(nnunet_env, name)
    path = use_options(monkeypatch, tmp_path, catmil_warmup_epochs=2)
    with pytest.raises(ValueError, match=f"^{path}: catmil_warmup_epochs: not an option of nnUNetTrainerVA "):
        _trainer(nnunet_env, "nnUNetTrainerVA")


def test_the_options_are_copied_into_the_output_folder(nnunet_env, lesions, monkeypatch, tmp_path):
    from vadice.nnunet.trainer_options import OPTIONS_FILE, read

    use_options(monkeypatch, tmp_path, seed=4, iterations_per_epoch=3, va={"preset": "selective-ln"})
    tr = _trainer(nnunet_env, "nnUNetTrainerVA")
    record = Path(tr.output_folder) / OPTIONS_FILE
    record.unlink(missing_ok=True)
    tr.initialize()
    assert read(record) == tr.vadice_options and tr.vadice_options.va == {"preset": "selective-ln"}
    # the options file in the output folder itself (what `vadice train` writes) stays as it is
    monkeypatch.setenv("VADICE_TRAINER_OPTIONS", str(record))
    before = record.stat().st_mtime_ns
    _trainer(nnunet_env, "nnUNetTrainerVA").initialize()
    assert record.stat().st_mtime_ns == before


def test_budget_trainer_keeps_nnunet_loss(nnunet_env, lesions):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    tr = _trainer(nnunet_env, "nnUNetTrainerBudget")
    tr.initialize()
    assert isinstance(tr.loss, DeepSupervisionWrapper) and isinstance(tr.loss.loss, DC_and_CE_loss)


@pytest.mark.parametrize("name, labels", [("nnUNetTrainerVADual", (1, 2)), ("nnUNetTrainerVASelectiveLN", (2,))])
def test_preset_trainers_build_va_loss(nnunet_env, lesions, name, labels):
    from vadice.nnunet.lesion_loss import DeepSupervisionLesionLoss

    tr = _trainer(nnunet_env, name)
    tr.initialize()
    assert isinstance(tr.loss, DeepSupervisionLesionLoss)
    dc = tr.loss.loss.dc
    assert dc.va_labels == labels and dc.mode == "mass" and dc.batch_dice == tr.configuration_manager.batch_dice
    assert dc.check_values is False  # no host syncs per scale in training; the pipeline guarantees the ranges
    # nnU-Net's deep-supervision weights: 1/2^i, last 0, normalised
    n = len(tr._get_deep_supervision_scales())
    w = np.array([1 / 2 ** i for i in range(n)])
    w[-1] = 0
    assert tr.loss.weights == pytest.approx(tuple(w / w.sum()))
    record = json.loads((Path(tr.output_folder) / "vadice_va.json").read_text())
    assert record["trainer"] == name and record["options"]["va_labels"] == list(labels)


def test_generic_trainer_reads_options_file_and_absolute_reference(nnunet_env, lesions, tmp_path, monkeypatch):
    from vadice.nnunet.lesion_cache import load_lesion_table

    cfg = use_options(monkeypatch, tmp_path, va={"preset": "selective-ln", "mode": "absolute", "gamma": 0.5,
                                                 "r_max": 4})
    tr = _trainer(nnunet_env, "nnUNetTrainerVA")
    assert tr.va_options_source == str(cfg)
    tr.initialize()
    dc = tr.loss.loss.dc
    assert (dc.va_labels, dc.mode, dc.gamma, dc.r_max) == ((2,), "absolute", 0.5, 4.0)
    tr_keys, _ = tr.do_split()
    table = load_lesion_table(lesions)
    vols = np.concatenate([table.volumes[c][table.lesion_labels[c] == 2] for c in tr_keys])
    assert dc.v_ref[2] == pytest.approx(np.median(vols))
    cfg.write_text(json.dumps({"va": {"gama": 1}}))
    with pytest.raises(ValueError, match=f"^{cfg}: va.gama: unknown VA option"):
        _trainer(nnunet_env, "nnUNetTrainerVA")


def test_generic_trainer_falls_back_to_the_va_file_beside_the_plans(nnunet_env, monkeypatch, tmp_path):
    """No ``va`` in the options file (or no options file): ``vadice_va.json`` next to the plans, if there is one."""
    beside = nnunet_env["pre"] / "vadice_va.json"
    beside.write_text(json.dumps({"preset": "selective-ln", "gamma": 0.5}))
    try:
        for options in (None, {"seed": 1}):
            if options is None:
                monkeypatch.delenv("VADICE_TRAINER_OPTIONS", raising=False)
            else:
                use_options(monkeypatch, tmp_path, **options)
            tr = _trainer(nnunet_env, "nnUNetTrainerVA")
            assert tr.va_options_source == str(beside)
            assert tr.va_options["va_labels"] == (2,) and tr.va_options["gamma"] == 0.5
        use_options(monkeypatch, tmp_path, va={})  # an empty va object: the dual preset, not the file
        assert _trainer(nnunet_env, "nnUNetTrainerVA").va_options == {"va_labels": (1, 2)}
        beside.write_text(json.dumps({"gama": 1}))
        monkeypatch.delenv("VADICE_TRAINER_OPTIONS")
        with pytest.raises(ValueError, match=f"^{beside}: gama: unknown VA option"):
            _trainer(nnunet_env, "nnUNetTrainerVA")
    finally:
        beside.unlink()


def test_resuming_with_changed_va_options_is_refused(nnunet_env, lesions, tmp_path, monkeypatch):
    use_options(monkeypatch, tmp_path, va={"preset": "dual", "gamma": 1.0})
    _trainer(nnunet_env, "nnUNetTrainerVA").initialize()
    _trainer(nnunet_env, "nnUNetTrainerVA", continuing=True).initialize()  # same options: resumes
    use_options(monkeypatch, tmp_path, va={"preset": "dual", "gamma": 0.5})
    with pytest.raises(RuntimeError, match=r"resuming with different VA settings \(options\)"):
        _trainer(nnunet_env, "nnUNetTrainerVA", continuing=True).initialize()
    use_options(monkeypatch, tmp_path, va={"preset": "selective-ln", "gamma": 1.0})
    with pytest.raises(RuntimeError, match="resuming with different VA settings"):
        _trainer(nnunet_env, "nnUNetTrainerVA", continuing=True).initialize()
    # a fresh (not resumed) run with new options is a new run: it records them
    _trainer(nnunet_env, "nnUNetTrainerVA").initialize()


def test_deep_supervision_loss_checks_every_list_length():
    from vadice.losses import VolumeAwareDiceCELoss
    from vadice.nnunet.lesion_loss import DeepSupervisionLesionLoss

    loss = DeepSupervisionLesionLoss(VolumeAwareDiceCELoss(), [0.5, 0.5])
    outs = [torch.randn(1, 3, 4, 4, 4), torch.randn(1, 3, 2, 2, 2)]
    targets = [torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 2, 2, 2)]
    ids = [torch.zeros(1, 1, 4, 4, 4)]
    with pytest.raises(ValueError, match="2 outputs, 2 targets, 1 instances, 2 weights"):
        loss(outs, targets, instances=ids, volumes=torch.zeros(1, 1))


def test_lesion_loss_takes_the_bound_batch_and_refuses_none():
    """nnU-Net calls loss(output, target): the maps come from batch_inputs, never from nowhere or a stale batch."""
    from vadice.nnunet.lesion_loss import DeepSupervisionLesionLoss, LesionLoss

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, o, t, instances):
            seen.append(instances)
            return o.sum()

    for loss, out, ids in ((LesionLoss(Spy()), torch.ones(2), torch.tensor([7])),
                           (DeepSupervisionLesionLoss(Spy(), [1.0, 0.5]), [torch.ones(2), torch.ones(1)],
                            [torch.tensor([7]), torch.tensor([8])])):
        target = [None] * len(out) if isinstance(out, list) else None
        with pytest.raises(RuntimeError, match="needs the batch's lesion maps"):
            loss(out, target)
        seen.clear()
        with loss.batch_inputs(instances=ids):
            loss(out, target)
            loss(out, target)  # a second call in the same step sees the same batch
            with pytest.raises(RuntimeError, match="another batch"):
                with loss.batch_inputs(instances=ids):
                    pass
        expected = ids if isinstance(ids, list) else [ids]
        assert [t.item() for t in seen] == [t.item() for t in expected] * 2
        with pytest.raises(RuntimeError, match="needs the batch's lesion maps"):
            loss(out, target)  # unbound again after the block


def test_va_baseline_path_equals_nnunet_loss(nnunet_env, lesions, tmp_path, monkeypatch):
    """With M = ∅ the whole VA path (ids, volumes, deep supervision) gives nnU-Net's DC+CE value."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    use_options(monkeypatch, tmp_path, va={"preset": "baseline"})
    tr = _trainer(nnunet_env, "nnUNetTrainerVA", patch=(16, 32, 32))
    tr.initialize()
    reference = nnUNetTrainer._build_loss(tr)
    dl, _ = tr.get_dataloaders()
    batch = next(dl)
    labels, ids, volumes = tr.lesion_inputs(batch)
    torch.manual_seed(0)
    outputs = [torch.randn(l.shape[0], 3, *l.shape[2:], requires_grad=True) for l in labels]
    ours = tr.loss(outputs, labels, instances=ids, volumes=volumes)
    theirs = reference(outputs, [l.clone() for l in labels])
    torch.testing.assert_close(ours, theirs)
    g_ours = torch.autograd.grad(ours, outputs[0])[0]
    g_theirs = torch.autograd.grad(reference(outputs, [l.clone() for l in labels]), outputs[0])[0]
    torch.testing.assert_close(g_ours, g_theirs)


def test_batches_carry_whole_case_volumes(nnunet_env, lesions, monkeypatch, tmp_path):
    """Ids in a training batch index the case table; a lesion cut by the patch keeps its case volume and weight."""
    use_options(monkeypatch, tmp_path, seed=3)
    tr = _trainer(nnunet_env, "nnUNetTrainerVADual", patch=(12, 24, 24))
    tr.initialize()
    dl, _ = tr.get_dataloaders()
    table = json.loads((lesions / "lesions.json").read_text())["cases"]
    from vadice.losses import VolumeAwareDiceLoss

    absolute = VolumeAwareDiceLoss(va_labels=(1, 2), mode="absolute", v_ref=1000.0, v_min_mm3=1.0,
                                   r_min=None, r_max=None)
    cut_seen = 0
    for _ in range(6):
        batch = next(dl)
        labels, ids, volumes = tr.lesion_inputs(batch)
        assert len(labels) == len(ids) == len(tr._get_deep_supervision_scales())
        assert all(l.shape[1] == 1 and i.shape[1] == 1 for l, i in zip(labels, ids))
        for b, case in enumerate(batch["keys"]):
            entry = table[case]["lesions"]
            lab, inst = labels[0][b, 0], ids[0][b, 0]
            for k in torch.unique(inst[inst > 0]).tolist():
                assert volumes[b, k].item() == pytest.approx(entry[str(k)]["volume_mm3"])
                assert set(torch.unique(lab[inst == k]).tolist()) == {entry[str(k)]["label"]}
                if (inst == k).sum().item() < 0.7 * entry[str(k)]["voxels"]:
                    cut_seen += 1
        # through the loss: absolute mode without clipping makes the weight of a lesion's voxels
        # v_ref / V_k, so each voxel shows which volume the loss saw for its lesion
        w = absolute.voxel_weights(labels[0], ids[0], volumes)
        for b, case in enumerate(batch["keys"]):
            inst = ids[0][b, 0]
            for k in torch.unique(inst[inst > 0]).tolist():
                v = max(table[case]["lesions"][str(k)]["volume_mm3"], 1.0)
                torch.testing.assert_close(w[b, 0][inst == k], torch.full(((inst == k).sum().item(),), 1000.0 / v))
        loss, during = tr.loss, []
        hook = tr.network.register_forward_hook(lambda *_: during.append(tr.loss))
        out = tr.train_step(batch)
        hook.remove()
        # nnU-Net's attribute is the one loss object, also while the step runs (no per-step swap)
        assert np.isfinite(out["loss"]) and tr.loss is loss and during and all(d is loss for d in during)
    assert cut_seen > 0, "no lesion was cut by the patch border in 6 batches"
    val_batch = next(tr.get_dataloaders()[1])
    val = tr.validation_step(val_batch)
    assert np.isfinite(val["loss"]) and val["tp_hard"].shape == (2,)
    # the validation loss is the loss of this batch's own lesion maps (no optimiser step in between)
    labels, inputs = tr.loss_inputs(val_batch)
    with torch.no_grad():
        expected = tr.loss(tr.network(val_batch["data"]), labels, **inputs)
    assert float(val["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_missing_lesion_table_is_a_clear_error(nnunet_env, lesions, tmp_path):
    table = lesions / "lesions.json"
    backup = tmp_path / "lesions.json"
    table.rename(backup)
    try:
        tr = _trainer(nnunet_env, "nnUNetTrainerVADual")
        with pytest.raises(InputError, match="preprocess_instances"):
            tr.initialize()
    finally:
        backup.rename(table)


def test_nnunet_finds_vadice_classes_themselves_in_the_trainer_dir(monkeypatch):
    """nnU-Net's own lookup, as nnUNetv2_train and nnUNetv2_predict run it, returns vadice's classes (no copies)."""
    import pkgutil

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from vadice.nnunet import VA_TRAINERS, trainer_dir
    from vadice.registry import BUDGET_TRAINER, SETUPS
    from vadice.nnunet import comparator_trainers, trainers

    # the folder holds the trainer module only: nnU-Net imports every module there as a top-level module
    assert [m.name for m in pkgutil.iter_modules([str(trainer_dir())])] == ["vadice_trainers"]
    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_dir()))
    for name in (*VA_TRAINERS, BUDGET_TRAINER, *(s.trainer for s in SETUPS.values())):
        ours = getattr(trainers, name, None) or getattr(comparator_trainers, name)
        assert recursive_find_trainer_class_by_name(name) is ours


def test_va_trainer_composes_with_nnunet_variants(nnunet_env, lesions, monkeypatch):
    """Multiple inheritance with nnU-Net's augmentation and epoch-count variants keeps both behaviours."""
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDAOrd0 import (
        nnUNetTrainer_DASegOrd0,
    )
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import (
        nnUNetTrainer_5epochs,
    )

    from vadice.nnunet.augmentation import LesionSpatialTransform
    from vadice.nnunet.trainers import nnUNetTrainerVADual

    class VADualSegOrd5(nnUNetTrainerVADual, nnUNetTrainer_DASegOrd0, nnUNetTrainer_5epochs):
        pass

    monkeypatch.delenv("VADICE_TRAINER_OPTIONS", raising=False)
    plans = json.loads((nnunet_env["pre"] / f"{nnunet_env['plans_id']}.json").read_text())
    plans["continue_training"] = False
    plans["configurations"]["3d_fullres"]["patch_size"] = [12, 24, 24]
    dataset_json = json.loads((nnunet_env["pre"] / "dataset.json").read_text())
    tr = VADualSegOrd5(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    assert tr.num_epochs == 5  # the epoch variant's __init__ ran
    tr.initialize()
    transforms = tr.get_training_transforms([12, 24, 24], (0, 0), [[1, 1, 1], [0.5, 0.5, 0.5]], (0, 1, 2), False,
                                            foreground_labels=[1, 2])
    spatial = [t for t in transforms.transforms if isinstance(t, LesionSpatialTransform)]
    # the DASegOrd0 variant's spatial transform (nearest-neighbour labels), swapped for the id-carrying one
    assert len(spatial) == 1 and spatial[0].mode_seg == "nearest"
    out = tr.train_step(next(tr.get_dataloaders()[0]))
    assert np.isfinite(out["loss"])


def test_torch_threads_is_a_trainer_option(nnunet_env, monkeypatch, tmp_path):
    before = torch.get_num_threads()
    try:
        use_options(monkeypatch, tmp_path, torch_threads=1)
        torch.set_num_threads(2)  # what nnUNetv2_train does on CPU before it builds the trainer
        _trainer(nnunet_env, "nnUNetTrainerBudget")
        assert torch.get_num_threads() == 1
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"torch_threads": 0}))
        monkeypatch.setenv("VADICE_TRAINER_OPTIONS", str(bad))
        with pytest.raises(ValueError, match=f"^{bad}: torch_threads: must be an integer >= 1"):
            _trainer(nnunet_env, "nnUNetTrainerBudget")
    finally:
        torch.set_num_threads(before)


def test_options_file_names_a_weighting_and_explicit_keys_override_it():
    from vadice.nnunet.trainers import expand_va_options

    opts = expand_va_options({"preset": "selective-ln", "weighting": "equal-mass"})
    assert opts["va_labels"] == (2,) and opts["r_min"] is None and opts["r_max"] is None
    opts = expand_va_options({"weighting": "equal-mass", "r_max": 50, "v_ref": {"2": 30.0}})
    assert opts["r_max"] == 50 and opts["r_min"] is None and opts["v_ref"] == {2: 30.0}
    # no weighting named: the options stay what they were (runs recorded before weightings existed resume)
    assert expand_va_options(None) == expand_va_options({}) == {"va_labels": (1, 2)}


def _va_reference():
    """tests/losses/va_synth.py: the loop-based reading of the VA Dice definition (float64 NumPy)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "losses" / "va_synth.py"
    spec = importlib.util.spec_from_file_location("va_synth_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["mass", "absolute"])
def test_va_deep_supervision_equals_independent_per_scale_sum(nnunet_env, lesions, tmp_path, monkeypatch, mode):
    """The trainer's loss on a real batch = Σ_i w_i (loop-reference VA Dice_i + nnU-Net's CE_i), w_i from nnU-Net."""
    from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss

    ref = _va_reference()
    use_options(monkeypatch, tmp_path, seed=1, va={"preset": "dual", "mode": mode})
    tr = _trainer(nnunet_env, "nnUNetTrainerVA", patch=(12, 24, 24))
    tr.initialize()
    labels, ids, volumes = tr.lesion_inputs(next(tr.get_dataloaders()[0]))
    n = len(tr._get_deep_supervision_scales())
    assert len(labels) == len(ids) == n > 1
    # nnU-Net's deep-supervision weights, written out: 1/2^i, the last scale 0, normalised
    w = np.array([1 / 2 ** i for i in range(n)])
    w[-1] = 0
    w /= w.sum()
    torch.manual_seed(0)
    outputs = [torch.randn(l.shape[0], 3, *l.shape[2:], dtype=torch.float64) for l in labels]
    v_ref = tr.va_v_ref if mode == "absolute" else None
    rows = [volumes[b] for b in range(volumes.shape[0])]
    expected = 0.0
    for i in range(n):
        if w[i] == 0:
            continue
        weights = ref.reference_weights(labels[i], ids[i], rows, (1, 2), 1.0, mode, v_ref, 10.0, 0.1, 10.0,
                                        tr.configuration_manager.batch_dice)
        dice = ref.reference_dice_loss(torch.softmax(outputs[i], 1).numpy(), labels[i], weights,
                                       tr.configuration_manager.batch_dice)
        ce = RobustCrossEntropyLoss()(outputs[i], labels[i].long()).item()
        expected += w[i] * (dice + ce)
    got = tr.loss(outputs, labels, instances=ids, volumes=volumes).item()
    assert got == pytest.approx(expected, rel=1e-6)
    if mode == "absolute":
        # the reference volume is the fold's training-case median; lesions in this batch weigh differently
        assert set(v_ref) == {1, 2} and all(v > 0 for v in v_ref.values())


def test_absolute_mode_training_step_updates_the_network(nnunet_env, lesions, tmp_path, monkeypatch):
    use_options(monkeypatch, tmp_path, seed=2, va={"preset": "dual", "mode": "absolute"})
    tr = _trainer(nnunet_env, "nnUNetTrainerVA", patch=(12, 24, 24))
    tr.initialize()
    assert tr.loss.loss.dc.mode == "absolute" and tr.loss.loss.dc.v_ref == tr.va_v_ref
    before = [p.detach().clone() for p in tr.network.parameters()]
    out = tr.train_step(next(tr.get_dataloaders()[0]))
    assert np.isfinite(out["loss"])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, tr.network.parameters()))


def test_numpy_dataset_variant_carries_the_same_ids(nnunet_env, lesions, tmp_path):
    """nnU-Net's .npz dataset format: same lesion table, the 2-channel case, and the source check."""
    import pickle
    import shutil

    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from vadice.nnunet.datasets import LesionDatasetNumpy, SegWithInstances, lesion_dataset_class
    from vadice.nnunet.lesion_cache import load_lesion_table, preprocess_instances

    src = nnunet_env["pre"]
    base = tmp_path / src.name
    folder = base / "nnUNetPlans_3d_fullres"
    folder.mkdir(parents=True)
    for name in (f"{nnunet_env['plans_id']}.json", "dataset.json"):
        shutil.copy2(src / name, base / name)
    cases = [f"case{i:02d}" for i in range(5)]
    for case in cases:
        data = np.asarray(blosc2.open(str(src / folder.name / f"{case}.b2nd"))[:])
        seg = np.asarray(blosc2.open(str(src / folder.name / f"{case}_seg.b2nd"))[:])
        np.savez_compressed(folder / f"{case}.npz", data=data, seg=seg)
        shutil.copy2(src / folder.name / f"{case}.pkl", folder / f"{case}.pkl")
    assert infer_dataset_class(str(folder)).__name__ == "nnUNetDatasetNumpy"
    out = preprocess_instances(base, "3d_fullres", nnunet_env["plans_id"], progress=False)
    ours, theirs = load_lesion_table(out), load_lesion_table(lesions)
    for case in cases:
        np.testing.assert_allclose(ours.volumes[case], theirs.volumes[case])
        np.testing.assert_array_equal(ours.lesion_labels[case], theirs.lesion_labels[case])
    ours.verify_sources(folder, cases)

    dataset = lesion_dataset_class(infer_dataset_class(str(folder)))(str(folder), cases)
    assert isinstance(dataset, LesionDatasetNumpy)
    _, both, _, _ = dataset.load_case("case02")
    assert isinstance(both, SegWithInstances) and both.shape[0] == 2
    seg = np.load(folder / "case02.npz")["seg"]
    inst = np.asarray(blosc2.open(str(lesions / "case02_inst.b2nd"))[:])
    np.testing.assert_array_equal(np.asarray(both), np.concatenate([seg, inst]).astype(np.int16))

    # a rewritten .npz is caught like a rewritten .b2nd
    with np.load(folder / "case02.npz") as z:
        data, seg = z["data"], z["seg"]
    np.savez_compressed(folder / "case02.npz", data=data, seg=np.where(seg == 2, 0, seg))
    with pytest.raises(InputError, match="case02.npz: changed since lesion ids of case 'case02'"):
        load_lesion_table(out).verify_sources(folder, cases)
    assert pickle.loads(pickle.dumps(dataset)).source_folder == dataset.source_folder


@pytest.mark.slow
def test_2d_configuration_trains_and_predicts_with_a_va_trainer(nnunet_env, tmp_path):
    """nnU-Net's 2d configuration: lesions labelled per case in 3-D, slices trained, a case predicted."""
    import subprocess
    import sys

    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    from vadice.io import read_mask
    from vadice.nnunet import trainer_dir
    from vadice.nnunet.lesion_cache import load_lesion_table, preprocess_instances

    plans = json.loads((nnunet_env["pre"] / f"{nnunet_env['plans_id']}.json").read_text())
    assert "2d" in plans["configurations"]
    preprocess_dataset(DATASET_ID, nnunet_env["plans_id"], ("2d",), [1], verbose=False, show_progress_bar=False)
    folder = preprocess_instances(nnunet_env["pre"], "2d", nnunet_env["plans_id"], progress=False)
    table = load_lesion_table(folder)
    # a 2-D configuration keeps the case's slice spacing: volumes in mm³ as in 3-D (same resampled grid here)
    assert table.lesion_tables(["case00"])[0] and table.configuration == "2d"

    from vadice.nnunet.trainer_options import TrainerOptions, write

    binary = Path(sys.executable).parent
    options = write(tmp_path / "options.json", TrainerOptions(epochs=1, iterations_per_epoch=2, val_iterations=1,
                                                              seed=0, val_mirroring=False, torch_threads=1))
    env = {**os.environ, "nnUNet_extTrainer": str(trainer_dir()), "VADICE_TRAINER_OPTIONS": str(options),
           "nnUNet_n_proc_DA": "0", "nnUNet_results": str(tmp_path / "res")}

    def run(cmd):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        assert res.returncode == 0, f"{cmd[0]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"

    run([str(binary / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-p", nnunet_env["plans_id"],
         "-tr", "nnUNetTrainerVADual", "-device", "cpu"])
    out = tmp_path / "res" / NAME / f"nnUNetTrainerVADual__{nnunet_env['plans_id']}__2d" / "fold_0"
    assert (out / "checkpoint_final.pth").is_file()
    assert json.loads((out / "vadice_va.json").read_text())["options"]["va_labels"] == [1, 2]
    assert (out / "vadice_trainer_options.json").read_text() == options.read_text()
    (tmp_path / "in").mkdir()
    image = nnunet_env["root"] / "raw" / NAME / "imagesTr" / "case01_0000.nii.gz"
    (tmp_path / "in" / image.name).symlink_to(image)
    run([str(binary / "nnUNetv2_predict"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "pred"),
         "-d", str(DATASET_ID), "-c", "2d", "-f", "0", "-p", nnunet_env["plans_id"], "-tr", "nnUNetTrainerVADual",
         "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
    pred, _ = read_mask(tmp_path / "pred" / "case01.nii.gz")
    assert pred.shape == (16, 56, 56) and set(np.unique(pred).tolist()) <= {0, 1, 2}
