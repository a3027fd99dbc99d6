from __future__ import annotations

import io
import math

import numpy as np
import pytest
from matplotlib.image import imread

from vadice.report import plots
from vadice.report.plots import (
    parse_training_log,
    precision_sensitivity_png,
    size_sensitivity_png,
    training_curves_png,
    paired_distribution_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def _png_shape(data: bytes) -> tuple[int, ...]:
    assert data.startswith(PNG_SIGNATURE)
    return imread(io.BytesIO(data), format="png").shape


def test_no_data_figures_for_empty_inputs():
    empty = plots.no_data_png("x")
    for data in (
        paired_distribution_png("dsc", {}),
        paired_distribution_png("dsc", {"GTVn": {"a": {}, "b": {}}}),
        size_sensitivity_png({}),
        size_sensitivity_png({"GTVn": {"a": [("<0.5 ml", 0, 0), (">=0.5 ml", 0, 0)]}}),
        plots.forest_png([("GTVn DSCagg", [("dual", NAN, NAN, NAN, [])])]),
        precision_sensitivity_png({"GTVn": {"a": []}}),
        training_curves_png({}),
        training_curves_png({"a": [("fold 0", plots.TrainingLog())]}),
    ):
        # A "no data" figure is the small fixed-size placeholder, not a crash or a full plot.
        assert _png_shape(data)[:2] == _png_shape(empty)[:2]


def test_all_nan_is_no_data():
    data = {"GTVp": {"a": {"c1": NAN, "c2": None}, "b": {"c1": NAN}}}
    assert _png_shape(paired_distribution_png("hd95", data))[:2] == _png_shape(plots.no_data_png("x"))[:2]
    ps = {"GTVn": {"a": [(NAN, 0.5), (0.5, NAN)]}}
    assert _png_shape(precision_sensitivity_png(ps))[:2] == _png_shape(plots.no_data_png("x"))[:2]


def test_paired_distribution_skips_nan_and_grows_with_labels():
    one = {"GTVn": {"a": {"c1": 0.5, "c2": NAN, "c3": 0.7}, "b": {"c1": 0.6, "c2": 0.2, "c4": 0.9}}}
    two = dict(one, GTVp={"a": {"c1": 0.8}, "b": {"c1": NAN}})
    w1 = _png_shape(paired_distribution_png("dsc", one))[1]
    w2 = _png_shape(paired_distribution_png("dsc", two))[1]
    assert w2 > w1  # one panel per label with finite data


def test_size_and_precision_plots_render():
    data = {"GTVn": {"a": [("<1 ml", 1, 1), (">=1 ml", 1, 2)], "b": [("<1 ml", 1, 1), (">=1 ml", 2, 2)]}}
    assert size_sensitivity_png(data).startswith(PNG_SIGNATURE)
    forest = plots.forest_png([("GTVn DSCagg", [("dual", 0.02, -0.01, 0.05, [0.01, 0.03])]),
                               ("GTVp DSCagg", [("dual", -0.01, -0.02, 0.0, [])])], baseline="baseline")
    assert _png_shape(forest)[:2] != _png_shape(plots.no_data_png("x"))[:2]
    ps = {"GTVp": {"a": [(0.8, 0.9)], "b": [(0.7, 0.6), (0.9, NAN), (0.75, 0.65)]}, "GTVn": {"a": [(0.5, 0.4)]}}
    assert precision_sensitivity_png(ps).startswith(PNG_SIGNATURE)


def test_parse_training_log_nnunet_v2_format(tmp_path, fakes):
    p = tmp_path / "training_log_2025_1_1_10_00_00.txt"
    p.write_text(fakes.training_log)
    log = parse_training_log(p)
    assert log.epochs == [0, 1]
    assert log.train_loss == [-0.1234, -0.3]
    assert log.val_loss[0] == -0.2 and math.isnan(log.val_loss[1])
    assert log.pseudo_dice[0] == [0.5, 0.25]
    assert log.pseudo_dice[1][0] == 0.6 and math.isnan(log.pseudo_dice[1][1])
    assert log.mean_pseudo_dice == [0.375, 0.6]
    assert log.learning_rate == [0.01, 0.00536]
    assert log.epoch_time_s == [4.1, 3.0]


def test_parse_training_log_resumed_and_old_format(tmp_path, fakes):
    first = tmp_path / "training_log_2025_1_1_10_00_00.txt"
    first.write_text(fakes.training_log)
    # A resumed run re-does epoch 1 and adds epoch 2; nnU-Net v1 wording and plain floats.
    second = tmp_path / "training_log_2025_1_2_09_00_00.txt"
    second.write_text(
        "2025-01-02 09:00:00.1: epoch:  1\n"
        "2025-01-02 09:00:01.2: train loss : -0.35\n"
        "2025-01-02 09:00:01.3: validation loss: -0.31\n"
        "2025-01-02 09:00:01.4: Average global foreground Dice: [0.62, 0.3]\n"
        "2025-01-02 09:00:02.0: Epoch 2\n"
        "2025-01-02 09:00:03.0: train_loss -4e-1\n"
    )
    log = parse_training_log([second, first])  # order given does not matter
    assert log.epochs == [0, 1, 2]
    assert log.train_loss == [-0.1234, -0.35, -0.4]
    assert log.val_loss[1] == -0.31
    assert log.pseudo_dice[1] == [0.62, 0.3]
    assert log.pseudo_dice[2] == [] and math.isnan(log.mean_pseudo_dice[2])


def test_parse_training_log_without_epochs(tmp_path):
    p = tmp_path / "training_log_x.txt"
    p.write_text("nothing useful\ntrain_loss -0.5 before any epoch\n")
    assert len(parse_training_log(p)) == 0


def test_training_curves_render(tmp_path, fakes):
    p = tmp_path / "training_log_1.txt"
    p.write_text(fakes.training_log)
    log = parse_training_log(p)
    data = training_curves_png({"baseline": [("fold 0, seed 0", log)], "dual": [("fold 0, seed 0", log)]})
    assert _png_shape(data)[1] > _png_shape(plots.no_data_png("x"))[1]
