"""Paper-shaped views of randomized defenses (Lee et al. 2021; Liu et al. 2018), with EOT beside them.

A randomized defense is one with rows attacked through its random-draw surfaces (``fixed:<k>``,
``single``) or scored on ``ensemble:<k>`` (``defenses/randomized.py``). The views, registered like
``bench.report.views``'s:

* ``lee-table-2`` — rows: no attack, then each attack and budget; columns: each defense under each threat
  model it was attacked in: a deterministic defense white-box, a randomized one as the papers attack it
  (one sampled model, ``fixed:1``) and under EOT with each k a suite ran (``single`` surface, ``eot: k``).
  The papers' columns and the adaptive ones side by side, as Lee et al. Table 2 (Tables 1-3 share it).
* ``lee-table-4`` — rows: the number of sampled models attacked together (``fixed:<k>``); columns: each
  randomized defense under each attack (Lee et al. Table 4).
* ``test-time-samples`` — rows: the number of draws the prediction averages (``ensemble:<k>``); columns:
  each randomized defense with no attack and under each attack (Lee et al. Table 6, Liu et al. Fig. 5).
* ``lee-table-5`` — the interrater agreement κ of the draws each prediction averages, on clean data and on
  each attack's examples (Lee et al. Table 5: lower is more diverse).
* ``liu-cw`` — C&W at each constant c: accuracy and the median L2 of the successful examples, per defense
  and threat model (Liu et al. Table 2 / Fig. 4: accuracy against distortion).

Cells pool seeds by counts (``views._pooled``); a stochastic defense's stored accuracy is already the
mean over its repeated predictions. Scored on the deployed model unless a view says otherwise.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict

import pandas as pd

from ..labels import budget_label
from ..metrics import METRICS
from ..registry import views as view_registry
from .format import MISSING, num, pct
from .model import CLEAN_ATTACK, Table, frame_table
from .views import _attack_heading, _pooled, _prepare, accuracy_view_table

ONE_MODEL = "one sampled model"
_KAPPA = METRICS["diversity_kappa"].name


def _draw_count(name: str, prefix: str) -> int | None:
    """k of a ``<prefix>:<k>`` surface name, else None."""
    match = re.fullmatch(rf"{prefix}:(\d+)", name or "")
    return int(match.group(1)) if match else None


def _eot(attack_config: str) -> int:
    try:
        return int(json.loads(attack_config).get("params", {}).get("eot", 1))
    except (TypeError, ValueError, AttributeError):
        return 1


def _randomized(frame: pd.DataFrame) -> list[str]:
    surface, scored = frame["surface"].fillna(""), frame["evaluated_on"]
    marked = surface.str.fullmatch(r"fixed:\d+|single") | scored.str.fullmatch(r"ensemble:\d+")
    return sorted(frame.loc[marked, "defense"].unique())


def _threat(surface: str, eot: int, randomized: bool) -> str | None:
    """The threat model of a white-box row scored on the deployed model, as the views name it."""
    if surface == "fixed:1":
        return ONE_MODEL
    if surface == "single":
        return f"EOT k={eot}"
    if surface == "deployed":
        if not randomized:
            return "white-box"
        return f"deployed, EOT k={eot}" if eot > 1 else "deployed"
    return None


def _threat_order(threat: str) -> tuple:
    k = re.search(r"k=(\d+)", threat)
    return ({"white-box": 0, ONE_MODEL: 1}.get(threat, 2 if threat.startswith("EOT") else 3),
            int(k.group(1)) if k else 0)


def _attacked(frame: pd.DataFrame) -> pd.DataFrame:
    """White-box rows under attack scored on the deployed model, with their threat model."""
    randomized = set(_randomized(frame))
    rows = frame[(frame["attack"] != CLEAN_ATTACK) & (frame["evaluated_on"] == "deployed")
                 & (frame["source"].fillna("white-box") == "white-box")].copy()
    rows["threat"] = [_threat(s, _eot(c), d in randomized)
                      for s, c, d in zip(rows["surface"].fillna("deployed"), rows["attack_config"], rows["defense"])]
    rows["heading"] = [_attack_heading(n, p, b) for n, p, b in zip(rows["attack_name"], rows["budget_param"],
                                                                     rows["budget"])]
    return rows[rows["threat"].notna()]


def _clean(frame: pd.DataFrame, defense: str, evaluated_on: str = "deployed") -> float:
    return _pooled(frame[(frame["attack"] == CLEAN_ATTACK) & (frame["defense"] == defense)
                         & (frame["evaluated_on"] == evaluated_on)])


def lee_table_2_view(results: pd.DataFrame) -> pd.DataFrame | None:
    """Attack x (defense: threat model) accuracies; None without a randomized defense under attack."""
    frame = _prepare(results)
    attacked = _attacked(frame)
    randomized = set(_randomized(frame))
    if attacked.empty or not randomized & set(attacked["defense"]):
        return None
    columns = sorted({(d, t) for d, t in zip(attacked["defense"], attacked["threat"])},
                     key=lambda c: (c[0] in randomized, c[0], _threat_order(c[1])))
    cells: dict[str, dict[str, float]] = defaultdict(dict)
    for defense, threat in columns:
        cells["No attack"][f"{defense}: {threat}"] = _clean(frame, defense)
    for (heading, defense, threat), group in attacked.groupby(["heading", "defense", "threat"]):
        cells[heading][f"{defense}: {threat}"] = _pooled(group)
    view = pd.DataFrame.from_dict(cells, orient="index")[[f"{d}: {t}" for d, t in columns]]
    view.index.name = "Attack"
    return view


def lee_table_4_view(results: pd.DataFrame) -> pd.DataFrame | None:
    """Sampled models attacked together x (defense, attack); None unless more than one was attacked."""
    frame = _prepare(results)
    rows = frame[(frame["attack"] != CLEAN_ATTACK) & (frame["evaluated_on"] == "deployed")].copy()
    rows["k"] = [_draw_count(s, "fixed") for s in rows["surface"].fillna("")]
    rows = rows[rows["k"].notna()]
    if rows.empty or rows["k"].max() < 2:
        return None
    rows["column"] = [f"{d}: {_attack_heading(n, p, b)}" for d, n, p, b in
                      zip(rows["defense"], rows["attack_name"], rows["budget_param"], rows["budget"])]
    # Only the attacks run on more than one k: a column of one number compares nothing.
    view = pd.DataFrame({column: {int(k): _pooled(g) for k, g in group.groupby("k")}
                         for column, group in rows.groupby("column") if group["k"].nunique() > 1}).sort_index()
    view.index.name = "Sampled models attacked"
    return view


def samples_view(results: pd.DataFrame) -> pd.DataFrame | None:
    """Draws averaged by the prediction x (defense, no attack / attack); None without ``ensemble:<k>`` rows."""
    frame = _prepare(results)
    frame["k"] = [_draw_count(e, "ensemble") for e in frame["evaluated_on"]]
    rows = frame[frame["k"].notna()].copy()
    if rows.empty:
        return None
    rows["column"] = [f"{d}: no attack" if a == CLEAN_ATTACK else f"{d}: {a} {budget_label(p, b)}"
                      for d, a, p, b in zip(rows["defense"], rows["attack"], rows["budget_param"], rows["budget"])]
    view = pd.DataFrame({column: {int(k): _pooled(g) for k, g in group.groupby("k")}
                         for column, group in rows.groupby("column", sort=False)}).sort_index()
    view.index.name = "Test-time samples"
    return view


def liu_cw_view(results: pd.DataFrame) -> pd.DataFrame | None:
    """(defense, threat model) x C&W constant: "accuracy (median L2)"; None without C&W on a randomized defense."""
    frame = _prepare(results)
    attacked = _attacked(frame)
    cw = attacked[attacked["attack_name"] == "cw-l2"]
    if cw.empty or not set(_randomized(frame)) & set(cw["defense"]):
        return None
    cells: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for (defense, threat, heading), group in cw.groupby(["defense", "threat", "heading"]):
        l2 = group["l2_median"].astype(float).dropna()
        distortion = num(float(l2.mean()), ".3g") if len(l2) else MISSING  # the mean over seeds' medians
        cells[(defense, threat)][heading] = f"{pct(_pooled(group))} ({distortion})"
    view = pd.DataFrame.from_dict(cells, orient="index")
    view = view[sorted(view.columns, key=lambda h: float(h.split("=")[-1]) if "=" in h else math.inf)]
    view.index.names = ["Defense", "Threat model"]
    return view.fillna(MISSING)


# --------------------------------------------------------------------------- registered views


@view_registry.register("lee-table-2", order=60)
def lee_table_2(dataset: str, results: pd.DataFrame) -> Table | None:
    """Randomized defenses: the papers' threat model (one sampled model) beside EOT (Lee et al. 2021, Table 2)."""
    return accuracy_view_table(dataset, "randomized defenses: one sampled model attacked (the papers') beside EOT "
                                        "(Lee et al. Table 2 layout)", lee_table_2_view(results))


