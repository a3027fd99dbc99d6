from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest

from vadice.io import InputError
from vadice.report import SECTIONS, ReportInputs, best_and_worst_cases, overlay_png, write_report
from vadice.report.html import read_cases

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CPU_NOTE = "CPU preset cpu-small: a CPU-minute training illustrates the pipeline, not the method"


class _Collector(HTMLParser):
    """Every resource reference, every section id and heading, and the text of the page."""

    def __init__(self):
        super().__init__()
        self.refs, self.sections, self.h2, self.scripts, self.text = [], [], [], [], []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href", "srcset", "data", "poster", "action"):
            if key in attrs:
                self.refs.append((tag, key, attrs[key]))
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "script":
            self.scripts.append(attrs)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.h2.append(data.strip())


def _inputs(run_dir, overlays=(), **kw):
    base = dict(
        title="vadice test report",
        settings={"dataset": "Dataset501_Synth", "preset": "cpu-small", "folds": [0], "seeds": [0, 1]},
        notes=[CPU_NOTE],
        comparison=run_dir["comparison"],
        evaluations=run_dir["evaluations"],
        training_logs=run_dir["logs"],
        overlays=list(overlays),
        seed_spread={"GTVn": {"dscagg": {"dual": {"min": 0.7311, "max": 0.7599, "sd": 0.0144, "n_seeds": 2}}}},
        manifest={"git_commit": "abc1234def", "versions": {"vadice": "0.1.0", "nnunetv2": "2.8.1"},
                  "device": "cpu", "plans_sha256": "feedbeef"},
    )
    base.update(kw)
    return ReportInputs(**base)


def _overlay(tmp_path):
    import numpy as np

    labels = np.zeros((4, 10, 10), np.uint8)
    labels[2, 3:6, 3:6] = 2
    return overlay_png(np.random.default_rng(0).normal(size=(4, 10, 10)), labels, (2, 1, 1),
                       tmp_path / "ov" / "case_000.png", title="case_000")


def test_report_is_self_contained_and_complete(run_dir):
    tmp = run_dir["tmp"]
    ov = _overlay(tmp)
    out = write_report(_inputs(run_dir, overlays=[("best GTVn: case_000 (DSC 0.70)", ov)]), tmp / "r" / "report.html")
    assert out == tmp / "r" / "report.html" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # atomic: no leftovers
    html = out.read_text(encoding="utf-8")
    page = _Collector()
    page.feed(html)

    # Self-contained: no scripts, every resource is embedded or an in-page anchor.
    assert not page.scripts
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "@import" not in html and "url(" not in html
    images = [v for tag, key, v in page.refs if tag == "img"]
    assert len(images) >= 8  # 4 metrics + size + precision/sensitivity + training + 1 overlay
    for tag, key, value in page.refs:
        if tag == "img":
            assert value.startswith("data:image/png;base64,")
            assert base64.b64decode(value.split(",", 1)[1]).startswith(PNG_SIGNATURE)
        else:
            assert value.startswith("#"), (tag, key, value)
    # The overlay file itself is embedded byte for byte.
    assert "data:image/png;base64," + base64.b64encode(ov.read_bytes()).decode() in html

    # Every section, with its id and heading.
    assert page.sections == [sid for sid, _ in SECTIONS]
    assert page.h2 == [heading for _, heading in SECTIONS]
    for heading in ("Settings", "Comparison table", "Per-case distributions", "Sensitivity by lesion size",
                    "Precision and sensitivity per label", "Training curves", "Best and worst cases", "Notes"):
        assert heading in page.h2

    text = " ".join(page.text)
    # Comparison numbers: values, differences, CI, p, Holm p, pairs, and the seed spread.
    for s in ("0.712", "0.746", "0.730", "+0.033", "+0.018", "[-0.013, +0.079]", "4.57", "3.21", "-1.36",
              "0.031", "0.094", "< 0.001", "SD 0.014", "0.731–0.760", "2 seeds"):
        assert s in text, s
    # p values are rounded to what the data support; the Holm-significant one is flagged.
    assert "0.00126" not in text
    assert 'class="num sig">0.0013<' in html
    assert html.count('class="num sig"') == 1
    # Settings, manifest, notes.
    for s in ("Dataset501_Synth", "cpu-small", "abc1234def", "2.8.1", CPU_NOTE, "HNTS-MRG", "Holm"):
        assert s in text, s
    # Lesion-size counts pooled over two seeds: per case GTVn truth lesions 0.3 (hit), 0.7 (miss), 2.0 (hit).
    assert "8/8" in text and "0/8" in text
    # Pooled lesion sensitivity from cases.csv counts: 1 of 2 per case, 8 cases x 2 seeds.
    assert "0.500 (8/16)" in text
    # Per-set-up summary prefers summary.json's DSCagg.
    assert "0.810" in text and "0.730" in text
    # Training table read the log.
    assert "-0.300" in text


