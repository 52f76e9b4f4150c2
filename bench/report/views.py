"""Paper-shaped views of stored results, added to the leaderboard beside the generic tables.

A view is registered in ``bench.registry.views`` (plugins: the ``advbench.views`` entry-point group)
as ``fn(dataset, results) -> Table | None``: it gets one dataset's stored rows (all of them, reruns
included) and returns a table, or None when the results lack what it needs. The leaderboard shows
the tables of every view after the dataset's generic tables, ordered by the entry's ``order`` (then
name). The built-in ones:

* ``strauss-table-2`` (``ensemble_view``) — laid out like Strauss et al. (2017) Table 2: per
  attack and ensemble, accuracy with no attack (one member / the ensemble), under Grad. 1
  (one member's gradient, scored on that member and on the ensemble), Grad. 2
  (the mean of the members' gradients) and the adaptive attack on the deployed
  ensemble (the gradient of its own averaged softmax), plus the members'
  interrater agreement kappa on clean data.
* ``strauss-table-4`` (``defense_comparison_view``) — laid out like their Table 4: one row per
  defense, no attack and each attack, ensembles attacked through Grad. 2 as in the paper,
  single models white-box on their deployed model.

Both read the columns the store writes (``surface``, ``evaluated_on``,
``attack_config``) and pool seeds by counts. A cell with no stored result is NaN.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pandas as pd

from ..labels import budget_label
from ..metrics import METRICS
from ..registry import Entry
from ..registry import views as view_registry
from .format import metric_text, pct
from .model import CLEAN_ATTACK, Table, values_table

ENSEMBLE_COLUMNS = ("No attack single", "No attack ensemble", "Grad. 1 single", "Grad. 1 ensemble",
                    "Grad. 2 ensemble", "Deployed (adaptive)")
_KAPPA = METRICS["diversity_kappa"]
KAPPA_COLUMN = f"{_KAPPA.label} (clean)"
_DEFAULT_ORDER = 1000  # views registered without an ``order`` (plugins) come after the built-in ones


def _pooled(rows: pd.DataFrame) -> float:
    """Accuracy pooled over seeds (total correct / total n), as a fraction; NaN without rows."""
    if rows.empty:
        return math.nan
    n = rows["n"].astype(float)
    return float((rows["robust_acc"].astype(float) * n).sum() / n.sum())


def _prepare(results: pd.DataFrame) -> pd.DataFrame:
    frame = results.copy()
    if "evaluated_on" not in frame.columns:
        frame["evaluated_on"] = "deployed"
    frame["evaluated_on"] = frame["evaluated_on"].fillna("deployed")
    frame["attack_name"] = [json.loads(c).get("name", "") if isinstance(c, str) and c.strip() else ""
                            for c in frame["attack_config"]]
    return frame


def _attack_heading(name: str, budget_param: str, budget: float) -> str:
    return f"{name} {budget_label(budget_param, budget)}"


def _ensemble_defenses(frame: pd.DataFrame) -> list[str]:
    """Defenses with member or mean-gradient surfaces in use: the multi-member ones."""
    multi = frame["surface"].fillna("").str.startswith(("member:", "mean-gradient")) | \
        frame["evaluated_on"].str.startswith("member:")
    return sorted(frame.loc[multi, "defense"].unique())


def ensemble_view(results: pd.DataFrame) -> pd.DataFrame | None:
    """Strauss et al. Table 2 layout for one dataset's results; None if no ensemble was attacked."""
    frame = _prepare(results)
    ensembles = _ensemble_defenses(frame)
    if not ensembles:
        return None
    records = []
    attacked = frame[(frame["attack"] != CLEAN_ATTACK) & frame["defense"].isin(ensembles)]
    kinds = attacked.groupby(["attack_name", "budget_param", "budget"], dropna=False).size().index
    for name, param, budget in kinds:
        same_attack = attacked[(attacked["attack_name"] == name) & (attacked["budget_param"] == param)
                               & ((attacked["budget"] == budget) | (attacked["budget"].isna() & pd.isna(budget)))]
        for defense in ensembles:
            mine = same_attack[same_attack["defense"] == defense]
            clean = frame[(frame["attack"] == CLEAN_ATTACK) & (frame["defense"] == defense)]
            member = mine["surface"].fillna("")
            grad1 = mine[member.str.startswith("member:")]
            single_member = grad1["surface"].iloc[0] if len(grad1) else "member:0"
            kappa = clean.loc[clean["evaluated_on"] == "deployed", _KAPPA.name] \
                if _KAPPA.name in clean.columns else pd.Series(dtype=float)
            records.append({
                "Attack": _attack_heading(name, param, budget), "Defense": defense,
                "No attack single": _pooled(clean[clean["evaluated_on"] == single_member]),
                "No attack ensemble": _pooled(clean[clean["evaluated_on"] == "deployed"]),
                "Grad. 1 single": _pooled(grad1[grad1["evaluated_on"] == grad1["surface"]]),
                "Grad. 1 ensemble": _pooled(grad1[grad1["evaluated_on"] == "deployed"]),
                "Grad. 2 ensemble": _pooled(mine[(member == "mean-gradient") & (mine["evaluated_on"] == "deployed")]),
                "Deployed (adaptive)": _pooled(mine[(member == "deployed") & (mine["evaluated_on"] == "deployed")
                                                    & (mine["source"] == "white-box")]),
                # κ pools as its spec says: the mean over seeds.
                KAPPA_COLUMN: float(kappa.astype(float).mean()) if len(kappa.dropna()) else math.nan,
            })
    return pd.DataFrame.from_records(records).set_index(["Attack", "Defense"])


