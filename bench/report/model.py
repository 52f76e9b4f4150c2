"""The leaderboard as data: display-ready tables, plot series and heatmaps, grouped into sections.

Computed once (bench.report.compute) and laid out by every renderer (bench.report.render), so the
README and the HTML page can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..newest_rows import CLEAN_ATTACK  # noqa: F401  (the report's name for it)

from ..metrics import METRICS
from .format import PLOTS_DIR, pct



@dataclass(frozen=True)
class Table:
    """One display-ready table: string cells, plus the numbers behind them."""

    heading: str  # full heading, dataset included
    setting: str  # heading within its dataset's section
    frame: pd.DataFrame  # display strings; first column is the row label
    align: tuple[str, ...]  # "left"/"right" per column, shared by both renderers
    values: pd.DataFrame | None = None  # percentages (NaN where "—"), same labels
    higher_is_better: bool | None = None  # direction of every ``values`` column; None: no best to mark
    # Per row, whether it failed a soundness check: such a row is never marked best (its number is not trusted).
    flagged_rows: tuple[bool, ...] = ()
    # Per row, the section its ``link_column`` cell links to (None: no link).
    link_column: str | None = None
    links: tuple[str | None, ...] = ()

    def best(self) -> pd.DataFrame:
        """True where a cell holds its column's best number (ties: every tied cell), aligned with ``frame``.

        Read from ``values``, not the rounded text; a column with fewer than two numbers has no best; a
        flagged row (``flagged_rows``) is never best and does not compete.
        """
        marks = pd.DataFrame(False, index=self.frame.index, columns=self.frame.columns)
        if self.values is None or self.higher_is_better is None or len(self.values) != len(self.frame):
            return marks
        trusted = np.array([not f for f in self.flagged_rows]) if len(self.flagged_rows) == len(self.frame) \
            else np.ones(len(self.frame), dtype=bool)
        for column in self.values.columns:
            every = self.values[column].to_numpy(dtype=float)
            numbers = np.where(trusted, every, np.nan)  # a flagged row's number competes with nothing
            if column not in marks.columns or np.count_nonzero(~np.isnan(every)) < 2 or np.isnan(numbers).all():
                continue
            best = np.nanmax(numbers) if self.higher_is_better else np.nanmin(numbers)
            # isclose: the same fraction pooled two ways can differ in its last bit
            marks[column] = np.isclose(numbers, best, rtol=1e-9, atol=0.0)
        return marks


def frame_table(heading: str, setting: str, frame: pd.DataFrame, left_columns: int = 1) -> Table:
    """A display frame as it is: the first ``left_columns`` columns (labels) left-aligned, the rest right."""
    frame = frame.astype(str)
    left = min(left_columns, frame.shape[1])
    return Table(heading=heading, setting=setting, frame=frame,
                 align=("left",) * left + ("right",) * (frame.shape[1] - left))


def values_table(heading: str, setting: str, values: pd.DataFrame) -> Table:
    """A table of accuracies (fractions, NaN where none) indexed by row label, shown as percentages."""
    frame = values.map(pct).reset_index()
    return Table(heading=heading, setting=setting, frame=frame,
                 align=("left",) + ("right",) * (frame.shape[1] - 1),
                 values=values * 100, higher_is_better=METRICS["robust_acc"].higher_is_better)


@dataclass(frozen=True)
class Plot:
    """Series for one PNG: robust accuracy vs budget of one attack, one line per defense."""

    filename: str  # relative to the plots directory
    caption: str
    xlabel: str
    log_x: bool
    # (defense label, budgets, accuracy %, interval low %, interval high %)
    series: tuple[tuple[str, tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]], ...]
    ylabel: str = "robust accuracy (%)"

    @property
    def path(self) -> str:
        return f"{PLOTS_DIR}/{self.filename}"


@dataclass(frozen=True)
class Heatmap:
    """A train x test accuracy matrix drawn as a PNG (values in [0, 1], NaN where not measured)."""

    filename: str  # relative to the plots directory
    caption: str
    matrix: pd.DataFrame

    @property
    def path(self) -> str:
        return f"{PLOTS_DIR}/{self.filename}"


@dataclass(frozen=True)
class DatasetSection:
    """The robustness part of one dataset: its tables (views included), details table and plots."""

    name: str
    tables: list[Table]
    details: Table
    plots: list[Plot]


@dataclass(frozen=True)
class DetectorSection:
    """One (dataset, detector) of the detection part."""

    name: str  # "<dataset> — detector <label>"
    tables: list[Table]
    heatmaps: list[Heatmap]
    flagged: bool = False  # its guarded classifier failed a soundness check (the legend then says what ⚠ means)


@dataclass(frozen=True)
class Leaderboard:
    title: str
    produced: str  # the "how this was produced" line; empty when there are no results
    legend: str
    # The top of the page: per dataset, threat model and headline budget, every deployed defense's best-known
    # robust accuracy (bench.report.summary), and the numbers behind it (numbers.csv's best-known lines).
    summary: list[Table] = field(default_factory=list)
    best_known: list = field(default_factory=list)  # bench.report.summary.SummaryEntry
    datasets: list[DatasetSection] = field(default_factory=list)
    detectors: list[DetectorSection] = field(default_factory=list)
    # Stored rows (by key) and plots the build had to leave out, and why: shown under the produced-by line.
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.datasets and not self.detectors
