"""Fake evaluation folders, comparison and training logs, written the way the evaluation writes them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

CASE_COLUMNS = ["case", "label", "dsc", "sds", "msd", "hd95", "gt_volume_ml", "pred_volume_ml",
                "intersection_ml", "n_gt_lesions", "n_gt_detected", "n_pred_lesions", "n_pred_matched",
                "sds_1mm"]
LESION_COLUMNS = ["case", "label", "source", "lesion_id", "volume_ml", "detected", "lesion_dsc"]


def _cell(v):
    if isinstance(v, float) and math.isnan(v):
        return ""
    return v


def write_evaluation(folder: Path, rows: list[dict], lesions: list[dict] | None = None,
                     summary: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CASE_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k, float("nan"))) for k in CASE_COLUMNS})
    if lesions is not None:
        with open(folder / "lesions.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LESION_COLUMNS)
            w.writeheader()
            for r in lesions:
                w.writerow({k: _cell(r.get(k, "")) for k in LESION_COLUMNS})
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def case_row(case, label, dsc, shift=0.0, lesions=(2, 1, 2, 1)):
    n_gt, n_det, n_pred, n_match = lesions
    return {"case": case, "label": label, "dsc": dsc, "sds": dsc, "msd": 1.0 + shift, "hd95": 3.0 + shift,
            "gt_volume_ml": 10.0, "pred_volume_ml": 9.0, "intersection_ml": 8.0 + shift,
            "n_gt_lesions": n_gt, "n_gt_detected": n_det, "n_pred_lesions": n_pred, "n_pred_matched": n_match,
            "sds_1mm": dsc}


def lesion_rows(case, label, detected_volumes=(0.3, 2.0), missed_volumes=(0.7,)):
    rows, i = [], 1
    for v in detected_volumes:
        rows.append({"case": case, "label": label, "source": "gt", "lesion_id": i, "volume_ml": v,
                     "detected": 1, "lesion_dsc": 0.7})
        i += 1
    for v in missed_volumes:
        rows.append({"case": case, "label": label, "source": "gt", "lesion_id": i, "volume_ml": v,
                     "detected": 0, "lesion_dsc": 0.0})
        i += 1
    rows.append({"case": case, "label": label, "source": "pred", "lesion_id": i, "volume_ml": 1.5,
                 "detected": 1, "lesion_dsc": 0.7})
    return rows


TRAINING_LOG = """
#######################################################################
Please cite the following paper when using nnU-Net:
#######################################################################

2025-01-01 10:00:00.000000: do_dummy_2d_data_aug: False
2025-01-01 10:00:01.000000: 
2025-01-01 10:00:01.000001: Epoch 0 
2025-01-01 10:00:01.000002: Current learning rate: 0.01 
2025-01-01 10:00:05.000000: train_loss -0.1234 
2025-01-01 10:00:05.000001: val_loss -0.2 
2025-01-01 10:00:05.000002: Pseudo dice [np.float32(0.5), np.float32(0.25)] 
2025-01-01 10:00:05.000003: Epoch time: 4.1 s 
2025-01-01 10:00:05.000004: Yayy! New best EMA pseudo Dice: 0.375 
2025-01-01 10:00:06.000000: 
2025-01-01 10:00:06.000001: Epoch 1 
2025-01-01 10:00:06.000002: Current learning rate: 0.00536 
2025-01-01 10:00:09.000000: train_loss -0.3 
2025-01-01 10:00:09.000001: val_loss nan 
2025-01-01 10:00:09.000002: Pseudo dice [0.6, nan] 
2025-01-01 10:00:09.000003: Epoch time: 3.0 s 
"""


@pytest.fixture
def run_dir(tmp_path):
    """Three set-ups x two seeds of evaluations, a comparison.json and training logs."""
    setups = ["baseline", "dual", "selective-ln"]
    evaluations = {}
    for si, setup in enumerate(setups):
        evaluations[setup] = {}
        for seed in (0, 1):
            rows, lesions = [], []
            for c in range(4):
                case = f"case_{c:03d}"
                rows.append(case_row(case, "GTVp", 0.6 + 0.05 * c + 0.01 * si, shift=0.1 * si))
                # one GTVn case with both masks empty (NaN DSC), one with an integer label name
                dsc_n = float("nan") if c == 3 else 0.4 + 0.1 * c + 0.02 * si + 0.01 * seed
                rows.append(case_row(case, "GTVn", dsc_n, shift=-0.1 * si))
                lesions += lesion_rows(case, "GTVn")
                lesions += lesion_rows(case, "GTVp", detected_volumes=(12.0,), missed_volumes=())
            summary = {"GTVp": {"dscagg": 0.81 + 0.01 * si}, "GTVn": {"dscagg": 0.71 + 0.01 * si},
                       "dscagg_mean": 0.76, "settings": {"tolerance_mm": [2.0], "connectivity": 26}}
            evaluations[setup][seed] = write_evaluation(
                tmp_path / "eval" / setup / f"seed{seed}", rows, lesions, summary)
    comparison = {
        "runs": setups, "run_dirs": [str(tmp_path / s) for s in setups],
        "settings": {"n_boot": 2000, "zero_method": "wilcox"}, "n_cases": 4,
        "rows": [
            {"label": "GTVn", "metric": "dscagg", "kind": "cohort",
             "values": {"baseline": 0.7123, "dual": 0.7456, "selective-ln": 0.7301},
             "diff": {"baseline": None, "dual": 0.0333, "selective-ln": 0.0178},
             "ci_low": {"baseline": None, "dual": -0.0125, "selective-ln": -0.0411},
             "ci_high": {"baseline": None, "dual": 0.0789, "selective-ln": 0.0654},
             "p": {"baseline": None, "dual": None, "selective-ln": None},
             "p_holm": {"baseline": None, "dual": None, "selective-ln": None},
             "n_pairs": {"baseline": 8, "dual": 8, "selective-ln": 8}},
            {"label": "GTVp", "metric": "hd95_mean", "kind": "per_case",
             "values": {"baseline": 4.5678, "dual": 3.2109, "selective-ln": float("nan")},
             "diff": {"baseline": None, "dual": -1.3569, "selective-ln": None},
             "ci_low": {"baseline": None, "dual": None, "selective-ln": None},
             "ci_high": {"baseline": None, "dual": None, "selective-ln": None},
             "p": {"baseline": None, "dual": 0.0312, "selective-ln": 0.00042},
             "p_holm": {"baseline": None, "dual": 0.0936, "selective-ln": 0.00126},
             "n_pairs": {"baseline": 8, "dual": 8, "selective-ln": 7}},
        ],
    }
    logs = {}
    for setup in setups:
        p = tmp_path / "train" / setup / "fold_0" / "training_log_2025_1_1_10_00_00.txt"
        p.parent.mkdir(parents=True)
        p.write_text(TRAINING_LOG)
        logs[setup] = [("fold 0, seed 0", p)]
    return {"tmp": tmp_path, "setups": setups, "evaluations": evaluations, "comparison": comparison,
            "logs": logs}


@pytest.fixture
def fakes():
    """The writers above, for tests that build their own folders (conftest is not importable)."""
    from types import SimpleNamespace

    return SimpleNamespace(write_evaluation=write_evaluation, case_row=case_row, lesion_rows=lesion_rows,
                           training_log=TRAINING_LOG)