@view_registry.register("lee-table-4", order=61)
def lee_table_4(dataset: str, results: pd.DataFrame) -> Table | None:
    """Accuracy when the average of k sampled models is attacked (Lee et al. 2021, Table 4)."""
    return accuracy_view_table(dataset, "k sampled models attacked together (Lee et al. Table 4 layout)",
                               lee_table_4_view(results))


@view_registry.register("test-time-samples", order=62)
def samples_table(dataset: str, results: pd.DataFrame) -> Table | None:
    """Accuracy against the number of draws the prediction averages (Lee et al. Table 6, Liu et al. Fig. 5)."""
    return accuracy_view_table(dataset, "accuracy by test-time samples (Lee et al. Table 6, Liu et al. Fig. 5 layout)",
                               samples_view(results))


def diversity_view(results: pd.DataFrame) -> pd.DataFrame | None:
    """Randomized defense x κ of its draws on clean data and under each attack (mean over seeds); None
    without a κ on a randomized defense."""
    frame = _prepare(results)
    randomized = _randomized(frame)
    if _KAPPA not in frame.columns or not randomized:
        return None
    rows = frame[frame["defense"].isin(randomized) & (frame["evaluated_on"] == "deployed")
                 & frame[_KAPPA].notna()].copy()
    if rows.empty:
        return None
    rows["column"] = ["clean" if a == CLEAN_ATTACK else f"{a} {budget_label(p, b)}"
                      for a, p, b in zip(rows["attack"], rows["budget_param"], rows["budget"])]
    view = rows.pivot_table(index="defense", columns="column", values=_KAPPA, aggfunc="mean", sort=False)
    view = view[["clean", *sorted(c for c in view.columns if c != "clean")]] if "clean" in view.columns else view
    view.index.name = "Defense"
    return view.map(lambda k: num(k, METRICS[_KAPPA].fmt)).reset_index()


@view_registry.register("lee-table-5", order=63)
def lee_table_5(dataset: str, results: pd.DataFrame) -> Table | None:
    """Interrater agreement κ of a randomized defense's draws (Lee et al. 2021, Table 5; lower: more diverse)."""
    view = diversity_view(results)
    if view is None:
        return None
    setting = ("κ of the draws a prediction averages, lower is more diverse (Lee et al. Table 5 layout); "
               "clean and on each attack's examples")
    return frame_table(f"{dataset} — {setting}", setting, view)


@view_registry.register("liu-cw", order=64)
def liu_cw(dataset: str, results: pd.DataFrame) -> Table | None:
    """C&W accuracy and median L2 per constant c (Liu et al. 2018, Table 2 / Fig. 4)."""
    view = liu_cw_view(results)
    if view is None:
        return None
    setting = "C&W: accuracy (%) and median L2 of successful examples per constant c (Liu et al. Table 2 layout)"
    return frame_table(f"{dataset} — {setting}", setting, view.reset_index(), left_columns=2)
