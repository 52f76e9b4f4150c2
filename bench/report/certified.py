"""Certified lower bounds beside the best-known upper bounds, and soundness check 8 that ties them together.

An attack shows an upper bound on a model's robust accuracy; a certificate (bench.certify) a lower bound. For
each deployed defense, threat model and budget ε where the suite certified it, the leaderboard shows both as an
interval, ``[certified, best known]``, the gap between them in points, and the method that certified the most:

* **Certified.** Per method, the examples classified right and certified at ε, pooled over seeds (n: the
  images certified, the attacked ones); the method with the highest number is shown (each is a valid lower
  bound, so the highest is the best one known). A method that could not take the network shows "—" and why.
* **Check 8.** An example certified at ε on which a stored attack within ε (at a budget ≤ ε, or with a
  perturbation ≤ ε) made the deployed model decide a wrong class contradicts the certificate: one of the two is
  wrong. (An abstention contradicts nothing: a smoothed classifier's PREDICT abstains near its boundary; the
  results table's ``wrong_class`` says where a wrong class was decided.) Every certified example is checked
  against every result that counts for the best-known number (bench.report.best_known: every surface, source
  and check run on the deployed model) on the same seed, through the test indices both stored; the row is
  flagged and the verdict names the examples. Randomized smoothing's certificate holds with probability
  1 - alpha per example, and its deployed PREDICT returns a wrong class at a point the smoothed classifier
  gets right with probability at most alpha (Cohen et al. 2019, Prop. 1 and Thm. 2); with alpha 0.001 a
  flag there is a bug, not chance, unless thousands of example-repeats are checked.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from ..checks import CHECK_BY_NUMBER, Evidence, Verdict
from ..labels import budget_label
from ..metrics import HitsOfN, wilson_interval
from ..newest_rows import created_stamps, newest_of, number, recency, text
from .best_known import Evidence as AttackEvidence
from .best_known import broken_on
from .format import MISSING, interval_text, sanitize
from .model import Plot

CERTIFICATE_CHECK = 8
LEGEND = ("Certified: the share of attacked test images classified right and certified at ε (a lower bound on "
          "robust accuracy; IBP and DeepZ exact for the network, randomized smoothing true with probability "
          "1 - alpha per image; an abstain is not certified), pooled over seeds, with its 95% interval and the "
          "method that certified the most; Certified ≤ best known: both bounds; Gap: best known − certified, in "
          "points (what no attack and no certificate has settled).")


@dataclass(frozen=True)
class CertificateRow:
    """One stored certificate row: a method's per-example certified flags on one model at one budget."""

    key: str
    suite: str
    dataset: str
    defense: str
    method: str
    threat_model: str
    budget: float
    seed: int
    n: int
    certified: int | None  # None where the method could not take the network (``unsupported``)
    correct: np.ndarray | None  # per example: right and certified at ``budget``
    indices: np.ndarray | None  # the test indices, aligned with ``correct``
    radius: np.ndarray | None
    unsupported: str
    plan_suites: tuple[str, ...]

    @classmethod
    def of(cls, r: dict) -> CertificateRow:
        certified = number(r.get("certified"))
        planned = r.get("plan_suites")
        return cls(text(r.get("key")), text(r.get("suite")), text(r.get("dataset")), text(r.get("defense")),
                   text(r.get("method")), text(r.get("threat_model")), float(r["budget"]), int(r["seed"]),
                   int(r["n"]), None if certified is None else int(certified), r.get("correct"),
                   r.get("example_indices"), r.get("radius"), text(r.get("unsupported")),
                   tuple(planned) if isinstance(planned, (list, tuple)) else ())

    def belongs_to(self, suite: str) -> bool:
        return suite in (self.plan_suites or (self.suite,))


def certificate_rows(frame: pd.DataFrame | None) -> list[CertificateRow]:
    """The stored certificate rows, the newest of each (dataset, defense, method, threat model, budget, seed)."""
    if frame is None or frame.empty:
        return []
    created = created_stamps(frame)
    triples = []
    for record, stamp in zip(frame.to_dict("records"), created):
        row = CertificateRow.of(record)
        identity = (row.dataset, row.defense, row.method, row.threat_model, round(row.budget, 9), row.seed)
        triples.append((identity, recency(stamp, text(record.get("created_at"))), row))
    return newest_of(triples)


@dataclass(frozen=True)
class Certified(HitsOfN):
    """One defense's certified accuracy at (threat model, ε): the best method's, pooled over seeds."""

    method: str
    hits: int
    n: int
    unsupported: str = ""  # set (and n 0) where no method could take the network

    def text(self) -> str:
        return MISSING if self.unsupported else interval_text(self.acc, self.interval)


