"""FROC comparison at matched operating points: hand-worked curves, counts.npz, pairing, CLI, report."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from vadice.io import InputError
from vadice.metrics.froc import FrocCounts
from vadice.metrics.froc_compare import compare_froc, pool_seeds, restrict_to_size, size_bins_below
from vadice.metrics.froc_io import load_froc_counts, save_froc_counts

BINS = (0.5, 1.0, 5.0, 10.0)


def counts(tp, fp, n_gt, thresholds=(0.3, 0.5, 0.7), small=None):
    """One seed's FrocCounts from (T, n) tp/fp lists; a component per detected lesion (n_pred = tp + fp).

    ``small``: (n,) truth lesions per patient in bin 0 (< 0.5 ml), detected at every threshold as far as tp
    allows; the rest fall in bin 2 (1-5 ml).
    """
    tp, fp, n_gt = (np.asarray(x, np.int64) for x in (tp, fp, n_gt))
    small = np.zeros_like(n_gt) if small is None else np.asarray(small, np.int64)
    n_gt_bin = np.zeros((5, n_gt.size), np.int64)
    n_gt_bin[0], n_gt_bin[2] = small, n_gt - small
    tp_bin = np.zeros((5,) + tp.shape, np.int64)
    tp_bin[0] = np.minimum(tp, small)
    tp_bin[2] = tp - tp_bin[0]
    return FrocCounts(np.asarray(thresholds, np.float64), tuple(f"p{i}" for i in range(n_gt.size)), n_gt.size,
                      n_gt, tp, fp, tp + fp, BINS, n_gt_bin, tp_bin)


# Reference A: 4 lesions on 2 patients. t=0.3: 3 found, 4 FP; t=0.5: 2 found, 1 FP; t=0.7: 1 found, 0 FP.
A = counts(tp=[[2, 1], [1, 1], [1, 0]], fp=[[2, 2], [1, 0], [0, 0]], n_gt=[2, 2], small=[1, 1])
# B finds more at every threshold, with more FP. t=0.3: 4 / 8 FP; t=0.5: 3 / 3 FP; t=0.7: 2 / 1 FP.
B = counts(tp=[[2, 2], [2, 1], [1, 1]], fp=[[4, 4], [2, 1], [1, 0]], n_gt=[2, 2], small=[1, 1])


def test_cpm_delta_and_matched_operating_points_by_hand():
    result = compare_froc({"A": [A], "B": [B]}, "A", "GTVn", n_boot=200, size_bin=None)
    blocks = result["views"]["all"]
    # A's vertices (0,0) (0,1/4) (1/2,1/2) (2,3/4); read at 1/8 .. 8 FP per patient:
    cpm_a = (0.25 + 0.25 * 0.125 / 0.5 + 0.25 + 0.25 * 0.25 / 0.5 + 0.5 + 0.5 + 0.25 * 0.5 / 1.5 + 3 * 0.75) / 7
    # B's vertices (0,0) (1/2,1/2) (3/2,3/4) (4,1):
    cpm_b = (0.125 + 0.25 + 0.5 + 0.5 + 0.25 * 0.5 + 0.75 + 0.25 * 0.5 / 2.5 + 1 + 1) / 7
    assert blocks["A"]["pooled"]["cpm"] == pytest.approx(cpm_a)
    assert blocks["B"]["pooled"]["cpm"] == pytest.approx(cpm_b)
    assert blocks["B"]["delta_cpm"]["diff"] == pytest.approx(cpm_b - cpm_a) and cpm_b > cpm_a
    assert blocks["A"]["delta_cpm"] is None
    # Own points at t = 0.5: A 2/4 found, 1/2 FP per patient, precision 2/3; B 3/4, 3/2, 3/6.
    assert blocks["A"]["operating_point"] == pytest.approx(
        {"threshold": 0.5, "sensitivity": 0.5, "fp_per_patient": 0.5, "precision": 2 / 3})
    assert blocks["B"]["operating_point"] == pytest.approx(
        {"threshold": 0.5, "sensitivity": 0.75, "fp_per_patient": 1.5, "precision": 0.5})
    # B at A's point: on B's curve at 1/2 FP -> 1/2; B's thresholds with sensitivity >= 1/2 are all three,
    # precisions 4/12, 3/6, 2/3: the best is 2/3 at t = 0.7.
    assert blocks["B"]["at_reference_point"] == pytest.approx(
        {"sensitivity_at_fp": 0.5, "precision_at_sensitivity": 2 / 3, "threshold": 0.7})
    # A at B's point: A's curve at 3/2 FP, between (1/2, 1/2) and (2, 3/4) -> 1/2 + 1/4 * 1/1.5; only t = 0.3
    # reaches 3/4, precision 3/7.
    assert blocks["B"]["reference_at_this_point"] == pytest.approx(
        {"sensitivity_at_fp": 0.5 + 0.25 / 1.5, "precision_at_sensitivity": 3 / 7, "threshold": 0.3})


def test_matched_precision_is_nan_when_the_sensitivity_is_never_reached():
    weak = counts(tp=[[1, 0], [0, 0], [0, 0]], fp=[[0, 0], [0, 0], [0, 0]], n_gt=[2, 2])
    blocks = compare_froc({"A": [A], "weak": [weak]}, "A", "GTVn", n_boot=50, size_bin=None)["views"]["all"]
    assert np.isnan(blocks["weak"]["at_reference_point"]["precision_at_sensitivity"])  # 1/4 < A's 1/2


def test_size_view_counts_only_small_truth_lesions():
    assert size_bins_below(BINS, "<1 ml").tolist() == [True, True, False, False, False]
    assert size_bins_below(BINS, "1-10").tolist() == [False, False, True, True, False]
    assert size_bins_below(BINS, ">=10 ml").tolist() == [False, False, False, False, True]
    with pytest.raises(ValueError, match="edges"):
        size_bins_below(BINS, "<0.7 ml")
    small = restrict_to_size(A, "<1 ml")
    assert small.n_gt.tolist() == [1, 1] and small.tp.tolist() == [[1, 1], [1, 1], [1, 0]]
    assert np.array_equal(small.fp, A.fp)
    result = compare_froc({"A": [A], "B": [B]}, "A", "GTVn", n_boot=50)
    a_small = result["views"]["<1 ml"]["A"]["pooled"]
    # Small lesions: 2/2 found at t=0.3 and 0.5, 1/2 at 0.7; FP as for all lesions.
    assert a_small["sensitivity"] == [1.0, 1.0, 0.5] and a_small["fp_per_patient"] == [2.0, 0.5, 0.0]


def test_pool_seeds_matches_the_bootstrap_statistic_pooling():
    pooled = pool_seeds([A, B])
    assert len(pooled.patients) == 4 and pooled.tp.sum() == A.tp.sum() + B.tp.sum()
    result = compare_froc({"AB": [A, B], "A2": [A, A]}, "AB", "GTVn", n_boot=50, size_bin=None)
    curve = result["views"]["all"]["AB"]["pooled"]
    # t = 0.5: (2 + 3) found of 8, (1 + 3) FP over 2 seeds x 2 patients.
    assert curve["sensitivity"][1] == pytest.approx(5 / 8) and curve["fp_per_patient"][1] == pytest.approx(1.0)
    band = curve["band"]
    assert all(lo <= s + 1e-12 and s <= hi + 1e-12
               for lo, s, hi in zip(band["low"], band["sensitivity"], band["high"]))


def _twins(gain: int):
    """Three seeds far apart (their sensitivities differ by 20 lesions of 40); B = A's seed k + ``gain``."""
    rng = np.random.default_rng(3)
    n = 20
    a, b = [], []
    for k in range(3):
        found = np.minimum(2, rng.integers(0, 2, n) + (k == 2)) if k else np.zeros(n, np.int64)
        fp = rng.integers(0, 2, n)
        extra = np.zeros(n, np.int64)
        extra[np.flatnonzero(found < 2)[:gain]] = 1
        tp_a = np.stack([found, found])
        a.append(counts(tp=tp_a, fp=np.stack([fp, fp]), n_gt=np.full(n, 2), thresholds=(0.5, 0.7)))
        b.append(counts(tp=tp_a + extra, fp=np.stack([fp, fp]), n_gt=np.full(n, 2), thresholds=(0.5, 0.7)))
    return a, b


