"""Stored result rows, normalized: one ``Row`` per store row, with the checks every report makes before it
counts anything (a damaged row is left out and named, never shown), and the identity that makes a newer rerun
supersede an older row (``dedupe``: the one newest-wins rule every report reads). ``bench.report.aggregate``
counts the rows into cells, worst cases and headlines; ``bench.report.robustness`` lays those out in tables.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..metrics import RESULT_METRICS
from .format import MISSING, is_missing
from ..newest_rows import CLEAN_ATTACK, created_stamps, identity, newest_of, recency
from ..newest_rows import defense_label as _defense_label
from ..newest_rows import number as _number
from ..newest_rows import text as _text

_REQUIRED_COLUMNS = ("dataset", "defense", "attack", "seed", "n", "robust_acc")
# Older store rows may lack later columns; these defaults keep them usable (every metric: NaN).
_OPTIONAL_COLUMNS = {
    "suite": "", "threat_model": "", "surface": "deployed", "source": "white-box", "evaluated_on": "deployed",
    "budget_param": "", "budget": math.nan,
    **{m.name: math.nan for m in RESULT_METRICS if m.name not in _REQUIRED_COLUMNS},
    "key": "", "created_at": "", "versions": "", "git_commit": "", "correct": None, "examples": "",
    "example_indices": None, "perturbation_l2": None, "perturbation_linf": None, "wrong_class": None,
}
# The metrics with a details column of their own, and the metrics a row reads for them.
DETAIL_METRICS = tuple(m for m in RESULT_METRICS if m.detail)
_ROW_METRICS = tuple(dict.fromkeys(
    [m.name for m in DETAIL_METRICS] + [m.of for m in DETAIL_METRICS if m.pooling == "counts" and m.of != "n"]))



@dataclass(frozen=True, eq=False)
class Row:
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
    hits: float  # an integer count, except for the mean over a stochastic defense's repeats
    metrics: dict[str, float | None]  # the stored values of _ROW_METRICS (None where missing)
    key: str
    created_at: str
    created: pd.Timestamp
    versions: str
    git_commit: str
    correct: np.ndarray | None
    examples: str = ""  # bench.store.examples_digest of the attacked images ("" for clean rows and old stores)
    evaluated_on: str = "deployed"  # the part of the defense scored (``defense`` names it where it is not all)
    # Per example, aligned with ``correct`` (None where the store has none or they do not align): the attacked
    # test indices and the perturbation's L2 and L∞ sizes (bench.report.best_known).
    example_indices: np.ndarray | None = None
    perturbation_l2: np.ndarray | None = None
    perturbation_linf: np.ndarray | None = None
    wrong_class: np.ndarray | None = None  # where it abstained: a wrong class decided (bench.store), else None

    @property
    def is_clean(self) -> bool:
        return self.attack == CLEAN_ATTACK

    @property
    def identity(self) -> tuple:
        return identity(self.dataset, self.defense, self.attack, self.surface, self.source, self.budget_param,
                        self.budget, self.seed)

    def count(self, of: str) -> int | None:
        """The examples a "counts" metric is a fraction of: all n, or the count another fraction stands for."""
        if of == "n":
            return self.n
        fraction = self.metrics[of]
        return None if fraction is None else round(fraction * self.n)


def _array(value, dtype=bool) -> np.ndarray | None:
    """A stored per-example array (flags by default) as ``dtype``, flat; None where there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return np.asarray(value, dtype=dtype).ravel()


