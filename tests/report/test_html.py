from __future__ import annotations

import base64
import csv
import re
from html.parser import HTMLParser

import pytest

from vadice.io import InputError
from vadice.metrics.compare import compare_runs
from vadice.report.comparison import compare_folders
from vadice.io import json_clean
from vadice.report import SECTIONS, ReportInputs, best_and_worst_cases, overlay_png, write_report

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


def _csv_rows(folder, name):
    with open(folder / name, newline="") as fh:
        return list(csv.DictReader(fh))


def _section(html, sid):
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def test_report_is_self_contained_and_leads_with_the_answer(run_dir):
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
    assert len(images) >= 9  # forest + 4 metrics + size + precision/sensitivity + training + 1 overlay
    for tag, key, value in page.refs:
        if tag == "img":
            assert value.startswith("data:image/png;base64,")
            assert base64.b64decode(value.split(",", 1)[1]).startswith(PNG_SIGNATURE)
        else:
            assert value.startswith("#"), (tag, key, value)
    assert "data:image/png;base64," + base64.b64encode(ov.read_bytes()).decode() in html

    # The answer first, settings and manifest last.
    assert page.sections == [sid for sid, _ in SECTIONS]
    assert page.h2 == [heading for _, heading in SECTIONS]
    assert page.sections[0] == "answer" and page.sections[-1] == "settings"
    answer = _section(html, "answer")
    assert "consistent</b> only when its CI excludes 0 <i>and</i> every seed" in answer
    # Pooled DSCagg of GTVn over both seeds, recomputed from cases.csv with the csv module.
    values = {}
    for setup, per in run_dir["evaluations"].items():
        rows = [r for seed in per for r in _csv_rows(per[seed], "cases.csv") if r["label"] == "GTVn"]
        values[setup] = (2 * sum(float(r["intersection_ml"]) for r in rows)
                         / sum(float(r["gt_volume_ml"]) + float(r["pred_volume_ml"]) for r in rows))
        assert f">{values[setup]:.3f}<" in answer
    assert f"{values['dual'] - values['baseline']:+.3f}" in answer
    verdicts = [v for r in run_dir["comparison"]["rows"] for k, v in r["verdict"].items() if v]
    assert any(v in answer for v in verdicts)
    for s in ("Dataset501_Synth", "cpu-small", "abc1234def", "2.8.1"):
        assert s in _section(html, "settings") and s not in answer
    assert CPU_NOTE in html[:html.index('<section id="answer">')]

    # Size bins pooled over seeds: every GTVn truth lesion here is < 0.5 ml (6 per seed).
    size = _section(html, "lesion-size")
    les = [r for seed in (0, 1) for r in _csv_rows(run_dir["evaluations"]["baseline"][seed], "lesions.csv")
           if r["label"] == "GTVn" and r["source"] == "gt" and float(r["volume_ml"]) < 0.5]
    cell = f"{sum(int(r['detected']) for r in les)}/{len(les)}"
    assert f"<td>GTVn</td><td>baseline</td><td class=\"num\">{cell}</td>" in size and len(les) == 12
    assert "truth lesions &lt;0.5 ml: detected/total" in size
    # Precision/sensitivity pooled counts from cases.csv.
    cases = [r for seed in (0, 1) for r in _csv_rows(run_dir["evaluations"]["dual"][seed], "cases.csv")
             if r["label"] == "GTVn"]
    det, tot = sum(int(r["n_gt_detected"]) for r in cases), sum(int(r["n_gt_lesions"]) for r in cases)
    assert f"({det}/{tot})" in _section(html, "precision-sensitivity")
    # Training curves name the loss each set-up trains with.
    training = _section(html, "training")
    assert "baseline: Dice + cross-entropy" in training and "dual: VA Dice + cross-entropy" in training
    assert "-0.300" in training
    # Inputs: missing and resampled predictions are shown (none here).
    assert "missing predictions" in _section(html, "inputs")


def test_comparison_table_shows_undefined_counts_and_seed_diffs(run_dir):
    out = write_report(_inputs(run_dir), run_dir["tmp"] / "report.html")
    table = _section(out.read_text(), "comparison")
    row = next(r for r in run_dir["comparison"]["rows"] if r["label"] == "GTVn" and r["metric"] == "hd95")
    assert f"{row['n_undefined']['dual']} of {row['n_values']['dual']}" in table
    sd = row["seed_diffs"]["dual"]
    assert ", ".join(f"{x:+.2f}" for x in sd) in table
    assert "Wilcoxon signed-rank" in table and "pseudo-replication" not in table


def test_empty_predictions_warn_at_the_top(tmp_path, fakes):
    evals = fakes.write_cohort(tmp_path, ("baseline", "dual"), seeds=(0,), drop_nodes=lambda s, seed, c: s == "dual")
    comparison = compare_runs([evals["baseline"][0], evals["dual"][0]], ["baseline", "dual"], n_boot=20)
    out = write_report(ReportInputs(title="t", comparison=json_clean(comparison), evaluations=evals),
                       tmp_path / "report.html")
    html = out.read_text()
    top = html[:html.index('<section id="answer">')]
    assert 'class="alert"' in top and "dual predicts no GTVn on 4 of 4" in top
    assert "One seed per run" in top


