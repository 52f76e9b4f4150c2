"""Soundness checks of a robustness evaluation: the seven classic mistakes, as data, and their verdicts (and
an eighth where a suite certifies: bench.report.certified).

After Carlini et al. 2019 ("On Evaluating Adversarial Robustness", Sec. 4-5), Athalye et al. 2018 and
Tramèr et al. 2020 ("On Adaptive Attacks"). Every (dataset, defense, threat model) row of a suite is
checked against the results the suite already has plus a few cheap extra tasks that ``bench.plan`` adds
when the suite's ``checks`` is on (the default):

* ``check:unbounded``   the suite's iterative gradient attack at a budget that reaches any image
  (L∞ eps = 1; L2 the input space's diameter, sqrt(C*H*W)), its absolute step sizes dropped so that its
  steps can cross that ball;
* ``check:stronger``    the same attack with ``STEPS_FACTOR`` times the steps, at the headline budget;
* ``check:noise``       random noise of the same norm at the headline budget, ``NOISE_DRAWS`` draws per image
  (``bench/attacks/noise.py``; a ``check-noise`` task, crafted and scored in one);
* ``check:single-step`` FGSM at the headline budget (L∞ only);
* ``check:probe``       the defense on clean examples, ``PROBE_PASSES`` passes, and its input gradients.

Each is ``CHECK_EXAMPLES`` of the dataset's attacked examples (fewer where the suite attacks fewer). Their
rows are evidence, not leaderboard rows: their ``source`` starts with ``check:`` and the report shows them
only in its checks tables. Where a suite task already has one's key (the suite itself runs that attack at that
budget on as many examples), the suite's row is kept and shown as such, and that check reads it as it reads the
suite's own rows (check 2 and 3 then have no evidence: "—").

"Beats" always means: the 95% Wilson interval of one accuracy lies wholly below the other's, so a noisy
small-n difference never flags. Intervals of rows on different example sets (n = 500 against 200) are
compared as they are; on the same examples the test is conservative.

Rules (``CHECKS`` says each in words and what to run next):

1. stochastic: at least ``STOCHASTIC_SHARE`` (and two) of the probed examples change their label between
   clean passes, and the row was not both scored with repeated predictions (``repeats`` > 1) and attacked
   with EOT (``eot`` > 1) -> flag.
2. unbounded: the unbounded attack's accuracy interval lies wholly above ``NEAR_ZERO`` -> flag.
3. convergence: more steps lower the accuracy beyond the interval (the stronger attack's interval lies wholly
   below the reported one's): the reported attack had not converged -> flag. (The issue's "raise" is the
   attack's success rate: robust accuracy falls.)
4. single step: the best single-step attack beats the best iterative gradient attack at one budget -> flag.
5. black box: the best transfer or gradient-free attack beats the best white-box gradient attack at one
   budget -> flag.
6. noise: random noise beats the best white-box gradient attack at its budget -> flag.
7. gradients: the share of probed examples whose input gradient is zero, NaN or vanishing (L2 norm below
   ``VANISHING_GRADIENT``) has its interval wholly above ``GRADIENT_SHARE`` -> flag.
8. certificates: an example certified at ε (bench.certify) was broken by a stored attack within ε -> flag
   (decided per example in ``bench.report.certified``, from the certificates table).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd

from .labels import budget_label
from .metrics import HitsOfN
from .newest_rows import newest, text
from .registry import UnknownName, attacks
from .threat_models import ThreatModel

# --------------------------------------------------------------------------- the extra tasks

CHECK_SOURCE = "check:"  # the ``source`` of every check row starts with this
UNBOUNDED, STRONGER, NOISE, SINGLE_STEP, PROBE = (
    f"{CHECK_SOURCE}{k}" for k in ("unbounded", "stronger", "noise", "single-step", "probe"))
PROBE_ATTACK = "probe"  # the ``attack`` of a probe row

CHECK_EXAMPLES = 200  # examples each extra task attacks: cheap, and enough for a 95% interval of about ±7%
PROBE_PASSES = 3  # clean passes of the probe (a deterministic defense agrees with itself on every one)
STEPS_FACTOR = 4  # check 3: the stronger attack runs this many times the suite's steps
ABSOLUTE_STEP_PARAMS = ("step_size",)  # dropped at the unbounded budget: a fixed step caps the distance reached
NOISE_ATTACKS = {ThreatModel.LINF.value: "noise-linf", ThreatModel.L2.value: "noise-l2"}  # bench/attacks/noise.py
NOISE_DRAWS = 10  # noise draws per image; each image keeps the first that fools the defense
SINGLE_STEP_ATTACKS = {ThreatModel.LINF.value: "fgsm"}

# Verdict thresholds (see the module docstring).
NEAR_ZERO = 0.02
STOCHASTIC_SHARE = 0.01
GRADIENT_SHARE = 0.10
# An input gradient of L2 norm below this is vanishing: a step of L2 size 1 along it changes the loss by under
# 1e-8, far below float32's resolution of a loss near its usual size. A saturated softmax (defensive
# distillation) gives norms of 1e-20 and less; a plainly trained MNIST CNN has well under 1% below 1e-6.
VANISHING_GRADIENT = 1e-8

FLAG = "⚠"  # the mark of a flagged row and headline, followed by the failed checks' numbers


def check_label(label: str, source: str) -> str:
    """The ``attack`` of a check row that varies the suite's attack ``label``: "bim@stronger", so that no code
    keyed on (defense, attack) mistakes it for the suite's own row."""
    return f"{label}@{source.removeprefix(CHECK_SOURCE)}"


