"""The job of one ``Attack.run``: its inputs, batches, seed and progress (``AttackJob``), which every backend
reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Union

import torch
from torch import nn


class ProgressBar(Protocol):
    """What ``Attack.run`` needs of a tqdm-like progress object: ``update(n)``; it sets ``total``."""

    total: Any

    def update(self, n: int = 1) -> Any: ...


# ``Attack.run``'s ``progress``: a callback ``fn(done, total)`` or a tqdm-like object.
AttackProgress = Union[Callable[[int, int], None], ProgressBar]


class ProgressSteps:
    """The steps of one ``Attack.run``, reported to its ``progress``: batches as ``AttackJob.batches``
    hands them out, or one step for a backend that never asks for batches (a library call over the set)."""

    def __init__(self, sink: AttackProgress):
        self.bar = sink if callable(getattr(sink, "update", None)) else None
        if self.bar is None and not callable(sink):
            raise TypeError(f"progress must be a callback fn(done, total) or have update(n), got {sink!r}")
        self.callback = None if self.bar is not None else sink
        self.done = 0
        self.total = 0

    def add(self, steps: int) -> None:
        """``steps`` more steps are coming (a backend that iterates the batches twice counts them twice)."""
        self.total += steps
        if self.bar is not None:
            self.bar.total = self.total
            refresh = getattr(self.bar, "refresh", None)
            if callable(refresh):
                refresh()

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        else:
            self.callback(self.done, self.total)

    def finish(self) -> None:
        """After the run: a run that reported no step (a whole-set library call, a budget of 0) is one."""
        if self.total == 0:
            self.add(1)
            self.advance()


@dataclass
class AttackJob:
    """One call of ``Attack.run``: inputs on the CPU, batches moved to ``device``."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    targets: torch.Tensor | None
    budget: float | None
    batch_size: int
    device: torch.device
    seed: int
    eot: int = 1  # draws of the model's randomness per gradient (``Attack._init_eot``)
    _num_classes: int | None = field(default=None, repr=False)
    # Where the batches done are reported (``Attack.run``'s ``progress``); None: nowhere.
    progress: ProgressSteps | None = field(default=None, repr=False, compare=False)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """The images, labels and targets (None if untargeted) in batches on ``device``; each batch the
        caller is done with (it asks for the next one, or the loop ends) is one step of ``progress``."""
        starts = range(0, len(self.x), self.batch_size)
        if self.progress is not None:
            self.progress.add(len(starts))
        for i in starts:
            sl = slice(i, i + self.batch_size)
            t = None if self.targets is None else self.targets[sl].to(self.device)
            yield self.x[sl].to(self.device), self.y[sl].to(self.device), t
            if self.progress is not None:
                self.progress.advance()

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = count_classes(self.model, self.x, self.device)
        return self._num_classes

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)


@torch.no_grad()
def count_classes(model: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    return int(model(x[:1].to(device)).shape[-1])
