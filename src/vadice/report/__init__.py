"""Figures and the self-contained HTML report (top floor: reads vadice.metrics outputs, computes no metric).

``overlay_png``/``pick_slice``: re-exported from :mod:`vadice.overlay` (below predict, which draws them too).
``plots``: report figures as PNG bytes and the nnU-Net training-log parser.
``html``: :class:`ReportInputs` and :func:`write_report` (one offline ``report.html``).
"""

from vadice.report.html import SECTIONS, ReportInputs, best_and_worst_cases, write_report
from vadice.overlay import overlay_png, pick_slice
from vadice.report.plots import parse_training_log

__all__ = [
    "SECTIONS",
    "ReportInputs",
    "best_and_worst_cases",
    "overlay_png",
    "parse_training_log",
    "pick_slice",
    "write_report",
]