def base_label(attack: str) -> str:
    """The suite's attack label a check row's ``attack`` varies (``check_label`` undone)."""
    return attack.rsplit("@", 1)[0]


def attack_class(name: str) -> type | None:
    """The registered attack class of ``name``, or None (a plugin that is not installed here)."""
    try:
        return attacks.get(name).factory
    except UnknownName:
        return None


def uses_gradients(cls: type | None) -> bool:
    return cls is not None and getattr(cls, "uses_gradients", True)


def is_single_step(cls: type | None) -> bool:
    return cls is not None and getattr(cls, "single_step", False)


def is_gradient_attack(cls: type | None) -> bool:
    """A white-box gradient attack with a distance budget (eps): the evaluation the checks test."""
    return uses_gradients(cls) and cls.budget_param == "eps" and str(cls.threat_model) in NOISE_ATTACKS


def step_param(params: dict[str, Any], attack: str | type | None = None) -> str | None:
    """The name of the parameter that counts the iterations of ``attack`` (its registered name or class; None:
    not known) where ``params`` hold an int for it, else None: the one its class declares (``Attack.step_param``);
    for a class that declares none (an older plugin) or an attack not known here, the first of
    ``GUESSED_STEP_PARAMS`` that ``params`` hold an int for."""
    from .attacks.base import GUESSED_STEP_PARAMS

    cls = attack_class(attack) if isinstance(attack, str) else attack
    if cls is not None and hasattr(cls, "step_param"):
        name = cls.step_param
        return name if name is not None and isinstance(params.get(name), int) else None
    return next((p for p in GUESSED_STEP_PARAMS if isinstance(params.get(p), int)), None)


def base_attack(suite_attacks: Iterable[Any], defense: str, threat_model: str) -> Any | None:
    """The suite's attack entry the extra tasks of (``defense``, ``threat_model``) vary: the first white-box
    iterative gradient attack on it that has a step count and a finite budget, one on the deployed model
    preferred, then one without EOT. None where the suite has none."""
    candidates = []
    for a in suite_attacks:
        cls = attack_class(a.name)
        defenses = getattr(a, "defenses", None)  # a detector's adaptive attacks have neither these nor a surface
        if (getattr(a, "transfer_from", None) is None and (defenses is None or defense in defenses)
                and is_gradient_attack(cls)
                and not is_single_step(cls) and str(cls.threat_model) == threat_model
                and step_param(a.params, cls) and any(b is not None for b in a.budgets)):
            candidates.append(a)
    # Stable: suite order within each. Without EOT is cheaper (and check 1 asks for EOT on its own).
    candidates.sort(key=lambda a: (getattr(a, "surface", "deployed") != "deployed", (a.params.get("eot") or 1) > 1))
    return candidates[0] if candidates else None


