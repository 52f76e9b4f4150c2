"""The soundness checks' probe step: what a trained defense does on clean examples, beyond its accuracy.

One ``probe`` task per (dataset, defense, seed) that the checks cover (``bench.checks``; planned by
``bench.plan`` when the suite's ``checks`` is on). On the dataset's first ``CHECK_EXAMPLES`` attacked
examples it measures, on the deployed model:

* (a) stochastic outputs: ``passes`` clean predictions with the randomness running on (seeded once per task,
  not per pass), and how many examples change their label between them (check 1);
* (b) input gradients of the loss a gradient attack ascends (``bench.attacks.backends.attack_loss``): how many
  are exactly zero, not finite (NaN or infinite), or vanishing, with an L2 norm below ``vanishing_below``
  (check 7; Athalye et al. 2018, Carlini et al. 2019 Sec. 5.4). A model whose output does not depend
  differentiably on its input at all (a rounding or argmax in its forward) has zero gradients everywhere.

Its one ``results`` row has ``attack`` "probe" and ``source`` "check:probe" (evidence, not a leaderboard row),
scores the defense on those clean examples as the score step would (``repeats`` predictions of a stochastic
defense), and holds in ``attack_config`` the probe's settings (``params``) and counts (``found``): n, passes,
disagree, zero_gradient, nan_gradient, vanishing_gradient, and the median gradient norm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attacks.backends import attack_loss
from ..attacks.base import attack_context
from ..attacks.noise import NOISE_BASELINES as NOISE
from ..checks import NOISE as NOISE_SOURCE
from ..checks import PROBE, PROBE_ATTACK
from ..diversity import defense_kappa
from ..metrics import row_metrics
from ..plan import Task
from ..plan.specs import DEPLOYED, CheckNoiseSpec, ProbeSpec
from ..store import Store, examples_digest
from ..training import predict
from .context import RunContext, attacked_indices, seeded_randomness, task_seed, trained_defense
from .result_rows import Attacked, result_row, wrong_class_flags


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device,
                    batch_size: int, seed: int) -> torch.Tensor:
    """Per example, the input gradient of ``attack_loss`` (CPU, the shape of ``x``); zeros where the output does
    not depend differentiably on the input."""
    grads = []
    with attack_context(model, seed):  # eval mode, parameters frozen, randomness seeded and restored
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device).requires_grad_(True)
            with torch.enable_grad():
                loss = attack_loss(model, xb, y[i:i + batch_size].to(device))
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss, xb, allow_unused=True)
            else:  # an argmax or a detached output: no gradient reaches the input
                grad = None
            grads.append(torch.zeros_like(xb).cpu() if grad is None else grad.detach().cpu())
    return torch.cat(grads) if grads else torch.zeros_like(x)


def gradient_counts(grad: torch.Tensor, vanishing_below: float) -> dict[str, Any]:
    """How many per-example gradients are zero, not finite, or of L2 norm below ``vanishing_below`` (but not
    zero); and the median norm of the finite ones."""
    flat = grad.flatten(1).double()
    finite = torch.isfinite(flat).all(dim=1)
    norms = flat.norm(dim=1)
    zero = finite & (norms == 0)
    vanishing = finite & ~zero & (norms < vanishing_below)
    median = float(norms[finite].median()) if finite.any() else None
    return {"zero_gradient": int(zero.sum()), "nan_gradient": int((~finite).sum()),
            "vanishing_gradient": int(vanishing.sum()), "median_gradient_norm": median}


def probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, passes: int, vanishing_below: float,
          device: torch.device, batch_size: int, seed: int,
          gradients_of: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``passes`` clean predictions of ``model`` (randomness seeded once, then running on) and the input gradients
    of ``gradients_of`` (default: ``model``): the predictions (passes, N) and the counts a probe row records (its
    ``found``; ``n``: the examples)."""
    with seeded_randomness(seed, device):
        preds = torch.stack([predict(model, x, device=device, batch_size=batch_size) for _ in range(passes)])
    grad = input_gradients(model if gradients_of is None else gradients_of, x, y, device=device,
                           batch_size=batch_size, seed=seed)
    found = {"n": len(y), "passes": passes, "disagree": int((preds != preds[0]).any(dim=0).sum()),
             **gradient_counts(grad, vanishing_below)}
    return preds, found