def certified_at(rows: Iterable[CertificateRow], threat_model: str, eps: float) -> Certified | None:
    """The best certified accuracy of one defense's ``rows`` at (``threat_model``, ``eps``); None where none
    certified at that budget."""
    by_method: dict[str, list[CertificateRow]] = defaultdict(list)
    for r in rows:
        if r.threat_model == threat_model and abs(r.budget - eps) <= 1e-9 * max(1.0, eps):
            by_method[r.method].append(r)
    if not by_method:
        return None
    numbers = []
    for method, mine in sorted(by_method.items()):
        done = [r for r in mine if r.certified is not None]
        if done:
            numbers.append(Certified(method, sum(r.certified or 0 for r in done), sum(r.n for r in done)))
    if numbers:
        return max(numbers, key=lambda c: (c.acc, c.n))
    reasons = "; ".join(dict.fromkeys(f"{r.method}: {r.unsupported}" for mine in by_method.values() for r in mine))
    return Certified("", 0, 0, unsupported=reasons)


# --------------------------------------------------------------------------- check 8


def contradictions(rows: Iterable[CertificateRow], evidence: dict[tuple[str, str], list[AttackEvidence]]
                   ) -> list[Verdict]:
    """Check 8's verdict per (dataset, defense, threat model) that has certified examples: failed where some
    certified example was broken within its budget by a stored result on the same seed and images."""
    groups: dict[tuple[str, str, str], list[tuple[CertificateRow, np.ndarray, np.ndarray]]] = defaultdict(list)
    for r in rows:
        if r.correct is not None and r.indices is not None:
            groups[(r.dataset, r.defense, r.threat_model)].append((r, r.correct, r.indices))
    verdicts = []
    for (dataset, defense, tm), certs in sorted(groups.items()):
        found: list[str] = []
        certified = checked = 0
        for cert, flags, indices in sorted(certs, key=lambda c: (c[0].method, c[0].budget, c[0].seed)):
            certified += int(flags.sum())
            for e in evidence.get((dataset, defense), []):
                if e.threat_model != tm or e.seed != cert.seed:
                    continue
                broken = e.broken_within(cert.budget, decided=True)
                mine = None if broken is None or e.indices is None else broken_on(e.indices, broken, indices)
                if mine is None:
                    continue
                checked += 1
                bad = flags & mine
                if bad.any():
                    shown = ", ".join(str(int(i)) for i in indices[bad][:10]) + (" …" if bad.sum() > 10 else "")
                    found.append(f"{int(bad.sum())} certified by {cert.method} at "
                                 f"{budget_label('eps', cert.budget)} broken by {e.name} "
                                 f"{budget_label(e.budget_param or 'eps', e.budget)} (seed {cert.seed}; test "
                                 f"images {shown})")
        if not checked:
            continue  # no attack result on the certified images: no evidence either way
        n = sum(c[0].n for c in certs)
        verdicts.append(Verdict(dataset, defense, tm, CHECK_BY_NUMBER[CERTIFICATE_CHECK], bool(found),
                                (Evidence("certified examples (all budgets and methods)", certified, n),),
                                "; ".join(found) if found else f"none broken by the {checked} results checked"))
    return verdicts



# --------------------------------------------------------------------------- certified accuracy vs radius

RADIUS_POINTS = 41  # points of a certified-accuracy-vs-radius curve, from 0 to the largest radius certified


def radius_plot(section: str, rows: Iterable[CertificateRow], taken_files: set[str]) -> Plot | None:
    """Certified accuracy against radius (Cohen et al. 2019, Fig. 6), one line per defense whose method gives a
    radius per example (randomized smoothing), pooled over seeds; None where none does."""
    radii: dict[str, dict[int, np.ndarray]] = defaultdict(dict)  # defense -> seed -> per-example radius
    method: dict[str, str] = {}
    for r in rows:
        if r.radius is not None and r.certified is not None:
            radii[r.defense].setdefault(r.seed, r.radius)  # every budget's row holds the same radii
            method[r.defense] = r.method
    if not radii:
        return None
    pooled = {d: np.concatenate(list(by_seed.values())) for d, by_seed in sorted(radii.items())}
    top = max(float(v.max(initial=0.0)) for v in pooled.values()) or 1.0
    grid = np.linspace(0.0, top, RADIUS_POINTS)
    series = []
    for defense, radius in pooled.items():
        hits = [int(((radius > 0) & (radius >= r)).sum()) for r in grid]
        intervals = [wilson_interval(h, radius.size) for h in hits]
        series.append((f"{defense} ({method[defense]})", tuple(float(r) for r in grid),
                       tuple(100 * h / radius.size for h in hits), tuple(100 * lo for lo, _ in intervals),
                       tuple(100 * hi for _, hi in intervals)))
    filename, i = f"{sanitize(section)}__certified-radius.png", 2
    while filename in taken_files:
        filename, i = f"{sanitize(section)}__certified-radius-{i}.png", i + 1
    taken_files.add(filename)
    return Plot(filename=filename, caption=f"{section} — certified accuracy vs L2 radius", xlabel="L2 radius",
                log_x=False, series=tuple(series), ylabel="certified accuracy (%)")
