"""The certify task step: a certificate method on a trained defense's deployed model, one row per budget.

Its images are the ones the suite's attacks get (the dataset's seeded order, its first ``eval_size``; the same
``attacked_indices``), so each certified example can be checked against every attack that attacked it (check 8,
``bench.report.certified``). Rows go to the store's ``certificates`` table (``bench.store.CERTIFICATE_COLUMNS``).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..certify import Unsupported
from ..plan import Task
from ..plan.specs import CertifySpec
from ..registry import certifiers, task_steps
from ..store import Store
from .context import RunContext, attacked_indices, task_seed, trained_defense


def row_key(task_key: str, budget: float) -> str:
    """A certificate row's key: its task's, and the budget (one task certifies every budget of a threat model)."""
    return f"{task_key}@{budget!r}"


@task_steps.register("certify", version=CertifySpec.version, table="certificates")
def run_certify(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> list[dict[str, Any]]:
    spec: CertifySpec = task.spec
    train = upstream[spec.model]
    defense, data = trained_defense(train, ctx)
    idx = attacked_indices(task, upstream, data, ctx)
    x, y = data.test_x[idx], data.test_y[idx]
    certifier = certifiers.get(spec.method.name).build(**spec.method.params)
    about = task.about
    identity = {"task_key": task.key, "dataset": about.dataset, "defense": about.defense,
                "defense_name": train.spec.defense.name,
                "defense_config": json.dumps(train.spec.defense.payload(), sort_keys=True), "method": about.attack,
                "method_config": json.dumps(spec.method.payload(), sort_keys=True),
                "threat_model": spec.threat_model, "seed": about.seed, "n": len(idx),
                "example_indices": idx.numpy()}
    try:
        out = certifier.certify(defense, x, y, spec.budgets, spec.threat_model, seed=task_seed(task),
                                batch_size=ctx.batch_size, device=torch.device(ctx.device))
    except Unsupported as e:  # not an error: the leaderboard shows "—" and the reason
        return [{**identity, "key": row_key(task.key, b), "budget": b, "unsupported": str(e)} for b in spec.budgets]
    rows = []
    for b in spec.budgets:
        flags = out.flags[b]
        rows.append({**identity, "key": row_key(task.key, b), "budget": b, "certified": int(flags.sum()),
                     "clean_correct": int(out.clean_correct.sum()), "correct": flags,
                     "abstained": None if out.abstained is None else int(out.abstained.sum()),
                     "radius": out.radius})
    return rows
