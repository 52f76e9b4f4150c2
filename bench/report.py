"""Leaderboard: stored results in, README.md + index.html + PNG plots out.

One computation, two renderings: :func:`compute_leaderboard` turns the results
frame into a :class:`Leaderboard` of display-ready tables and plot series, and
the markdown and HTML renderers only lay that model out, so the two files can
never disagree. :func:`leaderboard_tables` exposes the same tables as
``(heading, DataFrame)`` pairs.

How numbers are counted
-----------------------
* A *cell* is one (dataset, defense, attack, budget) within a table; a table is
  one (dataset, threat model, source, attack surface). Rows of several seeds
  are pooled: accuracy = total correct / total n, and the 95% Wilson interval
  is recomputed on the pooled counts (an average of per-seed accuracies would
  weight a small seed like a large one).
* "Worst case" follows DESIGN.md: robust accuracy is counted per example as the
  worst case over the attacks of a group. For every budget that two or more
  attacks of a table share, an example counts as robust only if it survived
  every one of them (AND of the per-example ``correct`` arrays of the same
  dataset/defense/seed/surface/source). Taking the minimum of the attacks'
  accuracies instead would overstate robustness whenever attacks break
  different examples. Without per-example arrays the cell shows "—".
* Rows are sorted by the mean of their attack cells (not Clean, not Worst
  case), most robust first.
* If the store holds several rows for the same (dataset, defense, surface,
  source, attack, budget, seed) -- a rerun after a code change -- the newest
  (``created_at``) wins; the produced-by line says how many were superseded.

Every number can be traced: the per-dataset details table lists, for every
cell, its seeds, n, interval, attack success rate, distortion medians, wall
time and the store keys of the rows it pools.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

import jinja2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from bench import views
from bench.detection_report import DetectorSection, detector_sections, render_heatmap
from bench.labels import BUDGET_SYMBOLS, budget_label
from bench.metrics import wilson_interval

__all__ = [
    "CLEAN_ATTACK",
    "DatasetSection",
    "Leaderboard",
    "Plot",
    "Table",
    "build_leaderboard",
    "compute_leaderboard",
    "leaderboard_tables",
    "render_html",
    "render_markdown",
]

CLEAN_ATTACK = "none"  # the `attack` value of a defense's clean-accuracy row
MISSING = "—"  # cell text where no number exists (not run, or not computable)
DEFAULT_TITLE = "advbench leaderboard"
PLOTS_DIR = "plots"
TEMPLATE = "leaderboard.html.j2"

_REQUIRED_COLUMNS = ("dataset", "defense", "attack", "seed", "n", "robust_acc")
# Older store rows may lack later columns; these defaults keep them usable.
_OPTIONAL_COLUMNS = {
    "suite": "", "threat_model": "", "surface": "deployed", "source": "white-box", "evaluated_on": "deployed",
    "budget_param": "", "budget": math.nan, "clean_acc": math.nan,
    "attack_success_rate": math.nan, "l2_median": math.nan, "linf_median": math.nan,
    "wall_time_s": math.nan, "key": "", "created_at": "", "versions": "",
    "git_commit": "", "correct": None,
}
_THREAT_MODEL_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0", "corruption": "corruption"}
_THREAT_MODEL_ORDER = list(_THREAT_MODEL_NAMES)
# For these budgets, budget 0 means "no attack", so clean accuracy is the curve's start.
_ZERO_IS_CLEAN = {"eps", "epsilon"}


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Table:
    """One display-ready table: string cells, plus the numbers behind them."""

    heading: str  # full heading, dataset included
    setting: str  # heading within its dataset's section
    frame: pd.DataFrame  # display strings; first column is the row label
    align: tuple[str, ...]  # "left"/"right" per column, shared by both renderers
    values: pd.DataFrame | None = None  # percentages (NaN where "—"), same labels


@dataclass(frozen=True)
class Plot:
    """Series for one PNG: robust accuracy vs budget of one attack, one line per defense."""

    filename: str  # relative to the plots directory
    caption: str
    xlabel: str
    log_x: bool
    # (defense label, budgets, accuracy %, interval low %, interval high %)
    series: tuple[tuple[str, tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]], ...]

    @property
    def path(self) -> str:
        return f"{PLOTS_DIR}/{self.filename}"


@dataclass(frozen=True)
class DatasetSection:
    name: str
    tables: list[Table]
    details: Table
    plots: list[Plot]


@dataclass(frozen=True)
class Leaderboard:
    title: str
    produced: str  # the "how this was produced" line; empty when there are no results
    legend: str
    datasets: list[DatasetSection] = field(default_factory=list)
    detectors: list[DetectorSection] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.datasets and not self.detectors


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True, eq=False)
class _Row:
    """One store row, normalized; `hits` = examples still correct after the attack."""

    suite: str
    dataset: str
    defense: str
    attack: str
    threat_model: str
    surface: str
    source: str
    budget_param: str
    budget: float | None  # None = unbounded / no budget
    seed: int
    n: int
    hits: int
    clean_hits: int | None
    asr: float | None
    l2_median: float | None
    linf_median: float | None
    wall_time: float | None
    key: str
    created_at: str
    created: pd.Timestamp
    versions: str
    git_commit: str
    correct: np.ndarray | None

    @property
    def is_clean(self) -> bool:
        return self.attack == CLEAN_ATTACK

    @property
    def identity(self) -> tuple:
        # Clean rows are one per dataset/defense/seed whatever surface they name.
        if self.is_clean:
            return (self.dataset, self.defense, CLEAN_ATTACK, self.seed)
        return (self.dataset, self.defense, self.surface, self.source, self.attack,
                self.budget_param, self.budget, self.seed)


def _is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and other containers are not "missing"
        return False


def _text(value, default: str = "") -> str:
    return default if _is_missing(value) else str(value)


def _number(value) -> float | None:
    if _is_missing(value):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _bool_array(value) -> np.ndarray | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return np.asarray(value).astype(bool).ravel()


def _normalize(results: pd.DataFrame) -> list[_Row]:
    missing = [c for c in _REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(f"results frame lacks column(s) {', '.join(missing)}")
    frame = results.copy()
    for column, default in _OPTIONAL_COLUMNS.items():
        if column not in frame.columns:
            frame[column] = [default] * len(frame)
    # Parsed once, as UTC, so "Z" and "+00:00" spellings (and naive stamps) order correctly.
    created = pd.to_datetime(frame["created_at"].astype(object), utc=True, errors="coerce", format="ISO8601")

    rows = []
    for record, stamp in zip(frame.to_dict("records"), created):
        n = int(record["n"])
        is_clean = _text(record["attack"]) == CLEAN_ATTACK
        correct = _bool_array(record["correct"])
        if correct is not None and correct.size != n:
            correct = None  # misaligned: unusable for per-example worst cases
        acc = _number(record["robust_acc"])
        if acc is None and is_clean:
            acc = _number(record["clean_acc"])
        hits = int(correct.sum()) if correct is not None else round((acc or 0.0) * n)
        clean_acc = _number(record["clean_acc"])
        rows.append(_Row(
            suite=_text(record["suite"]),
            dataset=_text(record["dataset"]),
            defense=_defense_label(record),
            attack=_text(record["attack"]),
            threat_model=_text(record["threat_model"]),
            surface=_text(record["surface"], "deployed"),
            source=_text(record["source"], "white-box"),
            budget_param=_text(record["budget_param"]),
            budget=_number(record["budget"]),
            seed=int(record["seed"]),
            n=n,
            hits=hits,
            clean_hits=None if clean_acc is None else round(clean_acc * n),
            asr=_number(record["attack_success_rate"]),
            l2_median=_number(record["l2_median"]),
            linf_median=_number(record["linf_median"]),
            wall_time=_number(record["wall_time_s"]),
            key=_text(record["key"]),
            created_at=_text(record["created_at"]),
            created=stamp,
            versions=_text(record["versions"]),
            git_commit=_text(record["git_commit"]),
            correct=correct,
        ))
    return rows


def _defense_label(record: dict) -> str:
    """Examples scored on a part of a defense (one ensemble member) form a row of their own."""
    evaluated_on = _text(record.get("evaluated_on"), "deployed")
    defense = _text(record["defense"])
    return defense if evaluated_on == "deployed" else f"{defense} [{evaluated_on}]"


def _recency(row: _Row) -> tuple:
    # An unparseable stamp (NaT) sorts as oldest.
    parsed = not pd.isna(row.created)
    return (parsed, row.created.value if parsed else 0, row.created_at)


def _dedupe(rows: list[_Row]) -> list[_Row]:
    """Keep the newest row of each identity (a rerun supersedes the older result)."""
    newest: dict[tuple, _Row] = {}
    for row in rows:
        kept = newest.get(row.identity)
        if kept is None or _recency(row) > _recency(kept):
            newest[row.identity] = row
    return list(newest.values())


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class _Cell:
    """Pooled counts of one cell and the store rows behind them."""

    hits: int
    n: int
    rows: tuple[_Row, ...]
    worst_case: bool = False

    @property
    def acc(self) -> float:
        return self.hits / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.hits, self.n)


def _pool(rows: Iterable[_Row]) -> _Cell:
    rows = tuple(sorted(rows, key=lambda r: r.seed))
    return _Cell(hits=sum(r.hits for r in rows), n=sum(r.n for r in rows), rows=rows)


def _worst_case(rows_by_attack: dict[str, list[_Row]], attacks: tuple[str, ...]) -> _Cell | None:
    """Per-example worst case over `attacks`, pooled over seeds; None if not computable.

    Every seed must have every attack with a per-example array of one length:
    a worst case over a subset of the attacks (or of the seeds) would be a
    different, more optimistic number under the same heading.
    """
    by_seed: dict[int, dict[str, _Row]] = defaultdict(dict)
    for attack in attacks:
        for row in rows_by_attack.get(attack, []):
            by_seed[row.seed][attack] = row
    if not by_seed:
        return None
    hits = n = 0
    used: list[_Row] = []
    for seed in sorted(by_seed):
        per_attack = by_seed[seed]
        if len(per_attack) != len(attacks):
            return None
        arrays = [per_attack[a].correct for a in attacks]
        if any(a is None for a in arrays) or len({a.size for a in arrays}) != 1:
            return None
        survived = np.logical_and.reduce(arrays)
        hits += int(survived.sum())
        n += int(survived.size)
        used.extend(per_attack[a] for a in attacks)
    return _Cell(hits=hits, n=n, rows=tuple(used), worst_case=True)


# --------------------------------------------------------------------------- labels


def _axis_label(param: str) -> str:
    symbol = BUDGET_SYMBOLS.get(param)
    if symbol:
        return f"{symbol} ({param})"
    return param or "budget"


def _threat_model_label(threat_model: str) -> str:
    return _THREAT_MODEL_NAMES.get(threat_model, threat_model or "unknown threat model")


def _setting(threat_model: str, source: str, surface: str) -> str:
    parts = [_threat_model_label(threat_model)]
    if source.startswith("transfer:"):
        parts.append(f"transfer from {source.split(':', 1)[1]}")
    else:
        parts.append(source)
    if surface and surface != "deployed":
        parts.append(f"surface {surface}")
    return ", ".join(parts)


def _group_order(group: tuple[str, str, str]) -> tuple:
    threat_model, source, surface = group
    known = threat_model in _THREAT_MODEL_ORDER
    rank = _THREAT_MODEL_ORDER.index(threat_model) if known else len(_THREAT_MODEL_ORDER)
    return (rank, threat_model, source != "white-box", source, surface != "deployed", surface)


def _budget_order(budget: tuple[str, float | None]) -> tuple:
    param, value = budget
    return (param, value is None, value if value is not None else 0.0)


def _pct(value: float) -> str:
    return MISSING if math.isnan(value) else f"{100 * value:.1f}"


def _opt(value: float | None, fmt: str) -> str:
    return MISSING if value is None else format(value, fmt)


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "_"


def _unique(label: str, taken: set[str]) -> str:
    candidate, i = label, 2
    while candidate in taken:
        candidate, i = f"{label} ({i})", i + 1
    taken.add(candidate)
    return candidate


# --------------------------------------------------------------------------- computation


_DETAIL_COLUMNS = ("Setting", "Defense", "Attack", "Budget", "Seeds", "n", "Accuracy (%)",
                   "95% CI (%)", "ASR (%)", "L2 median", "L∞ median", "Wall time (s)", "Keys")
_DETAIL_ALIGN = ("left", "left", "left", "left", "left", "right", "right",
                 "right", "right", "right", "right", "right", "left")


def _detail_row(setting: str, defense: str, attack: str, budget: str, cell: _Cell) -> list[str]:
    low, high = cell.interval
    rows = cell.rows
    if cell.worst_case:
        # Success rate and distortion belong to one attack; a worst case has none of its own.
        asr = l2 = linf = wall = MISSING
    else:
        attacked = [r.clean_hits for r in rows]
        if rows[0].is_clean or any(r.asr is None or not a for r, a in zip(rows, attacked)):
            asr = MISSING
        else:
            successes = sum(round(r.asr * a) for r, a in zip(rows, attacked))
            asr = f"{100 * successes / sum(attacked):.1f}"
        # A median of per-seed medians is not the pooled median; list them per seed instead.
        l2 = " / ".join(_opt(r.l2_median, ".4g") for r in rows)
        linf = " / ".join(_opt(r.linf_median, ".4g") for r in rows)
        walls = [r.wall_time for r in rows]
        wall = MISSING if any(w is None for w in walls) else f"{sum(walls):.1f}"
    seeds = ", ".join(str(s) for s in dict.fromkeys(r.seed for r in rows))
    keys = ", ".join(dict.fromkeys(r.key or MISSING for r in rows))
    return [setting, defense, attack, budget, seeds, str(cell.n), _pct(cell.acc),
            f"{100 * low:.1f}–{100 * high:.1f}", asr, l2, linf, wall, keys]


def _score(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _build_group(dataset: str, group: tuple[str, str, str], rows: list[_Row],
                 clean: dict[str, _Cell], taken_files: set[str]) -> tuple[Table, list[list[str]], list[Plot]]:
    threat_model, source, surface = group
    setting = _setting(threat_model, source, surface)

    cells_rows: dict[tuple[str, str, tuple], list[_Row]] = defaultdict(list)
    for row in rows:
        cells_rows[(row.defense, row.attack, (row.budget_param, row.budget))].append(row)
    columns = sorted({(a, b) for _, a, b in cells_rows}, key=lambda c: (c[0], _budget_order(c[1])))
    cells = {k: _pool(v) for k, v in cells_rows.items()}

    attacks_at: dict[tuple, list[str]] = defaultdict(list)
    for attack, budget in columns:
        attacks_at[budget].append(attack)
    worst_budgets = sorted((b for b, a in attacks_at.items() if len(a) >= 2), key=_budget_order)

    defenses = sorted({d for d, _, _ in cells_rows})
    worst: dict[tuple[str, tuple], _Cell | None] = {}
    for defense in defenses:
        for budget in worst_budgets:
            attacks = tuple(attacks_at[budget])
            by_attack = {a: cells_rows.get((defense, a, budget), []) for a in attacks}
            worst[(defense, budget)] = _worst_case(by_attack, attacks)

    def acc(defense: str, column: tuple) -> float:
        cell = cells.get((defense, *column))
        return cell.acc if cell else math.nan

    scores = {d: _score([acc(d, c) for c in columns]) for d in defenses}
    # Most robust first; defenses without a single number go last.
    order = sorted(defenses, key=lambda d: (math.inf if math.isnan(scores[d]) else -scores[d], d))

    taken: set[str] = {"Defense", "Clean"}
    labels = [_unique(f"{a} {budget_label(*b)}", taken) for a, b in columns]
    worst_labels = [_unique(f"Worst case {budget_label(*b)}", taken) for b in worst_budgets]

    values = pd.DataFrame(index=pd.Index(order, name="Defense"),
                          columns=["Clean", *labels, *worst_labels], dtype=float)
    details: list[list[str]] = []
    for defense in order:
        clean_cell = clean.get(defense)
        values.loc[defense, "Clean"] = clean_cell.acc if clean_cell else math.nan
        for (attack, budget), label in zip(columns, labels):
            values.loc[defense, label] = acc(defense, (attack, budget))
            cell = cells.get((defense, attack, budget))
            if cell:
                details.append(_detail_row(setting, defense, attack, budget_label(*budget), cell))
        for budget, label in zip(worst_budgets, worst_labels):
            cell = worst[(defense, budget)]
            values.loc[defense, label] = cell.acc if cell else math.nan
            if cell:
                name = f"worst case ({', '.join(attacks_at[budget])})"
                details.append(_detail_row(setting, defense, name, budget_label(*budget), cell))

    table = _table(f"{dataset} — {setting}", setting, values)
    plots = [_plot(dataset, group, setting, attack, order, cells, clean, taken_files)
             for attack in dict.fromkeys(a for a, _ in columns)]
    return table, details, [p for p in plots if p is not None]


def _table(heading: str, setting: str, values: pd.DataFrame) -> Table:
    frame = values.map(_pct).reset_index()
    return Table(heading=heading, setting=setting, frame=frame,
                 align=("left",) + ("right",) * (frame.shape[1] - 1),
                 values=values * 100)


def _plot(dataset: str, group: tuple[str, str, str], setting: str, attack: str, defenses: list[str],
          cells: dict[tuple, _Cell], clean: dict[str, _Cell], taken_files: set[str]) -> Plot | None:
    threat_model, source, surface = group
    mine = {(d, b): c for (d, a, b), c in cells.items() if a == attack and b[1] is not None}
    if not mine:  # an unbounded-only attack has no x position to plot at
        return None
    params = list(dict.fromkeys(param for _, (param, _) in mine))
    zero_is_clean = set(params) <= _ZERO_IS_CLEAN
    series = []
    for defense in defenses:
        points = {budget: cell for (d, (_, budget)), cell in mine.items() if d == defense}
        if points and zero_is_clean and 0.0 not in points and defense in clean:
            points[0.0] = clean[defense]
        if not points:
            continue
        xs = sorted(points)
        intervals = [points[x].interval for x in xs]
        series.append((defense, tuple(xs), tuple(100 * points[x].acc for x in xs),
                       tuple(100 * lo for lo, _ in intervals), tuple(100 * hi for _, hi in intervals)))

    parts = [dataset, threat_model, attack]
    # Transfer and non-deployed surfaces would otherwise collide with the white-box plot.
    if source != "white-box":
        parts.append(source.replace(":", "-"))
    if surface and surface != "deployed":
        parts.append(surface)
    stem = "__".join(_sanitize(p) for p in parts)
    filename, i = f"{stem}.png", 2
    while filename in taken_files:
        filename, i = f"{stem}-{i}.png", i + 1
    taken_files.add(filename)

    xs = [x for s in series for x in s[1]]
    # Constants such as C&W's c span orders of magnitude; a log axis keeps them apart.
    log_x = min(xs) > 0 and max(xs) / min(xs) >= 100
    return Plot(filename=filename, caption=f"{dataset} — {setting} — {attack}",
                xlabel=" / ".join(_axis_label(p) for p in params), log_x=log_x, series=tuple(series))


def _produced(rows: list[_Row], total: int) -> str:
    """The "how this was produced" line; versions and commit are the newest row's."""
    suites = sorted({r.suite for r in rows if r.suite})
    newest = max(rows, key=_recency)
    try:
        versions = json.loads(newest.versions) if newest.versions else {}
    except json.JSONDecodeError:
        versions = newest.versions  # shown as stored rather than dropped
    if isinstance(versions, dict):
        versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    text = (f"Produced by advbench (bench.report) from {total} stored result{'s' if total != 1 else ''}"
            f" of suite{'s' if len(suites) != 1 else ''} {', '.join(suites) or MISSING}")
    superseded = total - len(rows)
    if superseded:
        text += f" ({superseded} superseded by newer reruns, not shown)"
    text += f"; newest result {newest.created_at or MISSING}, commit {newest.git_commit or MISSING}"
    if versions:
        text += f", versions: {versions}"
    return text + "."