def headline_budget(entry: Any, headline: dict[str, float], threat_model: str) -> float:
    """The budget of checks 3, 4 and 6: the suite's headline budget where the base attack runs at it, else the
    base attack's largest budget."""
    budgets = [b for b in entry.budgets if b is not None]
    wanted = headline.get(threat_model)
    return wanted if wanted is not None and any(math.isclose(wanted, b) for b in budgets) else max(budgets)


def unbounded_budget(threat_model: str, input_shape: tuple[int, ...] | None) -> float | None:
    """A budget that reaches every image: the eps bound of the threat model for these inputs; None where that
    bound depends on an input shape the dataset's registry entry does not give (check 2 is then not run)."""
    from .attacks.budgets import BUDGET_KINDS

    bound = BUDGET_KINDS["eps"].upper_for(threat_model)
    if bound is None or (bound.dims_power and input_shape is None):
        return None
    return bound.bound_for(input_shape)


def unbounded_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if k in ABSOLUTE_STEP_PARAMS else v) for k, v in params.items()}


def stronger_params(params: dict[str, Any], attack: str | type | None = None) -> dict[str, Any]:
    """``params`` of ``attack`` (as ``step_param`` takes it) with ``STEPS_FACTOR`` times its iterations."""
    name = step_param(params, attack)
    return {**params, name: params[name] * STEPS_FACTOR}


# --------------------------------------------------------------------------- the checks, as data


@dataclass(frozen=True)
class Check:
    number: int
    name: str
    flags: str  # what a failure means, in words
    next_step: str  # what to run next


CHECKS: tuple[Check, ...] = (
    Check(1, "stochastic outputs", "repeated clean passes disagree, but the row has no repeated-prediction "
          "scoring and EOT attack", "mark the defense `stochastic` (scored `repeats` times) and attack it with "
          "`eot: 20` (or autoattack version: rand)"),
    Check(2, "unbounded budget", "at a budget that reaches any image, accuracy is not near 0",
          "look for masked gradients: a gradient-free attack (square), more steps, another loss"),
    Check(3, "more steps", "more steps lower the accuracy beyond the interval: the reported attack had not "
          "converged", "raise steps (and restarts) until the number stops moving, or run autoattack"),
    Check(4, "single step", "a single-step attack beats the iterative ones at the same budget",
          "check the iterative attack's step size and loss; run apgd-ce / autoattack"),
    Check(5, "black box", "a transfer or gradient-free attack beats the white-box gradient attacks",
          "the gradient is not useful: run square and an adaptive attack (Tramèr et al. 2020)"),
    Check(6, "random noise", "random noise of the same norm beats the gradient attacks",
          "the gradient is not useful: run square, and attack the model without its non-differentiable parts (BPDA)"),
    Check(7, "gradients", "input gradients are zero, NaN or vanishing on a large share of examples",
          "attack a loss that does not saturate (logit margin, apgd-dlr), or the logits before the softmax"),
    Check(8, "certificates", "an example certified at ε was broken by an attack within ε: the certificate or the "
          "attack is wrong", "re-run the certificate and the attack on the named test images: check the bounds' "
          "layers (bench.certify) and the attack's budget projection"),
)
CHECK_BY_NUMBER = {c.number: c for c in CHECKS}


# --------------------------------------------------------------------------- verdicts over stored rows


@dataclass(frozen=True)
class Evidence(HitsOfN):
    """One number a verdict compares: hits of n (a mean over repeats may be fractional) and its interval."""

    label: str
    hits: float
    n: int

    @property
    def share(self) -> float:
        return self.acc

    def text(self) -> str:
        low, high = self.interval
        return f"{self.label}: {100 * self.share:.1f}% [{100 * low:.1f}, {100 * high:.1f}], n={self.n}"


@dataclass(frozen=True)
class Verdict:
    """One check of one (dataset, defense, threat model) row that had evidence to decide on."""

    dataset: str
    defense: str
    threat_model: str
    check: Check
    failed: bool
    evidence: tuple[Evidence, ...]
    detail: str = ""

    def text(self) -> str:
        return "; ".join([*(e.text() for e in self.evidence), *([self.detail] if self.detail else [])])


