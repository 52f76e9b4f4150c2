"""What AutoAttack's members (APGD, APGD-T, FAB-T, Square; bench/attacks/apgd.py, fab.py, square.py) share:
the ``Member`` base class, whose ``_run_rows`` attacks a subset of the attacked set, and their per-example
randomness.

Their random draws are per example (``example_draws``): an example gets the same draws whichever batch or
subset it is attacked in, so AutoAttack (bench/attacks/autoattack.py), which runs each member on the examples
still robust, gives each example exactly the result the member gives it alone (its per-example worst case is
the AND of theirs).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..threat_models import ThreatModel
from .base import Attack, AttackJob

TARGET_CLASSES = 9  # the reference's n_target_classes: the top 9 other classes (all of them on 10 classes)


def norm_of(cls: type[Attack]) -> str:
    return "linf" if cls.threat_model == ThreatModel.LINF else "l2"


def target_count(attack: Any, job: AttackJob, least: int) -> int:
    """``target_classes``, at most the classes other than the label; ValueError below ``least`` classes."""
    k = job.num_classes
    if k < least:
        raise ValueError(f"{type(attack).__name__} needs a model with at least {least} classes, got {k}")
    return min(attack.target_classes, k - 1)


class Member(Attack):
    """An AutoAttack member: ``_run_rows(job, rows)`` attacks a subset whose rows in the whole set are ``rows``
    (the randomness follows the row), ``_run_torch(job)`` the whole set."""

    salt: ClassVar[int] = 0  # tells the members' random streams apart

    def _run_rows(self, job: AttackJob, rows: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _run_torch(self, job: AttackJob) -> torch.Tensor:
        return self._run_rows(job, None)


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
