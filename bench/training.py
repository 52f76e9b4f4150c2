"""Supervised training loop shared by the classifier defenses.

Seeded (parameter init, shuffling, augmentation noise), with a progress bar,
and failing loudly on a non-finite loss so the harness records the task as
failed instead of storing a broken checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import TaskFailed

# (x, y, generator) -> (x', y'): data augmentation or an adversarial-training step hook
BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    transform: BatchTransform | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> nn.Module:
    """Minimize cross-entropy (or ``loss_fn``) over (x, y) with mini-batches; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    n = len(x)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
                if cfg.lr_schedule == "cosine" else None)
    criterion = nn.CrossEntropyLoss()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if transform is not None:
                xb, yb = transform(xb, yb, generator)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = loss_fn(model, xb, yb) if loss_fn is not None else criterion(model(xb), yb)
            if not torch.isfinite(loss):
                raise TaskFailed(f"{desc}: non-finite loss {loss.item()} in epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation, per example: random crop after zero padding, random horizontal flip."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels for x (CPU tensor in, CPU labels out), in batches on ``device``."""
    model.eval()
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