_LEGEND = ("Cells: accuracy (%) under each attack and budget, pooled over seeds. "
           "Worst case: an example counts as robust only if it survives every attack at that budget. "
           "Rows: most robust (mean over attack columns) first. "
           f"{MISSING}: no result, or not computable. n, 95% intervals and store keys are in the details tables.")


def _frame_table(heading: str, setting: str, frame: pd.DataFrame, left_columns: int = 1) -> Table:
    """A display frame as it is: the first ``left_columns`` columns (labels) left-aligned, the rest right."""
    frame = frame.astype(str)
    left = min(left_columns, frame.shape[1])
    return Table(heading=heading, setting=setting, frame=frame,
                 align=("left",) * left + ("right",) * (frame.shape[1] - left))


def compute_leaderboard(results: pd.DataFrame | None, *, title: str = DEFAULT_TITLE,
                        detections: pd.DataFrame | None = None) -> Leaderboard:
    """Compute every table and plot series of the leaderboard (no I/O)."""
    detectors = detector_sections(detections, _frame_table, _sanitize)
    if results is None or results.empty:
        produced = _produced_detections(detections) if detectors else ""
        return Leaderboard(title=title, produced=produced, legend=_LEGEND, detectors=detectors)
    rows = _dedupe(_normalize(results))
    produced = _produced(rows, total=len(results))
    if detectors:
        produced += " " + _produced_detections(detections, lead="Also")

    taken_files: set[str] = set()
    sections = []
    for dataset in sorted({r.dataset for r in rows}):
        ds_rows = [r for r in rows if r.dataset == dataset]
        clean_rows: dict[str, list[_Row]] = defaultdict(list)
        groups: dict[tuple[str, str, str], list[_Row]] = defaultdict(list)
        for row in ds_rows:
            if row.is_clean:
                clean_rows[row.defense].append(row)
            else:
                groups[(row.threat_model, row.source, row.surface)].append(row)
        clean = {d: _pool(rs) for d, rs in clean_rows.items()}

        tables: list[Table] = []
        details = [_detail_row("clean", d, CLEAN_ATTACK, MISSING, clean[d]) for d in sorted(clean)]
        plots: list[Plot] = []
        for group in sorted(groups, key=_group_order):
            table, group_details, group_plots = _build_group(
                dataset, group, groups[group], clean, taken_files)
            tables.append(table)
            details.extend(group_details)
            plots.extend(group_plots)
        tables.extend(_paper_views(dataset, results[results["dataset"] == dataset]))
        if not tables:  # only clean rows so far: still show them
            values = pd.DataFrame({"Clean": [clean[d].acc for d in sorted(clean)]},
                                  index=pd.Index(sorted(clean), name="Defense"))
            values = values.sort_values("Clean", ascending=False, kind="stable")
            tables.append(_table(f"{dataset} — clean accuracy", "clean accuracy", values))
        detail_frame = pd.DataFrame(details, columns=list(_DETAIL_COLUMNS))
        details_table = Table(heading=f"{dataset} — details", setting="details", frame=detail_frame,
                              align=_DETAIL_ALIGN)
        sections.append(DatasetSection(name=dataset, tables=tables, details=details_table, plots=plots))
    return Leaderboard(title=title, produced=produced, legend=_LEGEND, datasets=sections, detectors=detectors)


