"""The implementations the attacks call: plain-PyTorch loops, and the Foolbox and ART glue.

The plain loops are the reference the tests compare the libraries against, and the only backend that
honours a surface's own loss (``attack_loss``/``attack_logits``; bench.detection.adaptive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import to_art, to_foolbox
from .base import AttackJob, per_example, project


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
# thread, 1-11 on 2, up to M = 121 on 64 threads; never a multiple of 4). So a part's batch joins a fused batch only with a multiple of 4 rows;
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
    success_logits = getattr(model, "attack_logits", None) if bool(guard.any()) else None
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


# --------------------------------------------------------------------------- AutoAttack's members (Croce & Hein 2020)
# Their random draws are per example (``example_draws``): an example gets the same draws whichever batch or
# subset it is attacked in, so AutoAttack, which runs each member on the examples still robust, gives each
# example exactly the result the member gives it alone (its per-example worst case is the AND of theirs).


def example_draws(seed: int, rows: torch.Tensor, shape: tuple[int, ...], device: torch.device, *,
                  normal: bool = False) -> torch.Tensor:
    """Uniform [0, 1) (``normal``: standard normal) draws of ``shape`` per example, each from a generator
    seeded by (``seed``, its row in the attacked set)."""
    g = torch.Generator()
    out = torch.empty((len(rows), *shape))
    for i, row in enumerate(rows.tolist()):
        g.manual_seed((seed * 1_000_003 + row) % 2**63)
        out[i] = torch.randn(shape, generator=g) if normal else torch.rand(shape, generator=g)
    return out.to(device)


def batches_with_rows(job: AttackJob, rows: torch.Tensor | None):
    """``job.batches()`` with each batch's rows in the attacked set (``rows``: the job's rows there; None:
    the job is the set)."""
    rows = torch.arange(len(job.x)) if rows is None else rows.cpu()
    start = 0
    for x, y, t in job.batches():
        yield x, y, t, rows[start:start + len(x)]
        start += len(x)


def scores(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What the score-based attacks read: the surface's ``attack_logits(x, labels)`` where it defines them
    (a detector folded in), else its output."""
    logits = getattr(model, "attack_logits", None)
    return logits(x, labels) if logits is not None else model(x)


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
    if hasattr(model, "attack_loss"):
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
            d[max(ca - k, 0):min(ca - k + 2 * k + 1, a), max(cb - k, 0):min(cb - k + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
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
