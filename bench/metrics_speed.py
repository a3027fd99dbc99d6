"""Per-case evaluation time: vadice vs DeepMind surface-distance + panoptica (and MONAI), side by side.

Generates realistic synthetic cases (512x512x~80 at 0.5x0.5x2 mm, one primary
tumour and several nodes, prediction with boundary errors, a missed small node
and a distant false positive), writes them as .nii.gz, then per case times:

  read     reading the two NIfTI files (nibabel, full decompression) - the floor
  vadice   all metrics for both labels (DSC, volumes, SDS, MSD, HD95, lesion-wise),
           compute only, and read + compute (vadice.metrics.pairs.load_pair)
  deepmind surface_distance: surface distances + SDS, MSD, HD95 per label
  panoptica lesion-wise detection (connected components, IoU 0.5 matching)
  monai    surface Dice (use_subvoxels), HD95 and ASD per label (skipped with --no-monai)

and checks that the values agree (SDS/MSD/HD95 vs DeepMind to 1e-12 relative,
SDS vs MONAI to 1e-5, lesion counts vs panoptica exactly with the same IoU
0.5 rule). Times are the best of --repeat runs (the machine may be shared).
``--clock cpu`` times CPU seconds of this process (all its threads) instead of
wall seconds: on a busy machine, waiting for a core then counts on neither side.

  python bench/metrics_speed.py --cases 3 --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from vadice.io import Geometry, write_nifti
from vadice.metrics.evaluate import evaluate_case
from vadice.metrics.pairs import load_pair

SPACING = (2.0, 0.5, 0.5)  # z, y, x
LABELS = {"GTVp": 1, "GTVn": 2}


def _ellipsoid(shape, center, radii_mm, rng, roughness=0.15):
    """Irregular ellipsoid (mm radii) inside a local box; returns (slices, mask)."""
    rad_vox = [r / s for r, s in zip(radii_mm, SPACING)]
    lo = [max(int(c - r * 1.5) - 1, 0) for c, r in zip(center, rad_vox)]
    hi = [min(int(c + r * 1.5) + 2, n) for c, r, n in zip(center, rad_vox, shape)]
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, rad_vox))
    # Smooth low-frequency radial noise makes the surface irregular.
    theta = np.arctan2(grids[1] - center[1], grids[2] - center[2])
    phi = (grids[0] - center[0]) / max(rad_vox[0], 1)
    k = rng.uniform(0, 2 * np.pi, 3)
    wobble = 1 + roughness * (np.sin(3 * theta + k[0]) * np.cos(2 * phi + k[1]) + 0.5 * np.sin(5 * theta + k[2]))
    return tuple(slice(a, b) for a, b in zip(lo, hi)), d <= wobble


def make_case(seed: int, shape=(80, 512, 512)):
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    c = np.array([40, 256, 256]) + rng.integers(-5, 6, 3) * np.array([1, 8, 8])
    radii = rng.uniform(12, 20, 3)
    sl, m = _ellipsoid(shape, c, radii, rng)
    gt[sl][m] = 1
    # Prediction: slightly shifted and scaled with its own surface noise.
    sl, m = _ellipsoid(shape, c + rng.integers(-1, 2, 3), radii * rng.uniform(0.88, 1.08), rng)
    pred[sl][m] = 1
    n_nodes = int(rng.integers(3, 7))
    for i in range(n_nodes):
        cn = np.array([int(rng.integers(20, 60)), int(rng.integers(150, 360)), int(rng.integers(120, 400))])
        if abs(cn[2] - c[2]) < 70:
            cn[2] += 140 if cn[2] >= c[2] else -140
        r = rng.uniform(4, 11, 3)
        sl, m = _ellipsoid(shape, cn, r, rng)
        gt[sl][m & (gt[sl] == 0)] = 2
        if i == 0 and r.min() < 7:
            continue  # a missed small node
        sl, m = _ellipsoid(shape, cn + rng.integers(-1, 2, 3), r * rng.uniform(0.8, 1.1), rng)
        pred[sl][m & (pred[sl] == 0)] = 2
    # A distant false-positive node.
    sl, m = _ellipsoid(shape, np.array([15, 460, 60]), (6, 6, 6), rng)
    pred[sl][m] = 2
    return gt, pred


CLOCK = time.perf_counter


def best_of(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = CLOCK()
        out = fn()
        best = min(best, CLOCK() - t)
    return best, out


def read_raw(gt_path, pred_path):
    import nibabel as nib

    return [np.asanyarray(nib.load(str(p)).dataobj) for p in (gt_path, pred_path)]


def deepmind_all(gt, pred, tol):
    import surface_distance as sd

    out = {}
    for name, v in LABELS.items():
        d = sd.compute_surface_distances(gt == v, pred == v, SPACING)
        num = d["distances_gt_to_pred"] @ d["surfel_areas_gt"] + d["distances_pred_to_gt"] @ d["surfel_areas_pred"]
        den = d["surfel_areas_gt"].sum() + d["surfel_areas_pred"].sum()
        out[name] = {"sds": sd.compute_surface_dice_at_tolerance(d, tol), "msd": num / den,
                     "hd95": sd.compute_robust_hausdorff(d, 95)}
    return out


def panoptica_evaluator():
    from panoptica import (ConnectedComponentsInstanceApproximator, InputType, Metric, NaiveThresholdMatching,
                           Panoptica_Evaluator)
    from panoptica import disable_citation_reminder
    from panoptica.utils.segmentation_class import LabelGroup, SegmentationClassGroups

    disable_citation_reminder()

    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=NaiveThresholdMatching(),
        segmentation_class_groups=SegmentationClassGroups({n: LabelGroup(v) for n, v in LABELS.items()}),
        instance_metrics=[Metric.DSC, Metric.IOU],
        global_metrics=[Metric.DSC],
        decision_metric=Metric.IOU,
        decision_threshold=0.5,
    )


def monai_all(gt, pred, tol):
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    def onehot(x):
        return torch.from_numpy(np.stack([x == 0] + [x == v for v in LABELS.values()])[None].astype(np.float32))

    y, p = onehot(gt), onehot(pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nsd = compute_surface_dice(p, y, [tol] * len(LABELS), spacing=SPACING, use_subvoxels=True)[0]
        hd = compute_hausdorff_distance(p, y, percentile=95, spacing=SPACING)[0]
        asd = compute_average_surface_distance(p, y, symmetric=True, spacing=SPACING)[0]
    return {n: {"sds": float(nsd[i]), "hd95": float(hd[i]), "asd": float(asd[i])} for i, n in enumerate(LABELS)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--slices", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing; the best is kept")
    ap.add_argument("--quick", action="store_true", help="repeat 1 for the slow references")
    ap.add_argument("--no-monai", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed seconds (default); cpu: CPU seconds of this process")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    import surface_distance  # noqa: F401  (fail early if missing)

    np.Inf = np.inf  # surface-distance 0.1 still uses np.Inf, removed in NumPy 2
    ref_repeat = 1 if args.quick else args.repeat
    tol = 2.0
    geom = Geometry((512, 512, args.slices), tuple(reversed(SPACING)), (0.0, 0.0, 0.0),
                    (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    pan = panoptica_evaluator()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cases):
            gt, pred = make_case(i, (args.slices, 512, 512))
            gp, pp = Path(tmp) / f"gt{i}.nii.gz", Path(tmp) / f"pred{i}.nii.gz"
            write_nifti(gt, geom, gp)
            write_nifti(pred, geom, pp)
            evaluate_case(gt, pred, SPACING)  # warm-up: builds the area table once per process
            t_read, _ = best_of(lambda: read_raw(gp, pp), args.repeat)
            t_vad, res = best_of(lambda: evaluate_case(gt, pred, SPACING, tolerances=(tol,)), args.repeat)

            def read_and_eval():
                g, p, gg, _ = load_pair(gp, pp, list(LABELS.values()))
                return evaluate_case(g, p, gg.spacing_zyx, tolerances=(tol,))

            t_vad_total, _ = best_of(read_and_eval, args.repeat)
            t_dm, dm = best_of(lambda: deepmind_all(gt, pred, tol), ref_repeat)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_pan, pres = best_of(lambda: pan.evaluate(pred, gt, voxelspacing=SPACING, verbose=False),
                                      ref_repeat)
            t_monai, mon = (float("nan"), None) if args.no_monai else best_of(lambda: monai_all(gt, pred, tol),
                                                                              ref_repeat)
            # Agreement checks.
            iou = evaluate_case(gt, pred, SPACING, tolerances=(tol,), match="iou:0.5")
            worst_dm = worst_monai = 0.0
            for name, r in res.labels.items():
                for key, ours in (("sds", r.sds[tol]), ("msd", r.msd), ("hd95", r.hd95)):
                    worst_dm = max(worst_dm, abs(ours - dm[name][key]) / abs(dm[name][key]))
                if mon:
                    worst_monai = max(worst_monai, abs(r.sds[tol] - mon[name]["sds"]) / mon[name]["sds"])
                les, pr = iou.labels[name].lesions, pres[name.lower()]  # panoptica lower-cases group names
                counts_ours = (les.n_gt, les.n_pred, les.n_gt_detected, les.n_pred - les.n_pred_matched,
                               les.n_gt - les.n_gt_detected)
                counts_pan = (pr.n_ref_instances, pr.n_pred_instances, pr.tp, pr.fp, pr.fn)
                assert counts_ours == counts_pan, (name, counts_ours, counts_pan)
            assert worst_dm < 1e-12, worst_dm
            assert args.no_monai or worst_monai < 1e-5, worst_monai
            rows.append(dict(case=i, read=t_read, vadice=t_vad, vadice_total=t_vad_total, deepmind=t_dm,
                             panoptica=t_pan, monai=t_monai, worst_dm=worst_dm, worst_monai=worst_monai,
                             hd95_ln=res.labels["GTVn"].hd95, n_ln=res.labels["GTVn"].lesions.n_gt))
            r = rows[-1]
            print(f"case {i}: read {t_read:.3f}s  vadice {t_vad:.3f}s (read+eval {t_vad_total:.3f}s)  "
                  f"deepmind {t_dm:.3f}s  panoptica {t_pan:.3f}s  monai {t_monai:.3f}s  "
                  f"max rel diff vs DeepMind {worst_dm:.1e}, vs MONAI SDS {worst_monai:.1e}", flush=True)

    print(f"\nclock: {args.clock} seconds, best of {args.repeat} (references: best of {ref_repeat})")
    # End to end, reads included on both sides: vadice = load_pair + metrics; anchors = the same nibabel read
    # + DeepMind + panoptica. "vadice / read" is the marginal cost per case in units of reading the pair.
    print("| case | read 2 files (s) | vadice metrics (s) | vadice read+metrics (s) | DeepMind (s) | panoptica (s) "
          "| MONAI (s) | (read+DeepMind+panoptica) / vadice read+metrics | vadice read+metrics / read "
          "| GTVn lesions | max rel. diff vs DeepMind |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows + [None]:
        if r is None:
            r = {k: float(np.median([x[k] for x in rows])) for k in ("read", "vadice", "vadice_total", "deepmind",
                                                                      "panoptica", "monai")}
            r.update(case="median", n_ln="", worst_dm=float("nan"))
        anchors = r["read"] + r["deepmind"] + r["panoptica"]
        print(f"| {r['case']} | {r['read']:.3f} | {r['vadice']:.3f} | {r['vadice_total']:.3f} | {r['deepmind']:.3f} "
              f"| {r['panoptica']:.3f} | {r['monai']:.2f} | {anchors / r['vadice_total']:.1f}x "
              f"| {r['vadice_total'] / r['read']:.2f} | {r['n_ln']} | {r['worst_dm']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