def defense_comparison_view(results: pd.DataFrame) -> pd.DataFrame | None:
    """Strauss et al. Table 4 layout: defense x {no attack, each attack}; None without ensembles."""
    frame = _prepare(results)
    ensembles = set(_ensemble_defenses(frame))
    if not ensembles:
        return None
    scored = frame[frame["evaluated_on"] == "deployed"]
    cells: dict[str, dict[str, float]] = defaultdict(dict)
    for defense, rows in scored.groupby("defense"):
        surface = "mean-gradient" if defense in ensembles else "deployed"
        cells[defense]["No attack"] = _pooled(rows[rows["attack"] == CLEAN_ATTACK])
        attacked = rows[(rows["attack"] != CLEAN_ATTACK) & (rows["surface"] == surface)
                        & (rows["source"] == "white-box")]
        for (name, param, budget), group in attacked.groupby(["attack_name", "budget_param", "budget"], dropna=False):
            cells[defense][_attack_heading(name, param, budget)] = _pooled(group)
    view = pd.DataFrame.from_dict(cells, orient="index")
    view.index.name = "Defense"
    return view


# --------------------------------------------------------------------------- registered views


@view_registry.register("strauss-table-2", order=20)
def strauss_table_2(dataset: str, results: pd.DataFrame) -> Table | None:
    """Ensembles: single vs ensemble under Grad. 1 / Grad. 2 / adaptive (Strauss et al. 2017, Table 2)."""
    ensemble = ensemble_view(results)
    if ensemble is None:
        return None
    setting = "ensembles: single vs ensemble, Grad. 1 / Grad. 2 / adaptive (Strauss et al. Table 2 layout)"
    kappa = ensemble.pop(KAPPA_COLUMN)
    frame = ensemble.map(pct).reset_index()
    frame[KAPPA_COLUMN] = [metric_text(k, _KAPPA.fmt) for k in kappa]
    align = ("left", "left") + ("right",) * (frame.shape[1] - 2)
    return Table(f"{dataset} — {setting}", setting, frame, align, ensemble * 100)


@view_registry.register("strauss-table-4", order=40)
def strauss_table_4(dataset: str, results: pd.DataFrame) -> Table | None:
    """Defenses compared, ensembles under Grad. 2 (Strauss et al. 2017, Table 4)."""
    return accuracy_view_table(dataset, "defenses compared, ensembles under Grad. 2 (Strauss et al. Table 4 layout)",
                               defense_comparison_view(results))


def accuracy_view_table(dataset: str, setting: str, values: pd.DataFrame | None) -> Table | None:
    """A view's accuracies (fractions) as a table headed ``<dataset> — <setting>``; None without them."""
    return None if values is None else values_table(f"{dataset} — {setting}", setting, values)


def registered_views() -> list[Entry]:
    """The registry's view entries in the order the leaderboard shows them."""
    return sorted(view_registry.entries(), key=lambda e: (e.meta.get("order", _DEFAULT_ORDER), e.name))


def view_tables(dataset: str, results: pd.DataFrame) -> list[Table]:
    """The tables of every registered view that has what it needs in one dataset's results."""
    tables = [entry.factory(dataset, results) for entry in registered_views()]
    return [t for t in tables if t is not None]
