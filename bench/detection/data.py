"""Detector data: Monteiro et al. 2019, Sec. III-A.

Each image is kept clean (label 0) or attacked (label 1) by a seeded coin flip (p = 0.5); an attacked
image is attacked white-box on one of the two models, chosen at random, with the smallest budget of the
list that makes that model err. Images the chosen model already misclassifies when clean, or that no
budget fools, stay clean with label 0. Also Table II's numbers: mean MSE over successful adversarial
images and the success rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..attacks import get_attack
from ..training import predict


@dataclass
class DetectorData:
    """Detector training data built by ``build_detector_data`` (all arrays of length N).

    ``x``: images (CPU float32 NCHW): the adversarial image where ``is_adv``, else the clean one.
    ``is_adv``: bool, the label (1 = attack).
    ``attacked_model_index``: the model the coin flips chose to attack (0 or 1), -1 for images kept
    clean by the first coin flip. Images chosen for an attack that stayed clean (the model erred on the
    clean image, or no budget fooled it) keep their index but have ``is_adv`` False.
    ``budget_used``: the smallest budget that fooled the chosen model (inf for an unbounded attack);
    NaN where ``is_adv`` is False.
    ``mse``: per-pixel mean squared error to the clean image; NaN where ``is_adv`` is False.
    ``success_rate``: successes / images attacked (chosen for an attack and classified correctly when
    clean by the chosen model); ``mse_mean``: mean ``mse`` over the successes (Table II).
    """

    x: torch.Tensor
    is_adv: np.ndarray
    attacked_model_index: np.ndarray
    budget_used: np.ndarray
    mse: np.ndarray
    attempted: int
    success_rate: float | None
    mse_mean: float | None

    @property
    def labels(self) -> np.ndarray:
        return self.is_adv.astype(int)


def _sorted_budgets(budgets: Sequence[float | None]) -> list[float | None]:
    if not budgets:
        raise ValueError("budgets must not be empty")
    numbers = sorted(float(b) for b in budgets if b is not None)
    if any(b is None for b in budgets):
        return [*numbers, None]  # unbounded: the last resort (a line-search attack's own minimal search)
    return numbers


def build_detector_data(models: tuple[nn.Module, nn.Module], x: torch.Tensor, y: torch.Tensor,
                        attack_name: str, attack_params: dict[str, Any] | None,
                        budgets: Sequence[float | None], *, seed: int = 0,
                        device: str | torch.device = "cpu", batch_size: int = 256) -> DetectorData:
    """Detector data following Monteiro et al. 2019, Sec. III-A (this module's docstring).

    Minimal-budget search, batched: budgets run in increasing order, each on the images no smaller
    budget has fooled yet; an image keeps the first budget at which the chosen model misclassifies it.
    A budget of ``None`` (line-search/minimization attacks, unbounded) runs last, once: the attack's
    own search is the minimal one.
    """
    if len(models) != 2:
        raise ValueError(f"need two models, got {len(models)}")
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    y = torch.as_tensor(y).detach().to("cpu", torch.long).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"got {len(x)} images but {len(y)} labels")
    device = torch.device(device)
    attack = get_attack(attack_name, attack_params)
    order = _sorted_budgets(budgets)

    n = len(x)
    rng = np.random.default_rng(seed)
    chosen = rng.random(n) < 0.5
    which = rng.integers(0, 2, size=n)
    attacked_model_index = np.where(chosen, which, -1)

    x_out = x.clone()
    is_adv = np.zeros(n, dtype=bool)
    budget_used = np.full(n, np.nan)
    attempted = 0
    for m, model in enumerate(models):
        was_training = model.training
        model.eval()  # dropout off: the model as deployed
        try:
            idx = np.flatnonzero(attacked_model_index == m)
            if len(idx) == 0:
                continue
            correct = (predict(model, x[idx], device=device, batch_size=batch_size) == y[idx]).numpy()
            unsolved = idx[correct]
            attempted += len(unsolved)
            for budget in order:
                if len(unsolved) == 0:
                    break
                adv = attack.run(model, x[unsolved], y[unsolved], budget, device=device, seed=seed,
                                 batch_size=batch_size)
                fooled = (predict(model, adv, device=device, batch_size=batch_size) != y[unsolved]).numpy()
                done = unsolved[fooled]
                x_out[done] = adv[fooled]
                is_adv[done] = True
                budget_used[done] = math.inf if budget is None else budget
                unsolved = unsolved[~fooled]
        finally:
            model.train(was_training)

    mse = np.full(n, np.nan)
    if is_adv.any():
        delta = (x_out[is_adv] - x[is_adv]).flatten(1).double()
        mse[is_adv] = (delta ** 2).mean(1).numpy()
    successes = int(is_adv.sum())
    return DetectorData(x=x_out, is_adv=is_adv, attacked_model_index=attacked_model_index,
                        budget_used=budget_used, mse=mse, attempted=attempted,
                        success_rate=successes / attempted if attempted else None,
                        mse_mean=float(mse[is_adv].mean()) if successes else None)
