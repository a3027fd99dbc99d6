"""The package's floors: a module imports only from its own floor or the floors below it.

The README's layout sentence names the same floors in the same order (checked here too), so the sentence a
newcomer reads is the one the imports obey.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vadice"
README = Path(__file__).resolve().parents[1] / "README.md"

# Top-level modules and packages of src/vadice, floor by floor (lowest first).
FLOORS = (
    ("io", "lesions", "registry", "stats", "provenance"),
    ("data", "losses", "dicom", "overlay", "metrics"),
    ("nnunet", "postprocess"),
    ("predict", "report"),
    ("experiment", "testset", "experiment_report"),
    ("models", "demo", "sharing"),
    ("cli",),
)
FLOOR = {name: k for k, names in enumerate(FLOORS) for name in names}
UNLAYERED = {"__init__", "__main__"}  # the version string (imported by anyone) and `python -m vadice`


def top_module(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def vadice_imports(path: Path) -> set[str]:
    """Top-level vadice modules that ``path`` imports (``from vadice import x`` counts as module ``x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "vadice":
                continue
            out.update(parts[1:2] or [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("vadice."))
    return out - {"__version__"}


def test_every_module_has_a_floor():
    names = {top_module(p) for p in SRC.rglob("*.py")} - UNLAYERED
    assert names - set(FLOOR) == set(), "give new top-level modules a floor in FLOORS"
    assert set(FLOOR) - names == set(), "FLOORS names a module that does not exist"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_goes_up_a_floor(path):
    here = top_module(path)
    if here in UNLAYERED:
        return
    up = sorted(m for m in vadice_imports(path) if m in FLOOR and FLOOR[m] > FLOOR[here])
    assert not up, f"{path.relative_to(SRC)} (floor {FLOOR[here]}) imports {up} from a higher floor"


def test_readme_layout_sentence_lists_the_floors_in_order():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    first = {}
    for m in re.finditer(r"`([a-z_.]+)`", section):
        first.setdefault(m.group(1).split(".")[0], m.start())
    missing = [name for name in FLOOR if name not in first]
    assert not missing, f"README layout does not name {missing}"
    for low, high in zip(FLOORS, FLOORS[1:]):
        assert max(first[n] for n in low) < min(first[n] for n in high), f"README names {high} before {low}"


def test_the_checks_see_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from vadice.report.html import write_report\nimport vadice.cli.main\nfrom vadice import stats\n")
    assert vadice_imports(bad) == {"report", "cli", "stats"}