def _produced_detections(detections: pd.DataFrame, lead: str = "Produced by advbench (bench.report) from") -> str:
    newest = detections.sort_values("created_at").iloc[-1]
    suites = sorted(s for s in detections["suite"].dropna().unique() if s)
    return (f"{lead} {len(detections)} stored detection results of "
            f"suite{'s' if len(suites) != 1 else ''} {', '.join(suites) or MISSING}; newest result "
            f"{newest['created_at'] or MISSING}, commit {newest['git_commit'] or MISSING}.")


def _paper_views(dataset: str, results: pd.DataFrame) -> list[Table]:
    """The paper-shaped tables of bench.views, where the results have what they need."""
    tables = []
    ensemble = views.ensemble_view(results)
    if ensemble is not None:
        setting = "ensembles: single vs ensemble, Grad. 1 / Grad. 2 / adaptive (Strauss et al. Table 2 layout)"
        kappa = ensemble.pop("κ (clean)")
        frame = ensemble.map(_pct).reset_index()
        frame["κ (clean)"] = [MISSING if math.isnan(k) else f"{k:.3f}" for k in kappa]
        align = ("left", "left") + ("right",) * (frame.shape[1] - 2)
        tables.append(Table(f"{dataset} — {setting}", setting, frame, align, ensemble * 100))
    comparison = views.defense_comparison_view(results)
    if comparison is not None:
        setting = "defenses compared, ensembles under Grad. 2 (Strauss et al. Table 4 layout)"
        tables.append(_table(f"{dataset} — {setting}", setting, comparison))
    return tables


