"""Cost of the volume-aware loss inside an nnU-Net training step, and of carrying lesion ids in the data loader.

Mode ``step`` (default): forward + DC/CE-or-VA/CE loss over all deep-supervision
scales + backward + SGD step of the same residual-encoder U-Net on the same batch,
nnU-Net's loss (DC_and_CE_loss, MemoryEfficientSoftDiceLoss, DeepSupervisionWrapper)
against the VA loss (dual preset, whole-case volumes looked up by id). The two are
timed alternately (ABAB...) so drifting machine load hits both; medians reported.

    # CPU, reduced width (default): 8...80 features, patch 32x64x64, batch 2
    python bench/loss_overhead.py
    # GPU, the ResEnc M network of a real plans file, HNTS-like patch, AMP
    python bench/loss_overhead.py --device cuda --plans $nnUNet_preprocessed/Dataset501_HNTSMRGTask1/nnUNetResEncUNetMPlans.json \\
        --patch 32 224 192 --batch 2

Mode ``loader``: nnU-Net's real training data loader (single-threaded, with its
augmentation) of a preprocessed dataset, plain (nnUNetTrainerBudget) against
instance-carrying (nnUNetTrainerVADual); needs nnUNet_preprocessed/nnUNet_results
set and ``preprocess_instances`` run:

    python bench/loss_overhead.py --mode loader --dataset 501 --plans-id nnUNetResEncUNetMPlans

Both loaders are seeded alike before each batch (same cases, crops and augmentation);
wall-time medians and the loader's CPU time (``time.thread_time``, the figure to read
on a shared machine) are reported. ``--repeats 3`` draws each batch three times per
loader and keeps the fastest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_network(args, device):
    if args.plans:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        cm = PlansManager(args.plans).get_configuration(args.configuration)
        net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, 1, 3, allow_init=True,
                                     deep_supervision=True)
        pools = cm.pool_op_kernel_sizes
        label = f"{cm.network_arch_class_name.split('.')[-1]} from {os.path.basename(args.plans)}"
    else:
        from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

        # ResEnc M topology for an anisotropic (z coarse) patch, width scaled down
        pools = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
        feats = [min(args.features * 2 ** i, args.features * 10) for i in range(len(pools))]
        net = ResidualEncoderUNet(1, len(pools), feats, torch.nn.Conv3d,
                                  [[1, 3, 3]] + [[3, 3, 3]] * (len(pools) - 1), pools, [1, 3, 4, 6, 6][:len(pools)],
                                  3, [1] * (len(pools) - 1), conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                                  nonlin_kwargs={"inplace": True}, deep_supervision=True)
        label = f"ResidualEncoderUNet {feats[0]}...{feats[-1]} features (reduced width)"
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(pools), axis=0))[:-1]
    return net.to(device), scales, label


def synthetic_batch(args, scales, device, seed=0):
    """Label map with a primary tumour and several nodes per sample, its instance map and case volumes."""
    from vadice.lesions import label_lesions

    rng = np.random.default_rng(seed)
    shape = tuple(args.patch)
    labels, ids, tables = [], [], []
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(args.batch):
        lab = np.zeros(shape, np.int16)
        c = [s / 2 for s in shape]
        lab[sum(((g - ci) / (s / 4)) ** 2 for g, ci, s in zip(grids, c, shape)) <= 1] = 1
        for _ in range(6):
            c = [rng.uniform(0, s) for s in shape]
            r = rng.uniform(1.5, 5)
            lab[(sum(((g - ci) / r) ** 2 for g, ci in zip(grids, c)) <= 1) & (lab == 0)] = 2
        inst, lesions = label_lesions(lab, (2.0, 0.5, 0.5), labels=(1, 2))
        labels.append(lab)
        ids.append(inst.astype(np.int16))
        # whole-case volumes larger than what the patch shows (lesions cut by the border)
        tables.append([0.0] + [l.volume_mm3 * rng.uniform(1, 3) for l in lesions])
    seg = torch.from_numpy(np.stack([np.stack(labels), np.stack(ids)], 1))
    from torch.nn.functional import interpolate

    targets = [seg if all(s == 1 for s in sc) else
               interpolate(seg.float(), [round(i * j) for i, j in zip(shape, sc)], mode="nearest-exact").to(seg.dtype)
               for sc in scales]
    width = max(len(t) for t in tables)
    volumes = torch.tensor([t + [0.0] * (width - len(t)) for t in tables], dtype=torch.float32)
    labels = [t[:, :1].to(device) for t in targets]
    inst = [t[:, 1:].to(device) for t in targets]
    return labels, inst, volumes.to(device)


def bench_step(args):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from vadice.losses import loss_from_preset
    from vadice.nnunet.lesion_loss import DeepSupervisionLesionLoss

    device = torch.device(args.device)
    torch.manual_seed(0)
    net, scales, label = build_network(args, device)
    weights = np.array([1 / 2 ** i for i in range(len(scales))])
    weights[-1] = 0
    weights = weights / weights.sum()
    dc_ce = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": args.batch_dice, "smooth": 1e-5, "do_bg": False,
                                                   "ddp": False}, {}, weight_ce=1, weight_dice=1,
                                                  dice_class=MemoryEfficientSoftDiceLoss), weights)
    va = loss_from_preset("dual", batch_dice=args.batch_dice, check_values=False)
    if args.compile:
        dc_ce.loss.dc = torch.compile(dc_ce.loss.dc)
        va.dc = torch.compile(va.dc)
    va_ce = DeepSupervisionLesionLoss(va, weights)
    labels, inst, volumes = synthetic_batch(args, scales, device)
    x = torch.randn(args.batch, 1, *args.patch, device=device)
    opt = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    amp = device.type == "cuda" and not args.no_amp
    scaler = torch.amp.GradScaler("cuda") if amp else None

    def step(use_va: bool) -> float:
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            out = net(x)
            loss = va_ce(out, labels, instances=inst, volumes=volumes) if use_va else dc_ce(out, labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            opt.step()
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step(False)
        step(True)
    times = {False: [], True: []}
    for i in range(args.steps):
        for use_va in ((False, True) if i % 2 == 0 else (True, False)):
            times[use_va].append(step(use_va))
    base, vat = statistics.median(times[False]), statistics.median(times[True])
    return {
        "mode": "step", "device": str(device), "network": label, "patch": list(args.patch), "batch": args.batch,
        "amp": amp, "compile": args.compile, "batch_dice": args.batch_dice, "steps": args.steps,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "dc_ce_median_s": base, "va_ce_median_s": vat, "ratio": vat / base,
        "dc_ce_all_s": times[False], "va_ce_all_s": times[True],
    }


def bench_loader(args):
    from vadice.nnunet.trainers import nnUNetTrainerBudget, nnUNetTrainerVADual

    os.environ["nnUNet_n_proc_DA"] = "0"
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(args.dataset)
    base = os.path.join(str(nnUNet_preprocessed), name)
    dataset_json = json.load(open(os.path.join(base, "dataset.json")))
    loaders = {}
    for key, cls in (("plain", nnUNetTrainerBudget), ("lesion ids", nnUNetTrainerVADual)):
        plans = json.load(open(os.path.join(base, args.plans_id + ".json")))
        plans["continue_training"] = False
        if args.patch:
            plans["configurations"][args.configuration]["patch_size"] = list(args.patch)
        tr = cls(plans, args.configuration, 0, dataset_json, torch.device("cpu"))
        tr.initialize()
        loaders[key], _ = tr.get_dataloaders()
    times = {k: [] for k in loaders}
    cpu = {k: [] for k in loaders}
    for i in range(args.warmup):
        for dl in loaders.values():
            next(dl)
    load_before = os.getloadavg()
    for i in range(args.steps):
        # both loaders draw the same augmentation parameters at step i (seeded before each), in alternating order
        # --repeats r: the same batch r times per loader, its fastest kept (sporadic stalls of a loaded machine drop out)
        runs = {k: [] for k in loaders}
        for _ in range(args.repeats):
            for key in (list(loaders) if i % 2 == 0 else list(loaders)[::-1]):
                np.random.seed(i)
                torch.manual_seed(i)
                t0, c0 = time.perf_counter(), time.thread_time()
                next(loaders[key])
                runs[key].append((time.thread_time() - c0, time.perf_counter() - t0))
        for key, r in runs.items():
            cpu[key].append(min(c for c, _ in r))
            times[key].append(min(w for _, w in r))
    plain, ours = statistics.median(times["plain"]), statistics.median(times["lesion ids"])
    # CPU time of this (single-threaded) loader: what the batch costs, less sensitive to other jobs than wall time
    cpu_plain, cpu_ours = sum(cpu["plain"]), sum(cpu["lesion ids"])
    return {"mode": "loader", "dataset": name, "plans": args.plans_id, "configuration": args.configuration,
            "patch": list(plans["configurations"][args.configuration]["patch_size"]),
            "batch": plans["configurations"][args.configuration]["batch_size"], "batches": args.steps,
            "repeats": args.repeats, "plain_median_s": plain, "with_ids_median_s": ours, "ratio": ours / plain,
            "plain_cpu_mean_s": cpu_plain / args.steps, "with_ids_cpu_mean_s": cpu_ours / args.steps,
            "cpu_ratio": cpu_ours / cpu_plain, "load_average_1min": [load_before[0], os.getloadavg()[0]],
            "plain_all_s": times["plain"], "with_ids_all_s": times["lesion ids"],
            "plain_cpu_all_s": cpu["plain"], "with_ids_cpu_all_s": cpu["lesion ids"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("step", "loader"), default="step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--plans", help="nnU-Net plans JSON whose network to use (step mode); default: reduced ResEnc")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--features", type=int, default=8, help="base features of the default network (ResEnc M: 32)")
    p.add_argument("--patch", type=int, nargs=3, default=None, help="patch z y x (step default 32 64 64)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--batch-dice", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the Dice parts, as nnU-Net")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1,
                   help="loader mode: draw each batch this many times per loader (same seed), keep the fastest")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dataset", help="loader mode: dataset id or name")
    p.add_argument("--plans-id", default="nnUNetResEncUNetMPlans", help="loader mode: plans identifier")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "step":
        args.patch = args.patch or [32, 64, 64]
        result = bench_step(args)
        print(f"{result['network']}, patch {result['patch']}, batch {result['batch']}, {result['device']}, "
              f"amp {result['amp']}, compile {result['compile']}")
        print(f"DC+CE step {result['dc_ce_median_s'] * 1e3:.1f} ms, VA+CE step {result['va_ce_median_s'] * 1e3:.1f} ms"
              f" (medians of {args.steps}), ratio {result['ratio']:.3f}")
    else:
        if not args.dataset:
            p.error("--mode loader needs --dataset")
        result = bench_loader(args)
        print(f"{result['dataset']} {result['plans']} {result['configuration']}, patch {result['patch']}, "
              f"batch {result['batch']}")
        print(f"plain loader {result['plain_median_s'] * 1e3:.1f} ms/batch, with lesion ids "
              f"{result['with_ids_median_s'] * 1e3:.1f} ms/batch (medians of {args.steps}), ratio {result['ratio']:.3f}")
        print(f"CPU time (thread): plain {result['plain_cpu_mean_s'] * 1e3:.1f} ms/batch, with lesion ids "
              f"{result['with_ids_cpu_mean_s'] * 1e3:.1f} ms/batch (means), ratio {result['cpu_ratio']:.3f}; "
              f"load average {result['load_average_1min'][0]:.1f} -> {result['load_average_1min'][1]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
