"""Leaderboard: stored results in, README.md + index.html + PNG plots out.

One computation, two renderings: :func:`compute_leaderboard` turns the results
(and detection) frames into a :class:`Leaderboard` of display-ready tables and
plot series, and the markdown and HTML renderers only lay that model out, so
the two files can never disagree. :func:`leaderboard_tables` exposes the same
tables as ``(heading, DataFrame)`` pairs.

The modules, each importing only those above it:

* ``format``     the missing-value marker, the percent and number formatters, file-name parts
* ``model``      Table, Plot, Heatmap, the dataset and detector sections, Leaderboard
* ``rows``       store rows, screened and normalized (``Row``), newest rerun first
* ``robustness`` rows -> one section per dataset (pooling, worst case, details, plot series);
  how every number is counted is in its docstring
* ``best_known`` each deployed defense's best-known robust accuracy over every stored result on it
* ``summary``    the best-known tables: the leaderboard's summary and each section's first tables
* ``detection``  detection rows -> one section per (dataset, detector)
* ``views``      paper-shaped tables, registered by name in ``bench.registry.views``
* ``compute``    all of the above -> Leaderboard
* ``render``     markdown, HTML (``templates/leaderboard.html.j2``), PNGs, and the atomic
  :func:`build_leaderboard`

Where to add a view or a metric column: docs/architecture.md.
"""

from __future__ import annotations

from .compute import DEFAULT_TITLE, compute_leaderboard, leaderboard_tables
from .format import MISSING, PLOTS_DIR
from .model import CLEAN_ATTACK, DatasetSection, DetectorSection, Heatmap, Leaderboard, Plot, Table
from .render import build_leaderboard, render_html, render_markdown

__all__ = [
    "CLEAN_ATTACK",
    "DEFAULT_TITLE",
    "MISSING",
    "PLOTS_DIR",
    "DatasetSection",
    "DetectorSection",
    "Heatmap",
    "Leaderboard",
    "Plot",
    "Table",
    "build_leaderboard",
    "compute_leaderboard",
    "leaderboard_tables",
    "render_html",
    "render_markdown",
]
