"""Which code a run's units trained on: the git commit of vadice's checkout and whether it was edited.

Floor 1 (imports nothing of vadice): ``vadice experiment`` records :func:`code_version` in its manifest and
unit markers and refuses to continue on another (:func:`code_change`); the report lists
:func:`unit_code_versions`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterable


def code_version(package_dir: str | os.PathLike | None = None) -> dict:
    """The git commit of vadice's source and whether tracked files differ from it.

    Units train in fresh subprocesses, so code edited during a run changes what later units run; this is
    what the manifest and every unit marker record. Only a checkout whose ``src/vadice`` is this package
    counts (an installed copy inside some other repository has no commit of its own).

    Args:
      package_dir: the ``vadice`` package folder (default: this one).

    Returns:
      ``{"commit": sha or None, "dirty": bool or None}``; both None outside a git checkout of vadice.
    """
    here = Path(package_dir or Path(__file__).parent).resolve()
    unknown = {"commit": None, "dirty": None}

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or (Path(top) / "src" / "vadice").resolve() != here:
        return unknown
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    if not commit or status is None:
        return unknown
    return {"commit": commit, "dirty": bool(status)}


def code_text(version: dict | None) -> str:
    """``abc1234 (dirty)``, ``abc1234``, or ``unknown`` for one recorded code version."""
    if not version or not version.get("commit"):
        return "unknown"
    return version["commit"][:12] + (" (dirty)" if version.get("dirty") else "")


def code_change(recorded: dict | None, current: dict | None) -> str | None:
    """How the current code version differs from the one a run started on, or None.

    Nothing is refused when either side is unknown (not a git checkout, or a run begun before versions
    were recorded): there is nothing to compare.

    Returns:
      e.g. ``"started on abc123, now def456 (dirty)"``, or None when the versions agree or one is unknown.
    """
    if not recorded or not current or not recorded.get("commit") or not current.get("commit"):
        return None
    if (recorded["commit"], bool(recorded.get("dirty"))) == (current["commit"], bool(current.get("dirty"))):
        return None
    return f"started on {code_text(recorded)}, now {code_text(current)}"


def unit_code_versions(markers: Iterable[tuple[str, dict]]) -> dict[str, list[str]]:
    """``{code text: [unit keys]}`` of finished units (``(key, marker)`` pairs); more than one key means
    the run's units trained on different code."""
    out: dict[str, list[str]] = {}
    for key, info in markers:
        out.setdefault(code_text(info.get("code_version")), []).append(key)
    return out
