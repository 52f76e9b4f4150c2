"""Every shipped suite plans exactly the task keys committed in ``tests/data/plan_keys.tsv``.

A task key hashes everything that determines a task's output, so a key that moves silently re-runs work in
every store (and a key that stays put while its output changes serves stale results). This is the guard for
refactors of the plan and its specs (issue 26: typed task specs must be behaviour-preserving): the plan of
every ``suites/*.yaml`` is compared with the committed list, byte for byte. A change that is meant to move
keys (a new parameter with a non-default value, a version bump) rewrites the list on purpose:

    python tests/test_plan_keys.py        # then review the diff of tests/data/plan_keys.tsv
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "tests" / "data" / "plan_keys.tsv"
HEADER = "suite\tkind\tkey\tlabel"


def planned_lines() -> list[str]:
    """suite, kind, key and label of every task of every shipped suite, in plan order."""
    from bench.config import load_suite
    from bench.plan import build_plan

    lines = [HEADER]
    for path in sorted((ROOT / "suites").glob("*.yaml")):
        plan = build_plan(load_suite(path))  # no data context: the paper-scale data need not be here
        lines += [f"{path.stem}\t{t.kind}\t{t.key}\t{t.label}" for t in plan.tasks]
    return lines


def test_every_suite_plans_the_committed_task_keys():
    committed = KEYS.read_text(encoding="utf-8").splitlines()
    planned = planned_lines()
    if planned != committed:
        added = sorted(set(planned) - set(committed))
        gone = sorted(set(committed) - set(planned))
        shown = "\n".join([*(f"+ {line}" for line in added[:10]), *(f"- {line}" for line in gone[:10])])
        raise AssertionError(f"{len(added)} planned task lines are not in {KEYS.name} and {len(gone)} of it are "
                             f"not planned (or the order moved); rewrite it with `python {Path(__file__).name}` "
                             f"only if the keys are meant to move:\n{shown}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    KEYS.write_text("\n".join(planned_lines()) + "\n", encoding="utf-8")
    print(f"{KEYS}: {sum(1 for _ in KEYS.open()) - 1} task lines")
