"""The soundness checks on the leaderboard: the flag on a row and its headline, and each section's checks tables.

The verdicts come from ``bench.checks`` (rules, thresholds and the evidence rows); here they are laid out:
an overview (one line per defense and threat model, one column per check: ok, the flag, or — where the
suite has no evidence for it) and, where a check failed, what failed, its evidence (the numbers compared,
with n and 95% intervals) and what to run next.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import pandas as pd

from ..checks import CHECKS, FLAG, Verdict, mark
from ..threat_models import ThreatModel
from .format import MISSING
from .model import Table, frame_table

LEGEND = (f"{FLAG}n after a row or headline: the row failed soundness check n (its section's soundness checks "
          "say which, on what evidence, and what to run next).")


def flagged(label: str, numbers: Iterable[int] | None) -> str:
    """``label`` with the flag of its failed checks, or as it is."""
    numbers = list(numbers or [])
    return f"{label} {mark(numbers)}" if numbers else label


def checks_tables(dataset: str, verdicts: Iterable[Verdict]) -> list[Table]:
    """The overview and, where a check failed, the failures of one dataset section; none without verdicts."""
    verdicts = list(verdicts)
    if not verdicts:
        return []
    rows: dict[tuple[str, str], dict[int, Verdict]] = {}
    for v in verdicts:
        rows.setdefault((v.defense, v.threat_model), {})[v.check.number] = v
    order = sorted(rows, key=lambda k: (ThreatModel.rank_of(k[1]), k[0]))
    columns = [f"{c.number} {c.name}" for c in CHECKS]
    overview = pd.DataFrame(
        [[defense, ThreatModel.label_of(tm), *[MISSING if c.number not in rows[(defense, tm)] else
                                              (mark([c.number]) if rows[(defense, tm)][c.number].failed else "ok")
                                              for c in CHECKS]]
         for defense, tm in order],
        columns=["Defense", "Threat model", *columns])
    tables = [frame_table(f"{dataset} — soundness checks", "soundness checks", overview, left_columns=2)]
    failed = [v for key in order for v in sorted(rows[key].values(), key=lambda v: v.check.number) if v.failed]
    if failed:
        frame = pd.DataFrame([[v.defense, ThreatModel.label_of(v.threat_model), f"{v.check.number} {v.check.name}: "
                               f"{v.check.flags}", v.text(), v.check.next_step] for v in failed],
                             columns=["Defense", "Threat model", "Failed check", "Evidence", "Run next"])
        tables.append(frame_table(f"{dataset} — soundness checks failed", "soundness checks failed", frame,
                                  left_columns=5))
    return tables


def flag_view(table: Table, flags: dict[str, list[int]]) -> Table:
    """A paper-shaped view with the flags of the defenses it shows: after a ``Defense`` cell (that row is then
    never marked best) or a column named after a defense, so a view never shows a flagged number unmarked."""
    if not flags:
        return table
    frame = table.frame.copy()
    flagged_rows = table.flagged_rows
    if "Defense" in frame.columns:
        labels = [str(v) for v in frame["Defense"]]
        frame["Defense"] = [flagged(label, flags.get(label)) for label in labels]
        flagged_rows = tuple(bool(flags.get(label)) for label in labels)
    frame.columns = [flagged(str(c), flags.get(str(c))) if c != "Defense" else c for c in frame.columns]
    values = table.values
    if values is not None:
        values = values.rename(columns={c: flagged(str(c), flags.get(str(c))) for c in values.columns})
    return dataclasses.replace(table, frame=frame, values=values, flagged_rows=flagged_rows)
