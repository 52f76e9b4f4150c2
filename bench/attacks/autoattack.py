"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"; reference implementation: github.com/fra31/auto-attack), the ensemble of its members:

* ``apgd-ce`` / ``apgd-dlr`` and ``apgd-t``: Auto-PGD (bench/attacks/apgd.py);
* ``fab-t``: targeted Fast Adaptive Boundary (bench/attacks/fab.py);
* ``square``: Square Attack (bench/attacks/square.py);
* ``autoattack``: the sequence as one attack; each member runs on the examples every earlier member left
  robust, so an example is robust only if it survives all of them (the per-example worst case). ``version``
  standard: APGD-CE, APGD-T, FAB-T, Square; rand (for randomized defenses): APGD-CE and APGD-DLR with the
  loss and gradient averaged over ``eot_draws`` draws (EOT); auto (default): rand for a defense whose
  ``stochastic`` flag is set (``params_for_defense``, called by the plan, writes the resolved version into the
  task's key), else standard; run outside a plan, auto picks rand when two passes over the images disagree.

Each attack exists per threat model, ``<name>`` in L-infinity and ``<name>-l2`` in L2. The members' plain-PyTorch
loops draw their randomness per example (bench/attacks/members.py), so a member gives an example the same
result inside AutoAttack as alone. Where to add an attack: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch

from ..registry import attacks
from ..threat_models import ThreatModel
from .backends import repeat_draws
from .base import INPUT_GRADIENT, Attack, AttackJob, check_positive, count_of
from .members import TARGET_CLASSES, Member


VERSIONS = ("auto", "standard", "rand")
# AutoAttack runs its later attacks only on the images its first one left robust: about none on an undefended
# model, most on a robust one. Its cost (``forward_passes``) counts them as half (the rest of the early stopping
# is counted at full length).
ROBUST_LEFT = 0.5


class _AutoAttack(Attack):
    quick_params = {"steps": 5, "target_classes": 2, "square_queries": 50}
    step_param = "steps"
    _suffix: ClassVar[str]

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """rand: APGD-CE and APGD-DLR, each over EOT draws. standard (auto resolves to it for a deterministic
        defense): APGD-CE, then APGD-T, FAB-T and Square on the images still robust (``ROBUST_LEFT`` of them)."""
        p = params
        apgd = (p.get("steps") or 100) * INPUT_GRADIENT
        if p.get("version") == "rand":
            return 2 * apgd * count_of(p, "eot_draws", 1)
        targets = count_of(p, "target_classes", 1)
        later = apgd * targets + apgd * targets + count_of(p, "square_queries")
        return apgd + ROBUST_LEFT * later

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

    def members(self, version: str) -> list[Member]:
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
