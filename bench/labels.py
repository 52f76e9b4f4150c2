"""How budgets are written for people: one formatter for progress lines, leaderboard columns and views."""

from __future__ import annotations

import math

BUDGET_SYMBOLS = {"eps": "ε", "epsilon": "ε", "gamma": "γ", "alpha": "α", "kappa": "κ",
                  "sigma": "σ", "delta": "δ", "lambda": "λ", "tau": "τ"}


def budget_label(param: str | None, budget: float | None, *, symbol: bool = True) -> str:
    """``ε=0.3``, ``c=1``, ``unbounded`` (None or NaN, as pandas reads a missing budget); the bare value
    when there is no parameter name. ``symbol=False`` keeps the parameter's ASCII name (``eps=0.3``)."""
    if budget is None or (isinstance(budget, float) and math.isnan(budget)):
        return "unbounded"
    value = f"{budget:g}"
    if not param:
        return value
    return f"{BUDGET_SYMBOLS.get(param, param) if symbol else param}={value}"
