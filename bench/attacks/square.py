"""Square Attack (Andriushchenko et al. 2020), an AutoAttack member (bench/attacks/autoattack.py).

* ``square``: score-based random search: no gradient is read (``uses_gradients`` is False), so it is the check
  against gradient masking.

It exists per threat model, ``square`` in L-infinity and ``square-l2`` in L2. Its plain-PyTorch loops draw their
randomness per example (bench/attacks/members.py), so a member gives an example the same result inside AutoAttack
as alone. Where to add an attack: docs/architecture.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..registry import attacks
from ..threat_models import ThreatModel
from .backends import art_generate, scores
from .base import AttackJob, check_positive, count_of, per_example
from .members import Member, batches_with_rows, example_draws, norm_of


# --------------------------------------------------------------------------- the plain-PyTorch loops


def _square_p(i: int, queries: int, p_init: float) -> float:
    """Square's schedule of the window's share of the image: halved at fixed points of a 10,000-query run,
    rescaled to ``queries`` (Andriushchenko et al. 2020; the reference's p_selection)."""
    it = int(i / queries * 10000)
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16), (200, 8),
                       (50, 4), (10, 2)):
        if it > bound:
            return p_init / div
    return p_init


def _margin_to_rival(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(len(y), device=y.device)
    return logits[rows, y] - logits.scatter(1, y[:, None], -math.inf).amax(1)


@torch.no_grad()
def torch_square_linf(job: AttackJob, *, eps: float, queries: int, p_init: float,
                      rows: torch.Tensor | None = None, salt: int = 0) -> torch.Tensor:
    """Square Attack in L-infinity (Andriushchenko et al. 2020), scores only, no gradient: from vertical
    stripes of +-eps, each query sets one random square window (side from the p schedule) to x +- eps per
    channel and keeps it if the margin z_y - max_{i!=y} z_i falls; an example stops once it is misclassified.
    The windows are drawn per example, as in the paper's code. Attacked examples come back as the lowest-margin
    point found, misclassified ones as x."""
    outs = []
    for x0, y, _, rows_b in batches_with_rows(job, rows):
        n, (c, h, w) = len(x0), x0.shape[1:]
        attacked = scores(job.model, x0, y).argmax(1) == y
        draws = example_draws(job.seed * 131 + salt, rows_b, (c * w + queries * (2 + c),), x0.device)
        stripes = torch.where(draws[:, :c * w] < 0.5, -1.0, 1.0).view(n, c, 1, w)
        steps = draws[:, c * w:].view(n, queries, 2 + c)
        best = torch.where(per_example(attacked, x0.ndim), (x0 + eps * stripes).clamp(0.0, 1.0), x0)
        margin = torch.where(attacked, _margin_to_rival(scores(job.model, best, y), y), -math.inf)
        ar_h, ar_w = torch.arange(h, device=x0.device), torch.arange(w, device=x0.device)
        for i in range(queries):
            idx = (margin > 0).nonzero().flatten()
            if len(idx) == 0:
                break
            s = min(max(int(round(math.sqrt(_square_p(i, queries, p_init) * h * w))), 1), h, w)
            u = steps[idx, i]
            vh = (u[:, 0] * (h - s + 1)).long().clamp(max=h - s)[:, None]
            vw = (u[:, 1] * (w - s + 1)).long().clamp(max=w - s)[:, None]
            window = (((ar_h >= vh) & (ar_h < vh + s))[:, :, None] & ((ar_w >= vw) & (ar_w < vw + s))[:, None, :])
            sign = torch.where(u[:, 2:] < 0.5, -1.0, 1.0)[:, :, None, None]
            new = torch.where(window[:, None], x0[idx] + eps * sign, best[idx]).clamp(0.0, 1.0)
            new_margin = _margin_to_rival(scores(job.model, new, y[idx]), y[idx])
            better = new_margin < margin[idx]
            best[idx] = torch.where(per_example(better, new.ndim), new, best[idx])
            margin[idx] = torch.where(better, new_margin, margin[idx])
        outs.append(best.cpu())
    return torch.cat(outs)


def _square_eta(s: int) -> torch.Tensor:
    """Square L2's s x s window pattern: two stacked blocks of opposite sign, each a sum of nested rectangles
    weighted 1/(k+1)^2 around its centre, unit L2 norm (the reference's ``eta``)."""
    def rectangles(a: int, b: int) -> torch.Tensor:
        d = torch.zeros(a, b)
        ca, cb = a // 2, b // 2
        for k in range(max(ca, cb) + 1):
            rows = slice(max(ca - k, 0), min(ca - k + 2 * k + 1, a))
            d[rows, max(cb - k, 0):min(cb - k + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
        return d / d.square().sum().sqrt()

    d = torch.cat([rectangles(s // 2, s), -rectangles(s - s // 2, s)]) if s > 1 else torch.ones(1, 1)
    return d / d.square().sum().sqrt()


def _windows(vh: torch.Tensor, vw: torch.Tensor, s: int, c: int) -> tuple[torch.Tensor, ...]:
    """Advanced indices of each example's s x s window at (vh, vw) over all channels: (n, c, s, s) each."""
    n, ar = len(vh), torch.arange(s, device=vh.device)
    return (torch.arange(n, device=vh.device).view(n, 1, 1, 1), torch.arange(c, device=vh.device).view(1, c, 1, 1),
            (vh.view(n, 1, 1, 1) + ar.view(1, 1, s, 1)), (vw.view(n, 1, 1, 1) + ar.view(1, 1, 1, s)))


@torch.no_grad()
def torch_square_l2(job: AttackJob, *, eps: float, queries: int, p_init: float,
                    rows: torch.Tensor | None = None, salt: int = 0) -> torch.Tensor:
    """Square Attack in L2 (Andriushchenko et al. 2020), scores only, no gradient, after the reference
    (fra31/auto-attack): start from a 5 x 5 grid of signed window patterns scaled to norm eps; each query
    moves the perturbation's mass of a second random window into a first, adds a signed pattern there,
    rescales to norm eps, and keeps the result if the margin falls. Windows, signs and the patterns'
    orientation are drawn per example. Attacked examples come back as the lowest-margin point found."""
    outs = []
    for x0, y, _, rows_b in batches_with_rows(job, rows):
        n, (c, h, w) = len(x0), x0.shape[1:]
        dev = x0.device

        def to_ball(delta: torch.Tensor) -> torch.Tensor:
            return (x0_a + eps * delta / per_example(delta.flatten(1).norm(dim=1).clamp_min(1e-12), delta.ndim)
                    ).clamp(0.0, 1.0)

        attacked = scores(job.model, x0, y).argmax(1) == y
        init_size, step_size = 25 * (c + 1), 5 + c
        draws = example_draws(job.seed * 131 + salt, rows_b, (init_size + queries * step_size,), dev)
        init, steps = draws[:, :init_size].view(n, 25, c + 1), draws[:, init_size:].view(n, queries, step_size)
        s0 = max(h // 5, 1)
        eta0 = _square_eta(s0).to(dev)
        delta = torch.zeros_like(x0)
        start = (h - 5 * s0) // 2
        for k in range(25):
            i, j = start + (k // 5) * s0, start + (k % 5) * s0
            pattern = torch.where(per_example(init[:, k, 0] > 0.5, 3), eta0.T, eta0)  # (n, s0, s0)
            sign = torch.where(init[:, k, 1:] < 0.5, -1.0, 1.0)[:, :, None, None]
            delta[:, :, i:i + s0, j:j + s0] += pattern[:, None] * sign
        x0_a = x0
        best = torch.where(per_example(attacked, x0.ndim), to_ball(delta), x0)
        margin = torch.where(attacked, _margin_to_rival(scores(job.model, best, y), y), -math.inf)
        for it in range(queries):
            idx = (margin > 0).nonzero().flatten()
            if len(idx) == 0:
                break
            x0_a, m = x0[idx], len(idx)
            delta = best[idx] - x0_a
            s = max(int(round(math.sqrt(_square_p(it, queries, p_init) * h * w))), 3)
            s = min(s + 1 if s % 2 == 0 else s, h, w)
            u = steps[idx, it]
            pos = [(u[:, k] * (size - s + 1)).long().clamp(max=size - s) for k, size in enumerate((h, w, h, w))]
            win1, win2 = _windows(pos[0], pos[1], s, c), _windows(pos[2], pos[3], s, c)
            norm_win1 = delta[win1].square().sum((-2, -1), keepdim=True).sqrt()
            norm_image = delta.flatten(1).norm(dim=1)
            union = torch.zeros_like(delta, dtype=torch.bool)
            union[win1], union[win2] = True, True
            norm_windows = (delta * union).flatten(1).norm(dim=1)
            eta = _square_eta(s).to(dev)
            pattern = torch.where(per_example(u[:, 4] > 0.5, 3), eta.T, eta)[:, None]  # (m, 1, s, s)
            new = pattern * torch.where(u[:, 5:] < 0.5, -1.0, 1.0)[:, :, None, None] + delta[win1] / (1e-12 + norm_win1)
            scale = ((eps ** 2 - norm_image.square()).clamp_min(0) / c + norm_windows.square()).sqrt()
            new = new / new.square().sum((-2, -1), keepdim=True).sqrt().clamp_min(1e-12) * scale.view(m, 1, 1, 1)
            delta[win2] = 0.0
            delta[win1] = new
            cand = to_ball(delta)
            new_margin = _margin_to_rival(scores(job.model, cand, y[idx]), y[idx])
            better = new_margin < margin[idx]
            best[idx] = torch.where(per_example(better, cand.ndim), cand, best[idx])
            margin[idx] = torch.where(better, new_margin, margin[idx])
        outs.append(best.cpu())
    return torch.cat(outs)


# --------------------------------------------------------------------------- the attacks


class _Square(Member):
    uses_gradients = False
    quick_params = {"queries": 200}
    salt = 4
    step_param = "queries"

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """A forward pass per query."""
        return count_of(params, "queries")

    def __init__(self, *, backend: str | None = None, queries: int = 5000, p_init: float = 0.8):
        super().__init__(backend=backend)
        check_positive("queries", queries)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.queries, self.p_init = queries, p_init

    def _run_art(self, job: AttackJob) -> torch.Tensor:
        from art.attacks.evasion import SquareAttack

        return art_generate(job, lambda c: SquareAttack(
            c, norm=np.inf if norm_of(type(self)) == "linf" else 2, max_iter=self.queries, eps=job.budget,
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
