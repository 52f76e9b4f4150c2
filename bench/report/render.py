"""The Leaderboard model laid out: README.md (markdown), index.html (jinja2), plots/*.png (matplotlib).

Renderers only lay the model out; every number and label was decided in bench.report.compute.
:func:`build_leaderboard` computes and writes everything, each file atomically.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import jinja2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from .compute import DEFAULT_TITLE, compute_leaderboard
from .format import MISSING, PLOTS_DIR
from .model import Heatmap, Leaderboard, Plot, Table
from .numbers import NUMBERS_FILE, numbers_csv

TEMPLATE = "leaderboard.html.j2"  # in bench/report/templates/
SUMMARY_HEADING = "Summary: best known robust accuracy"
SUMMARY_LEAD = ("Per dataset, threat model and headline budget, every deployed defense of every suite, most robust "
                "first: its best-known robust accuracy with its 95% interval (how it is counted: the legend below), "
                "the attack that broke the most examples, and a link to its section.")


# --------------------------------------------------------------------------- markdown


def _md(text: str) -> str:
    """Escape data for a markdown table cell or heading.

    `|` would split a cell, a newline would end the row, and raw `<...>` is
    HTML to most markdown renderers.
    """
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
            .replace(">", "&gt;").replace("\r", " ").replace("\n", " "))


def _md_alt(text: str) -> str:
    """Escape an image's alt text (brackets would end it)."""
    return _md(text).replace("[", "\\[").replace("]", "\\]")


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lowercase, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _md_table(table: Table) -> str:
    rows = [[_md(v) for v in row] for row in table.frame.itertuples(index=False)]
    if table.link_column is not None:  # a cell that names a section links to its heading
        j = list(table.frame.columns).index(table.link_column)
        for row, target in zip(rows, table.links):
            if target:
                row[j] = f"[{row[j]}](#{_github_anchor(_md(target))})"
    # disable_numparse: tabulate would otherwise reformat "71.0" as "71".
    return tabulate(rows, headers=[_md(c) for c in table.frame.columns], tablefmt="github",
                    colalign=table.align, disable_numparse=True)


