"""Auto-PGD (Croce & Hein 2020; reference implementation: github.com/fra31/auto-attack), AutoAttack's
gradient members (bench/attacks/autoattack.py).

* ``apgd-ce`` / ``apgd-dlr``: Auto-PGD, step size set by the progress of the loss (halved at checkpoints),
  momentum 0.75, on the cross-entropy or on the Difference of Logits Ratio loss (shift- and scale-invariant
  in the logits, so a saturated softmax does not flatten it).
* ``apgd-t``: APGD on the targeted DLR loss against each of the top ``target_classes`` other classes in turn.

Each attack exists per threat model, ``<name>`` in L-infinity and ``<name>-l2`` in L2. The plain-PyTorch loop
(``torch_apgd``) draws its randomness per example (bench/attacks/members.py), so a member gives an example the
same result inside AutoAttack as alone. Where to add an attack: docs/architecture.md.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import attacks
from ..threat_models import ThreatModel
from .backends import art_generate, repeat_draws, scores
from .base import INPUT_GRADIENT, AttackJob, check_positive, count_of, per_example, project
from .members import TARGET_CLASSES, Member, batches_with_rows, example_draws, norm_of, target_count
from .surface import custom_loss


# --------------------------------------------------------------------------- the plain-PyTorch loop


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Croce & Hein's Difference of Logits Ratio per example (to ascend): untargeted
    -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3), targeted -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2); shift-
    and scale-invariant in the logits, so a saturated softmax does not flatten it."""
    rows = torch.arange(len(y), device=y.device)
    z = logits.sort(dim=1).values
    if targets is None:
        other = logits.scatter(1, y[:, None], -math.inf).amax(1)
        return -(logits[rows, y] - other) / (z[:, -1] - z[:, -3] + 1e-12)
    return -(logits[rows, y] - logits[rows, targets]) / (z[:, -1] - (z[:, -3] + z[:, -4]) / 2 + 1e-12)


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, loss: str,
                   draws: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example loss and input gradient, each the mean over ``draws`` draws of the model's randomness
    (EOT, batched as ``eot_attack_loss``), and the draws' mean logits."""
    if custom_loss(model) is not None:
        raise ValueError("APGD needs per-example losses; this attack surface defines only a summed attack_loss")
    n = len(x)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        reps = y.repeat(draws)
        logits = scores(model, repeat_draws(x, draws), reps)
        if loss == "ce":
            values = F.cross_entropy(logits, reps, reduction="none")
        else:
            values = dlr_loss(logits, reps, None if t is None else t.repeat(draws))
        values = values.view(draws, n).mean(0)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad.detach(), logits.detach().view(draws, n, -1).mean(0)