def test_paired_bootstrap_resamples_twin_seeds_together():
    a, b = _twins(gain=3)
    paired = compare_froc({"a": a, "b": b}, "a", "GTVn", paired=True, n_boot=400, size_bin=None)
    unpaired = compare_froc({"a": a, "b": b}, "a", "GTVn", paired=False, n_boot=400, size_bin=None)
    dp = paired["views"]["all"]["b"]["delta_cpm"]
    du = unpaired["views"]["all"]["b"]["delta_cpm"]
    # Every twin gains 3 of 40 lesions: Δ > 0 in each seed; resampled together the seed spread cancels.
    assert all(d > 0 for d in dp["seed_diffs"]) and dp["low"] > 0 and dp["verdict"] == "consistent"
    # Drawn apart, the seeds' spread (0 to ~1/2 sensitivity) swamps the gain.
    assert du["low"] < 0 < du["high"]
    assert paired["settings"]["ties"] == "neutral" and unpaired["settings"]["ties"] == "against"
    with pytest.raises(ValueError, match="same number of seeds"):
        compare_froc({"a": a, "b": b[:2]}, "a", "GTVn", paired=True, n_boot=10)


def test_refusals():
    with pytest.raises(ValueError, match="not on the threshold grid"):
        compare_froc({"A": [A], "B": [B]}, "A", "GTVn", operating_threshold=0.4, n_boot=10)
    with pytest.raises(ValueError, match="reference"):
        compare_froc({"A": [A], "B": [B]}, "C", "GTVn", n_boot=10)
    other = counts(tp=[[1]], fp=[[0]], n_gt=[1], thresholds=(0.5,))
    with pytest.raises(ValueError, match="threshold grids"):
        compare_froc({"A": [A], "B": [other]}, "A", "GTVn", n_boot=10)


