"""The number a reader takes away: each deployed defense's best-known robust accuracy.

Like RobustBench's "best known" robust accuracy, it is the per-example worst case over every stored result
the harness has on a deployed model, not the number of one attack or one table:

* **What counts.** Every result row that scored the deployed system's decisions (``evaluated_on`` deployed:
  the model with its reject option where it has one), whatever surface its examples were crafted on
  (members, mean gradient, fixed draws, EOT, reject-aware), transfer sources, AutoAttack and the soundness
  checks' own runs (noise, more steps, single step, unbounded). Rows scored on a part of a defense (one
  ensemble member) never count for the defense.
* **Which budget.** An example broken at a budget ≤ ε is broken at ε. An example broken by any attack whose
  stored perturbation size in the threat model's norm is ≤ ε (``perturbation_l2``/``perturbation_linf``)
  is broken at ε too: so a minimum-norm attack (C&W, EAD, DeepFool, FAB) counts through each example's
  perturbation, and one C&W run gives its whole accuracy-vs-ε curve.
* **Which images.** Rows combine per example over the images they share: for each set of attacked images,
  an example of it is broken if any row that attacked it broke it (every example's flag stays an upper bound
  on its robustness); the set whose worst case is lowest is the number (the lowest upper bound with
  evidence), and rows that attacked none of its images are named as counted apart, never silently mixed.
* **Stochastic defenses.** An example counts as robust only if it was classified correctly (or rejected)
  in every repeat ("strict"); the mean over repeats of the attack that broke the most examples is given
  beside it.
* **Which attack.** The attack (with its surface or source) that broke the most examples, and how many
  examples only it broke.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..checks import CHECK_SOURCE
from ..metrics import OUT_DISTRIBUTION_ATTACK, HitsOfN
from ..threat_models import ThreatModel
from .model import CLEAN_ATTACK
from .rows import Row

# The stored per-example perturbation size of each threat model whose budget is a distance.
NORM_COLUMNS = {ThreatModel.LINF.value: "perturbation_linf", ThreatModel.L2.value: "perturbation_l2"}
# A stored float32 size within this relative distance of ε is within ε (projection and clipping round).
_NORM_TOLERANCE = 1e-5
# Rows made by the checks that say nothing about an attack (clean passes and gradients).
_NOT_ATTACKS = {CLEAN_ATTACK, OUT_DISTRIBUTION_ATTACK, "probe"}

RULE = ("Best known (the summary and each section's first tables): per deployed defense, threat model and budget "
        "ε, an example counts as robust only if no stored result on the deployed model broke it within ε: every "
        "surface, transfer source, AutoAttack and soundness-check run counts (a row scored on one ensemble member "
        "does not), a result at a budget ≤ ε counts at ε, and a minimum-norm attack's example counts where its "
        "perturbation is ≤ ε. Results combine per example over the images they share (of the attacked image sets, "
        "the one with the lowest number is shown; results on none of its images are named apart). Stochastic "
        "defenses: strict, robust in every repeat. Broken most by: the attack that broke the most examples, and "
        "how many only it broke. \"attacked at ε≤x only\": no result ran at ε itself, the number is the bound from "
        "smaller budgets (not ranked against numbers measured at ε).")


@dataclass(frozen=True, eq=False)
class Evidence:
    """One stored result on a deployed model, per example: what was broken, and how far from the image."""

    row: Row
    images: tuple  # which test images, in order: their indices, else the digest, else only their number
    norms: np.ndarray | None  # per example, the perturbation's size in the threat model's norm

    @classmethod
    def of(cls, row: Row) -> "Evidence":
        indices = row.example_indices
        images = (("indices", indices.tobytes()) if indices is not None
                  else ("digest", row.examples) if row.examples else ("count", row.n))
        return cls(row, images, getattr(row, NORM_COLUMNS[row.threat_model]))

    # What the report reads of the row, by the names the rest of this module uses.
    dataset = property(lambda self: self.row.dataset)
    defense = property(lambda self: self.row.defense)
    attack = property(lambda self: self.row.attack)
    source = property(lambda self: self.row.source)
    threat_model = property(lambda self: self.row.threat_model)
    budget_param = property(lambda self: self.row.budget_param)
    budget = property(lambda self: self.row.budget)
    seed = property(lambda self: self.row.seed)
    correct = property(lambda self: self.row.correct)
    indices = property(lambda self: self.row.example_indices)

    @property
    def surface(self) -> str:
        return self.row.surface or "deployed"

    @property
    def repeats(self) -> int:
        return int(self.row.metrics.get("repeats") or 1)

    @property
    def mean_acc(self) -> float:
        """The stored robust accuracy (a mean over repeats where repeated)."""
        return self.row.hits / self.row.n

    @property
    def name(self) -> str:
        """The attack as a reader knows it: its label, and where its examples came from."""
        if self.source.startswith(CHECK_SOURCE):
            return f"{self.attack} (soundness check)"
        where = []
        if self.source.startswith("transfer:"):
            where.append(f"transfer from {self.source.split(':', 1)[1]}")
        if self.surface != "deployed":
            where.append(f"surface {self.surface}")
        return f"{self.attack} ({', '.join(where)})" if where else self.attack

    def speaks_to(self, eps: float) -> bool:
        """Whether this result alone bounds the robust accuracy at ``eps``: a fixed budget ≤ ``eps``, or a
        minimum-norm attack (its per-example sizes say where each example broke). A fixed budget above ``eps``
        only adds the examples it happened to break within ``eps``: its others say nothing there."""
        if self.budget_param == "eps" and self.budget is not None:
            return self.budget <= eps * (1 + _NORM_TOLERANCE)
        return self.norms is not None

    def broken_within(self, eps: float, *, decided: bool = False) -> np.ndarray | None:
        """Per example, whether this result broke it within ``eps``; None where it says nothing about eps.
        ``decided``: only where a wrong class was decided, not an abstention (check 8: an abstention contradicts
        no certificate)."""
        broken = ~self.correct if not decided or self.row.wrong_class is None else self.row.wrong_class
        if self.budget_param == "eps" and self.budget is not None and self.budget <= eps * (1 + _NORM_TOLERANCE):
            return broken
        if self.norms is not None:
            return broken & (self.norms <= eps * (1 + _NORM_TOLERANCE))
        return None


@dataclass(frozen=True)
class BestKnown(HitsOfN):
    """One deployed defense's best-known robust accuracy at one (threat model, ε), pooled over seeds (``acc``,
    ``interval``: ``HitsOfN``)."""

    dataset: str
    defense: str
    threat_model: str
    eps: float
    hits: int  # examples robust against every counted result
    n: int
    strongest: str  # the attack that broke the most examples ("" where none broke any)
    strongest_broke: int
    only_strongest: int  # examples only it broke
    counted: tuple[Evidence, ...]
    apart: tuple[Evidence, ...]  # results within ε on images the number's set does not hold
    repeats: int  # > 1: a stochastic defense, its number strict
    strongest_mean: float | None  # the mean over repeats of the strongest attack's row (stochastic only)
    # The largest budget a counted fixed-budget attack ran at, where it is below eps and no minimum-norm attack
    # counted: the number is an upper bound from smaller budgets only (None: some result ran at eps).
    only_below: float | None = None


def collect(rows: Iterable[Row]) -> dict[tuple[str, str], list[Evidence]]:
    """(dataset, defense) -> its evidence: of ``rows`` (``bench.report.rows.dedupe``d: the newest of each
    identity), those scored on the deployed model with per-example flags, in a threat model whose budget is a
    distance."""
    out: dict[tuple[str, str], list[Evidence]] = defaultdict(list)
    for row in rows:
        if (row.attack not in _NOT_ATTACKS and row.threat_model in NORM_COLUMNS and row.evaluated_on == "deployed"
                and row.correct is not None):
            out[(row.dataset, row.defense)].append(Evidence.of(row))
    return dict(out)


def _on_images(evidence: Evidence, broken: np.ndarray, images: tuple, reference: Evidence) -> np.ndarray | None:
    """``broken`` of ``evidence`` on the reference row's images, in their order (False where it did not attack
    one of them); None where it attacked none of them, or where the rows do not say which images they attacked."""
    if evidence.images == images:
        return broken
    if evidence.indices is None or reference.indices is None:
        return None
    return broken_on(evidence.indices, broken, reference.indices)


def broken_on(indices: np.ndarray, broken: np.ndarray, reference: np.ndarray) -> np.ndarray | None:
    """Per-example flags ``broken`` of the test images ``indices``, on the images ``reference`` in their order
    (False where ``indices`` lacks one); None where the two share no image."""
    position = {int(i): p for p, i in enumerate(indices)}
    where = np.array([position.get(int(i), -1) for i in reference])
    if (where < 0).all():
        return None
    return np.where(where >= 0, broken[np.maximum(where, 0)], False)


@dataclass
class _SeedOutcome:
    broken: np.ndarray  # per example of the chosen images: broken by some counted result
    by_attack: dict[str, np.ndarray]  # per attack name: the examples it broke
    counted: list[Evidence]
    apart: list[Evidence]


def _one_seed(rows: list[Evidence], eps: float) -> _SeedOutcome | None:
    """The chosen image set of one seed's rows at ``eps``: of the candidate sets (each row's images), every row
    combined on the images it shares with it (an example is broken if any row that attacked it broke it); the
    lowest worst case wins (ties: more images). Rows that share no image with it are apart."""
    within = [(r, b) for r in rows if (b := r.broken_within(eps)) is not None]
    if not within:
        return None
    best: _SeedOutcome | None = None
    for images in dict.fromkeys(r.images for r, _ in within):
        reference = next(r for r, _ in within if r.images == images)
        broken = np.zeros(reference.correct.size, dtype=bool)
        by_attack: dict[str, np.ndarray] = {}
        counted, apart = [], []
        for row, row_broken in within:
            mine = _on_images(row, row_broken, images, reference)
            if mine is None:
                apart.append(row)
                continue
            counted.append(row)
            broken |= mine
            by_attack[row.name] = by_attack.get(row.name, np.zeros_like(broken)) | mine
        if not any(row.speaks_to(eps) for row in counted):
            continue  # only larger budgets' results: "none broken within eps" is no evidence, not 100%
        outcome = _SeedOutcome(broken, by_attack, counted, apart)
        if best is None or (1 - broken.mean(), -broken.size) < (1 - best.broken.mean(), -best.broken.size):
            best = outcome
    return best


def best_known(evidence: Iterable[Evidence], threat_model: str, eps: float) -> BestKnown | None:
    """The best-known robust accuracy of one deployed defense's ``evidence`` at (``threat_model``, ``eps``),
    pooled over seeds; None where no result says anything about that budget."""
    by_seed: dict[int, list[Evidence]] = defaultdict(list)
    for e in evidence:
        if e.threat_model == threat_model:
            by_seed[e.seed].append(e)
    outcomes = [o for seed in sorted(by_seed) if (o := _one_seed(by_seed[seed], eps)) is not None]
    if not outcomes:
        return None
    broke: dict[str, int] = defaultdict(int)
    only: dict[str, int] = defaultdict(int)
    for o in outcomes:
        stack = np.stack(list(o.by_attack.values())) if o.by_attack else np.zeros((0, o.broken.size), bool)
        alone = stack.sum(axis=0) == 1
        for name, mask in o.by_attack.items():
            broke[name] += int(mask.sum())
            only[name] += int((mask & alone).sum())
    strongest = max(broke, key=lambda name: (broke[name], only[name], name)) if any(broke.values()) else ""
    counted = tuple(e for o in outcomes for e in o.counted)
    repeats = max((e.repeats for e in counted), default=1)
    strongest_mean = None
    if repeats > 1 and strongest:
        # Its row at the largest budget it ran within eps (a minimum-norm attack: its only row).
        mine = [e for e in counted if e.name == strongest]
        top = max(mine, key=lambda e: (e.budget is not None and e.budget <= eps * (1 + _NORM_TOLERANCE),
                                       e.budget or 0.0))
        strongest_mean = top.mean_acc
    first = counted[0]
    direct = [e for e in counted if e.speaks_to(eps)]
    fixed = [e.budget for e in direct if e.budget_param == "eps" and e.budget is not None]
    only_below = max(fixed) if len(fixed) == len(direct) and max(fixed) < eps * (1 - _NORM_TOLERANCE) else None
    return BestKnown(
        dataset=first.dataset, defense=first.defense, threat_model=threat_model, eps=eps,
        hits=sum(int((~o.broken).sum()) for o in outcomes), n=sum(int(o.broken.size) for o in outcomes),
        strongest=strongest, strongest_broke=broke.get(strongest, 0), only_strongest=only.get(strongest, 0),
        counted=counted, apart=tuple(e for o in outcomes for e in o.apart), repeats=repeats,
        strongest_mean=strongest_mean, only_below=only_below)


def eps_budgets(evidence: Iterable[Evidence], threat_model: str) -> list[float]:
    """The distance budgets the suite's own attacks (not its checks) ran at in ``threat_model``, ascending."""
    return sorted({round(e.budget, 9) for e in evidence
                   if e.threat_model == threat_model and e.budget_param == "eps" and e.budget is not None
                   and not e.source.startswith(CHECK_SOURCE)})


def threat_models(evidence: Iterable[Evidence]) -> list[str]:
    return sorted({e.threat_model for e in evidence}, key=ThreatModel.rank_of)