def _apgd_single(model: nn.Module, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, start: torch.Tensor,
                 *, norm: str, eps: float, steps: int, loss: str, draws: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run (Croce & Hein 2020, Alg. 1) from the random ``start``: step 2 eps, momentum 0.75, and at
    each checkpoint (after 22% of the steps, then ever shorter stretches down to 6%) the step halved and the
    iterate sent back to the best point for the examples whose loss rose in at most 75% of the steps since
    the last one, or whose step was kept and best loss did not improve. Returns the last iterate that fooled
    the model (else x0), which examples it fooled, and the highest-loss point."""
    n = len(x0)

    def proj(x: torch.Tensor) -> torch.Tensor:
        return project(x, x0, eps, norm).clamp(0.0, 1.0)

    def direction(g: torch.Tensor) -> torch.Tensor:
        if norm == "linf":
            return g.sign()
        return g / per_example(g.flatten(1).norm(dim=1).clamp_min(1e-12), g.ndim)

    if norm == "linf":  # uniform in the cube, scaled so that its largest coordinate is eps (the reference's start)
        r = start * 2 - 1
        x = x0 + eps * r / per_example(r.flatten(1).abs().amax(1).clamp_min(1e-12), r.ndim)
    else:
        x = x0 + eps * start / per_example(start.flatten(1).norm(dim=1).clamp_min(1e-12), start.ndim)
    x = x.clamp(0.0, 1.0)
    value, grad, logits = _loss_and_grad(model, x, y, t, loss, draws)
    fooled = logits.argmax(1) != y
    adv = torch.where(per_example(fooled, x.ndim), x, x0)
    best, best_value, best_grad = x.clone(), value.clone(), grad.clone()
    step = torch.full((n,), 2.0 * eps, device=x0.device)
    every, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    history = [value]  # the loss after each step, the start's first
    since, reduced_last, best_last = 0, torch.zeros(n, dtype=torch.bool, device=x0.device), best_value.clone()
    x_old = x
    for i in range(steps):
        momentum = 0.75 if i > 0 else 1.0
        z = proj(x + per_example(step, x.ndim) * direction(grad))
        x, x_old = proj(x + momentum * (z - x) + (1 - momentum) * (x - x_old)), x
        value, grad, logits = _loss_and_grad(model, x, y, t, loss, draws)
        now = logits.argmax(1) != y
        adv = torch.where(per_example(now, x.ndim), x, adv)
        fooled |= now
        history.append(value)
        better = value > best_value
        best = torch.where(per_example(better, x.ndim), x, best)
        best_grad = torch.where(per_example(better, x.ndim), grad, best_grad)
        best_value = torch.where(better, value, best_value)
        since += 1
        if since == every:  # a checkpoint
            rises = (torch.stack(history[-every:]) > torch.stack(history[-every - 1:-1])).sum(0)
            halve = (rises <= 0.75 * every) | (~reduced_last & (best_last >= best_value))
            reduced_last, best_last = halve, best_value.clone()
            step = torch.where(halve, step / 2, step)
            x = torch.where(per_example(halve, x.ndim), best, x)
            grad = torch.where(per_example(halve, x.ndim), best_grad, grad)
            every, since = max(every - shrink, shortest), 0
    return adv, fooled, best


def torch_apgd(job: AttackJob, *, norm: str, eps: float, steps: int, loss: str, restarts: int,
               target_classes: int = 0, rows: torch.Tensor | None = None, salt: int = 0) -> torch.Tensor:
    """APGD with the CE or DLR loss (``loss``: ce, dlr), or with the targeted DLR loss against each of the
    ``target_classes`` highest-scoring other classes in turn (APGD-T); ``restarts`` runs per target, each on
    the examples still robust, as the reference (fra31/auto-attack). With ``job.eot`` > 1 every loss and
    gradient is the mean over that many draws (the reference's version='rand'). Fooled examples come back
    as the adversarial found, the others as the first run's highest-loss point, misclassified ones as x."""
    outs = []
    for x0, y, _, rows_b in batches_with_rows(job, rows):
        with torch.no_grad():
            clean = scores(job.model, repeat_draws(x0, job.eot), y.repeat(job.eot)).view(job.eot, len(x0), -1).mean(0)
        robust = clean.argmax(1) == y
        out = x0.clone()
        ranked = clean.argsort(1, descending=True)
        runs = [(rank, r) for rank in range(1, target_classes + 1) for r in range(restarts)] if target_classes \
            else [(0, r) for r in range(restarts)]
        for i, (rank, r) in enumerate(runs):
            idx = robust.nonzero().flatten()
            if len(idx) == 0:
                break
            t = ranked[idx, rank] if rank else None  # the rank-th rival: never y, which ranks first where robust
            start = example_draws(job.seed * 131 + salt * 17 + rank * 7 + r, rows_b[idx.cpu()], tuple(x0.shape[1:]),
                                  x0.device, normal=norm != "linf")
            adv, fooled, best = _apgd_single(job.model, x0[idx], y[idx], t, start, norm=norm, eps=eps, steps=steps,
                                             loss="dlr" if t is not None else loss, draws=job.eot)
            out[idx] = torch.where(per_example(fooled, adv.ndim), adv, best if i == 0 else out[idx])
            robust[idx[fooled]] = False
        outs.append(out.detach().cpu())
    return torch.cat(outs)


# --------------------------------------------------------------------------- the attacks


class _APGD(Member):
    ascends_attack_loss = False  # it ascends its own per-example CE or DLR (surfaces with attack_loss refused)
    quick_params = {"steps": 10}
    step_param = "steps"
    _loss: ClassVar[str]

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """A gradient step per step, restart and EOT draw."""
        return count_of(params, "steps") * count_of(params, "restarts", 1) * count_of(params, "eot", 1) * INPUT_GRADIENT

    def __init__(self, *, backend: str | None = None, steps: int = 100, restarts: int = 1, eot: int = 1):
        super().__init__(backend=backend)
        check_positive("steps", steps)
        check_positive("restarts", restarts)
        self.steps, self.restarts = steps, restarts
        self._init_eot(eot, backend)

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        if self._loss == "dlr" and job.num_classes < 3:
            raise ValueError(f"the DLR loss needs a model with at least 3 classes, got {job.num_classes}")
        return torch_apgd(job, norm=norm_of(type(self)), eps=job.budget, steps=self.steps, loss=self._loss,
                          restarts=self.restarts, rows=rows, salt=self.salt)

    def _run_art(self, job: AttackJob) -> torch.Tensor:
        from art.attacks.evasion import AutoProjectedGradientDescent

        return art_generate(job, lambda c: AutoProjectedGradientDescent(
            c, norm=np.inf if norm_of(type(self)) == "linf" else 2, eps=job.budget, eps_step=2 * job.budget,
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


class _APGDT(Member):
    ascends_attack_loss = False
    quick_params = {"steps": 10, "target_classes": 2}
    salt = 3
    step_param = "steps"

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """A gradient step per step, restart, target class and EOT draw."""
        p = params
        return (count_of(p, "steps") * count_of(p, "restarts", 1) * count_of(p, "target_classes", 1)
                * count_of(p, "eot", 1) * INPUT_GRADIENT)

    def __init__(self, *, backend: str | None = None, steps: int = 100, restarts: int = 1,
                 target_classes: int = TARGET_CLASSES, eot: int = 1):
        super().__init__(backend=backend)
        for name, value in (("steps", steps), ("restarts", restarts), ("target_classes", target_classes)):
            check_positive(name, value)
        self.steps, self.restarts, self.target_classes = steps, restarts, target_classes
        self._init_eot(eot, backend)

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        return torch_apgd(job, norm=norm_of(type(self)), eps=job.budget, steps=self.steps, loss="dlr",
                          restarts=self.restarts, target_classes=target_count(self, job, 4), rows=rows,
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
