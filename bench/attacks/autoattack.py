"""AutoAttack and its members (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"; reference implementation: github.com/fra31/auto-attack).

* ``apgd-ce`` / ``apgd-dlr``: Auto-PGD, step size set by the progress of the loss (halved at checkpoints),
  momentum 0.75, on the cross-entropy or on the Difference of Logits Ratio loss (shift- and scale-invariant
  in the logits, so a saturated softmax does not flatten it).
* ``apgd-t``: APGD on the targeted DLR loss against each of the top ``target_classes`` other classes in turn.
* ``fab-t``: targeted Fast Adaptive Boundary (Croce & Hein 2020b), a minimum-norm attack; an example counts
  as fooled only when FAB's closest adversarial lies within the budget.
* ``square``: Square Attack (Andriushchenko et al. 2020), score-based random search: no gradient is read
  (``uses_gradients`` is False), so it is the check against gradient masking.
* ``autoattack``: the sequence as one attack; each member runs on the examples every earlier member left
  robust, so an example is robust only if it survives all of them (the per-example worst case). ``version``
  standard: APGD-CE, APGD-T, FAB-T, Square; rand (for randomized defenses): APGD-CE and APGD-DLR with the
  loss and gradient averaged over ``eot_draws`` draws (EOT); auto (default): rand for a defense whose
  ``stochastic`` flag is set (``params_for_defense``, called by the plan, writes the resolved version into the
  task's key), else standard; run outside a plan, auto picks rand when two passes over the images disagree.

Each attack exists per threat model, ``<name>`` in L-infinity and ``<name>-l2`` in L2. Their plain-PyTorch
loops (bench/attacks/backends.py) draw their randomness per example, so a member gives an example the same
result inside AutoAttack as alone. Where to add an attack: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from ..registry import attacks
from ..threat_models import ThreatModel
from .backends import (art_generate, repeat_draws, torch_apgd, torch_fab_targeted, torch_square_l2,
                       torch_square_linf)
from .base import Attack, AttackJob, check_positive

TARGET_CLASSES = 9  # the reference's n_target_classes: the top 9 other classes (all of them on 10 classes)


def _norm_of(cls: type[Attack]) -> str:
    return "linf" if cls.threat_model == ThreatModel.LINF else "l2"


def _target_count(attack: Any, job: AttackJob, least: int) -> int:
    """``target_classes``, at most the classes other than the label; ValueError below ``least`` classes."""
    k = job.num_classes
    if k < least:
        raise ValueError(f"{type(attack).__name__} needs a model with at least {least} classes, got {k}")
    return min(attack.target_classes, k - 1)


class _Member(Attack):
    """An AutoAttack member: ``_run_rows(job, rows)`` attacks a subset whose rows in the whole set are ``rows``
    (the randomness follows the row), ``_run_torch(job)`` the whole set."""

    salt: ClassVar[int] = 0  # tells the members' random streams apart

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _run_torch(self, job: AttackJob) -> torch.Tensor:
        return self._run_rows(job, None)


class _APGD(_Member):
    ascends_attack_loss = False  # it ascends its own per-example CE or DLR (surfaces with attack_loss refused)
    quick_params = {"steps": 10}
    _loss: ClassVar[str]

    def __init__(self, *, backend: str | None = None, steps: int = 100, restarts: int = 1, eot: int = 1):
        super().__init__(backend=backend)
        check_positive("steps", steps)
        check_positive("restarts", restarts)
        self.steps, self.restarts = steps, restarts
        self._init_eot(eot, backend)

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        if self._loss == "dlr" and job.num_classes < 3:
            raise ValueError(f"the DLR loss needs a model with at least 3 classes, got {job.num_classes}")
        return torch_apgd(job, norm=_norm_of(type(self)), eps=job.budget, steps=self.steps, loss=self._loss,
                          restarts=self.restarts, rows=rows, salt=self.salt)

    def _run_art(self, job: AttackJob) -> torch.Tensor:
        from art.attacks.evasion import AutoProjectedGradientDescent

        return art_generate(job, lambda c: AutoProjectedGradientDescent(
            c, norm=np.inf if _norm_of(type(self)) == "linf" else 2, eps=job.budget, eps_step=2 * job.budget,
            max_iter=self.steps, targeted=False, nb_random_init=self.restarts, batch_size=job.batch_size,
            loss_type="cross_entropy" if self._loss == "ce" else "difference_logits_ratio", verbose=False), job.y)


@attacks.register("apgd-ce")
class APGDCE(_APGD):
    """Auto-PGD on the cross-entropy in L-infinity (Croce & Hein 2020): step size halved as the loss stalls."""

    threat_model = ThreatModel.LINF
    backends = ("torch", "art")
    _loss, salt = "ce", 1


@attacks.register("apgd-ce-l2")
class APGDCEL2(_APGD):
    """Auto-PGD on the cross-entropy in L2 (Croce & Hein 2020): step size halved as the loss stalls."""

    threat_model = ThreatModel.L2
    backends = ("torch", "art")
    _loss, salt = "ce", 1


@attacks.register("apgd-dlr")
class APGDDLR(_APGD):
    """Auto-PGD on the Difference of Logits Ratio loss in L-infinity (Croce & Hein 2020)."""

    threat_model = ThreatModel.LINF
    backends = ("torch", "art")
    _loss, salt = "dlr", 2


@attacks.register("apgd-dlr-l2")
class APGDDLRL2(_APGD):
    """Auto-PGD on the Difference of Logits Ratio loss in L2 (Croce & Hein 2020)."""

    threat_model = ThreatModel.L2
    backends = ("torch", "art")
    _loss, salt = "dlr", 2


class _APGDT(_Member):
    ascends_attack_loss = False
    quick_params = {"steps": 10, "target_classes": 2}
    salt = 3

    def __init__(self, *, backend: str | None = None, steps: int = 100, restarts: int = 1,
                 target_classes: int = TARGET_CLASSES, eot: int = 1):
        super().__init__(backend=backend)
        for name, value in (("steps", steps), ("restarts", restarts), ("target_classes", target_classes)):
            check_positive(name, value)
        self.steps, self.restarts, self.target_classes = steps, restarts, target_classes
        self._init_eot(eot, backend)

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        return torch_apgd(job, norm=_norm_of(type(self)), eps=job.budget, steps=self.steps, loss="dlr",
                          restarts=self.restarts, target_classes=_target_count(self, job, 4), rows=rows,
                          salt=self.salt)


@attacks.register("apgd-t")
class APGDT(_APGDT):
    """Targeted Auto-PGD (targeted DLR loss) in L-infinity against each of its target_classes top rivals."""

    threat_model = ThreatModel.LINF
    backends = ("torch",)


@attacks.register("apgd-t-l2")
class APGDTL2(_APGDT):
    """Targeted Auto-PGD (targeted DLR loss) in L2 against each of its target_classes top rivals."""

    threat_model = ThreatModel.L2
    backends = ("torch",)


class _FABT(_Member):
    quick_params = {"steps": 10, "target_classes": 2}

    def __init__(self, *, backend: str | None = None, steps: int = 100, target_classes: int = TARGET_CLASSES):
        super().__init__(backend=backend)
        check_positive("steps", steps)
        check_positive("target_classes", target_classes)
        self.steps, self.target_classes = steps, target_classes

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        return torch_fab_targeted(job, norm=_norm_of(type(self)), eps=job.budget, steps=self.steps,
                                  target_classes=_target_count(self, job, 2), rows=rows)


@attacks.register("fab-t")
class FABT(_FABT):
    """Targeted FAB in L-infinity (Croce & Hein 2020b): minimum-norm, counted where it lands within eps."""

    threat_model = ThreatModel.LINF
    backends = ("torch",)


@attacks.register("fab-t-l2")
class FABTL2(_FABT):
    """Targeted FAB in L2 (Croce & Hein 2020b): minimum-norm, counted where it lands within eps."""

    threat_model = ThreatModel.L2
    backends = ("torch",)


class _Square(_Member):
    uses_gradients = False
    quick_params = {"queries": 200}
    salt = 4

    def __init__(self, *, backend: str | None = None, queries: int = 5000, p_init: float = 0.8):
        super().__init__(backend=backend)
        check_positive("queries", queries)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.queries, self.p_init = queries, p_init

    def _run_art(self, job: AttackJob) -> torch.Tensor:
        from art.attacks.evasion import SquareAttack

        return art_generate(job, lambda c: SquareAttack(
            c, norm=np.inf if _norm_of(type(self)) == "linf" else 2, max_iter=self.queries, eps=job.budget,
            p_init=self.p_init, nb_restarts=1, batch_size=job.batch_size, verbose=False), job.y)


@attacks.register("square")
class Square(_Square):
    """Square Attack in L-infinity (Andriushchenko et al. 2020): score-based random search, no gradients."""

    threat_model = ThreatModel.LINF
    backends = ("torch", "art")

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        return torch_square_linf(job, eps=job.budget, queries=self.queries, p_init=self.p_init, rows=rows,
                                 salt=self.salt)


@attacks.register("square-l2")
class SquareL2(_Square):
    """Square Attack in L2 (Andriushchenko et al. 2020): score-based random search, no gradients."""

    threat_model = ThreatModel.L2
    backends = ("torch", "art")

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        return torch_square_l2(job, eps=job.budget, queries=self.queries, p_init=self.p_init, rows=rows,
                               salt=self.salt)


VERSIONS = ("auto", "standard", "rand")


class _AutoAttack(Attack):
    quick_params = {"steps": 5, "target_classes": 2, "square_queries": 50}
    _suffix: ClassVar[str]

    def __init__(self, *, backend: str | None = None, version: Literal["auto", "standard", "rand"] = "auto",
                 steps: int = 100, target_classes: int = TARGET_CLASSES, square_queries: int = 5000,
                 eot_draws: int = 20):
        super().__init__(backend=backend)
        for name, value in (("steps", steps), ("target_classes", target_classes),
                            ("square_queries", square_queries), ("eot_draws", eot_draws)):
            check_positive(name, value)
        self.version, self.steps, self.target_classes = version, steps, target_classes
        self.square_queries, self.eot_draws = square_queries, eot_draws

    @classmethod
    def params_for_defense(cls, params: dict[str, Any], *, stochastic: bool) -> dict[str, Any]:
        """The plan's hook: ``version: auto`` resolved for the attacked defense (rand where it is stochastic),
        so that the task's key names the version that ran."""
        if params.get("version", "auto") != "auto":
            return params
        return {**params, "version": "rand" if stochastic else "standard"}

    def members(self, version: str) -> list[_Member]:
        """The attacks of ``version`` (standard or rand), in the order they run."""
        s = self._suffix
        if version == "rand":
            return [attacks.get(name + s).build(steps=self.steps, eot=self.eot_draws)
                    for name in ("apgd-ce", "apgd-dlr")]
        return [attacks.get("apgd-ce" + s).build(steps=self.steps),
                attacks.get("apgd-t" + s).build(steps=self.steps, target_classes=self.target_classes),
                attacks.get("fab-t" + s).build(steps=self.steps, target_classes=self.target_classes),
                attacks.get("square" + s).build(queries=self.square_queries)]

    @torch.no_grad()
    def _resolve(self, job: AttackJob) -> str:
        if self.version != "auto":
            return self.version
        x = job.x[:job.batch_size].to(job.device)
        return "rand" if not torch.equal(job.model(x), job.model(x)) else "standard"

    @torch.no_grad()
    def _robust(self, job: AttackJob, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        """Whether the model (its mean logits over ``draws`` draws) still classifies each of ``x`` as ``y``."""
        out = []
        for i in range(0, len(x), job.batch_size):
            xb = x[i:i + job.batch_size].to(job.device)
            logits = job.model(repeat_draws(xb, draws)).view(draws, len(xb), -1).mean(0)
            out.append((logits.argmax(1) == y[i:i + job.batch_size].to(job.device)).cpu())
        return torch.cat(out)

    def _run_torch(self, job: AttackJob) -> torch.Tensor:
        version = self._resolve(job)
        draws = self.eot_draws if version == "rand" else 1
        out, robust = job.x.clone(), self._robust(job, job.x, job.y, draws)
        for i, member in enumerate(self.members(version)):
            idx = robust.nonzero().flatten()
            if len(idx) == 0:
                break
            sub = dataclasses.replace(job, x=job.x[idx], y=job.y[idx], targets=None, eot=member.eot)
            run = member._run_rows if member.backend == "torch" else getattr(member, f"_run_{member.backend}")
            adv = member._finalize(sub.x, run(sub, idx) if member.backend == "torch" else run(sub), job.budget)
            fooled = ~self._robust(job, adv, sub.y, draws)
            # Survivors keep the first member's output (APGD-CE's highest-loss point: the best bet under
            # a stochastic defense's repeated scoring); fooled examples their first adversarial.
            keep = fooled if i else torch.ones_like(fooled)
            out[idx[keep]] = adv[keep]
            robust[idx[fooled]] = False
        return out


@attacks.register("autoattack")
class AutoAttack(_AutoAttack):
    """AutoAttack in L-infinity (Croce & Hein 2020): the per-example worst case over its members' sequence."""

    threat_model = ThreatModel.LINF
    backends = ("torch",)
    _suffix = ""


@attacks.register("autoattack-l2")
class AutoAttackL2(_AutoAttack):
    """AutoAttack in L2 (Croce & Hein 2020): the per-example worst case over its members' sequence."""

    threat_model = ThreatModel.L2
    backends = ("torch",)
    _suffix = "-l2"