def leaderboard_tables(results: pd.DataFrame | None,
                       detections: pd.DataFrame | None = None) -> list[tuple[str, pd.DataFrame]]:
    """(heading, display frame) of every table, details included, in rendering order."""
    board = compute_leaderboard(results, detections=detections)
    return ([(t.heading, t.frame) for s in board.datasets for t in (*s.tables, s.details)]
            + [(t.heading, t.frame) for s in board.detectors for t in s.tables])


# --------------------------------------------------------------------------- rendering


def _md(text: str) -> str:
    """Escape data for a markdown table cell or heading.

    `|` would split a cell, a newline would end the row, and raw `<...>` is
    HTML to most markdown renderers.
    """
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
            .replace(">", "&gt;").replace("\r", " ").replace("\n", " "))


def _md_table(table: Table) -> str:
    rows = [[_md(v) for v in row] for row in table.frame.itertuples(index=False)]
    # disable_numparse: tabulate would otherwise reformat "71.0" as "71".
    return tabulate(rows, headers=[_md(c) for c in table.frame.columns], tablefmt="github",
                    colalign=table.align, disable_numparse=True)


def render_markdown(board: Leaderboard) -> str:
    lines = [f"# {_md(board.title)}", ""]
    if board.empty:
        lines += ["No results yet: run a suite (`advbench run suites/<name>.yaml`) to fill this leaderboard.", ""]
        return "\n".join(lines)
    lines += [_md(board.produced), "", _md(board.legend), ""]
    for section in board.datasets:
        lines += [f"## {_md(section.name)}", ""]
        for table in section.tables:
            lines += [f"### {_md(table.setting)}", "", _md_table(table), ""]
        lines += [f"### Details: {_md(section.name)}", "", _md_table(section.details), ""]
        if section.plots:
            lines += [f"### Plots: {_md(section.name)}", ""]
            for plot in section.plots:
                alt = _md(plot.caption).replace("[", "\\[").replace("]", "\\]")
                lines += [f"![{alt}]({plot.path})", ""]
    for section in board.detectors:
        lines += [f"## {_md(section.name)}", ""]
        for table in section.tables:
            lines += [f"### {_md(table.setting)}", "", _md_table(table), ""]
        for heatmap in section.heatmaps:
            alt = _md(heatmap.caption).replace("[", "\\[").replace("]", "\\]")
            lines += [f"![{alt}]({heatmap.path})", ""]
    return "\n".join(lines)


