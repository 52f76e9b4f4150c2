"""Ensemble diversity: the interrater agreement κ of Kuncheva & Whitaker (2003).

Strauss et al. 2017 (Sec. 3) argue an ensemble helps only if its members are
accurate and diverse (they make different errors); Lee et al. 2021 report κ for
their sampled ensembles. κ = 1 means the members are right and wrong on the same
examples (no diversity); lower κ means more diverse members.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .training import predict


def interrater_agreement(correct: np.ndarray) -> float:
    """κ for L classifiers on N examples; ``correct[l, j]`` says whether member l is right on example j.

    Kuncheva & Whitaker (2003), eq. for the measure of interrater agreement:

        κ = 1 − [(1/L) Σ_j l(z_j)(L − l(z_j))] / [N (L − 1) p̄ (1 − p̄)]

    with l(z_j) the number of members correct on example j and p̄ the mean individual accuracy.
    When every member is always right (or always wrong), p̄ ∈ {0, 1}: complete agreement, κ = 1.
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2:
        raise ValueError(f"correct must be shaped (members, examples), got shape {correct.shape}")
    members, n = correct.shape
    if members < 2:
        raise ValueError(f"agreement needs at least 2 members, got {members}")
    if n == 0:
        raise ValueError("agreement needs at least one example")
    p_bar = correct.mean()
    if p_bar in (0.0, 1.0):
        return 1.0
    right = correct.sum(axis=0)  # l(z_j)
    disagreement = (right * (members - right)).sum() / members
    return float(1.0 - disagreement / (n * (members - 1) * p_bar * (1 - p_bar)))


def member_agreement(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, device: torch.device,
                     batch_size: int = 512) -> float:
    """κ of ``models`` (e.g. ``Defense.member_models()``) on images x with labels y."""
    y = torch.as_tensor(y).cpu()
    rows = [(predict(m, x, device=device, batch_size=batch_size) == y).numpy() for m in models]
    return interrater_agreement(np.array(rows, dtype=bool).reshape(len(models), len(y)))


def defense_kappa(defense, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, float]:
    """``{"diversity_kappa": κ}`` of an ensemble defense's members on ``x`` (two or more members), else {}."""
    members = defense.member_models()
    return {"diversity_kappa": member_agreement(members, x, y, device)} if len(members) >= 2 else {}
