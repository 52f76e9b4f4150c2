"""The one newest-wins rule for stored result rows: what a rerun supersedes.

A row's *identity* is what it measures (dataset, defense label, attack, surface, source, budget, seed); a
rerun of the same identity supersedes the older row. The report (``bench.report.rows``: ``dedupe`` of its
``Row``s, ``newest`` of a frame) and the soundness checks (``bench.checks``) keep rows through this module,
a leaf that imports nothing of the harness, so every model of the results agrees on which row counts.
"""

from __future__ import annotations

import math

import pandas as pd

CLEAN_ATTACK = "none"  # the ``attack`` of a defense's clean-accuracy row
# A column an older store lacks reads as this (the report's ``rows._OPTIONAL_COLUMNS`` agrees).
_DEFAULTS = {"dataset": "", "surface": "deployed", "source": "white-box", "evaluated_on": "deployed",
             "budget_param": "", "budget": math.nan, "created_at": ""}


def is_missing(value) -> bool:
    """No value: None, or NaN/NaT (how pandas reads a NULL); arrays and other containers are not missing."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def text(value, default: str = "") -> str:
    return default if is_missing(value) else str(value)


def number(value) -> float | None:
    if is_missing(value):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def defense_label(record: dict) -> str:
    """Examples scored on a part of a defense (one ensemble member) form a row of their own."""
    evaluated_on = text(record.get("evaluated_on"), "deployed")
    defense = text(record["defense"])
    return defense if evaluated_on == "deployed" else f"{defense} [{evaluated_on}]"


def identity(dataset: str, defense: str, attack: str, surface: str, source: str, budget_param: str,
             budget: float | None, seed: int) -> tuple:
    """What a rerun supersedes: the row of the same identity, older. ``defense`` is the row's label (with the
    part scored, ``defense_label``)."""
    # Clean rows are one per dataset/defense/seed whatever surface they name.
    if attack == CLEAN_ATTACK:
        return (dataset, defense, CLEAN_ATTACK, seed)
    return (dataset, defense, surface, source, attack, budget_param, budget, seed)


def created_stamps(frame: pd.DataFrame) -> pd.Series:
    """The frame's ``created_at`` parsed once, as UTC, so "Z" and "+00:00" spellings (and naive stamps) order
    correctly; an unparseable one is NaT (``recency`` sorts it as oldest)."""
    return pd.to_datetime(frame["created_at"].astype(object), utc=True, errors="coerce", format="ISO8601")


def recency(created: pd.Timestamp, created_at: str) -> tuple:
    # An unparseable stamp (NaT) sorts as oldest.
    parsed = not pd.isna(created)
    return (parsed, created.value if parsed else 0, created_at)


def newest_of(items) -> list:
    """Of ``(identity, recency, item)`` triples, the item of each identity with the greatest recency (the first
    of equals), in the order their identities first appear: the one newest-wins rule."""
    kept: dict[tuple, tuple] = {}
    for key, when, item in items:
        held = kept.get(key)
        if held is None or when > held[0]:
            kept[key] = (when, item)
    return [item for _, item in kept.values()]


def newest(results: pd.DataFrame) -> pd.DataFrame:
    """The store rows of ``results`` that the rule keeps, every column of the frame kept, in the frame's order.
    Needs only the identity's columns (``dataset``, ``defense``, ``attack``, ``seed``; the others default)."""
    if results.empty:
        return results
    frame = results.copy()
    for column in ("dataset", "surface", "source", "evaluated_on", "budget_param", "budget", "created_at"):
        if column not in frame.columns:
            frame[column] = [_DEFAULTS[column]] * len(frame)
    created = created_stamps(frame)
    triples = ((identity(text(r["dataset"]), defense_label(r), text(r["attack"]), text(r["surface"], "deployed"),
                         text(r["source"], "white-box"), text(r["budget_param"]), number(r["budget"]), int(r["seed"])),
                recency(stamp, text(r["created_at"])), position)
               for position, (r, stamp) in enumerate(zip(frame.to_dict("records"), created)))
    return results.iloc[sorted(newest_of(triples))]