def run_probe(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> list[dict[str, Any]]:
    """Clean passes and input gradients of a trained defense on the checks' examples: one evidence row (the
    ``probe`` task kind, registered in ``bench.runner.steps``). The row scores the defense on those clean
    examples as the score step would (a stochastic defense ``repeats`` times, an ensemble's κ), so it reads like
    any other row of the defense; its ``found`` counts are over all the passes."""
    spec: ProbeSpec = task.spec
    train = upstream[spec.model]
    defense, data = trained_defense(train, ctx)
    idx = attacked_indices(task, upstream, data, ctx)
    x, y = data.test_x[idx], data.test_y[idx]
    model = defense.surface(DEPLOYED)
    device = torch.device(ctx.device)
    repeats = spec.repeats
    preds, found = probe(model, x, y, passes=max(spec.passes, repeats), vanishing_below=spec.vanishing_below,
                         device=device, batch_size=ctx.batch_size, seed=task_seed(task),
                         gradients_of=defense.surface(spec.gradient_surface))
    settings = {"passes": spec.passes, "vanishing_below": spec.vanishing_below}
    row = result_row(task, train.spec, Attacked(PROBE_ATTACK, {"name": PROBE_ATTACK, "params": settings,
                                                               "found": found}, surface=DEPLOYED, source=PROBE))
    scored = preds[:repeats].numpy()
    row.update(row_metrics(x.numpy(), x.numpy(), y.numpy(), scored, scored, attacked=False))
    row.update(examples=examples_digest(idx), example_indices=idx.numpy())
    row.update(defense_kappa(defense, x, y, device))
    return [row]


def run_check_noise(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> list[dict[str, Any]]:
    """Check 6's evidence: random noise of the budget's norm on the checks' examples, scored on the deployed model
    as the score step scores an attack (a stochastic defense ``repeats`` times); one row, ``source``
    "check:noise" (the ``check-noise`` task kind, registered in ``bench.runner.steps``)."""
    spec: CheckNoiseSpec = task.spec
    train = upstream[spec.model]
    defense, data = trained_defense(train, ctx)
    idx = attacked_indices(task, upstream, data, ctx)
    x, y = data.test_x[idx], data.test_y[idx]
    model = defense.surface(DEPLOYED)
    device = torch.device(ctx.device)
    seed = task_seed(task)
    noise = NOISE[spec.noise](draws=spec.draws)
    x_adv = noise.run(model, x, y, spec.budget, batch_size=ctx.batch_size, device=device, seed=seed)
    repeats = spec.repeats
    with seeded_randomness(seed, device):
        preds = torch.stack([predict(model, x_adv, device=device, batch_size=ctx.batch_size) for _ in range(repeats)])
        clean = torch.stack([predict(model, x, device=device, batch_size=ctx.batch_size) for _ in range(repeats)])
    row = result_row(task, train.spec, Attacked(spec.noise, {"name": spec.noise, "params": {"draws": spec.draws}},
                                                str(noise.threat_model), DEPLOYED, NOISE_SOURCE, "eps", spec.budget))
    row.update(row_metrics(x.numpy(), x_adv.numpy(), y.numpy(), clean.numpy(), preds.numpy()))
    row.update(wrong_class_flags(preds, y, defense.spec.num_classes, None))
    row.update(examples=examples_digest(idx), example_indices=idx.numpy())
    row.update(defense_kappa(defense, x_adv, y, device))  # as the score step: the members' agreement
    return [row]
