"""The typed task specs (``bench.plan.specs``): the plan↔runner contract.

Every planned task's spec reads back from its stored payload (the store's ``tasks`` table holds only the
payload); an option at its default is absent from the payload, so old keys hold; planning imports no runner.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_suite
from bench.plan import build_plan
from bench.plan.specs import (CleanScoreSpec, CraftedScoreSpec, DatasetRef, EntryRef, EvalSet, ThresholdRule,
                              spec_from_payload)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("suite", ["mnist-quick", "detector-mnist-quick", "dustbin-mnist-quick",
                                   "randomized-mnist-quick"])
def test_every_planned_spec_reads_back_from_its_stored_payload(suite):
    plan = build_plan(load_suite(ROOT / "suites" / f"{suite}.yaml"))
    kinds = set()
    for task in plan.tasks:
        kinds.add(task.kind)
        read = spec_from_payload(task.kind, task.config, task.deps)
        assert read == task.spec and read.payload() == task.config and read.upstream() == task.deps, task.label
        assert task.model == (task.key if task.kind == "train" else task.deps[0])
    assert "train" in kinds and len(kinds) >= 3


def test_an_option_at_its_default_is_absent_from_the_payload():
    mnist = DatasetRef("mnist", "1", {}, 100, 50, 0)
    assert "verify" not in mnist.payload()
    assert DatasetRef("mnist", "1", {}, 100, 50, 0, verify=False).payload()["verify"] is False
    clean = CleanScoreSpec("train-key", 1, mnist, 0)
    assert set(clean.payload()) == {"examples", "dataset", "seed"} and clean.upstream() == ["train-key"]
    on_surface = CleanScoreSpec("train-key", 10, mnist, 0, evaluated_on="single")
    assert on_surface.payload()["evaluate_on"] == "single" and on_surface.payload()["repeats"] == 10
    crafted = CraftedScoreSpec("train-key", 1, "craft-key")
    assert crafted.payload() == {"examples": "crafted"} and crafted.upstream() == ["train-key", "craft-key"]
    assert EvalSet(mnist, 10).payload() == {"dataset": mnist.payload(), "eval_size": 10}
    assert EntryRef("noise-linf", {"draws": 10}).payload() == {"name": "noise-linf", "params": {"draws": 10}}
    assert ThresholdRule().payload() == {"rule": "classifier"}
    assert ThresholdRule(0.05).payload() == {"rule": "fpr", "fpr": 0.05}


def test_planning_imports_no_runner_module():
    """A task key needs its kind's step version: it comes from the spec class, not from importing the steps
    (which import the plan: a cycle at run time that the static import-cycle test cannot see)."""
    code = ("import sys; from bench.config import load_suite; from bench.plan import build_plan; "
            "build_plan(load_suite('suites/detector-mnist-quick.yaml')); "
            "print(sorted(m for m in sys.modules if m.startswith('bench.runner')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
