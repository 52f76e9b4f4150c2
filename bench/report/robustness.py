"""The robustness part of the leaderboard: stored result rows -> one section per dataset.

How numbers are counted
-----------------------
* A *cell* is one (dataset, defense, attack, budget) within a table; a table is
  one (dataset, threat model, source, attack surface). Rows of several seeds
  are pooled: accuracy = total correct / total n, and the 95% Wilson interval
  is recomputed on the pooled counts (an average of per-seed accuracies would
  weight a small seed like a large one). The other metrics pool as their
  ``MetricSpec`` says (bench.metrics).
* "Worst case" is counted per example: at every budget that two or more attacks
  of a table share, an example counts as robust only if it survived every one
  of them (AND of the per-example ``correct`` arrays of the same
  dataset/defense/seed/surface/source). Taking the minimum of the attacks'
  accuracies instead would overstate robustness whenever attacks break
  different examples. Without per-example arrays the cell shows "—". A
  stochastic defense scored several times (``repeats``) shows the mean over
  the repeats in its attack cells, but its per-example arrays say "correct in
  every repeat", so its worst cases and headline count an example as robust
  only if it survived every attack in every repeat.
* The headline of a table is the per-example worst case over every attack in
  it at the largest budget they all ran at (one attack: its own cell), shown
  with its 95% interval after Clean. Rows are ranked by it, most robust first;
  a row without it comes after, by name (rows that cover different columns are
  never ranked against each other). Columns with no number in any row are
  dropped.
* A leaderboard row is one trained model configuration: (dataset, defense
  config with defaults filled in, scoring surface). Two configurations that
  share a label (two suites in one store, each with its own ``undefended``) are
  two rows, told apart by their suite's name where that separates them, else by
  a short hash of the config (``separate_models``); cells and worst cases never
  combine results of two models.
* If the store holds several rows for the same (dataset, defense, surface,
  source, attack, budget, seed) -- a rerun after a code change -- the newest
  (``created_at``) wins; the produced-by line says how many were superseded.

Every number can be traced: the per-dataset details table lists, for every
cell, its seeds, n, interval, the metrics marked ``detail`` in their specs
(attack success rate, distortion medians, wall time) and the store keys of the
rows it pools.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from ..checks import Verdict
from ..checks import flags as check_flags
from ..labels import BUDGET_SYMBOLS, budget_label
from ..metrics import METRICS, HitsOfN, MetricSpec, wilson_interval
from ..threat_models import ThreatModel
from .format import MISSING, PCT, metric_text, natural_key, pct, sanitize
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


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class _Cell(HitsOfN):
    """Pooled counts of one cell and the store rows behind them. A stochastic defense's attack cell counts
    the examples robust in every repeat (``hits``, strict: what worst cases and headlines count too) and
    keeps the mean over repeats beside it (``mean_hits``), so the table shows both the same way."""

    hits: float
    n: int
    rows: tuple[Row, ...]
    worst_case: bool = False
    mean_hits: float | None = None  # the mean over repeats' count, where the rows were scored repeatedly

    @property
    def shown_acc(self) -> float:
        """What the details table lists as its accuracy: the mean over repeats where there is one."""
        return (self.mean_hits if self.mean_hits is not None else self.hits) / self.n if self.n else math.nan

    @property
    def shown_interval(self) -> tuple[float, float]:
        return wilson_interval(self.mean_hits if self.mean_hits is not None else self.hits, self.n)

    def text(self) -> str:
        """The cell as a table shows it: "16.0 (17.8)" is strict, then the mean over repeats."""
        return pct(self.acc) if self.mean_hits is None else f"{pct(self.acc)} ({pct(self.mean_hits / self.n)})"



def _strict_hits(row: Row) -> float:
    """The examples robust in every repeat of a repeatedly scored row."""
    if row.correct is not None:
        return int(row.correct.sum())
    strict = row.metrics.get("robust_acc_strict")
    return round(strict * row.n) if strict is not None else row.hits


def _pool(rows: Iterable[Row]) -> _Cell:
    rows = tuple(sorted(rows, key=lambda r: r.seed))
    n = sum(r.n for r in rows)
    if not any(r.is_clean for r in rows) and any((r.metrics.get("repeats") or 1) > 1 for r in rows):
        return _Cell(hits=sum(_strict_hits(r) for r in rows), n=n, rows=rows, mean_hits=sum(r.hits for r in rows))
    return _Cell(hits=sum(r.hits for r in rows), n=n, rows=rows)


def _worst_case(rows_by_attack: dict[str, list[Row]], attacks: tuple[str, ...]) -> _Cell | None:
    """Per-example worst case over `attacks`, pooled over seeds; None if not computable.

    Every seed must have every attack with a per-example array of one length:
    a worst case over a subset of the attacks (or of the seeds) would be a
    different, more optimistic number under the same heading.
    """
    by_seed: dict[int, dict[str, Row]] = defaultdict(dict)
    for attack in attacks:
        for row in rows_by_attack.get(attack, []):
            by_seed[row.seed][attack] = row
    if not by_seed:
        return None
    hits = n = 0
    used: list[Row] = []
    for seed in sorted(by_seed):
        per_attack = by_seed[seed]
        if len(per_attack) != len(attacks):
            return None
        arrays = [per_attack[a].correct for a in attacks]
        if any(a is None for a in arrays) or len({a.size for a in arrays}) != 1:
            return None
        # Rows that attacked other images (an attack on fewer, or on those its model got right) do not align.
        if len({per_attack[a].examples for a in attacks if per_attack[a].examples}) > 1:
            return None
        survived = np.logical_and.reduce(arrays)
        hits += int(survived.sum())
        n += int(survived.size)
        used.extend(per_attack[a] for a in attacks)
    return _Cell(hits=hits, n=n, rows=tuple(used), worst_case=True)


def _interval_text(cell: _Cell | None) -> str:
    """A headline: "16.0 [11.2, 22.0]", and the mean over repeats after it where there is one."""
    if cell is None:
        return MISSING
    low, high = cell.interval
    mean = f" ({pct(cell.mean_hits / cell.n)})" if cell.mean_hits is not None else ""
    return f"{pct(cell.acc)} [{pct(low)}, {pct(high)}]{mean}"


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


def _group_order(group: tuple[str, str, str]) -> tuple:
    threat_model, source, surface = group
    return (ThreatModel.rank_of(threat_model), threat_model, source != "white-box", natural_key(source),
            surface != "deployed", natural_key(surface))


def _budget_order(budget: tuple[str, float | None]) -> tuple:
    param, value = budget
    return (param, value is None, value if value is not None else 0.0)


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


def _detail_row(setting: str, defense: str, attack: str, budget: str, cell: _Cell) -> list[str]:
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


def _score(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _headline_budget(columns: list[tuple], attacks_at: dict[tuple, list[str]],
                     headline_eps: float | None) -> tuple | None:
    """The suite's headline eps where some attack of the table ran at it, else the largest budget every
    attack of the table ran at; None where there is no such budget."""
    if headline_eps is not None and ("eps", float(headline_eps)) in attacks_at:
        return ("eps", float(headline_eps))
    every = {a for a, _ in columns}
    shared = [b for b, ran in attacks_at.items() if b[1] is not None and set(ran) == every]
    return max(shared, key=_budget_order) if shared else None


def _build_group(dataset: str, group: tuple[str, str, str], rows: list[Row], clean: dict[str, _Cell],
                 taken_files: set[str], headline_eps: float | None = None,
                 flags: dict[str, list[int]] | None = None) -> tuple[Table, list[list[str]], list[Plot]]:
    """One table of a dataset section; ``flags``: defense -> the soundness checks it failed in this threat
    model (bench.checks), marked after its label and its headline."""
    threat_model, source, surface = group
    setting = _setting(threat_model, source, surface)

    cells_rows: dict[tuple[str, str, tuple], list[Row]] = defaultdict(list)
    for row in rows:
        cells_rows[(row.defense, row.attack, (row.budget_param, row.budget))].append(row)
    columns = sorted({(a, b) for _, a, b in cells_rows}, key=lambda c: (natural_key(c[0]), _budget_order(c[1])))
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

    def at(defense: str, budget: tuple) -> _Cell | None:
        """The worst case over the attacks run at ``budget`` (one attack: its own cell)."""
        ran = attacks_at[budget]
        if len(ran) >= 2:
            return worst[(defense, budget)]
        return cells.get((defense, ran[0], budget))  # a stochastic defense's: strict, as its worst cases

    # Rows rank by the headline; a row without it is not ranked against those with it (nor, without a
    # headline, a row that misses a column against one that has them all).
    headline_budget = _headline_budget(columns, attacks_at, headline_eps)
    headline = {d: at(d, headline_budget) for d in defenses} if headline_budget is not None else {}
    worst_budgets = [b for b in worst_budgets if b != headline_budget]  # the headline column shows it

    def rank(defense: str) -> tuple:
        if headline_budget is not None:
            cell = headline[defense]
            return (0, -cell.acc, defense) if cell else (1, 0.0, defense)
        values = [acc(defense, c) for c in columns]
        complete = not any(math.isnan(v) for v in values)
        return (0, -_score(values), defense) if complete else (1, 0.0, defense)

    order = sorted(defenses, key=rank)

    taken: set[str] = {"Defense", "Clean"}
    headline_columns = []
    # A table of one attack at one budget: that column is the headline, not repeated beside itself.
    single = len(columns) == 1 and headline_budget is not None
    if headline_budget is not None and not single:
        ran = attacks_at[headline_budget]
        what = "worst case" if len(ran) >= 2 else ran[0]
        headline_columns = [_unique(f"Headline: {what} {budget_label(*headline_budget)}", taken)]
    labels = [_unique(f"{a} {budget_label(*b)}", taken) for a, b in columns]
    worst_labels = [_unique(f"Worst case {budget_label(*b)}", taken) for b in worst_budgets]

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
    # A column no row has a number in says nothing; the headline stays ("—": not computable, e.g. no
    # per-example arrays), since its absence would read as "no headline".
    values = values[[c for c in values.columns if c in headline_columns or values[c].notna().any()]]

    table = values_table(f"{dataset} — {setting}", setting, values)
    frame = table.frame.copy()
    for (attack, budget), label in zip(columns, labels):  # a stochastic defense's: strict (mean over repeats)
        if label in frame.columns:
            frame[label] = [cell.text() if (cell := cells.get((d, attack, budget))) else text
                            for d, text in zip(order, frame[label])]
    shown_headline = headline_columns or ([labels[0]] if single else [])
    for label in shown_headline:  # the headline with its 95% interval
        frame[label] = [_interval_text(headline[d]) for d in order]
    if flags:  # a flagged row carries the flag after its label and its headline
        for column in [frame.columns[0], *shown_headline]:
            frame[column] = [flagged(text, flags.get(d)) for text, d in zip(frame[column], order)]
    table = dataclasses.replace(table, frame=frame, flagged_rows=tuple(bool((flags or {}).get(d)) for d in order))
    plots = [plot for attack in dict.fromkeys(a for a, _ in columns)
             for plot in _plots(dataset, group, setting, attack, order, cells, clean, taken_files)]
    return table, details, plots


MAX_LINES_PER_PLOT = 6  # more lines on one axes cannot be told apart: split into numbered parts


def _plots(dataset: str, group: tuple[str, str, str], setting: str, attack: str, defenses: list[str],
           cells: dict[tuple, _Cell], clean: dict[str, _Cell], taken_files: set[str]) -> list[Plot]:
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
    clean_rows: dict[str, list[Row]] = defaultdict(list)
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        if row.is_clean:
            clean_rows[row.defense].append(row)
        else:
            groups[(row.threat_model, row.source, row.surface)].append(row)
    clean = {d: _pool(rs) for d, rs in clean_rows.items()}

    tables: list[Table] = list(best)  # the section opens with its best-known numbers (bench.report.summary)
    details = [_detail_row("clean", d, CLEAN_ATTACK, MISSING, clean[d]) for d in sorted(clean)]
    plots: list[Plot] = []
    for group in sorted(groups, key=_group_order):
        flags = {defense: numbers for (_, defense, tm), numbers in failed.items() if tm == group[0]}
        table, group_details, group_plots = _build_group(dataset, group, groups[group], clean, taken_files,
                                                         (headline or {}).get(group[0]), flags)
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
    details_table = Table(heading=f"{dataset} — details", setting="details", frame=detail_frame.drop(columns=list(empty)),
                          align=tuple(a for c, a in zip(_DETAIL_COLUMNS, _DETAIL_ALIGN) if c not in empty))
    return DatasetSection(name=dataset, tables=tables, details=details_table, plots=plots)