def test_report_without_comparison_or_extras(tmp_path, fakes):
    evals = fakes.write_cohort(tmp_path, ("mine",), seeds=(0,))
    out = write_report(ReportInputs(title="single", evaluations=evals), tmp_path / "report.html")
    html = out.read_text()
    for sid, heading in SECTIONS:
        assert f'id="{sid}"' in html and f"<h2>{heading}</h2>" in html
    assert "No comparison given" in html and "GTVn" in html


def test_report_with_nothing_at_all(tmp_path):
    out = write_report(ReportInputs(title="empty"), tmp_path / "report.html")
    html = out.read_text()
    assert all(f"<h2>{h}</h2>" in html for _, h in SECTIONS)
    page = _Collector()
    page.feed(html)
    # 4 distributions, size, precision/sensitivity and training: each a placeholder figure (no forest)
    assert len([r for r in page.refs if r[0] == "img"]) == 7
    assert "No comparison given" in html and "No overlays given" in html


def test_report_escapes_html(tmp_path, fakes):
    evals = fakes.write_cohort(tmp_path, ("<b>x</b>",), seeds=(0,))
    out = write_report(ReportInputs(title="<script>alert(1)</script>", notes=["a < b & c"], evaluations=evals),
                       tmp_path / "report.html")
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "a &lt; b &amp; c" in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_report_bad_inputs_write_nothing(tmp_path, fakes):
    out = tmp_path / "report.html"
    with pytest.raises(InputError, match="directory not found"):
        write_report(ReportInputs(title="x", evaluations={"a": {0: tmp_path / "nope"}}), out)
    evals = fakes.write_cohort(tmp_path / "c", ("a",), seeds=(0,), n_cases=1)
    folder = evals["a"][0]
    text = (folder / "cases.csv").read_text()
    (folder / "cases.csv").write_text(text.replace(",GTVp,", ",GTVp,zero,", 1).replace(",", ",", 1))
    with pytest.raises(InputError, match=r"cases\.csv: line 2: column 'dsc' is not a number"):
        write_report(ReportInputs(title="x", evaluations=evals), out)
    (folder / "cases.csv").write_text("case,dsc\nc1,0.5\n")
    with pytest.raises(InputError, match=r"cases\.csv: missing column\(s\)"):
        write_report(ReportInputs(title="x", evaluations=evals), out)
    assert not out.exists()
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


def test_best_and_worst_cases(run_dir):
    ev = run_dir["evaluations"]["dual"][0]
    rows = [r for r in _csv_rows(ev, "cases.csv") if r["label"] == "GTVn" and r["dsc"] != ""]
    ranked = sorted(((float(r["dsc"]), r["case"]) for r in rows), key=lambda t: (-t[0], t[1]))
    best, worst = best_and_worst_cases(ev, "GTVn", k=1)
    assert best == [(ranked[0][1], pytest.approx(ranked[0][0]))]
    assert worst[0][1] == pytest.approx(min(d for d, _ in ranked))
    assert best_and_worst_cases(ev, 2, k=1) == (best, worst)  # the label value works too
    with pytest.raises(InputError, match="no rows for label 'GTVx'"):
        best_and_worst_cases(ev, "GTVx")
    with pytest.raises(ValueError):
        best_and_worst_cases(ev, "GTVp", k=0)


def test_report_says_how_seeds_were_paired_and_warns_of_mixed_code(run_dir, tmp_path):
    import json

    setups, ev = run_dir["setups"], run_dir["evaluations"]
    groups = [[ev[s][seed] for seed in (0, 1)] for s in setups]
    compare_folders(groups, setups, tmp_path / "cmp_paired", n_boot=50, paired=True)
    paired = json.loads((tmp_path / "cmp_paired" / "comparison.json").read_text())
    mixed = {"unit_code_versions": {"aaaa": ["baseline__fold0__seed0"], "bbbb (dirty)": ["dual__fold0__seed0"]}}
    html = write_report(_inputs(run_dir, comparison=paired, manifest=mixed), tmp_path / "p.html").read_text()
    answer = _section(html, "answer")
    assert "one draw for both set-ups: seed k of each set-up are twins" in answer
    assert "<b>Seeds.</b> paired seeds: seed k of every run is the twin of seed k of the first" in answer
    assert re.search(r'class="alert">⚠ The units of this run trained on 2 code versions \(aaaa \(1 unit\); '
                     r'bbbb \(dirty\) \(1 unit\)\)', html)
    assert "aaaa (1 unit); bbbb (dirty) (1 unit)" in _section(html, "settings")

    plain = write_report(_inputs(run_dir), tmp_path / "u.html").read_text()  # the fixture's unpaired comparison
    assert "<b>Seeds.</b> unpaired seeds: no shared warm start recorded" in _section(plain, "answer")
    assert "then seeds (per set-up" in plain and "code versions" not in plain.split('<nav>')[0]
