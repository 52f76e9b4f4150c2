"""The robustness part of the leaderboard, laid out: typed numbers -> one section per dataset.

``bench.report.aggregate`` counts (pooled cells, per-example worst cases, headline, rank order; how every
number is counted is in its docstring); this module only lays those numbers out as the ``Table``s and
``Plot``s of ``bench.report.model``: one table per threat model, source and surface, with its headline
column, its columns of attacks and budgets, its worst-case columns and the soundness flags; the details
table; the accuracy-vs-budget plots. It counts nothing itself, except each details column's metric pooled
over seeds as its ``MetricSpec`` says (``_pooled_text``).

Every number can be traced: the per-dataset details table lists, for every
cell, its seeds, n, interval, the metrics marked ``detail`` in their specs
(attack success rate, distortion medians, wall time) and the store keys of the
rows it pools.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import pandas as pd

from ..checks import Verdict
from ..checks import flags as check_flags
from ..labels import BUDGET_SYMBOLS, budget_label
from ..metrics import METRICS, MetricSpec
from ..threat_models import ThreatModel
from .aggregate import Cell, Group, GroupNumbers, section_numbers
from .format import MISSING, PCT, interval_text, metric_text, pct, sanitize
from .model import CLEAN_ATTACK, DatasetSection, Plot, Table, values_table
from .rows import DETAIL_METRICS as _DETAIL_METRICS
from .rows import Row
from .soundness import checks_tables, flagged

# For these budgets, budget 0 means "no attack", so clean accuracy is the curve's start.
_ZERO_IS_CLEAN = {"eps", "epsilon"}

LEGEND = ("Cells: accuracy (%) under each attack and budget, pooled over seeds; a stochastic defense's is strict "
          "(robust in every repeat), the mean over repeats in parentheses. "
          "Worst case: an example counts as robust only if it survives every attack at that budget. "
          "Headline: the worst case over every attack of the table at the suite's headline budget, else the "
          "largest budget they all ran at, with its 95% interval (a one-attack table: its column); rows are ranked "
          "by it, and a row without it is listed after, by name. "
          f"{MISSING}: no result, or not computable. n, 95% intervals and store keys are in the details tables.")


# --------------------------------------------------------------------------- cell text


def _cell_text(cell: Cell) -> str:
    """A cell as a table shows it: "16.0 (17.8)" is strict, then the mean over repeats."""
    return pct(cell.acc) if cell.mean_hits is None else f"{pct(cell.acc)} ({pct(cell.mean_hits / cell.n)})"


def _interval_text(cell: Cell | None) -> str:
    """A headline: "16.0 [11.2, 22.0]", and the mean over repeats after it where there is one."""
    if cell is None:
        return MISSING
    mean = f" ({pct(cell.mean_hits / cell.n)})" if cell.mean_hits is not None else ""
    return interval_text(cell.acc, cell.interval) + mean


def _pooled_text(spec: MetricSpec, rows: tuple[Row, ...]) -> str:
    """One metric of a cell's rows, pooled over seeds as its spec says."""
    values = [r.metrics[spec.name] for r in rows]
    if spec.pooling == "counts":
        if spec.attack_only and rows[0].is_clean:
            return MISSING
        counts = [r.count(spec.of) for r in rows]
        if any(v is None or not c for v, c in zip(values, counts)):
            return MISSING
        hits, total = sum(round(v * c) for v, c in zip(values, counts)), sum(counts)
        return pct(hits, of=total) if spec.fmt == PCT else metric_text(hits / total, spec.fmt)
    if spec.pooling == "per-seed":
        return " / ".join(metric_text(v, spec.fmt) for v in values)
    if spec.pooling in ("sum", "mean"):
        if any(v is None for v in values):
            return MISSING
        total = sum(values)
        return metric_text(total if spec.pooling == "sum" else total / len(values), spec.fmt)
    raise ValueError(f"metric {spec.name!r}: pooling {spec.pooling!r} has no details column")


# --------------------------------------------------------------------------- labels


def _axis_label(param: str) -> str:
    symbol = BUDGET_SYMBOLS.get(param)
    if symbol:
        return f"{symbol} ({param})"
    return param or "budget"


def _setting(threat_model: str, source: str, surface: str) -> str:
    parts = [ThreatModel.label_of(threat_model)]
    if source.startswith("transfer:"):
        parts.append(f"transfer from {source.split(':', 1)[1]}")
    else:
        parts.append(source)
    if surface and surface != "deployed":
        parts.append(f"surface {surface}")
    return ", ".join(parts)


def _unique(label: str, taken: set[str]) -> str:
    candidate, i = label, 2
    while candidate in taken:
        candidate, i = f"{label} ({i})", i + 1
    taken.add(candidate)
    return candidate


# --------------------------------------------------------------------------- tables


_DETAIL_COLUMNS = ("Setting", "Defense", "Attack", "Budget", "Seeds", METRICS["n"].label,
                   METRICS["robust_acc"].label, "95% CI (%)", *(m.label for m in _DETAIL_METRICS), "Keys")