def beats(a: Evidence, b: Evidence) -> bool:
    """``a``'s accuracy is lower than ``b``'s beyond doubt: its 95% interval lies wholly below ``b``'s."""
    return a.interval[1] < b.interval[0]


def is_check_row(frame: pd.DataFrame) -> pd.Series:
    """Per row of a results frame, whether it is check evidence (not a leaderboard row)."""
    if "source" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["source"].map(lambda s: isinstance(s, str) and s.startswith(CHECK_SOURCE))


def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the leaderboard's rows, the check evidence rows) of a results frame."""
    mask = is_check_row(frame)
    return frame[~mask], frame[mask]


@dataclass
class _Row:
    attack: str
    cls: type | None
    params: dict[str, Any]
    found: dict[str, Any]
    source: str
    surface: str
    threat_model: str
    budget: float | None
    repeats: int
    hits: float
    n: int


def _value(record: dict, name: str, default: Any = None) -> Any:
    value = record.get(name, default)
    try:
        return default if value is None or pd.isna(value) else value
    except (TypeError, ValueError):
        return value


def _rows(frame: pd.DataFrame) -> dict[tuple[str, str], list[_Row]]:
    """The rows scored on each (dataset, defense)'s deployed model, the newest of each identity."""
    out: dict[tuple[str, str], list[_Row]] = defaultdict(list)
    if frame.empty:
        return out
    deployed = frame["evaluated_on"].map(lambda e: text(e, "deployed") == "deployed") \
        if "evaluated_on" in frame.columns else pd.Series(True, index=frame.index)
    for record in newest(frame[deployed]).to_dict("records"):  # the one newest-wins rule (bench.newest_rows)
        try:
            config = json.loads(_value(record, "attack_config", "{}") or "{}")
        except (TypeError, json.JSONDecodeError):
            config = {}
        n = int(_value(record, "n", 0))
        if n <= 0:
            continue
        budget = _value(record, "budget")
        out[(str(record["dataset"]), str(record["defense"]))].append(_Row(
            attack=str(_value(record, "attack", "")), cls=attack_class(config["name"]) if config.get("name") else None,
            params=config.get("params") or {}, found=config.get("found") or {},
            source=str(_value(record, "source", "white-box")), surface=str(_value(record, "surface", "deployed")),
            threat_model=str(_value(record, "threat_model", "")), budget=None if budget is None else float(budget),
            repeats=int(_value(record, "repeats", 1)), hits=float(_value(record, "robust_acc", 0.0)) * n, n=n))
    return out


def _budget_key(budget: float | None) -> float | None:
    return None if budget is None else round(budget, 9)


def _label(row: _Row) -> str:
    attack = base_label(row.attack) if row.source.startswith(CHECK_SOURCE) else row.attack
    return f"{attack} {budget_label('eps', row.budget)}"


def _pool(rows: list[_Row], label: str) -> Evidence:
    return Evidence(label, sum(r.hits for r in rows), sum(r.n for r in rows))


def _grouped(rows: list[_Row]) -> dict[tuple, list[_Row]]:
    cells: dict[tuple, list[_Row]] = defaultdict(list)
    for r in rows:
        cells[(r.attack, r.source, r.surface, _budget_key(r.budget))].append(r)
    return cells


def _best(cells: dict[tuple, list[_Row]], keep) -> dict[float, Evidence]:
    """Per budget, the lowest pooled accuracy among the cells ``keep`` accepts."""
    best: dict[float, Evidence] = {}
    for (_attack, source, surface, budget), rows in cells.items():
        if budget is None or not keep(rows[0]):
            continue
        where = "" if surface == "deployed" else f" on {surface}"
        evidence = _pool(rows, _label(rows[0]) + where + (f" from {source.split(':', 1)[1]}"
                                                           if source.startswith("transfer:") else ""))
        if budget not in best or evidence.share < best[budget].share:
            best[budget] = evidence
    return best


def _suite_row(r: _Row) -> bool:
    return not r.source.startswith(CHECK_SOURCE)


def _white_box_gradient(r: _Row) -> bool:
    return r.source == "white-box" and is_gradient_attack(r.cls)