def test_counts_round_trip_through_counts_npz(tmp_path):
    save_froc_counts(tmp_path / "counts.npz", {"GTVp": A, "GTVn": B})
    back = load_froc_counts(tmp_path)
    assert list(back) == ["GTVp", "GTVn"]
    for name, c in (("GTVp", A), ("GTVn", B)):
        for f in FrocCounts.__dataclass_fields__:
            x, y = getattr(back[name], f), getattr(c, f)
            assert (x == y if isinstance(y, (tuple, int)) else np.array_equal(x, y)), f


def test_load_froc_counts_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        load_froc_counts(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(InputError, match="run vadice froc again"):
        load_froc_counts(tmp_path)
    np.savez(tmp_path / "counts.npz", x=np.zeros(2))
    with pytest.raises(InputError, match="not a 'vadice froc counts"):
        load_froc_counts(tmp_path)
    save_froc_counts(tmp_path / "counts.npz", {"GTVn": A})
    with np.load(tmp_path / "counts.npz") as npz:
        arrays = dict(npz)
    arrays["GTVn__tp"] = arrays["GTVn__tp"][:, :1]
    np.savez(tmp_path / "counts.npz", **arrays)
    with pytest.raises(InputError, match=r"GTVn__tp must be integers of shape \(3, 2\)"):
        load_froc_counts(tmp_path)
    del arrays["GTVn__fp"]
    np.savez(tmp_path / "counts.npz", **arrays)
    with pytest.raises(InputError, match="missing array.*GTVn__fp"):
        load_froc_counts(tmp_path)


def _folders(tmp_path):
    a, b = _twins(gain=3)
    runs = {}
    for name, seeds in (("base", a), ("dual", b)):
        runs[name] = []
        for k, c in enumerate(seeds):
            d = tmp_path / "froc" / name / f"seed_{k}"
            d.mkdir(parents=True)
            save_froc_counts(d / "counts.npz", {"GTVp": A, "GTVn": c})
            runs[name].append(str(d))
    return runs


def test_cli_froc_compare_writes_json_and_markdown(tmp_path, capsys):
    from vadice.cli import main

    runs = _folders(tmp_path)
    out = tmp_path / "cmp"
    rc = main(["-q", "froc-compare", ",".join(runs["base"]), ",".join(runs["dual"]), "--names", "base,dual",
               "--paired", "--n-boot", "200", "--size-bin", "none", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "froc_comparison.json").read_text())
    direct = compare_froc(runs, "base", "GTVn", paired=True, n_boot=200, size_bin=None)
    assert result["views"]["all"]["dual"]["delta_cpm"]["diff"] == pytest.approx(
        direct["views"]["all"]["dual"]["delta_cpm"]["diff"])
    md = (out / "froc_comparison.md").read_text()
    assert "consistent" in md and "paired" in md and "dual" in md
    assert main(["-q", "froc-compare", runs["base"][0], runs["dual"][0], "--names", "x,y", "--label", "GTVx",
                 "--out", str(tmp_path / "c2")]) == 2
    assert "no label 'GTVx'" in capsys.readouterr().err


def test_cli_help_example_parses():
    from vadice.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["froc-compare"]
    example = [line.strip() for line in sub.epilog.splitlines() if line.strip().startswith("vadice ")]
    assert example
    for line in example:
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.func.__name__ == "run_froc_compare" and args.paired is True and len(args.runs) == 2


def test_report_renders_the_froc_section_only_when_given(tmp_path):
    from vadice.report import ReportInputs, write_report

    result = compare_froc({"A": [A], "B": [B]}, "A", "GTVn", n_boot=50)
    with_froc = write_report(ReportInputs(title="t", froc_comparison=result), tmp_path / "a.html").read_text()
    section = with_froc[with_froc.index('<section id="froc">'):with_froc.index('<section id="training">')]
    assert "data:image/png;base64," in section and "&lt;1 ml" in section and "at A's point" in section
    assert f"{result['views']['all']['B']['pooled']['cpm']:.3f}"[:4] in section
    without = write_report(ReportInputs(title="t"), tmp_path / "b.html").read_text()
    section = without[without.index('<section id="froc">'):without.index('<section id="training">')]
    assert "No FROC comparison given" in section and "<img" not in section


def test_froc_figure_draws_a_panel_per_view_and_says_when_empty():
    from vadice.report.plots import froc_png, no_data_png

    png = froc_png(compare_froc({"A": [A], "B": [B]}, "A", "GTVn", n_boot=50))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width = int.from_bytes(png[16:20], "big")
    one_view = froc_png(compare_froc({"A": [A], "B": [B]}, "A", "GTVn", n_boot=50, size_bin=None))
    assert width > int.from_bytes(one_view[16:20], "big")  # two panels are wider than one
    assert froc_png({}) == no_data_png("FROC", "no FROC comparison")