_DETAIL_ALIGN = ("left",) * 5 + ("right",) * (3 + len(_DETAIL_METRICS)) + ("left",)


def _detail_row(setting: str, defense: str, attack: str, budget: str, cell: Cell) -> list[str]:
    low, high = cell.shown_interval
    rows = cell.rows
    if cell.worst_case:
        # Success rate and distortion belong to one attack; a worst case has none of its own.
        metrics = [MISSING] * len(_DETAIL_METRICS)
    else:
        metrics = [_pooled_text(spec, rows) for spec in _DETAIL_METRICS]
    seeds = ", ".join(str(s) for s in dict.fromkeys(r.seed for r in rows))
    keys = ", ".join(dict.fromkeys(r.key or MISSING for r in rows))
    return [setting, defense, attack, budget, seeds, str(cell.n), pct(cell.shown_acc),
            f"{pct(low)}–{pct(high)}", *metrics, keys]


def _build_group(dataset: str, numbers: GroupNumbers, clean: dict[str, Cell], taken_files: set[str],
                 flags: dict[str, list[int]] | None = None) -> tuple[Table, list[list[str]], list[Plot]]:
    """One table of a dataset section, its details rows and its plots; ``flags``: defense -> the soundness
    checks it failed in this threat model (bench.checks), marked after its label and its headline."""
    group, columns, attacks_at = numbers.group, numbers.columns, numbers.attacks_at
    headline_budget, headline, order = numbers.headline_budget, numbers.headline, numbers.order
    setting = _setting(*group)

    taken: set[str] = {"Defense", "Clean"}
    headline_columns = []
    # A table of one attack at one budget: that column is the headline, not repeated beside itself.
    single = len(columns) == 1 and headline_budget is not None
    if headline_budget is not None and not single:
        ran = attacks_at[headline_budget]
        what = "worst case" if len(ran) >= 2 else ran[0]
        headline_columns = [_unique(f"Headline: {what} {budget_label(*headline_budget)}", taken)]
    labels = [_unique(f"{a} {budget_label(*b)}", taken) for a, b in columns]
    worst_labels = [_unique(f"Worst case {budget_label(*b)}", taken) for b in numbers.worst_budgets]

    values = pd.DataFrame(index=pd.Index(order, name="Defense"),
                          columns=["Clean", *headline_columns, *labels, *worst_labels], dtype=float)
    details: list[list[str]] = []
    for defense in order:
        clean_cell = clean.get(defense)
        values.loc[defense, "Clean"] = clean_cell.acc if clean_cell else math.nan
        for label in headline_columns:
            cell = headline[defense]
            values.loc[defense, label] = cell.acc if cell else math.nan
            if cell and cell.worst_case:
                name = f"worst case ({', '.join(attacks_at[headline_budget])})"
                details.append(_detail_row(setting, defense, name, budget_label(*headline_budget), cell))
        for column, label in zip(columns, labels):
            values.loc[defense, label] = numbers.acc(defense, column)
            cell = numbers.cell(defense, column)
            if cell:
                details.append(_detail_row(setting, defense, column[0], budget_label(*column[1]), cell))
        for budget, label in zip(numbers.worst_budgets, worst_labels):
            cell = numbers.worst[(defense, budget)]
            values.loc[defense, label] = cell.acc if cell else math.nan
            if cell:
                name = f"worst case ({', '.join(attacks_at[budget])})"
                details.append(_detail_row(setting, defense, name, budget_label(*budget), cell))
    # A column no row has a number in says nothing; the headline stays ("—": not computable, e.g. no
    # per-example arrays), since its absence would read as "no headline".
    values = values[[c for c in values.columns if c in headline_columns or values[c].notna().any()]]

    table = values_table(f"{dataset} — {setting}", setting, values)
    frame = table.frame.copy()
    for column, label in zip(columns, labels):  # a stochastic defense's: strict (mean over repeats)
        if label in frame.columns:
            frame[label] = [_cell_text(cell) if (cell := numbers.cell(d, column)) else text
                            for d, text in zip(order, frame[label])]
    shown_headline = headline_columns or ([labels[0]] if single else [])
    for label in shown_headline:  # the headline with its 95% interval
        frame[label] = [_interval_text(headline[d]) for d in order]
    if flags:  # a flagged row carries the flag after its label and its headline
        for column in [frame.columns[0], *shown_headline]:
            frame[column] = [flagged(text, flags.get(d)) for text, d in zip(frame[column], order)]
    table = dataclasses.replace(table, frame=frame, flagged_rows=tuple(bool((flags or {}).get(d)) for d in order))
    plots = [plot for attack in dict.fromkeys(a for a, _ in columns)
             for plot in _plots(dataset, group, setting, attack, order, numbers.cells, clean, taken_files)]
    return table, details, plots


MAX_LINES_PER_PLOT = 6  # more lines on one axes cannot be told apart: split into numbered parts


