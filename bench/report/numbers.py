"""The leaderboard's numbers as data (``numbers.csv``), and the comparison CI makes against the committed ones.

Every leaderboard build writes ``numbers.csv`` beside README.md: one line per stored number that has
an interval (robust accuracy of every result row; accuracy and robust accuracy of every detection row),
named by the row's key. CI keeps the committed file, runs the quick suites, and compares
(``advbench compare``): a number that moved beyond the intervals — each value outside the other's 95%
interval — fails the run and is listed; one that changed within them is printed. Rows are matched
by key, and a key hashes everything that determines a row, so a row with a new key (a changed
config or code version) is new, not moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..metrics import wilson_interval

NUMBERS_FILE = "numbers.csv"
COLUMNS = ["key", "suite", "dataset", "defense", "attack", "threat_model", "budget", "seed", "metric", "n",
           "value", "ci_low", "ci_high"]


def leaderboard_numbers(results: pd.DataFrame | None, detections: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per (row, metric) with its n and 95% interval, in a stable order."""
    lines = []
    for r in (results.to_dict("records") if results is not None else []):
        lines.append({"key": r["key"], "suite": r["suite"], "dataset": r["dataset"], "defense": r["defense"],
                      "attack": r["attack"], "threat_model": r["threat_model"], "budget": r["budget"],
                      "seed": r["seed"], "metric": "robust_acc", "n": r["n"], "value": r["robust_acc"],
                      "ci_low": r["robust_ci_low"], "ci_high": r["robust_ci_high"]})
    for r in (detections.to_dict("records") if detections is not None else []):
        common = {"key": r["key"], "suite": r["suite"], "dataset": r["dataset"], "defense": r["detector"],
                  "attack": r["test_attack"] or r["train_attack"], "threat_model": r["evaluation"],
                  "budget": r["budget"], "seed": r["seed"]}
        if _present(r.get("accuracy")) and _present(r.get("n")):
            low, high = wilson_interval(round(r["accuracy"] * r["n"]), int(r["n"]))
            lines.append({**common, "metric": "accuracy", "n": r["n"], "value": r["accuracy"],
                          "ci_low": low, "ci_high": high})
        if _present(r.get("robust_acc")) and _present(r.get("robust_ci_low")):
            lines.append({**common, "metric": "robust_acc", "n": r["n"], "value": r["robust_acc"],
                          "ci_low": r["robust_ci_low"], "ci_high": r["robust_ci_high"]})
    frame = pd.DataFrame(lines, columns=COLUMNS)
    return frame.sort_values(["suite", "key", "metric"], kind="stable").reset_index(drop=True)


def numbers_csv(results: pd.DataFrame | None, detections: pd.DataFrame | None = None) -> bytes:
    return leaderboard_numbers(results, detections).to_csv(index=False, float_format="%.6g").encode()


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


@dataclass
class NumbersComparison:
    moved: list[str] = field(default_factory=list)     # beyond the intervals: each outside the other's
    shifted: list[str] = field(default_factory=list)   # changed, but within the intervals
    same: int = 0
    new: int = 0                                       # keys only in the current numbers
    gone: int = 0                                      # keys only in the baseline

    @property
    def ok(self) -> bool:
        return not self.moved

    def lines(self) -> list[str]:
        out = [f"numbers: {self.same} equal, {len(self.shifted)} changed within their 95% intervals, "
               f"{len(self.moved)} moved beyond them; {self.new} new and {self.gone} gone (keys not in both)"]
        out += [f"  moved   {line}" for line in self.moved]
        out += [f"  changed {line}" for line in self.shifted]
        return out


def compare_numbers(baseline: pd.DataFrame, current: pd.DataFrame) -> NumbersComparison:
    """Match lines by (key, metric) and sort each changed value into moved or shifted."""
    on = ["key", "metric"]
    both = baseline.merge(current, on=on, how="outer", suffixes=("_old", "_new"), indicator=True)
    out = NumbersComparison(new=int((both["_merge"] == "right_only").sum()),
                            gone=int((both["_merge"] == "left_only").sum()))
    for r in both[both["_merge"] == "both"].to_dict("records"):
        old, new = float(r["value_old"]), float(r["value_new"])
        if math.isclose(old, new, abs_tol=1e-6):
            out.same += 1
            continue
        old_outside = not r["ci_low_new"] - 1e-9 <= old <= r["ci_high_new"] + 1e-9
        new_outside = not r["ci_low_old"] - 1e-9 <= new <= r["ci_high_old"] + 1e-9
        budget = "" if pd.isna(r["budget_new"]) else f" {r['budget_new']:g}"
        text = (f"{r['suite_new']} / {r['dataset_new']} / {r['defense_new']} / {r['attack_new']}{budget} "
                f"{r['metric']}: {old:.1%} [{r['ci_low_old']:.1%}, {r['ci_high_old']:.1%}] n={r['n_old']:g} → "
                f"{new:.1%} [{r['ci_low_new']:.1%}, {r['ci_high_new']:.1%}] n={r['n_new']:g} (key {r['key']})")
        (out.moved if old_outside and new_outside else out.shifted).append(text)
    return out


def read_numbers(path: Path) -> pd.DataFrame | None:
    """A numbers.csv as written by a build; None if the file does not exist or is empty."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return pd.read_csv(path, dtype={"key": str})