def evaluate(frame: pd.DataFrame) -> list[Verdict]:
    """Every verdict the rows of ``frame`` (a suite's results, check evidence included) can decide: per
    (dataset, defense) on its deployed model that has check rows, and per threat model it was attacked in (L∞,
    L2)."""
    verdicts: list[Verdict] = []
    for (dataset, defense), rows in sorted(_rows(frame).items()):
        if not any(r.source.startswith(CHECK_SOURCE) for r in rows):
            continue  # the suite did not run its checks (``checks: false``, or a store from before them)
        probes = [r for r in rows if r.source == PROBE]
        models = sorted({r.threat_model for r in rows if r.threat_model in NOISE_ATTACKS and
                         (r.source.startswith(CHECK_SOURCE) or is_gradient_attack(r.cls))}, key=ThreatModel.rank_of)
        for tm in models:
            mine = [r for r in rows if r.threat_model == tm]
            found = [_stochastic(probes, mine), _unbounded(mine), _stronger(mine), _single_step(mine),
                     _black_box(mine), _noise(mine), _gradients(probes)]
            for number, outcome in enumerate(found, 1):
                if outcome is not None:
                    failed, evidence, detail = outcome
                    verdicts.append(Verdict(dataset, defense, tm, CHECK_BY_NUMBER[number], failed, tuple(evidence),
                                            detail))
    return verdicts


def _probe_counts(probes: list[_Row], *names: str) -> tuple[int, int]:
    """Counts of ``found`` over the probes (seeds), and the examples they probed."""
    return (sum(int(sum(p.found.get(k, 0) for k in names)) for p in probes),
            sum(int(p.found.get("n", p.n)) for p in probes))


def _stochastic(probes: list[_Row], rows: list[_Row]):
    if not probes:
        return None
    changed, n = _probe_counts(probes, "disagree")
    evidence = Evidence(f"clean passes disagree ({probes[0].found.get('passes', PROBE_PASSES)} passes)", changed, n)
    scored = [r for r in rows if _suite_row(r) and r.source == "white-box"]
    repeated = bool(scored) and all(r.repeats > 1 for r in scored)
    # AutoAttack's rand version is its EOT version (Croce & Hein 2020: APGD with eot_draws gradients per step).
    eot = any(int(r.params.get("eot", 1) or 1) > 1
              or (r.params.get("version") == "rand" and int(r.params.get("eot_draws", 20) or 1) > 1) for r in scored)
    stochastic = changed >= 2 and evidence.share >= STOCHASTIC_SHARE
    detail = (f"scored with {min((r.repeats for r in scored), default=1)} prediction(s) per example; "
              f"{'an' if eot else 'no'} EOT attack") if stochastic else "deterministic"
    return stochastic and not (repeated and eot), [evidence], detail


def _unbounded(rows: list[_Row]):
    cells = _grouped([r for r in rows if r.source == UNBOUNDED])
    if not cells:
        return None
    evidence = [_pool(rs, _label(rs[0]) + " (unbounded)") for rs in cells.values()]
    return (any(e.interval[0] > NEAR_ZERO for e in evidence), evidence,
            f"expected near 0 (interval reaching {100 * NEAR_ZERO:g}% or below)")


def _stronger(rows: list[_Row]):
    reported = _grouped([r for r in rows if _suite_row(r) and r.source == "white-box"])
    pairs = []
    for (attack, _, surface, budget), rs in _grouped([r for r in rows if r.source == STRONGER]).items():
        base = reported.get((base_label(attack), "white-box", surface, budget))
        if base:
            steps = step_param(rs[0].params, rs[0].cls)
            more = f" ({rs[0].params[steps]} steps)" if steps else " (more steps)"
            pairs.append((_pool(base, _label(base[0]) + " as reported"), _pool(rs, _label(rs[0]) + more)))
    if not pairs:
        return None
    failed = [p for p in pairs if beats(p[1], p[0])]
    return bool(failed), list((failed or pairs)[0]), ""


def _compare(challengers: dict[float, Evidence], champions: dict[float, Evidence]):
    """A verdict from the budgets both sides have: failed where a challenger beats the champion."""
    pairs = [(challengers[b], champions[b]) for b in sorted(set(challengers) & set(champions))]
    if not pairs:
        return None
    failed = [p for p in pairs if beats(*p)]
    return bool(failed), list((failed or pairs)[0]), ""


