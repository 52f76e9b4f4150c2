"""Targeted Fast Adaptive Boundary (Croce & Hein 2020b), an AutoAttack member (bench/attacks/autoattack.py).

* ``fab-t``: targeted FAB, a minimum-norm attack; an example counts as fooled only when FAB's closest
  adversarial lies within the budget.

It exists per threat model, ``fab-t`` in L-infinity and ``fab-t-l2`` in L2. Where to add an attack:
docs/architecture.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import attacks
from ..threat_models import ThreatModel
from .backends import scores
from .base import INPUT_GRADIENT, AttackJob, check_positive, count_of, per_example
from .members import TARGET_CLASSES, Member, batches_with_rows, norm_of, target_count


# --------------------------------------------------------------------------- the plain-PyTorch loop


def _boundary_step(p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str) -> torch.Tensor:
    """Per row, the smallest step d (L-inf or L2) with w.d = c that keeps p + d in [0, 1]: FAB's projection
    onto a linearised decision boundary within the box, exact (sorting the coordinates' saturation points;
    float64). Where no step in the box reaches the boundary, the box's furthest point in w's direction."""
    p, w, c = p.double(), w.double(), c.double()
    sgn = torch.where(c < 0, -1.0, 1.0)[:, None]
    w, c = w * sgn, c * sgn[:, 0]  # now c >= 0: move along w
    cap = torch.where(w > 0, 1 - p, p)  # how far each coordinate can move in w's direction
    aw = w.abs()
    # Step size lam: coordinate i moves min(lam * aw_i, cap_i) (L2) or min(lam, cap_i) (L-inf), saturating at b_i.
    if norm == "linf":
        b, a = cap, aw
    else:
        b, a = torch.where(aw > 0, cap / aw.clamp_min(1e-300), torch.full_like(aw, 1e300)), aw.square()
    order = b.argsort(1)
    b, a, sat = b.gather(1, order), a.gather(1, order), (aw * cap).gather(1, order)
    sat_before = sat.cumsum(1) - sat  # sum of w.d over the coordinates saturated before breakpoint k
    a_from = a.flip(1).cumsum(1).flip(1)  # slope of w.d beyond it
    reached = sat_before + b * a_from  # w.d at each breakpoint: nondecreasing
    k = (reached < c[:, None]).sum(1, keepdim=True)
    inside = k < b.shape[1]
    kc = k.clamp(max=b.shape[1] - 1)
    slope = a_from.gather(1, kc)
    lam = torch.where(inside & (slope > 0), (c[:, None] - sat_before.gather(1, kc)) / slope.clamp_min(1e-300),
                      b.gather(1, kc))
    move = lam if norm == "linf" else lam * aw
    return (w.sign() * torch.minimum(move, cap)).float()


def _dist(d: torch.Tensor, norm: str) -> torch.Tensor:
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def _fab_targeted_single(model: nn.Module, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, *, norm: str,
                         steps: int, eta: float, beta: float, alpha_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One targeted FAB run (Croce & Hein 2020b) from x0: step to the linearised boundary between y and t,
    biased towards x0's own projection (alpha <= alpha_max), overshoot eta; on success record the closest
    adversarial and pull back towards x0 by beta. Returns the closest adversarial (else x0) and its distance
    (inf where none)."""
    n, rows = len(x0), torch.arange(len(x0), device=x0.device)
    x, flat = x0.clone(), x0.flatten(1)
    best, best_dist = x0.clone(), torch.full((n,), math.inf, device=x0.device)
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            logits = scores(model, x, y)
            diff = logits[rows, t] - logits[rows, y]
            (grad,) = torch.autograd.grad(diff.sum(), x)
        x, w, df = x.detach().flatten(1), grad.flatten(1), diff.detach()
        # The boundary {z: w.z = w.x - df}: steps to it from the iterate and from x0.
        d = _boundary_step(torch.cat([x, flat]), torch.cat([w, w]),
                           torch.cat([-df, (w * (x - flat)).sum(1) - df]), norm)
        d1, d2 = d[:n], d[n:]
        n1, n2 = _dist(d1, norm).clamp_min(1e-8), _dist(d2, norm).clamp_min(1e-8)
        alpha = (n1 / (n1 + n2)).clamp(0.0, alpha_max)[:, None]
        x = ((x + eta * d1) * (1 - alpha) + (flat + eta * d2) * alpha).clamp(0.0, 1.0).view_as(x0)
        with torch.no_grad():
            is_adv = scores(model, x, y).argmax(1) != y
        dist = _dist(x - x0, norm)
        closer = is_adv & (dist < best_dist)
        best = torch.where(per_example(closer, x.ndim), x, best)
        best_dist = torch.where(closer, dist, best_dist)
        x = torch.where(per_example(is_adv, x.ndim), x0 + (x - x0) * beta, x)
    return best, best_dist


def torch_fab_targeted(job: AttackJob, *, norm: str, eps: float, steps: int, target_classes: int,
                       eta: float = 1.05, beta: float = 0.9, alpha_max: float = 0.1,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
    """FAB-T as AutoAttack runs it: one deterministic run per target (the ``target_classes`` highest-scoring
    other classes in turn) on the examples still robust; an example counts as fooled, and comes back
    adversarial, only if the closest adversarial found is within ``eps``; the others come back as x."""
    outs = []
    for x0, y, _, _ in batches_with_rows(job, rows):
        with torch.no_grad():
            clean = scores(job.model, x0, y)
        robust, ranked, out = clean.argmax(1) == y, clean.argsort(1, descending=True), x0.clone()
        for rank in range(1, target_classes + 1):
            idx = robust.nonzero().flatten()
            if len(idx) == 0:
                break
            adv, dist = _fab_targeted_single(job.model, x0[idx], y[idx], ranked[idx, rank], norm=norm, steps=steps,
                                             eta=eta, beta=beta, alpha_max=alpha_max)
            fooled = dist <= eps
            out[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
        outs.append(out.cpu())
    return torch.cat(outs)


# --------------------------------------------------------------------------- the attacks


class _FABT(Member):
    quick_params = {"steps": 10, "target_classes": 2}
    step_param = "steps"

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """A gradient step per step and target class."""
        return count_of(params, "steps") * count_of(params, "target_classes", 1) * INPUT_GRADIENT

    def __init__(self, *, backend: str | None = None, steps: int = 100, target_classes: int = TARGET_CLASSES):
        super().__init__(backend=backend)
        check_positive("steps", steps)
        check_positive("target_classes", target_classes)
        self.steps, self.target_classes = steps, target_classes

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        return torch_fab_targeted(job, norm=norm_of(type(self)), eps=job.budget, steps=self.steps,
                                  target_classes=target_count(self, job, 2), rows=rows)


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
