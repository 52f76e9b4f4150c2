"""Gradient attacks in L-infinity and L2: FGSM (untargeted and targeted), BIM, PGD.

Their torch backend ascends the surface's ``attack_loss`` (``ascends_attack_loss``); with ``eot: k`` it
averages that gradient over k draws of a stochastic defense's randomness (Expectation over
Transformation, Athalye et al. 2018; ``Attack._init_eot``). It also runs several budgets as one job
(``Attack.run_budgets``; ``torch_gradient_attack_fused``), giving each budget the bits its own run gives on
CPU. Where to add an attack: docs/architecture.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ..registry import attacks
from ..threat_models import ThreatModel
from .backends import BudgetPart, art_generate, foolbox_run, torch_gradient_attack_fused
from .base import INPUT_GRADIENT, Attack, AttackJob, check_positive, count_of, make_targets


class _TorchGradient(Attack):
    """The torch backend FGSM, BIM and PGD share: one loop (``torch_gradient_attack_fused``) for one budget
    (``_run_torch``) or several at once (``_run_torch_budgets``, which ``run_budgets`` calls)."""

    step_param = "steps"

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """A gradient step per step and EOT draw."""
        return count_of(params, "steps") * count_of(params, "eot", 1) * INPUT_GRADIENT

    def _torch_loop(self) -> tuple[str, int, bool]:
        """The loop's norm, number of steps and whether it starts at a random point of the ball."""
        raise NotImplementedError

    def _step_size(self, eps: float) -> float:
        """The absolute step at budget ``eps``."""
        raise NotImplementedError

    def _run_torch(self, job: AttackJob) -> torch.Tensor:
        return self._run_torch_budgets([job])[0]

    def _run_torch_budgets(self, jobs: list[AttackJob]) -> list[torch.Tensor]:
        norm, steps, random_start = self._torch_loop()
        parts = [BudgetPart(job, job.budget, self._step_size(job.budget)) for job in jobs]
        return torch_gradient_attack_fused(parts, norm=norm, steps=steps, random_start=random_start)


