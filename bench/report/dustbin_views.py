"""The reject-option view: Acc. / Rej. / Err. per model, laid out like Abbasi et al. (2018) Table I.

Registered like ``bench.report.views``'s views, as ``abbasi-table-1``: shown for a dataset where some
defense has a reject option (a stored ``reject_rate``; ``defenses/dustbin.py``). Columns: every defense
scored (naive and augmented CNNs side by side) except the transfer sources themselves; rows, in the
paper's order:

* In-dist. test (the data set) — Acc. (Rej. and Err. too: a rejected clean image is an error);
* Out-dist. test (its name) — Rej. (the dataset entry's ``out_distribution:`` test set; only a rejection is right);
* per attack (label and budget): Acc., Rej., Err. and n, first the black-box transfer attacks (Table I's
  threat model), then the white-box ones, whose label names the attacked surface (``reject-aware``: the
  adaptive attack that must avoid the dustbin too);
* Average Err. over the transfer attacks (the paper's "Average Error rate"), and over the white-box ones.

A cell is a percentage pooled over seeds by counts, with its 95% Wilson interval recomputed on the pooled
counts; "—" where a model has no such outcome (Rej. of a model without a reject option) or no result.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ..labels import budget_label
from ..metrics import OUT_DISTRIBUTION_ATTACK, wilson_interval
from ..registry import views as view_registry
from .format import MISSING, pct
from .model import CLEAN_ATTACK, Table, frame_table
from ..newest_rows import newest

OUTCOMES = (("Acc.", "acc_rate"), ("Rej.", "reject_rate"), ("Err.", "error_rate"))


def _newest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per identity, by the tables' own rule (``bench.newest_rows.newest``: a rerun supersedes the
    older result), ordered by ``created_at`` (the order the columns' defenses are first met in)."""
    kept = newest(frame)
    return kept.sort_values("created_at", kind="stable") if "created_at" in kept.columns else kept


def pooled_rate(rows: pd.DataFrame, column: str) -> tuple[float, float, float, int] | None:
    """(rate, CI low, CI high, n) of one outcome pooled over the rows' seeds by counts; None without values."""
    if rows.empty or column not in rows.columns:
        return None
    known = rows[rows[column].notna()]
    if known.empty:
        return None
    n = known["n"].astype(int)
    hits = int(np.round(known[column].astype(float) * n).sum())
    total = int(n.sum())
    low, high = wilson_interval(hits, total)
    return hits / total, low, high, total


def _text(cell: tuple[float, float, float, int] | None) -> str:
    if cell is None:
        return MISSING
    rate, low, high, _ = cell
    return f"{pct(rate)} [{pct(low)}, {pct(high)}]"


