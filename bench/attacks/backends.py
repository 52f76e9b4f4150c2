"""The implementations the attacks call: plain-PyTorch loops, and the Foolbox and ART glue.

The plain loops are the reference the tests compare the libraries against, and the only backend that
honours a surface's own loss (``attack_loss``/``attack_logits``; bench.detection.adaptive).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import to_art, to_foolbox
from .base import AttackJob, per_example, project


def torch_gradient_attack(job: AttackJob, *, norm: str, eps: float, steps: int, step_size: float,
                          random_start: bool) -> torch.Tensor:
    """Bare PyTorch FGSM / BIM / PGD in L-infinity or L2, untargeted or targeted (``job.targets``).

    Each step moves by ``step_size`` along the sign (L-inf) or the L2-normalized
    gradient of the summed cross-entropy (ascending the true label's loss, or
    descending the target's), projects onto the eps ball and clips to [0, 1].
    A random start draws uniformly from the eps ball (L2: Voelker et al. 2017).
    """
    gen = job.generator()
    sign = -1.0 if job.targets is not None else 1.0
    outs = []
    for x0, y, t in job.batches():
        labels = t if t is not None else y
        if random_start:
            if norm == "linf":
                delta = (torch.rand(x0.shape, generator=gen, device=x0.device) * 2 - 1) * eps
            else:
                n = x0[0].numel()
                r = torch.randn(len(x0), n + 2, generator=gen, device=x0.device)
                r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta = r[:, :n].reshape(x0.shape) * eps
            x = (x0 + delta).clamp(0.0, 1.0)
        else:
            x = x0.clone()
        # A surface with its own success notion (attack_logits: a detector folded in) is non-smooth where
        # the detector's decision flips, and the last iterate often lands back on the detected side:
        # keep each image's first iterate that succeeds (untargeted only; targeted runs are refused).
        success_logits = getattr(job.model, "attack_logits", None) if job.targets is None else None
        best, found = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(steps):
            x.requires_grad_(True)
            with torch.enable_grad():
                loss = eot_attack_loss(job.model, x, labels, job.eot)
                (grad,) = torch.autograd.grad(loss, x)
            x = x.detach()
            if norm == "linf":
                direction = grad.sign()
            else:
                direction = grad / per_example(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad.ndim)
            x = project(x + sign * step_size * direction, x0, eps, norm).clamp(0.0, 1.0)
            if success_logits is not None:
                with torch.no_grad():
                    new = (success_logits(x, labels).argmax(1) != labels) & ~found
                best[new], found = x[new], found | new
        if success_logits is not None:
            x = torch.where(per_example(found, x.ndim), best, x)
        outs.append(x.detach().cpu())
    return torch.cat(outs)


def attack_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss a gradient attack ascends, summed over the batch: the surface's own ``attack_loss``
    where it defines one (an ensemble's mean member loss, Grad. 2), else cross-entropy on its
    ``attack_logits(x, labels)`` where it defines those (a detector-guarded classifier, bench.detection.adaptive),
    else cross-entropy on its scores."""
    custom = getattr(model, "attack_loss", None)
    if custom is not None:
        return custom(x, labels)
    logits = getattr(model, "attack_logits", None)
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


def _margin(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, targeted: bool) -> torch.Tensor:
    """C&W's logit margin per example: the label's logit over the strongest rival (targeted: the reverse)."""
    other = logits.detach().scatter(1, labels[:, None], -math.inf).argmax(1)
    return logits[rows, other] - logits[rows, labels] if targeted else logits[rows, labels] - logits[rows, other]


def torch_carlini_wagner_l2(job: AttackJob, *, confidence: float, steps: int, learning_rate: float,
                            binary_search_steps: int, abort_early: bool) -> torch.Tensor:
    """Bare PyTorch C&W L2, step for step Foolbox 3's ``L2CarliniWagnerAttack`` (initial constant: the budget).

    It exists because neither Foolbox's nor ART's C&W accepts a custom objective, which the detector-aware
    attack needs: the untargeted margin is taken on the surface's ``attack_logits(x, labels)`` where it has
    them (bench.detection.adaptive), else on ``model(x)``; targeted runs (``job.targets``) use ``model(x)``. Per
    example the smallest-L2 adversarial over all steps and constants is kept; examples never fooled come
    back unperturbed (Foolbox returns zeros there). With ``job.eot`` > 1 the margin term is averaged over
    that many draws of a stochastic model's randomness, batched (EOT).
    """
    custom = getattr(job.model, "attack_logits", None)
    b1, b2 = 0.9, 0.999  # Adam's betas, as Foolbox's AdamOptimizer
    outs = []
    for x0, y, t in job.batches():
        n, targeted = len(x0), t is not None
        labels = t if targeted else y
        rows = torch.arange(n, device=x0.device)

        def scores(x: torch.Tensor) -> torch.Tensor:
            """Logits of ``job.eot`` draws, shaped (draws, n, classes)."""
            x = repeat_draws(x, job.eot)
            out = job.model(x) if targeted or custom is None else custom(x, y.repeat(job.eot))
            return out.view(job.eot, n, -1)

        def to_model(w: torch.Tensor) -> torch.Tensor:
            return (torch.tanh(w) + 1) / 2  # tanh space -> (0, 1)

        w0 = torch.atanh((x0 * 2 - 1) * 0.999999)  # (0, 1) -> tanh space, as Foolbox
        x_rec = to_model(w0)
        consts = torch.full((n,), float(job.budget), dtype=torch.float64)
        lower, upper = torch.zeros(n, dtype=torch.float64), torch.full((n,), math.inf, dtype=torch.float64)
        best, best_norm = x0.clone(), torch.full((n,), math.inf, device=x0.device)
        for search_step in range(binary_search_steps):
            if search_step == binary_search_steps - 1 and binary_search_steps >= 10:
                consts = upper.clamp(max=1e10)  # last step: retry at the best constant found
            delta = torch.zeros_like(w0)
            m, v = torch.zeros_like(w0), torch.zeros_like(w0)  # Adam state (Foolbox's AdamOptimizer)
            found = torch.zeros(n, dtype=torch.bool, device=x0.device)
            previous = math.inf
            c = consts.to(x0.device, torch.float32)
            for step in range(steps):
                delta.requires_grad_(True)
                with torch.enable_grad():
                    x = to_model(w0 + delta)
                    draws = scores(x)
                    # The margin term in expectation over the draws (EOT); one draw without eot.
                    margin = torch.stack([_margin(d, labels, rows, targeted) for d in draws]).mean(0)
                    loss = (c * (margin + confidence).clamp_min(0)).sum() + (x - x_rec).flatten(1).square().sum()
                    (grad,) = torch.autograd.grad(loss, delta)
                # Success is judged on the draws' mean logits (the single draw's logits without eot).
                x, logits, delta = x.detach(), draws.detach().mean(0), delta.detach()
                m = b1 * m + (1 - b1) * grad
                v = b2 * v + (1 - b2) * grad.square()
                delta = delta - learning_rate * (m / (1 - b1 ** (step + 1))) / (
                    (v / (1 - b2 ** (step + 1))).sqrt() + 1e-8)
                if abort_early and step % math.ceil(steps / 10) == 0:
                    if not loss.item() <= 0.9999 * previous:
                        break  # no progress over the last tenth of the steps
                    previous = loss.item()
                # success as Foolbox judges it: the label's logit shifted by kappa against the argmax
                shifted = logits.scatter_add(1, labels[:, None], torch.full_like(logits[:, :1], -confidence if
                                                                                   targeted else confidence))
                is_adv = shifted.argmax(1) == labels if targeted else shifted.argmax(1) != labels
                found |= is_adv
                norms = (x - x0).flatten(1).norm(dim=1)
                new_best = is_adv & (norms < best_norm)
                best = torch.where(per_example(new_best, x.ndim), x, best)
                best_norm = torch.where(new_best, norms, best_norm)
            found_cpu = found.cpu()
            upper = torch.where(found_cpu, consts, upper)
            lower = torch.where(found_cpu, lower, consts)
            consts = torch.where(upper.isinf(), consts * 10, (lower + upper) / 2)
        outs.append(best.cpu())
    return torch.cat(outs)
