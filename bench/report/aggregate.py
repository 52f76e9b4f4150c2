"""The robustness numbers of the leaderboard: deduplicated store rows -> typed numbers, no layout.

``section_numbers`` turns one dataset's rows (``bench.report.rows.Row``, already deduplicated) into a
``SectionNumbers``: each defense's pooled clean cell and, per table, a ``GroupNumbers`` holding every pooled
cell, every per-example worst case, the headline and the rank order. ``bench.report.robustness`` lays these
out as tables, details and plots; it counts nothing itself.

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
  (``created_at``) wins (``bench.report.rows.dedupe``); the produced-by line
  says how many were superseded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..metrics import HitsOfN, wilson_interval
from ..threat_models import ThreatModel
from .format import natural_key
from .rows import Row

Budget = tuple[str, "float | None"]  # (budget parameter, value; None = unbounded)
Column = tuple[str, Budget]  # (attack, budget): one column of a table
Group = tuple[str, str, str]  # (threat model, source, surface): one table of a dataset section


@dataclass(frozen=True)
class Cell(HitsOfN):
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


def strict_hits(row: Row) -> float:
    """The examples robust in every repeat of a repeatedly scored row."""
    if row.correct is not None:
        return int(row.correct.sum())
    strict = row.metrics.get("robust_acc_strict")
    return round(strict * row.n) if strict is not None else row.hits


def pool(rows: Iterable[Row]) -> Cell:
    """One cell: ``rows`` (one per seed) pooled by counts."""
    rows = tuple(sorted(rows, key=lambda r: r.seed))
    n = sum(r.n for r in rows)
    if not any(r.is_clean for r in rows) and any((r.metrics.get("repeats") or 1) > 1 for r in rows):
        return Cell(hits=sum(strict_hits(r) for r in rows), n=n, rows=rows, mean_hits=sum(r.hits for r in rows))
    return Cell(hits=sum(r.hits for r in rows), n=n, rows=rows)


def worst_case(rows_by_attack: dict[str, list[Row]], attacks: tuple[str, ...]) -> Cell | None:
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
    return Cell(hits=hits, n=n, rows=tuple(used), worst_case=True)


# --------------------------------------------------------------------------- orders


def group_order(group: Group) -> tuple:
    """Tables in a section: threat models in their registry's order, white-box before transfer, the deployed
    surface first."""
    threat_model, source, surface = group
    return (ThreatModel.rank_of(threat_model), threat_model, source != "white-box", natural_key(source),
            surface != "deployed", natural_key(surface))


def budget_order(budget: Budget) -> tuple:
    param, value = budget
    return (param, value is None, value if value is not None else 0.0)


def _score(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _headline_budget(columns: list[Column], attacks_at: dict[Budget, list[str]],
                     headline_eps: float | None) -> Budget | None:
    """The suite's headline eps where some attack of the table ran at it, else the largest budget every
    attack of the table ran at; None where there is no such budget."""
    if headline_eps is not None and ("eps", float(headline_eps)) in attacks_at:
        return ("eps", float(headline_eps))
    every = {a for a, _ in columns}
    shared = [b for b, ran in attacks_at.items() if b[1] is not None and set(ran) == every]
    return max(shared, key=budget_order) if shared else None


# --------------------------------------------------------------------------- one table's numbers


@dataclass(frozen=True)
class GroupNumbers:
    """Every number of one table (one threat model, source and surface of a dataset), before any layout."""

    group: Group
    columns: tuple[Column, ...]  # every (attack, budget) some defense ran, in display order
    # (defense, attack, budget) -> its pooled cell, in the order the rows first name them
    cells: dict[tuple[str, str, Budget], Cell]
    attacks_at: dict[Budget, list[str]]  # budget -> the attacks that ran at it, in column order
    # Budgets two or more attacks share, in order, the headline's left out (the headline column shows it).
    worst_budgets: tuple[Budget, ...]
    worst: dict[tuple[str, Budget], Cell | None]  # (defense, budget) -> the per-example worst case there
    headline_budget: Budget | None  # None: the table has no headline
    headline: dict[str, Cell | None]  # defense -> its headline (empty without a headline budget)
    order: tuple[str, ...]  # the defenses, ranked: most robust first, the unranked after, by name

    def cell(self, defense: str, column: Column) -> Cell | None:
        attack, budget = column
        return self.cells.get((defense, attack, budget))

    def acc(self, defense: str, column: Column) -> float:
        cell = self.cell(defense, column)
        return cell.acc if cell else math.nan


def group_numbers(group: Group, rows: list[Row], headline_eps: float | None = None) -> GroupNumbers:
    """Pool ``rows`` (one table's attack rows) into cells, worst cases and a headline, and rank the defenses."""
    cells_rows: dict[tuple[str, str, Budget], list[Row]] = defaultdict(list)
    for row in rows:
        cells_rows[(row.defense, row.attack, (row.budget_param, row.budget))].append(row)
    columns = sorted({(a, b) for _, a, b in cells_rows}, key=lambda c: (natural_key(c[0]), budget_order(c[1])))
    cells = {k: pool(v) for k, v in cells_rows.items()}

    attacks_at: dict[Budget, list[str]] = defaultdict(list)
    for attack, budget in columns:
        attacks_at[budget].append(attack)
    attacks_at = dict(attacks_at)
    worst_budgets = sorted((b for b, a in attacks_at.items() if len(a) >= 2), key=budget_order)

    defenses = sorted({d for d, _, _ in cells_rows})
    worst: dict[tuple[str, Budget], Cell | None] = {}
    for defense in defenses:
        for budget in worst_budgets:
            attacks = tuple(attacks_at[budget])
            by_attack = {a: cells_rows.get((defense, a, budget), []) for a in attacks}
            worst[(defense, budget)] = worst_case(by_attack, attacks)

    def at(defense: str, budget: Budget) -> Cell | None:
        """The worst case over the attacks run at ``budget`` (one attack: its own cell)."""
        ran = attacks_at[budget]
        if len(ran) >= 2:
            return worst[(defense, budget)]
        return cells.get((defense, ran[0], budget))  # a stochastic defense's: strict, as its worst cases

    # Rows rank by the headline; a row without it is not ranked against those with it (nor, without a
    # headline, a row that misses a column against one that has them all).
    headline_budget = _headline_budget(columns, attacks_at, headline_eps)
    headline = {d: at(d, headline_budget) for d in defenses} if headline_budget is not None else {}

    def rank(defense: str) -> tuple:
        if headline_budget is not None:
            cell = headline[defense]
            return (0, -cell.acc, defense) if cell else (1, 0.0, defense)
        values = [cell.acc if (cell := cells.get((defense, *c))) else math.nan for c in columns]
        complete = not any(math.isnan(v) for v in values)
        return (0, -_score(values), defense) if complete else (1, 0.0, defense)

    return GroupNumbers(
        group=group, columns=tuple(columns), cells=cells, attacks_at=attacks_at,
        worst_budgets=tuple(b for b in worst_budgets if b != headline_budget), worst=worst,
        headline_budget=headline_budget, headline=headline, order=tuple(sorted(defenses, key=rank)))


# --------------------------------------------------------------------------- one section's numbers


@dataclass(frozen=True)
class SectionNumbers:
    """Every robustness number of one dataset section: clean cells, and one ``GroupNumbers`` per table."""

    clean: dict[str, Cell]  # defense -> its pooled clean accuracy
    groups: tuple[GroupNumbers, ...]  # in display order (``group_order``)


def section_numbers(rows: list[Row], headline: dict[str, float] | None = None) -> SectionNumbers:
    """``rows``: one dataset's deduplicated rows; ``headline``: threat model -> the suite's headline eps."""
    clean_rows: dict[str, list[Row]] = defaultdict(list)
    groups: dict[Group, list[Row]] = defaultdict(list)
    for row in rows:
        if row.is_clean:
            clean_rows[row.defense].append(row)
        else:
            groups[(row.threat_model, row.source, row.surface)].append(row)
    return SectionNumbers(
        clean={d: pool(rs) for d, rs in clean_rows.items()},
        groups=tuple(group_numbers(g, groups[g], (headline or {}).get(g[0])) for g in sorted(groups, key=group_order)))
