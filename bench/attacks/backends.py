"""What the attacks' implementations share: the loss and scores a plain-PyTorch loop reads of a surface, the
Foolbox and ART glue, and the fused gradient loop of FGSM / BIM / PGD (bench/attacks/gradient.py).

The plain loops are the reference the tests compare the libraries against, and the only backend that
honours a surface's own loss (``attack_loss``/``attack_logits``; bench.detection.adaptive). Each family's own
loop lives beside its class (apgd.py, fab.py, square.py, minimization.py's C&W).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import to_art, to_foolbox
from .base import AttackJob, per_example, project
from .surface import custom_logits, custom_loss


# --------------------------------------------------------------------------- the fused gradient loop (FGSM, BIM, PGD)


@dataclass(frozen=True)
class BudgetPart:
    """One budget's share of a fused gradient attack: its job (images, labels, targets, seed) and the eps and
    absolute step size that budget takes."""

    job: AttackJob
    eps: float
    step_size: float


def torch_gradient_attack(job: AttackJob, *, norm: str, eps: float, steps: int, step_size: float,
                          random_start: bool) -> torch.Tensor:
    """Bare PyTorch FGSM / BIM / PGD in L-infinity or L2, untargeted or targeted (``job.targets``): the fused
    loop ``torch_gradient_attack_fused`` with one part."""
    return torch_gradient_attack_fused([BudgetPart(job, eps, step_size)], norm=norm, steps=steps,
                                       random_start=random_start)[0]


# MKL's sgemm (a linear layer's input gradient) gives row i of an M-row product the same bits whatever M is when M
# is a multiple of 4, its kernel's row block; for other M (a batch's tail) some rows may take another path,
# depending on M and the thread count (measured for M up to 300, torch 2.14 / MKL 2024.2, AVX2: M in 1-3 on 1
# thread, 1-11 on 2, up to M = 121 on 64 threads; never a multiple of 4). So a part's batch joins a fused batch
# only with a multiple of 4 rows;
# another runs alone, as it would unfused.
FUSED_ROW_BLOCK = 4


def torch_gradient_attack_fused(parts: Sequence[BudgetPart], *, norm: str, steps: int,
                                random_start: bool) -> list[torch.Tensor]:
    """Bare PyTorch FGSM / BIM / PGD in L-infinity or L2 for several budgets at once (one result per part).

    Each step moves by ``step_size`` along the sign (L-inf) or the L2-normalized
    gradient of the summed cross-entropy (ascending the true label's loss, or
    descending the target's), projects onto the eps ball and clips to [0, 1].
    A random start draws uniformly from the eps ball (L2: Voelker et al. 2017).

    Batch k of every part (same model, device and ``eot``) goes through the model as one batch, each example
    with its part's eps, step size and direction (targeted where the part has targets); each part draws its
    random start from its own generator as it would alone. The loss is summed, so an example's gradient does
    not depend on its batch mates: each part gets what it would alone, bit for bit on CPU (a batch whose row
    count could change MKL's arithmetic runs alone: ``FUSED_ROW_BLOCK``).
    """
    model, eot = parts[0].job.model, parts[0].job.eot
    generators = [part.job.generator() for part in parts]
    outs: list[list[torch.Tensor]] = [[] for _ in parts]
    for batch in zip_longest(*(part.job.batches() for part in parts)):
        live = [i for i, b in enumerate(batch) if b is not None]
        starts = {i: _random_start(batch[i][0], parts[i].eps, norm, generators[i]) if random_start
                  else batch[i][0].clone() for i in live}
        fused = [i for i in live if len(batch[i][0]) % FUSED_ROW_BLOCK == 0]
        groups = ([fused] if fused else []) + [[i] for i in live if i not in fused]
        for group in groups:
            x = _ascend(model, eot, [parts[i] for i in group], [batch[i] for i in group],
                        torch.cat([starts[i] for i in group]), norm=norm, steps=steps)
            for i, chunk in zip(group, x.split([len(batch[i][0]) for i in group])):
                outs[i].append(chunk.cpu())
    return [torch.cat(out) for out in outs]


def _ascend(model: nn.Module, eot: int, parts: list[BudgetPart], batches: list[tuple], x: torch.Tensor, *,
            norm: str, steps: int) -> torch.Tensor:
    """The steps of ``torch_gradient_attack_fused`` on one batch: ``batches`` (images, labels, targets) of
    ``parts``, concatenated, from the start ``x``."""
    x0 = torch.cat([b[0] for b in batches])
    label = torch.cat([t if t is not None else y for _, y, t in batches])
    # Per example, as float32 from the same Python floats a one-budget loop used: the signed step and eps.
    step = per_example(torch.cat([torch.full((len(b[0]),), (-1.0 if b[2] is not None else 1.0) * p.step_size,
                                             device=x0.device) for p, b in zip(parts, batches)]), x0.ndim)
    eps = torch.cat([torch.full((len(b[0]),), p.eps, device=x0.device) for p, b in zip(parts, batches)])
    # A surface with its own success notion (attack_logits: a detector folded in) is non-smooth where
    # the detector's decision flips, and the last iterate often lands back on the detected side:
    # keep each image's first iterate that succeeds (untargeted parts only; targeted runs are refused).
    guard = torch.cat([torch.full((len(b[0]),), b[2] is None, device=x0.device) for b in batches])
    success_logits = custom_logits(model) if bool(guard.any()) else None
    best, found = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            loss = eot_attack_loss(model, x, label, eot)
            (grad,) = torch.autograd.grad(loss, x)
        x = x.detach()
        if norm == "linf":
            direction = grad.sign()
        else:
            direction = grad / per_example(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad.ndim)
        x = project(x + step * direction, x0, eps, norm).clamp(0.0, 1.0)
        if success_logits is not None:
            with torch.no_grad():
                new = (success_logits(x, label).argmax(1) != label) & ~found & guard
            best[new], found = x[new], found | new
    if success_logits is not None:
        x = torch.where(per_example(found, x.ndim), best, x)
    return x.detach()


def _random_start(x0: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A uniform draw from the ``norm`` ball of radius ``eps`` around each image, clipped to [0, 1]."""
    if norm == "linf":
        delta = (torch.rand(x0.shape, generator=gen, device=x0.device) * 2 - 1) * eps
    else:
        n = x0[0].numel()
        r = torch.randn(len(x0), n + 2, generator=gen, device=x0.device)
        r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
        delta = r[:, :n].reshape(x0.shape) * eps
    return (x0 + delta).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- what a loop reads of a surface


def attack_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss a gradient attack ascends, summed over the batch: the surface's own ``attack_loss``
    where it defines one (an ensemble's mean member loss, Grad. 2), else cross-entropy on its
    ``attack_logits(x, labels)`` where it defines those (a detector-guarded classifier, bench.detection.adaptive),
    else cross-entropy on its scores."""
    custom = custom_loss(model)
    if custom is not None:
        return custom(x, labels)
    logits = custom_logits(model)
    return F.cross_entropy(logits(x, labels) if logits is not None else model(x), labels, reduction="sum")


def repeat_draws(x: torch.Tensor, draws: int) -> torch.Tensor:
    """``x`` repeated ``draws`` times along the batch, draw-major: one forward pass evaluates ``draws``
    independent draws of a stochastic model's randomness on every image (its random layers draw per row)."""
    return x if draws == 1 else x.repeat(draws, *([1] * (x.ndim - 1)))


def eot_attack_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, draws: int) -> torch.Tensor:
    """``attack_loss`` averaged over ``draws`` draws of the model's randomness, all in one batch: its input
    gradient is the mean of ``draws`` single-draw gradients (Expectation over Transformation)."""
    if draws == 1:
        return attack_loss(model, x, labels)
    return attack_loss(model, repeat_draws(x, draws), labels.repeat(draws)) / draws

def scores(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What the score-based attacks read: the surface's ``attack_logits(x, labels)`` where it defines them
    (a detector folded in), else its output."""
    logits = custom_logits(model)
    return logits(x, labels) if logits is not None else model(x)


# --------------------------------------------------------------------------- Foolbox and ART


def foolbox_run(job: AttackJob, attack: Any, epsilon: float | None, *, targeted: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a Foolbox attack batch by batch; return its budget-clipped advs and success flags."""
    import foolbox as fb

    fmodel = to_foolbox(job.model, job.device)
    advs, successes = [], []
    for xb, yb, tb in job.batches():
        if targeted:
            criterion = fb.criteria.TargetedMisclassification(tb)
        else:
            criterion = fb.criteria.Misclassification(yb)
        _, clipped, success = attack(fmodel, xb, criterion, epsilons=epsilon)
        advs.append(clipped.detach().cpu())
        successes.append(success.detach().cpu())
    return torch.cat(advs), torch.cat(successes)


def foolbox_keep_failures_clean(x: torch.Tensor, adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """Foolbox's C&W and EAD start their best-so-far at an all-zero image: return x where they failed."""
    zero = (adv.flatten(1) == 0).all(dim=1) & (x.flatten(1) != 0).any(dim=1)
    failed = ~success.bool() | zero
    return torch.where(per_example(failed, x.ndim), x, adv)


def art_generate(job: AttackJob, make: Callable[[Any], Any], labels: torch.Tensor | None) -> torch.Tensor:
    """Build an ART classifier around the model, an attack with ``make(classifier)``, and generate."""
    k = job.num_classes
    classifier = to_art(job.model, tuple(job.x.shape[1:]), k, job.device)
    attack = make(classifier)
    y = None if labels is None else np.eye(k, dtype=np.float32)[labels.numpy()]
    out = attack.generate(job.x.numpy().astype(np.float32), y=y)
    return torch.from_numpy(np.asarray(out, dtype=np.float32))