def test_report_without_comparison_or_extras(tmp_path, fakes):
    ev = fakes.write_evaluation(tmp_path / "eval", [fakes.case_row("c1", "2", 0.5), fakes.case_row("c2", 2, 0.7)])
    out = write_report(ReportInputs(title="single", evaluations={"mine": {0: ev}}), tmp_path / "report.html")
    html = out.read_text()
    for sid, heading in SECTIONS:
        assert f'id="{sid}"' in html and f"<h2>{heading}</h2>" in html
    assert "No comparison given" in html
    assert "GTVn" in html  # integer label mapped to its name
    # DSCagg computed from volumes when summary.json is absent: 2*8/(10+9) for both cases.
    assert f"{2 * 16 / 38:.3f}" in html
    assert "no lesions.csv" in html


def test_report_with_nothing_at_all(tmp_path):
    out = write_report(ReportInputs(title="empty"), tmp_path / "report.html")
    html = out.read_text()
    assert all(f"<h2>{h}</h2>" in html for _, h in SECTIONS)
    page = _Collector()
    page.feed(html)
    # distributions, size, precision/sensitivity and training each show a placeholder figure
    assert len([r for r in page.refs if r[0] == "img"]) == 4
    assert "No comparison given" in html and "No overlays given" in html


def test_report_escapes_html(tmp_path, fakes):
    ev = fakes.write_evaluation(tmp_path / "eval", [fakes.case_row("<b>c1</b>", "GTVp", 0.5)])
    out = write_report(ReportInputs(title="<script>alert(1)</script>", notes=["a < b & c"],
                                    evaluations={"x": {0: ev}}), tmp_path / "report.html")
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "a &lt; b &amp; c" in html


def test_report_bad_inputs_write_nothing(tmp_path, fakes):
    out = tmp_path / "report.html"
    with pytest.raises(InputError, match="evaluation folder not found"):
        write_report(ReportInputs(title="x", evaluations={"a": {0: tmp_path / "nope"}}), out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cases.csv").write_text("case,dsc\nc1,0.5\n")
    with pytest.raises(InputError, match=r"cases\.csv: missing column\(s\) label"):
        write_report(ReportInputs(title="x", evaluations={"a": {0: bad}}), out)
    (bad / "cases.csv").write_text("case,label,dsc\nc1,GTVp,zero\n")
    with pytest.raises(InputError, match="line 2: column 'dsc' is not a number"):
        write_report(ReportInputs(title="x", evaluations={"a": {0: bad}}), out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad"]
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(InputError, match="directory"):
        write_report(ReportInputs(title="x"), tmp_path / "dir.html")


def test_missing_overlay_and_log_are_reported_not_fatal(run_dir):
    tmp = run_dir["tmp"]
    logs = {"baseline": [("fold 0, seed 0", tmp / "missing_log.txt")]}
    not_png = tmp / "fake.png"
    not_png.write_text("hello")
    out = write_report(_inputs(run_dir, overlays=[("gone", tmp / "gone.png"), ("fake", not_png)],
                               training_logs=logs), tmp / "report.html")
    html = out.read_text()
    assert "gone.png: not found" in html and "fake.png: not a PNG file" in html
    assert "missing_log.txt not found" in html


def test_best_and_worst_cases(run_dir, fakes, tmp_path):
    ev = run_dir["evaluations"]["baseline"][0]
    best, worst = best_and_worst_cases(ev, "GTVn", k=1)
    # GTVn DSC per case: 0.40, 0.50, 0.60, NaN (case_003 ignored).
    assert best == [("case_002", pytest.approx(0.6))]
    assert worst == [("case_000", pytest.approx(0.4))]
    best2, worst2 = best_and_worst_cases(ev, 2, k=2)  # integer label works too
    assert [c for c, _ in best2] == ["case_002", "case_001"]
    # Only 3 finite cases < 2k: the lists may share a case rather than come up short.
    assert [c for c, _ in worst2] == ["case_000", "case_001"]
    assert len(best_and_worst_cases(ev, "GTVp", k=2)[1]) == 2

    rows = [fakes.case_row("b", "GTVp", 0.5), fakes.case_row("a", "GTVp", 0.5), fakes.case_row("c", "GTVp", 0.9)]
    tie = fakes.write_evaluation(tmp_path / "tie", rows)
    assert best_and_worst_cases(tie, "GTVp")[1] == [("a", 0.5)]  # ties broken by name
    same = fakes.write_evaluation(tmp_path / "same", [fakes.case_row("x", "GTVn", 0.5),
                                                      fakes.case_row("y", "GTVn", 0.5)])
    assert best_and_worst_cases(same, "GTVn") == ([("x", 0.5)], [("y", 0.5)])  # disjoint when possible
    with pytest.raises(InputError, match="no rows for label 'GTVn'"):
        best_and_worst_cases(tie, "GTVn")
    with pytest.raises(ValueError):
        best_and_worst_cases(tie, "GTVp", k=0)


def test_read_cases_nan_and_labels(tmp_path, fakes):
    ev = fakes.write_evaluation(tmp_path / "e", [fakes.case_row("c", 1, float("nan"))])
    (row,) = read_cases(ev)
    assert row["label"] == "GTVp" and row["dsc"] != row["dsc"]