def _attack_blocks(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(kind "transfer"/"white-box", row label, rows) per attack, budget, source and surface."""
    attacked = frame[~frame["attack"].isin([CLEAN_ATTACK, OUT_DISTRIBUTION_ATTACK])]
    blocks = []
    keys = attacked[["attack", "budget_param", "budget", "source", "surface"]].drop_duplicates()
    keys = keys.assign(_transfer=~keys["source"].fillna("").str.startswith("transfer:"),
                       _b=keys["budget"].fillna(math.inf)).sort_values(["_transfer", "attack", "surface", "_b"])
    for _, k in keys.iterrows():
        same_budget = attacked["budget"].isna() if pd.isna(k["budget"]) else attacked["budget"] == k["budget"]
        rows = attacked[(attacked["attack"] == k["attack"]) & (attacked["source"] == k["source"])
                        & (attacked["surface"] == k["surface"]) & (attacked["budget_param"] == k["budget_param"])
                        & same_budget]
        source = str(k["source"] or "")
        transfer = source.startswith("transfer:")
        label = f"{k['attack']} {budget_label(k['budget_param'], None if pd.isna(k['budget']) else k['budget'])}"
        if transfer:
            label += f" (from {source.split(':', 1)[1]})"
        else:
            label += f" (white-box, {k['surface'] or 'deployed'})"
        blocks.append(("transfer" if transfer else "white-box", label, rows))
    return blocks


def rejection_view(results: pd.DataFrame) -> pd.DataFrame | None:
    """Abbasi et al. Table I for one dataset's results as display text: index (Test set, Outcome), one column
    per defense; None where no defense has a reject option."""
    if results.empty or "reject_rate" not in results.columns or results["reject_rate"].isna().all():
        return None
    frame = results.copy()
    for column, default in (("evaluated_on", "deployed"), ("surface", ""), ("source", ""), ("budget_param", "")):
        if column not in frame.columns:
            frame[column] = default
        frame[column] = frame[column].fillna(default)
    frame = _newest(frame[frame["evaluated_on"] == "deployed"])
    sources = {s.split(":", 1)[1] for s in frame["source"] if isinstance(s, str) and s.startswith("transfer:")}
    defenses = [d for d in dict.fromkeys(frame["defense"]) if d not in sources]
    # Naive models first, then the augmented ones (Table I's column order), each group as the suite lists them.
    has_reject = {d: frame.loc[frame["defense"] == d, "reject_rate"].notna().any() for d in defenses}
    defenses = [d for d in defenses if not has_reject[d]] + [d for d in defenses if has_reject[d]]

    records: list[tuple[str, str, dict[str, str]]] = []

    def add(test_set: str, outcome: str, rows: pd.DataFrame, column: str) -> None:
        cells = {d: _text(pooled_rate(rows[rows["defense"] == d], column)) for d in defenses}
        records.append((test_set, outcome, cells))

    def add_n(test_set: str, rows: pd.DataFrame) -> None:
        cells = {}
        for d in defenses:
            mine = rows[rows["defense"] == d]
            cells[d] = str(int(mine["n"].sum())) if not mine.empty else MISSING
        records.append((test_set, "n", cells))

    clean = frame[frame["attack"] == CLEAN_ATTACK]
    in_set, out_set = data_sets(frame)
    in_label = f"In-dist. test ({in_set})" if in_set else "In-dist. test"
    for outcome, column in OUTCOMES:
        add(in_label, outcome, clean, column)
    add_n(in_label, clean)
    out = frame[frame["attack"] == OUT_DISTRIBUTION_ATTACK]
    if not out.empty:
        out_label = f"Out-dist. test ({out_set})" if out_set else "Out-dist. test"
        add(out_label, "Rej.", out, "reject_rate")
        add_n(out_label, out)
    errors: dict[str, dict[str, list[float]]] = {"transfer": {d: [] for d in defenses},
                                                  "white-box": {d: [] for d in defenses}}
    for kind, label, rows in _attack_blocks(frame):
        for outcome, column in OUTCOMES:
            add(label, outcome, rows, column)
        add_n(label, rows)
        for d in defenses:
            err = pooled_rate(rows[rows["defense"] == d], "error_rate")
            if err is not None:
                errors[kind][d].append(err[0])
    for kind, heading in (("transfer", "Average Err., transfer attacks"), ("white-box", "Average Err., white-box")):
        if any(errors[kind].values()):
            records.append((heading, "Err.", {d: pct(sum(v) / len(v)) if v else MISSING
                                              for d, v in errors[kind].items()}))
    index = pd.MultiIndex.from_tuples([(t, o) for t, o, _ in records], names=["Test set", "Outcome"])
    return pd.DataFrame([cells for _, _, cells in records], index=index, columns=defenses)


def data_sets(frame: pd.DataFrame) -> tuple[str, str]:
    """The in-distribution data set and the out-distribution one (its ``out_distribution:`` entry's name, with
    the classes it leaves out), as the paper's "<MNIST, NotMNIST>" header names them; "" where unknown."""
    inside = ", ".join(dict.fromkeys(str(d) for d in frame.get("dataset", pd.Series(dtype=str)).dropna()))
    outside = []
    for config in frame.loc[frame["attack"] == OUT_DISTRIBUTION_ATTACK, "attack_config"].dropna() \
            if "attack_config" in frame.columns else ():
        try:
            entry = json.loads(config)
        except (TypeError, json.JSONDecodeError):
            continue
        name = str(entry.get("name", ""))
        if entry.get("exclude_classes"):
            name += f" without classes {', '.join(str(c) for c in entry['exclude_classes'])}"
        outside.append(name)
    return inside, ", ".join(dict.fromkeys(outside))


@view_registry.register("abbasi-table-1", order=70)
def abbasi_table_1(dataset: str, results: pd.DataFrame) -> Table | None:
    """Reject option: Acc. / Rej. / Err. of naive and dustbin models (Abbasi et al. 2018, Table I)."""
    view = rejection_view(results)
    if view is None:
        return None
    in_set, out_set = data_sets(results)
    pair = f" on <{in_set}, {out_set}>" if in_set and out_set else ""
    setting = (f"reject option: Acc. / Rej. / Err. (%) [95% CI], naive vs augmented CNNs{pair} (Abbasi et al. "
               "Table I layout; how a rejection counts: the legend)")
    return frame_table(f"{dataset} — reject option (Abbasi et al. Table I layout)", setting,
                       view.reset_index(), left_columns=2)

