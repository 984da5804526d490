"""Seeing the work: per-layer accuracy figures and the HTML report (`qirc report MODEL --target T -o report.html`).

`layer_figures` (qirc.report.figures) computes numbers only and never imports matplotlib, so the compile driver may
call it for qirc.json; `qirc.report.page` draws the page and imports matplotlib lazily, when a report is built.
"""
from .figures import ACC_LIMIT, LayerMatch, layer_figures, match_requants  # noqa: F401
