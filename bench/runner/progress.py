"""Time estimates for a run: remaining time from how long each kind of task has taken.

Per task kind, the mean wall time of this run's finished tasks of that kind; before the first one
finishes, the mean of the store's earlier tasks of that kind (other runs, other suites); with neither,
the mean over every kind seen. Crude by design (a C&W craft and an FGSM craft are both "craft"), but
it moves the estimate toward the truth as the run goes on.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ..plan import Task


class RunEstimate:
    def __init__(self, prior: dict[str, float] | None = None):
        self.prior = dict(prior or {})
        self.seen: dict[str, list[float]] = defaultdict(list)

    def record(self, kind: str, seconds: float) -> None:
        self.seen[kind].append(seconds)

    def per_task(self, kind: str) -> float | None:
        if self.seen.get(kind):
            return sum(self.seen[kind]) / len(self.seen[kind])
        if kind in self.prior:
            return self.prior[kind]
        known = [t for ts in self.seen.values() for t in ts] or list(self.prior.values())
        return sum(known) / len(known) if known else None

    def remaining(self, tasks: list[Task]) -> float | None:
        """Estimated seconds for ``tasks``; None when nothing is known yet."""
        counts = Counter(task.kind for task in tasks)
        each = {kind: self.per_task(kind) for kind in counts}
        if any(v is None for v in each.values()):
            return None
        return sum(each[kind] * n for kind, n in counts.items())


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