@attacks.register("fgsm")
class FGSM(_TorchGradient):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps along the gradient sign."""

    threat_model = ThreatModel.LINF
    # torch 0.048 s, art 0.057 s, foolbox 0.075 s (128 MNIST images, small CNN, 2 CPU cores, best of 5).
    backends = ("torch", "foolbox", "art")
    ascends_attack_loss = True
    single_step = True
    step_param = None

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """One gradient step per EOT draw."""
        return INPUT_GRADIENT * count_of(params, "eot", 1)

    def __init__(self, *, backend: str | None = None, eot: int = 1):
        super().__init__(backend=backend)
        self._init_eot(eot, backend)

    def _run_foolbox(self, job: AttackJob) -> torch.Tensor:
        import foolbox as fb

        return foolbox_run(job, fb.attacks.LinfFastGradientAttack(random_start=False), job.budget)[0]

    def _run_art(self, job: AttackJob) -> torch.Tensor:
        from art.attacks.evasion import FastGradientMethod

        return art_generate(job, lambda c: FastGradientMethod(
            c, norm=np.inf, eps=job.budget, eps_step=job.budget, targeted=False, batch_size=job.batch_size), job.y)

    def _torch_loop(self) -> tuple[str, int, bool]:
        return "linf", 1, False

    def _step_size(self, eps: float) -> float:
        return eps


@attacks.register("fgsm-targeted")
class FGSMTargeted(_TorchGradient):
    """Targeted FGSM: one eps step down the gradient sign of the target class's loss.

    ``target`` picks each example's target class: ``random`` (uniform over the
    other classes, seeded), ``next`` ((y + 1) mod classes) or ``least-likely``
    (the class the model scores lowest on the clean image; Kurakin et al. 2017).
    """

    threat_model = ThreatModel.LINF
    targeted = True
    # the single gradient step of fgsm (timings there); Foolbox runs it as a 1-step targeted BIM.
    backends = ("torch", "foolbox", "art")
    ascends_attack_loss = True
    single_step = True
    step_param = None

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """One gradient step per EOT draw (as FGSM)."""
        return INPUT_GRADIENT * count_of(params, "eot", 1)

    def __init__(self, *, backend: str | None = None,
                 target: Literal["random", "next", "least-likely"] = "random", eot: int = 1):
        super().__init__(backend=backend)
        self.target = target
        self._init_eot(eot, backend)

    def make_targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> torch.Tensor:
        return make_targets(self.target, model, x, y, seed)

    def _run_foolbox(self, job: AttackJob) -> torch.Tensor:
        import foolbox as fb

        # Foolbox's FGSM class refuses targeted criteria; one BIM step of size eps is the same update.
        attack = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=job.budget, steps=1, random_start=False)
        return foolbox_run(job, attack, job.budget, targeted=True)[0]

    def _run_art(self, job: AttackJob) -> torch.Tensor:
        from art.attacks.evasion import FastGradientMethod

        return art_generate(job, lambda c: FastGradientMethod(
            c, norm=np.inf, eps=job.budget, eps_step=job.budget, targeted=True, batch_size=job.batch_size),
            job.targets)

    def _torch_loop(self) -> tuple[str, int, bool]:
        return "linf", 1, False

    def _step_size(self, eps: float) -> float:
        return eps


@attacks.register("bim")
class BIM(_TorchGradient):
    """Basic Iterative Method (I-FGSM, Kurakin et al. 2017): repeated FGSM steps, no random start.

    ``step_size`` is the absolute step alpha; None means 2.5 * eps / steps (the
    heuristic of Madry et al.: 0.25 * eps at 10 steps, near Foolbox's 0.2 * eps).
    Strauss et al.'s setting is eps=0.2 with ``steps: 8, step_size: 0.025``.
    """

    threat_model = ThreatModel.LINF
    # torch 0.46 s, foolbox 0.48 s, art 0.57 s (10 steps, 128 MNIST images, small CNN, 2 CPU cores).
    backends = ("torch", "foolbox", "art")
    quick_params = {"steps": 5}
    ascends_attack_loss = True

    def __init__(self, *, backend: str | None = None,
                 steps: int = 10, step_size: float | None = None, eot: int = 1):
        super().__init__(backend=backend)
        self._init_eot(eot, backend)
        check_positive("steps", steps)
        if step_size is not None:
            check_positive("step_size", step_size)
        self.steps = steps
        self.step_size = step_size

    def _alpha(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else 2.5 * eps / self.steps

    def _run_foolbox(self, job: AttackJob) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=self._alpha(job.budget), steps=self.steps,
                                                     random_start=False)
        return foolbox_run(job, attack, job.budget)[0]

    def _run_art(self, job: AttackJob) -> torch.Tensor:
        from art.attacks.evasion import BasicIterativeMethod

        return art_generate(job, lambda c: BasicIterativeMethod(
            c, eps=job.budget, eps_step=self._alpha(job.budget), max_iter=self.steps, targeted=False,
            batch_size=job.batch_size, verbose=False), job.y)

    def _torch_loop(self) -> tuple[str, int, bool]:
        return "linf", self.steps, False

    def _step_size(self, eps: float) -> float:
        return self._alpha(eps)


class _PGD(_TorchGradient):
    """Shared by the L-infinity and L2 PGD entries."""

    ascends_attack_loss = True

    _norm: ClassVar[str]

    def _init(self, steps: int, rel_stepsize: float | None, random_start: bool) -> None:
        check_positive("steps", steps)
        if rel_stepsize is not None:
            check_positive("rel_stepsize", rel_stepsize)
        self.steps = steps
        # None: 2.5 / steps (Madry et al.'s rule), so the iterate can cross the ball whatever the step count.
        self.rel_stepsize = rel_stepsize if rel_stepsize is not None else 2.5 / steps
        self.random_start = random_start

    def _run_foolbox(self, job: AttackJob) -> torch.Tensor:
        import foolbox as fb

        cls = (fb.attacks.LinfProjectedGradientDescentAttack if self._norm == "linf"
               else fb.attacks.L2ProjectedGradientDescentAttack)
        attack = cls(rel_stepsize=self.rel_stepsize, steps=self.steps, random_start=self.random_start)
        return foolbox_run(job, attack, job.budget)[0]

    def _run_art(self, job: AttackJob) -> torch.Tensor:
        from art.attacks.evasion import ProjectedGradientDescentPyTorch

        return art_generate(job, lambda c: ProjectedGradientDescentPyTorch(
            c, norm=np.inf if self._norm == "linf" else 2, eps=job.budget,
            eps_step=self.rel_stepsize * job.budget, max_iter=self.steps, targeted=False,
            num_random_init=1 if self.random_start else 0, batch_size=job.batch_size, verbose=False), job.y)

    def _torch_loop(self) -> tuple[str, int, bool]:
        return self._norm, self.steps, self.random_start

    def _step_size(self, eps: float) -> float:
        return self.rel_stepsize * eps


@attacks.register("pgd-linf")
class PGDLinf(_PGD):
    """Projected Gradient Descent in L-infinity (Madry et al. 2018), random start, step rel_stepsize * eps.

    ``rel_stepsize`` None means 2.5 / steps; Madry et al.'s MNIST setting (eps 0.3,
    step 0.01, 40 steps) is ``rel_stepsize: 0.0333``.
    """

    threat_model = ThreatModel.LINF
    _norm = "linf"
    # torch 1.81 s, foolbox 1.95 s, art 2.01 s (40 steps, 128 MNIST images, small CNN, 2 CPU cores).
    backends = ("torch", "foolbox", "art")
    quick_params = {"steps": 5}

    def __init__(self, *, backend: str | None = None,
                 steps: int = 40, rel_stepsize: float | None = None, random_start: bool = True, eot: int = 1):
        super().__init__(backend=backend)
        self._init(steps, rel_stepsize, random_start)
        self._init_eot(eot, backend)


@attacks.register("pgd-l2")
class PGDL2(_PGD):
    """Projected Gradient Descent in L2, random start in the eps ball, step rel_stepsize * eps (None: 2.5 / steps)."""

    threat_model = ThreatModel.L2
    # torch 1.98 s, foolbox 2.15 s, art 2.21 s (50 steps, 128 MNIST images, small CNN, 2 CPU cores).
    backends = ("torch", "foolbox", "art")
    quick_params = {"steps": 5}
    _norm = "l2"

    def __init__(self, *, backend: str | None = None,
                 steps: int = 50, rel_stepsize: float | None = None, random_start: bool = True, eot: int = 1):
        super().__init__(backend=backend)
        self._init(steps, rel_stepsize, random_start)
        self._init_eot(eot, backend)