def separate_models(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with the ``defense`` label made unique per trained model configuration.

    Where one (dataset, label) holds rows of two or more ``defense_config`` values, each config's rows
    are relabelled ``label (suite)`` if every config comes from one suite and no two share it, else
    ``label #<6 hex of the config's SHA-256>``. Rows without a config (older stores) keep their label.
    Unchanged (the same frame) where every label is one model.
    """
    if "defense_config" not in results.columns or results.empty:
        return results
    configs = results["defense_config"].map(lambda c: "" if is_missing(c) else str(c))
    suites = results["suite"].map(lambda s: "" if is_missing(s) else str(s)) if "suite" in results.columns \
        else pd.Series("", index=results.index)
    labels = results["defense"].copy()
    for (_, label), group in results.groupby(["dataset", "defense"], sort=False):
        known = configs[group.index]
        distinct = sorted(set(known) - {""})
        if len(distinct) < 2:
            continue
        suites_of = {c: set(suites[known.index[known == c]]) for c in distinct}
        by_suite = all(len(v) == 1 and "" not in v for v in suites_of.values()) and \
            len({next(iter(v)) for v in suites_of.values()}) == len(distinct)
        for config in distinct:
            tag = next(iter(suites_of[config])) if by_suite else \
                "#" + hashlib.sha256(config.encode()).hexdigest()[:6]
            labels[known.index[known == config]] = f"{label} ({tag})" if by_suite else f"{label} {tag}"
    if labels.equals(results["defense"]):
        return results
    return results.assign(defense=labels)


# A budget beyond this is no budget any attack can mean (validation bounds each kind far below it): a row
# with one is damaged, and would break the plots' axes.
_MAX_BUDGET = 1e6


def row_problem(record: dict) -> str | None:
    """Why a stored result row cannot be shown, or None: a count that is not one, an accuracy outside
    [0, 1], an impossible budget, or per-example flags that disagree with the stored accuracy (garbage
    written over the blob: recomputed and compared here, so it never silently becomes the number)."""
    n = _number(record.get("n"))
    if n is None or n < 1 or n != int(n):
        return f"n = {record.get('n')!r} is not a positive count"
    for name in ("robust_acc", "clean_acc"):
        value = _number(record.get(name))
        if value is not None and not 0 <= value <= 1:
            return f"{name} = {value} is outside [0, 1]"
    budget = record.get("budget")
    if budget is not None and not is_missing(budget) and not abs(float(budget)) <= _MAX_BUDGET:
        return f"budget {budget} is not a budget (beyond {_MAX_BUDGET:g})"
    correct = _array(record.get("correct"))
    if correct is not None and correct.size == int(n):
        repeated = (_number(record.get("repeats")) or 1) > 1
        stored = _number(record.get("robust_acc_strict" if repeated else "robust_acc"))
        if stored is not None and abs(correct.mean() - stored) > 0.5 / n:
            return (f"its per-example flags give {100 * correct.mean():.1f}% where its stored accuracy is "
                    f"{100 * stored:.1f}%: the row is corrupt")
    return None


def screen(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``results`` without the rows ``row_problem`` refuses, and one line per refused row naming its key."""
    if results.empty:
        return results, []
    problems = {i: row_problem(record) for i, record in zip(results.index, results.to_dict("records"))}
    bad = [i for i, problem in problems.items() if problem]
    lines = [f"stored row {results.at[i, 'key'] if 'key' in results.columns else i} left out: {problems[i]}"
             for i in bad]
    return (results.drop(index=bad) if bad else results), lines


def normalize(results: pd.DataFrame) -> list[Row]:
    missing = [c for c in _REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(f"results frame lacks column(s) {', '.join(missing)}")
    frame = results.copy()
    for column, default in _OPTIONAL_COLUMNS.items():
        if column not in frame.columns:
            frame[column] = [default] * len(frame)
    created = created_stamps(frame)

    rows = []
    for record, stamp in zip(frame.to_dict("records"), created):
        n = int(record["n"])
        is_clean = _text(record["attack"]) == CLEAN_ATTACK
        correct = _aligned(record["correct"], bool, n)  # misaligned flags are unusable for worst cases
        acc = _number(record["robust_acc"])
        if acc is None and is_clean:
            acc = _number(record["clean_acc"])
        # A stochastic defense scored several times stores its mean accuracy, and as ``correct`` the
        # examples right in every repeat (for worst cases): its cell counts the mean.
        repeated = (_number(record["repeats"]) or 1) > 1
        if repeated:
            hits = (acc or 0.0) * n  # a mean over repeats: a fractional count
        else:
            hits = int(correct.sum()) if correct is not None else round((acc or 0.0) * n)
        rows.append(Row(
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
            metrics={name: _number(record[name]) for name in _ROW_METRICS},
            key=_text(record["key"]),
            created_at=_text(record["created_at"]),
            created=stamp,
            versions=_text(record["versions"]),
            git_commit=_text(record["git_commit"]),
            correct=correct,
            examples=_text(record["examples"]),
            evaluated_on=_text(record["evaluated_on"], "deployed"),
            example_indices=_aligned(record["example_indices"], np.int64, n),
            perturbation_l2=_aligned(record["perturbation_l2"], np.float64, n),
            perturbation_linf=_aligned(record["perturbation_linf"], np.float64, n),
            wrong_class=_aligned(record["wrong_class"], bool, n),
        ))
    return rows


def _aligned(value, dtype, n: int) -> np.ndarray | None:
    """A stored per-example array as ``dtype``, or None where missing or not one value per example."""
    array = _array(value, dtype)
    return array if array is not None and array.size == n else None


def dedupe(rows: list[Row]) -> list[Row]:
    """Keep the newest row of each identity (a rerun supersedes the older result)."""
    return newest_of((row.identity, recency(row.created, row.created_at), row) for row in rows)


def produced_line(rows: list[Row], total: int) -> str:
    """The "how this was produced" line; versions and commit are the newest row's."""
    suites = sorted({r.suite for r in rows if r.suite})
    latest = max(rows, key=lambda r: recency(r.created, r.created_at))
    try:
        versions = json.loads(latest.versions) if latest.versions else {}
    except json.JSONDecodeError:
        versions = latest.versions  # shown as stored rather than dropped
    if isinstance(versions, dict):
        versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    text = (f"Produced by advbench (bench.report) from {total} stored result{'s' if total != 1 else ''}"
            f" of suite{'s' if len(suites) != 1 else ''} {', '.join(suites) or MISSING}")
    superseded = total - len(rows)
    if superseded:
        text += f" ({superseded} superseded by newer reruns, not shown)"
    text += f"; newest result {latest.created_at or MISSING}, commit {latest.git_commit or MISSING}"
    if versions:
        text += f", versions: {versions}"
    return text + "."
