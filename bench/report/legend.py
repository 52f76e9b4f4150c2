"""The legend of a section: what each row label is (registry entry, parameters that differ from its
defaults, version, seeds), so a reader can tell ``bimodel-svm`` is ``bimodel-mismatch`` with
``classifier: svc`` without opening the suite."""

from __future__ import annotations

import json

import pandas as pd

from .format import MISSING, is_missing
from .model import Table, frame_table


def _defaults(name: str) -> dict | None:
    """The registered defense's parameter defaults; None where the name is not registered here."""
    from ..registry import UnknownName, defenses

    try:
        return {p.name: p.default for p in defenses.get(name).params if not p.required}
    except UnknownName:
        return None


def _changed(params: dict, defaults: dict | None) -> str:
    shown = params if defaults is None else {k: v for k, v in params.items() if defaults.get(k, object()) != v}
    return ", ".join(f"{k}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(shown.items())) or "defaults"


def model_legend(section: str, results: pd.DataFrame) -> Table | None:
    """One line per row label of ``results`` (one section's rows); None without defense configs."""
    if results.empty or "defense_config" not in results.columns:
        return None
    records = []
    for label, group in sorted(results.groupby("defense"), key=lambda item: str(item[0])):
        configs = [c for c in group["defense_config"] if not is_missing(c) and str(c).strip()]
        if not configs:
            continue
        try:
            config = json.loads(configs[0])
        except (TypeError, json.JSONDecodeError):
            continue
        name = config.get("name", MISSING)
        records.append({"Label": str(label), "Defense": name,
                        "Parameters (non-default)": _changed(config.get("params") or {}, _defaults(name)),
                        "Version": str(config.get("version", MISSING)),
                        "Seeds": ", ".join(str(int(s)) for s in sorted(group["seed"].unique()))})
    if not records:
        return None
    setting = "rows: each label's registry entry, its non-default parameters, version and seeds"
    return frame_table(f"{section} — {setting}", setting, pd.DataFrame(records), left_columns=3)