def _plots(dataset: str, group: Group, setting: str, attack: str, defenses: tuple[str, ...],
           cells: dict[tuple, Cell], clean: dict[str, Cell], taken_files: set[str]) -> list[Plot]:
    """Robust accuracy vs budget of one attack, one line per defense that ran it at two or more budgets
    (one budget is a point, not a curve: the table has it), at most ``MAX_LINES_PER_PLOT`` lines a PNG."""
    threat_model, source, surface = group
    mine = {(d, b): c for (d, a, b), c in cells.items() if a == attack and b[1] is not None}
    params = list(dict.fromkeys(param for _, (param, _) in mine))
    zero_is_clean = set(params) <= _ZERO_IS_CLEAN
    series = []
    for defense in defenses:
        points = {budget: cell for (d, (_, budget)), cell in mine.items() if d == defense}
        if len(points) < 2:  # unbounded-only (no x position) or a single budget
            continue
        if zero_is_clean and 0.0 not in points and defense in clean:
            points[0.0] = clean[defense]
        xs = sorted(points)
        intervals = [points[x].interval for x in xs]
        series.append((defense, tuple(xs), tuple(100 * points[x].acc for x in xs),
                       tuple(100 * lo for lo, _ in intervals), tuple(100 * hi for _, hi in intervals)))
    if not series:
        return []

    parts = [dataset, threat_model, attack]
    # Transfer and non-deployed surfaces would otherwise collide with the white-box plot.
    if source != "white-box":
        parts.append(source.replace(":", "-"))
    if surface and surface != "deployed":
        parts.append(surface)
    stem = "__".join(sanitize(p) for p in parts)
    xs = [x for s in series for x in s[1]]
    # Constants such as C&W's c span orders of magnitude; a log axis keeps them apart.
    log_x = min(xs) > 0 and max(xs) / min(xs) >= 100
    chunks = [series[i:i + MAX_LINES_PER_PLOT] for i in range(0, len(series), MAX_LINES_PER_PLOT)]
    plots = []
    for k, chunk in enumerate(chunks, 1):
        part_stem = stem if len(chunks) == 1 else f"{stem}__part{k}"
        filename, i = f"{part_stem}.png", 2
        while filename in taken_files:
            filename, i = f"{part_stem}-{i}.png", i + 1
        taken_files.add(filename)
        part = "" if len(chunks) == 1 else f" ({k} of {len(chunks)})"
        plots.append(Plot(filename=filename, caption=f"{dataset} — {setting} — {attack}{part}",
                          xlabel=" / ".join(_axis_label(p) for p in params), log_x=log_x, series=tuple(chunk)))
    return plots


def dataset_section(dataset: str, rows: list[Row], taken_files: set[str],
                    views: Iterable[Table] = (), legend: Table | None = None,
                    headline: dict[str, float] | None = None,
                    verdicts: Iterable[Verdict] = (), best: Iterable[Table] = ()) -> DatasetSection:
    """One dataset's tables (one per threat model/source/surface, then ``views``), details and plots.

    ``rows`` are the dataset's deduplicated rows; ``taken_files`` the plot file names used so far
    (names stay unique across datasets); ``verdicts`` the dataset's soundness-check verdicts (bench.checks):
    flagged rows are marked, and the checks tables follow the robustness tables.
    """
    verdicts = list(verdicts)
    failed = check_flags(verdicts)
    numbers = section_numbers(rows, headline)
    clean = numbers.clean

    tables: list[Table] = list(best)  # the section opens with its best-known numbers (bench.report.summary)
    details = [_detail_row("clean", d, CLEAN_ATTACK, MISSING, clean[d]) for d in sorted(clean)]
    plots: list[Plot] = []
    for group in numbers.groups:
        flags = {defense: found for (_, defense, tm), found in failed.items() if tm == group.group[0]}
        table, group_details, group_plots = _build_group(dataset, group, clean, taken_files, flags)
        tables.append(table)
        details.extend(group_details)
        plots.extend(group_plots)
    tables.extend(checks_tables(dataset, verdicts))
    tables.extend(views)
    if not tables:  # only clean rows so far: still show them
        values = pd.DataFrame({"Clean": [clean[d].acc for d in sorted(clean)]},
                              index=pd.Index(sorted(clean), name="Defense"))
        values = values.sort_values("Clean", ascending=False, kind="stable")
        tables.append(values_table(f"{dataset} — clean accuracy", "clean accuracy", values))
    if legend is not None:  # what each row label is, under the tables it explains
        tables.append(legend)
    detail_frame = pd.DataFrame(details, columns=list(_DETAIL_COLUMNS))
    # A metric no row of the section has (repeats, without a stochastic defense) is no column.
    empty = {m.label for m in _DETAIL_METRICS if (detail_frame[m.label] == MISSING).all()}
    details_table = Table(heading=f"{dataset} — details", setting="details",
                          frame=detail_frame.drop(columns=list(empty)),
                          align=tuple(a for c, a in zip(_DETAIL_COLUMNS, _DETAIL_ALIGN) if c not in empty))
    return DatasetSection(name=dataset, tables=tables, details=details_table, plots=plots)
