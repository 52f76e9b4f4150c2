"""The best-known tables: one per threat model at the top of each suite's section, and the summary that opens
the leaderboard (per dataset, threat model and headline budget, every deployed defense of every suite).

The numbers are ``bench.report.best_known``'s; here they are ranked and laid out, each with its 95% interval,
the attack that broke the most examples and the soundness checks' flags. A flagged row keeps its mark and is
never marked best.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pandas as pd

from ..labels import budget_label
from ..threat_models import ThreatModel
from .best_known import BestKnown, Evidence, best_known, eps_budgets, threat_models
from .certified import CertificateRow, Certified, certified_at
from .format import MISSING, interval_text, pct
from .model import Table, values_table
from .soundness import flagged


@dataclass
class SuiteEvidence:
    """What one suite's section knows about one dataset: its deployed defenses' evidence and clean accuracy."""

    suite: str
    section: str  # the section's name (what a summary row links to)
    dataset: str
    evidence: dict[str, list[Evidence]]  # defense -> its evidence (bench.report.best_known.collect)
    clean: dict[str, tuple[float, int]]  # defense -> (examples right, n) on the clean test split
    headline: dict[str, float] = field(default_factory=dict)  # the suite's headline budget per threat model
    flags: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (defense, threat model) -> failed checks
    certificates: dict[str, list[CertificateRow]] = field(default_factory=dict)  # defense -> its certificate rows
    _computed: dict[tuple[str, str, float], BestKnown | None] = field(default_factory=dict, repr=False)

    def best(self, defense: str, threat_model: str, eps: float) -> BestKnown | None:
        """``best_known`` of one defense, computed once (the section's table and the summary both show it)."""
        key = (defense, threat_model, round(eps, 9))
        if key not in self._computed:
            self._computed[key] = best_known(self.evidence[defense], threat_model, eps)
        return self._computed[key]

    def certified(self, defense: str, threat_model: str, eps: float) -> Certified | None:
        return certified_at(self.certificates.get(defense, []), threat_model, eps)

    def threat_models(self) -> list[str]:
        return threat_models(e for rows in self.evidence.values() for e in rows)

    def budgets(self, threat_model: str) -> list[float]:
        return eps_budgets((e for rows in self.evidence.values() for e in rows), threat_model)

    def headline_eps(self, threat_model: str) -> float | None:
        """The suite's headline budget, else the largest budget its own attacks ran at."""
        if threat_model in self.headline:
            return float(self.headline[threat_model])
        budgets = self.budgets(threat_model)
        return budgets[-1] if budgets else None

    def clean_acc(self, defense: str) -> float:
        hits, n = self.clean.get(defense, (0.0, 0))
        return hits / n if n else math.nan


@dataclass(frozen=True)
class SummaryEntry:
    """One row of the summary: a suite's deployed defense at one (threat model, ε), as numbers.csv lists it."""

    suite: str
    section: str
    clean: float
    best: BestKnown
    flags: tuple[int, ...]
    certified: Certified | None = None


def certified_columns(bests: list[BestKnown | None], certified: list[Certified | None]) -> dict[str, list[str]]:
    """The certificate columns of a best-known table (none where no row has a certificate): the certified number
    with its interval, both bounds, the gap in points, the method (or why none could certify)."""
    if not any(c is not None for c in certified):
        return {}
    columns: dict[str, list[str]] = {"Certified": [], "Certified ≤ best known": [], "Gap": [], "Certified by": []}
    for best, cert in zip(bests, certified):
        done = cert is not None and not cert.unsupported
        columns["Certified"].append(cert.text() if cert is not None else MISSING)
        columns["Certified ≤ best known"].append(
            f"[{pct(cert.acc)}, {pct(best.acc)}]" if done and best is not None else MISSING)
        columns["Gap"].append(f"{100 * (best.acc - cert.acc):.1f}" if done and best is not None else MISSING)
        columns["Certified by"].append(MISSING if cert is None else cert.unsupported or cert.method)
    return columns


def best_text(best: BestKnown | None, flags: list[int] | tuple[int, ...] = ()) -> str:
    """"12.0 [9.4, 15.2]", with "strict" and the mean over repeats for a stochastic defense, and its flags."""
    if best is None:
        return MISSING
    text = interval_text(best.acc, best.interval)
    if best.repeats > 1:
        text += " strict" + (f" (mean {pct(best.strongest_mean)})" if best.strongest_mean is not None else "")
    if best.only_below is not None:
        text += f" (attacked at {at_most(best.only_below)} only)"
    return flagged(text, flags)


def at_most(budget: float) -> str:
    """"ε≤0.1": the budgets a bound from smaller budgets only comes from."""
    return budget_label("eps", budget).replace("=", "≤")


def broken_by_text(best: BestKnown | None) -> str:
    if best is None:
        return MISSING
    if not best.strongest:
        return f"none broke any of {best.n}"
    return f"{best.strongest}: {best.strongest_broke} of {best.n}, {best.only_strongest} only by it"


def _apart_text(best: BestKnown | None) -> str:
    if best is None or not best.apart:
        return ""
    names = list(dict.fromkeys(f"{e.name} {budget_label(e.budget_param or 'eps', e.budget)}" for e in best.apart))
    return f"{len(best.apart)} on other images: {', '.join(names)}"


def _rank(bests: dict[str, BestKnown | None]) -> list[str]:
    """Most robust first; then numbers from smaller budgets only, most robust first; rows without a number after,
    by name."""
    def order(d: str) -> tuple:
        best = bests[d]
        return (2, 0.0, d) if best is None else (int(best.only_below is not None), -best.acc, d)
    return sorted(bests, key=order)


def suite_tables(suite: SuiteEvidence) -> list[Table]:
    """Per threat model, the suite's deployed defenses' best-known robust accuracy at its headline budget (with
    interval, the attack that set it and flags) and at each other budget its attacks ran at."""
    tables = []
    for tm in suite.threat_models():
        headline = suite.headline_eps(tm)
        if headline is None:
            continue
        others = [b for b in suite.budgets(tm) if not math.isclose(b, headline)]
        bests = {d: suite.best(d, tm, headline) for d in suite.evidence}
        order = _rank(bests)
        head = f"Best known {budget_label('eps', headline)}"
        columns = {b: f"{budget_label('eps', b)}" for b in others}
        values = pd.DataFrame(index=pd.Index(order, name="Defense"), columns=["Clean", head, *columns.values()],
                              dtype=float)
        for d in order:
            values.loc[d, "Clean"] = suite.clean_acc(d)
            values.loc[d, head] = bests[d].acc if bests[d] else math.nan
            for b, label in columns.items():
                at = suite.best(d, tm, b)
                values.loc[d, label] = at.acc if at else math.nan
        setting = f"best known robust accuracy, {ThreatModel.label_of(tm)}"
        table = values_table(f"{suite.section} — {setting}", setting, values)
        frame = table.frame.copy()
        flags = [suite.flags.get((d, tm), []) for d in order]
        frame["Defense"] = [flagged(d, f) for d, f in zip(order, flags)]
        frame[head] = [best_text(bests[d], f) for d, f in zip(order, flags)]
        for b, label in columns.items():  # a bound from smaller budgets only says so, as the headline does
            below = [at.only_below if (at := suite.best(d, tm, b)) is not None else None for d in order]
            frame[label] = [text if only is None else f"{text} ({at_most(only)} only)"
                            for text, only in zip(frame[label], below)]
        frame.insert(3, "n", [str(bests[d].n) if bests[d] else MISSING for d in order])
        frame.insert(4, "Broken most by", [broken_by_text(bests[d]) for d in order])
        apart = [_apart_text(bests[d]) for d in order]
        if any(apart):
            frame["Counted apart"] = [a or MISSING for a in apart]
        certified = certified_columns([bests[d] for d in order], [suite.certified(d, tm, headline) for d in order])
        for name, texts in certified.items():
            frame[name] = texts
        align = ("left", "right", "right", "right", "left", *("right",) * len(columns), *(("left",) if any(apart)
                                                                                       else ()),
                 *(("right", "right", "right", "left") if certified else ()))
        tables.append(dataclasses.replace(table, frame=frame, align=align,
                                          flagged_rows=tuple(bool(f) for f in flags)))
    return tables


def summary(suites: list[SuiteEvidence]) -> tuple[list[Table], list[SummaryEntry]]:
    """Per (dataset, threat model, ε) where ε is some suite's headline budget: every deployed defense of every
    suite on that dataset, ranked by its best-known robust accuracy; and those numbers as entries."""
    budgets: dict[tuple[str, str], set[float]] = {}
    for s in suites:
        for tm in s.threat_models():
            eps = s.headline_eps(tm)
            if eps is not None:
                budgets.setdefault((s.dataset, tm), set()).add(round(eps, 9))
    tables, entries = [], []
    for (dataset, tm), epsilons in sorted(budgets.items(), key=lambda k: (k[0][0], ThreatModel.rank_of(k[0][1]))):
        for eps in sorted(epsilons):
            rows: list[SummaryEntry] = []
            for s in suites:
                if s.dataset != dataset:
                    continue
                for defense in s.evidence:
                    best = s.best(defense, tm, eps)
                    if best is not None:
                        rows.append(SummaryEntry(s.suite, s.section, s.clean_acc(defense), best,
                                                 tuple(s.flags.get((defense, tm), [])),
                                                 s.certified(defense, tm, eps)))
            if not rows:
                continue
            # Numbers measured at eps first; bounds from smaller budgets only after them.
            rows.sort(key=lambda e: (e.best.only_below is not None, -e.best.acc, e.best.defense, e.suite))
            entries.extend(rows)
            setting = f"{dataset}, {ThreatModel.label_of(tm)}, {budget_label('eps', eps)}"
            values = pd.DataFrame({"Clean": [e.clean for e in rows], "Best known": [e.best.acc for e in rows]},
                                  index=pd.Index([e.best.defense for e in rows], name="Defense"))
            table = values_table(f"summary — {setting}", setting, values)
            frame = table.frame.copy()
            frame["Defense"] = [flagged(e.best.defense, e.flags) for e in rows]
            frame.insert(1, "Suite", [e.suite for e in rows])
            frame["Best known"] = [best_text(e.best, e.flags) for e in rows]
            frame["Broken most by"] = [broken_by_text(e.best) for e in rows]
            certified = certified_columns([e.best for e in rows], [e.certified for e in rows])
            for name, texts in certified.items():
                frame[name] = texts
            frame["Section"] = [e.section for e in rows]
            tables.append(dataclasses.replace(
                table, frame=frame, align=("left", "left", "right", "right", "left",
                                           *(("right", "right", "right", "left") if certified else ()), "left"),
                values=table.values.set_axis(range(len(rows))), flagged_rows=tuple(bool(e.flags) for e in rows),
                link_column="Section", links=tuple(e.section for e in rows)))
    return tables, entries