def _template() -> jinja2.Template:
    source = resources.files("bench").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    # autoescape=True explicitly: select_autoescape() keys on the file extension,
    # and ".html.j2" would not match, silently leaving data unescaped.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)


def render_html(board: Leaderboard) -> str:
    return _template().render(board=board)


def _render_png(plot: Plot) -> bytes:
    # Figure + FigureCanvasAgg rather than pyplot: no global backend switch and no
    # figure registry, so nothing leaks into (or breaks) other pyplot users.
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    linestyles = ("-", "--", ":", "-.")
    for i, (label, xs, ys, lows, highs) in enumerate(plot.series):
        y = np.asarray(ys)
        # Clip: at 0% or 100% the interval's float end can sit a hair inside the point.
        yerr = np.clip(np.vstack([y - np.asarray(lows), np.asarray(highs) - y]), 0.0, None)
        ax.errorbar(xs, ys, yerr=yerr, marker="o", markersize=4, capsize=3,
                    linestyle=linestyles[(i // 10) % len(linestyles)], label=_mpl_text(label, legend=True))
    ax.set_xlabel(_mpl_text(plot.xlabel))
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    if plot.log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(_mpl_text(plot.caption), fontsize="medium")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    # No "Software" tag: the committed PNGs should not change with the matplotlib version.
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    fig.clear()  # no pyplot registry holds the figure; clearing frees its artists now
    return buffer.getvalue()


def _mpl_text(text: str, *, legend: bool = False) -> str:
    text = str(text).replace("$", r"\$")  # "$" would start mathtext (and may fail to parse)
    if legend and text.startswith("_"):
        text = "\u200b" + text  # matplotlib hides legend labels that start with "_"
    return text


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
                      detections: pd.DataFrame | None = None) -> list[Path]:
    """Write README.md, index.html and plots/*.png into `out_dir`; return the written paths.

    Plots are written first and README.md last, each atomically, so an
    interrupted build leaves the previous README intact. PNGs in
    ``out_dir/plots`` that this build did not produce are removed afterwards.
    """
    out_dir = Path(out_dir)
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    board = compute_leaderboard(results, title=title, detections=detections)

    written: list[Path] = []
    for section in board.datasets:
        for plot in section.plots:
            path = plots_dir / plot.filename
            _write_atomic(path, _render_png(plot))
            written.append(path)
    for detector in board.detectors:
        for heatmap in detector.heatmaps:
            path = plots_dir / heatmap.filename
            _write_atomic(path, render_heatmap(heatmap, _mpl_text))
            written.append(path)
    html_path, readme_path = out_dir / "index.html", out_dir / "README.md"
    _write_atomic(html_path, render_html(board).encode("utf-8"))
    _write_atomic(readme_path, render_markdown(board).encode("utf-8"))

    produced = {p.name for p in written}
    for stale in plots_dir.glob("*.png"):
        if stale.is_file() and stale.name not in produced:
            stale.unlink()
    return [readme_path, html_path, *written]
