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

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..metrics import wilson_interval

NUMBERS_FILE = "numbers.csv"
COLUMNS = ["key", "suite", "dataset", "defense", "attack", "threat_model", "budget", "seed", "metric", "n",
           "value", "ci_low", "ci_high"]


def best_known_key(suite: str, dataset: str, defense: str, threat_model: str, eps: float,
                   kind: str = "best-known") -> str:
    """The numbers.csv key of a best-known robust accuracy (or of a certified one, ``kind`` "certified"): what it
    is of, not the rows it combines, so a new attack that lowers it shows as a change of the same number."""
    what = json.dumps([suite, dataset, defense, threat_model, round(float(eps), 9)])
    return f"{kind}:" + hashlib.sha256(what.encode()).hexdigest()[:20]


def leaderboard_numbers(results: pd.DataFrame | None, detections: pd.DataFrame | None = None,
                        best_known: list | None = None) -> pd.DataFrame:
    """One line per (row, metric) with its n and 95% interval, and one per best-known robust accuracy
    (``bench.report.summary.SummaryEntry``), in a stable order."""
    lines = []
    for entry in best_known or ():
        best = entry.best
        low, high = best.interval
        lines.append({"key": best_known_key(entry.suite, best.dataset, best.defense, best.threat_model, best.eps),
                      "suite": entry.suite, "dataset": best.dataset, "defense": best.defense,
                      "attack": best.strongest or "", "threat_model": best.threat_model, "budget": best.eps,
                      "seed": "", "metric": "best_known", "n": best.n, "value": best.acc, "ci_low": low,
                      "ci_high": high})
        cert = getattr(entry, "certified", None)
        if cert is not None and not cert.unsupported:
            low, high = cert.interval
            lines.append({"key": best_known_key(entry.suite, best.dataset, best.defense, best.threat_model, best.eps,
                                                "certified"),
                          "suite": entry.suite, "dataset": best.dataset, "defense": best.defense,
                          "attack": cert.method, "threat_model": best.threat_model, "budget": best.eps, "seed": "",
                          "metric": "certified", "n": cert.n, "value": cert.acc, "ci_low": low, "ci_high": high})
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


def numbers_csv(results: pd.DataFrame | None, detections: pd.DataFrame | None = None,
                best_known: list | None = None) -> bytes:
    return leaderboard_numbers(results, detections, best_known).to_csv(index=False, float_format="%.6g").encode()


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


def read_numbers(path: Path, role: str = "numbers") -> pd.DataFrame | None:
    """A numbers.csv as written by a build; None if the file is empty (CI's first run writes an empty baseline).

    A path that does not exist, cannot be read as CSV, or lacks the numbers columns (``COLUMNS``: another
    CSV, such as a benchmark table) is a ``UserError`` naming ``role`` (which argument) and the file."""
    from ..errors import UserError

    path = Path(path)
    where = f"{role} {path}"
    if not path.exists():
        raise UserError(f"{where}: no such file (a leaderboard build writes numbers.csv; an empty file means "
                        f"no numbers yet)")
    if not path.is_file():
        raise UserError(f"{where}: not a file (give the numbers.csv in a leaderboard directory)")
    try:
        if not path.read_bytes().strip():
            return None
        frame = pd.read_csv(path, dtype={"key": str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
        raise UserError(f"{where}: cannot be read as a numbers.csv: {reason}") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{where}: not a numbers file (a leaderboard build's numbers.csv): it has no "
                        f"column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    for column in ("n", "value", "ci_low", "ci_high"):
        values = frame[column]
        bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
        if len(bad):
            raise UserError(f"{where}: not a numbers file: its column {column} holds {bad.iloc[0]!r}, not a number")
    return frame