def _single_step(rows: list[_Row]):
    cells = _grouped(rows)
    single = _best(cells, lambda r: (r.source == "white-box" or r.source == SINGLE_STEP) and is_single_step(r.cls))
    iterative = _best(cells, lambda r: _suite_row(r) and _white_box_gradient(r) and not is_single_step(r.cls))
    return _compare(single, iterative)


def _black_box(rows: list[_Row]):
    cells = _grouped([r for r in rows if _suite_row(r)])
    black = _best(cells, lambda r: r.source.startswith("transfer:") or (r.source == "white-box"
                                                                         and not uses_gradients(r.cls)))
    return _compare(black, _best(cells, _white_box_gradient))


def _noise(rows: list[_Row]):
    cells = _grouped(rows)
    noise = _best(cells, lambda r: r.source == NOISE)
    return _compare(noise, _best(cells, lambda r: _suite_row(r) and _white_box_gradient(r)))


def _gradients(probes: list[_Row]):
    if not probes:
        return None
    bad, n = _probe_counts(probes, "zero_gradient", "nan_gradient", "vanishing_gradient")
    zero, _ = _probe_counts(probes, "zero_gradient")
    nan, _ = _probe_counts(probes, "nan_gradient")
    evidence = Evidence("input gradient zero, NaN or vanishing", bad, n)
    detail = f"{zero} zero, {nan} NaN, {bad - zero - nan} below {VANISHING_GRADIENT:g} in L2 norm"
    return evidence.interval[0] > GRADIENT_SHARE, [evidence], detail


def guarded_label(detector: str) -> str:
    """How a detector's guarded classifier is named in its checks: the defense the checks judge."""
    return f"{detector} (guarded)"


def guarded_rows(detections: pd.DataFrame) -> pd.DataFrame:
    """A detection frame's detector-aware attack rows (``evaluation`` "adaptive": the detector folded into
    the guarded classifier, a rejection counted as defended), check evidence included, as result rows of
    the guarded classifier (``guarded_label``) that ``evaluate`` reads like a defense's."""
    from .attacks.noise import NOISE_BASELINES

    records = []
    for r in detections[detections["evaluation"] == "adaptive"].to_dict("records"):
        attack = str(r["test_attack"])
        name = config_name(r.get("attack_config"))
        cls = NOISE_BASELINES.get(name) or (attack_class(name) if name else None)
        records.append({"dataset": r["dataset"], "defense": guarded_label(str(r["detector"])), "attack": attack,
                        "attack_config": r.get("attack_config"), "surface": "deployed", "evaluated_on": "deployed",
                        "source": CHECK_SOURCE + attack.rsplit("@", 1)[1] if is_check_attack(attack) else "white-box",
                        "threat_model": str(cls.threat_model) if cls is not None else "", "budget": r["budget"],
                        "seed": r["seed"], "n": r["n"], "robust_acc": r["robust_acc"], "repeats": 1,
                        "created_at": r.get("created_at")})
    return pd.DataFrame(records)


def config_name(attack_config: Any) -> str | None:
    """The attack name in a stored row's ``attack_config`` JSON, or None (missing or unreadable)."""
    try:
        return json.loads(attack_config or "{}").get("name")
    except (TypeError, json.JSONDecodeError):
        return None


def is_check_attack(attack: str) -> bool:
    """Whether an ``attack`` label is a check's (``check_label``: "pgd-linf@unbounded")."""
    return "@" in attack


# --------------------------------------------------------------------------- what the report shows


def flags(verdicts: Iterable[Verdict]) -> dict[tuple[str, str, str], list[int]]:
    """(dataset, defense, threat model) -> the numbers of its failed checks (only rows with a failure)."""
    out: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for v in verdicts:
        if v.failed:
            out[(v.dataset, v.defense, v.threat_model)].append(v.check.number)
    return {k: sorted(set(v)) for k, v in out.items()}


def mark(numbers: Iterable[int]) -> str:
    """The flag a row label and its headline carry: "⚠2,7" (failed checks 2 and 7)."""
    return FLAG + ",".join(str(n) for n in numbers)