def render_markdown(board: Leaderboard) -> str:
    lines = [f"# {_md(board.title)}", ""]
    if board.empty:
        lines += ["No results yet: run a suite (`advbench run suites/<name>.yaml`) to fill this leaderboard.", ""]
        return "\n".join(lines)
    lines += [_md(board.produced), ""]
    if board.problems:
        lines += ["Left out of this build:", "", *(f"- {_md(p)}" for p in board.problems), ""]
    if board.summary:  # the number a reader came for first, then how it is counted
        lines += [f"## {SUMMARY_HEADING}", "", _md(SUMMARY_LEAD), ""]
        for table in board.summary:
            lines += [f"### {_md(table.setting)}", "", _md_table(table), ""]
    lines += [_md(board.legend), ""]
    for section in board.datasets:
        lines += [f"## {_md(section.name)}", ""]
        for table in section.tables:
            lines += [f"### {_md(table.setting)}", "", _md_table(table), ""]
        lines += [f"### Details: {_md(section.name)}", "", _md_table(section.details), ""]
        if section.plots:
            lines += [f"### Plots: {_md(section.name)}", ""]
            for plot in section.plots:
                lines += [f"![{_md_alt(plot.caption)}]({plot.path})", ""]
    for section in board.detectors:
        lines += [f"## {_md(section.name)}", ""]
        for table in section.tables:
            lines += [f"### {_md(table.setting)}", "", _md_table(table), ""]
        for heatmap in section.heatmaps:
            lines += [f"![{_md_alt(heatmap.caption)}]({heatmap.path})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML


def _template() -> jinja2.Template:
    source = resources.files("bench.report").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    # autoescape=True explicitly: select_autoescape() keys on the file extension,
    # and ".html.j2" would not match, silently leaving data unescaped.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)


# Symbols of headings spelled out in anchors, so "L∞" and "L2" get distinct ids.
_SLUG_WORDS = str.maketrans({"∞": " inf ", "ε": " eps ", "κ": " kappa "})
_SLUG_MAX = 60  # detector headings run to whole sentences; ids need not


def _slug(text: str) -> str:
    """An id for a heading: ASCII lowercase words joined by "-", cut at a word boundary."""
    ascii_text = unicodedata.normalize("NFKD", text.translate(_SLUG_WORDS)).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > _SLUG_MAX:
        slug = slug[:_SLUG_MAX + 1].rsplit("-", 1)[0]
    return slug or "section"


@dataclass(frozen=True)
class _HtmlTable:
    """A Table as the template lays it out: (text, class, first sort direction) per heading, and
    (text, class, link target or "") per cell, "best" added where the cell holds its column's best number."""

    columns: list[tuple[str, str, str]]
    rows: list[list[tuple[str, str, str]]]
    css: str


def _html_table(table: Table, css: str = "", anchors: dict[str, str] | None = None) -> _HtmlTable:
    best = table.best().to_numpy()
    # A column with a direction sorts best-first on the first click; others ascending.
    first = "desc" if table.higher_is_better else "asc"
    ranked = set(table.values.columns) if table.values is not None and table.higher_is_better is not None else set()
    columns = [(str(c), align, first if c in ranked else "asc") for c, align in zip(table.frame.columns, table.align)]
    link = list(table.frame.columns).index(table.link_column) if table.link_column is not None else -1
    rows = [[(str(cell), f"{table.align[j]} best" if best[i, j] else table.align[j],
              (anchors or {}).get(table.links[i] or "", "") if j == link else "") for j, cell in enumerate(row)]
            for i, row in enumerate(table.frame.itertuples(index=False))]
    return _HtmlTable(columns=columns, rows=rows, css=" ".join(filter(None, ("sortable", css))))


@dataclass(frozen=True)
class _Part:
    """A titled block of the page under its own anchor: a table, or figures."""

    anchor: str
    title: str
    table: _HtmlTable | None = None
    figures: tuple[Plot | Heatmap, ...] = ()


def _outline(board: Leaderboard) -> list[tuple[_Part, list[_Part]]]:
    """Every section and its parts, in page order, each with a unique anchor: the body and its table
    of contents are laid out from this one list."""
    taken = {"contents"}  # the table of contents' own id

    def anchor(heading: str) -> str:
        base = _slug(heading)
        candidate, i = base, 2
        while candidate in taken:
            candidate, i = f"{base}-{i}", i + 1
        taken.add(candidate)
        return candidate

    outline = []
    summary = _Part(anchor(SUMMARY_HEADING), SUMMARY_HEADING) if board.summary else None
    section_anchors = [anchor(section.name) for section in board.datasets]
    if summary is not None:  # first on the page; its rows link to the sections below
        first = dict(zip(reversed([s.name for s in board.datasets]), reversed(section_anchors)))
        outline.append((summary, [_Part(anchor(f"summary {t.setting}"), t.setting, _html_table(t, anchors=first))
                                  for t in board.summary]))
    for section, section_anchor in zip(board.datasets, section_anchors):
        parts = [_Part(anchor(t.heading), t.setting, _html_table(t)) for t in section.tables]
        parts.append(_Part(anchor(section.details.heading), f"Details: {section.name}",
                           _html_table(section.details, "details")))
        if section.plots:
            parts.append(_Part(anchor(f"{section.name} plots"), f"Plots: {section.name}",
                               figures=tuple(section.plots)))
        outline.append((_Part(section_anchor, section.name), parts))
    for detector in board.detectors:
        parts = [_Part(anchor(t.heading), t.setting, _html_table(t)) for t in detector.tables]
        if detector.heatmaps:
            parts.append(_Part(anchor(f"{detector.name} plots"), f"Plots: {detector.name}",
                               figures=tuple(detector.heatmaps)))
        outline.append((_Part(anchor(detector.name), detector.name), parts))
    return outline


def render_html(board: Leaderboard) -> str:
    return _template().render(board=board, outline=_outline(board), missing=MISSING,
                              first_section=1 if board.summary else 0, summary_lead=SUMMARY_LEAD)


# --------------------------------------------------------------------------- PNG


def _mpl_text(text: str, *, legend: bool = False) -> str:
    text = str(text).replace("$", r"\$")  # "$" would start mathtext (and may fail to parse)
    if legend and text.startswith("_"):
        text = "\u200b" + text  # matplotlib hides legend labels that start with "_"
    return text


def _figure(figsize: tuple[float, float]) -> Figure:
    # Figure + FigureCanvasAgg rather than pyplot: no global backend switch and no
    # figure registry, so nothing leaks into (or breaks) other pyplot users.
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" tag: the committed PNGs should not change with the matplotlib version.
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    fig.clear()  # no pyplot registry holds the figure; clearing frees its artists now
    return buffer.getvalue()


def render_plot_png(plot: Plot) -> bytes:
    """Robust accuracy vs budget, one line (with its 95% interval) per defense."""
    fig = _figure((6.4, 4.0))
    ax = fig.add_subplot()
    linestyles = ("-", "--", ":", "-.")
    for i, (label, xs, ys, lows, highs) in enumerate(plot.series):
        y = np.asarray(ys)
        # Clip: at 0% or 100% the interval's float end can sit a hair inside the point.
        yerr = np.clip(np.vstack([y - np.asarray(lows), np.asarray(highs) - y]), 0.0, None)
        ax.errorbar(xs, ys, yerr=yerr, marker="o", markersize=4, capsize=3,
                    linestyle=linestyles[(i // 10) % len(linestyles)], label=_mpl_text(label, legend=True))
    ax.set_xlabel(_mpl_text(plot.xlabel))
    ax.set_ylabel(plot.ylabel)
    ax.set_ylim(-2, 102)
    if plot.log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(_mpl_text(plot.caption), fontsize="medium")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return _png(fig)


def render_heatmap_png(heatmap: Heatmap) -> bytes:
    """The train x test matrix, each measured cell annotated."""
    matrix: pd.DataFrame = heatmap.matrix
    size = max(4.0, 0.9 * len(matrix.columns) + 2.5)
    fig = _figure((size, max(3.5, 0.7 * len(matrix.index) + 2.0)))
    ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.5, vmax=1.0)
    ax.set_xticks(range(len(matrix.columns)), [_mpl_text(c) for c in matrix.columns], rotation=40, ha="right")
    ax.set_yticks(range(len(matrix.index)), [_mpl_text(r) for r in matrix.index])
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not math.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize="small",
                        color="black" if values[i, j] > 0.8 else "white")
    fig.colorbar(image, ax=ax, label="detection accuracy")
    ax.set_title(_mpl_text(heatmap.caption), fontsize="medium")
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- writing


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + os.replace: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the leaderboard is meant to be read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def build_leaderboard(results: pd.DataFrame | None, out_dir: Path, *, title: str = DEFAULT_TITLE,
                      detections: pd.DataFrame | None = None, settings: dict | None = None,
                      on_problem: Callable[[str], None] | None = None,
                      certificates: pd.DataFrame | None = None) -> list[Path]:
    """Write README.md, index.html, plots/*.png and numbers.csv into `out_dir`; return the written paths.

    A stored row that cannot be shown (``rows.row_problem``) or a plot that cannot be drawn is
    left out, said on the page and passed to ``on_problem``; the rest is built.

    Plots are written first and README.md last, each atomically, so an
    interrupted build leaves the previous README intact. PNGs in
    ``out_dir/plots`` that this build did not produce are removed afterwards.
    """
    out_dir = Path(out_dir)
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    board = compute_leaderboard(results, title=title, detections=detections, settings=settings,
                                certificates=certificates)

    written: list[Path] = []
    for figures, render in ([(s.plots, render_plot_png) for s in board.datasets]
                            + [(d.heatmaps, render_heatmap_png) for d in board.detectors]):
        for figure in list(figures):
            try:
                png = render(figure)
            except Exception as e:  # one figure that cannot be drawn must not cost the whole leaderboard
                figures.remove(figure)
                board.problems.append(f"plot {figure.filename} left out: {type(e).__name__}: {e}")
                continue
            path = plots_dir / figure.filename
            _write_atomic(path, png)
            written.append(path)
    html_path, readme_path = out_dir / "index.html", out_dir / "README.md"
    _write_atomic(html_path, render_html(board).encode("utf-8"))
    _write_atomic(readme_path, render_markdown(board).encode("utf-8"))
    numbers_path = out_dir / NUMBERS_FILE  # the same numbers as data, for CI's comparison (report/numbers.py)
    _write_atomic(numbers_path, numbers_csv(results, detections, board.best_known))

    for problem in board.problems if on_problem is not None else ():
        on_problem(problem)
    produced = {p.name for p in written}
    for stale in plots_dir.glob("*.png"):
        if stale.is_file() and stale.name not in produced:
            stale.unlink()
    return [readme_path, html_path, *written, numbers_path]
