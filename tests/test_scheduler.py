"""The scheduler (bench.runner.scheduler) on the process pool: same stored numbers as the sequential
executor, dead workers replaced, fused craft batches bit-identical to unfused ones, OOM back-off, cost
estimates and affinity."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import load_suite
from bench.data import DataContext
from bench.errors import UserError
from bench.plan import Task, build_plan
from bench.runner import RunContext
from bench.runner.batching import forget_fitted, run_with_backoff, starting_batch_size
from bench.runner.cost import TaskCosts
from bench.runner.local import LocalExecutor
from bench.runner.pool import PoolExecutor, ProcessWorkers, parse_devices
from bench.runner.loop import Finished
from bench.runner.scheduler import Job, Scheduler, fused_kinds, fusion_groups
from bench.store import PER_EXAMPLE_ARRAYS, Store

POOL_SUITE = """\
name: pool-tiny
seeds: [0]
device: cpu
batch_size: 64
checks: false
datasets:
  - name: digits
    eval_size: 40
defenses:
  - name: undefended
    params: {epochs: 2, batch_size: 64}
attacks:
  - name: fgsm
    budgets: [0.1, 0.3]
  - name: pgd-linf
    params: {steps: 3, rel_stepsize: 0.5}
    budgets: [0.05, 0.1, 0.2, 0.3]
"""


def _plan_and_ctx(suite_path: Path, store_dir: Path):
    suite = load_suite(suite_path)
    plan = build_plan(suite)
    ctx = RunContext(store_dir=store_dir, data=DataContext("data"), device="cpu", batch_size=suite.batch_size,
                     progress=False, suite=suite.name)
    return plan, ctx


def _results(store_dir: Path) -> dict[str, tuple]:
    with sqlite3.connect(store_dir / "advbench.sqlite") as db:
        return {row[0]: row[1:] for row in db.execute("SELECT key, n, clean_acc, robust_acc, correct FROM results")}


def _artifact_hashes(store_dir: Path) -> dict[str, str]:
    with sqlite3.connect(store_dir / "advbench.sqlite") as db:
        return dict(db.execute("SELECT key, sha256 FROM artifacts"))


@pytest.fixture(scope="module")
def pool_suite(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "suite.yaml"
    path.write_text(POOL_SUITE)
    return path


@pytest.fixture(scope="module")
def sequential_store(pool_suite, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("sequential")
    plan, ctx = _plan_and_ctx(pool_suite, store_dir)
    store = Store(store_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the pools' workers on 2 cores: MKL's sums depend on the thread count
    try:
        assert LocalExecutor(echo=lambda line: None).run(plan, ctx, store).ok
    finally:
        torch.set_num_threads(threads)
        store.close()
    return store_dir


def _run_pool(suite_path: Path, store_dir: Path, **options):
    plan, ctx = _plan_and_ctx(suite_path, store_dir)
    lines: list[str] = []
    executor = PoolExecutor(echo=lines.append, **options)
    store = Store(store_dir)
    try:
        summary = executor.run(plan, ctx, store)
    finally:
        store.close()
    return summary, lines, plan


def test_two_workers_store_the_numbers_and_artifacts_of_the_sequential_run(pool_suite, sequential_store, tmp_path):
    summary, lines, plan = _run_pool(pool_suite, tmp_path / "pool", workers=2, fuse=False)
    assert summary.ok and summary.ran == len(plan.tasks) == 14
    assert {where for where in summary.placements.values()} == {"cpu#0", "cpu#1"}  # both workers had work
    assert _results(tmp_path / "pool") == _results(sequential_store)
    assert _artifact_hashes(tmp_path / "pool") == _artifact_hashes(sequential_store)
    assert lines[0] == "pool: 2 workers on each of cpu, 1 thread each"
    assert sum(line.startswith("[") for line in lines) == 14  # one line per finished task
    summary, _, _ = _run_pool(pool_suite, tmp_path / "pool", workers=2)
    assert summary.ran == 0 and summary.already_done == 14  # a rerun finds everything stored


def test_fused_budgets_store_bit_identical_artifacts_under_the_same_keys(pool_suite, sequential_store, tmp_path):
    summary, lines, plan = _run_pool(pool_suite, tmp_path / "fused", workers=1, fuse=True, threads=1)
    assert summary.ok and summary.fused_jobs >= 2  # fgsm's two budgets and pgd's four, one batch each
    assert sum("(fused with 3 other budgets)" in line for line in lines) == 4
    assert any("other crafted sets)" in line for line in lines)  # scores of the model on several sets, one job
    assert _artifact_hashes(tmp_path / "fused") == _artifact_hashes(sequential_store)
    assert _results(tmp_path / "fused") == _results(sequential_store)


def test_the_default_fuses_scoring_everywhere_and_budgets_on_gpus_only():
    assert fused_kinds(None, on_gpu=False) == ("score",)
    assert fused_kinds(None, on_gpu=True) == fused_kinds(True, on_gpu=False) == ("craft", "score")
    assert fused_kinds(False, on_gpu=True) == ()


def test_fused_scoring_makes_the_shared_clean_pass_once_and_stores_each_row_as_alone(pool_suite, sequential_store,
                                                                                       tmp_path, monkeypatch):
    from bench.runner import steps

    plan, ctx = _plan_and_ctx(pool_suite, sequential_store)
    by_key = {t.key: t for t in plan.tasks}
    scores = [t for t in plan.by_kind("score") if len(t.deps) == 2]
    upstream = {d: by_key[d] for t in scores for d in t.deps}
    calls: list[int] = []
    predict = steps.predict
    monkeypatch.setattr(steps, "predict", lambda model, x, **kw: calls.append(len(x)) or predict(model, x, **kw))
    store = Store(sequential_store)
    try:
        fused = steps.run_score_fused(scores, upstream, ctx, store)
        alone = [steps.run_score(t, upstream, ctx, store) for t in scores]
    finally:
        store.close()
    assert len(calls) == (1 + len(scores)) + 2 * len(scores)  # one clean pass for all six sets; two per task alone
    arrays = ("correct", *PER_EXAMPLE_ARRAYS)
    for (got,), (want,) in zip(fused, alone):
        assert {k: v for k, v in got.items() if k not in arrays} == {k: v for k, v in want.items() if k not in arrays}
        assert all(np.array_equal(got.get(k), want.get(k)) for k in arrays)


def test_fusion_groups_join_budgets_of_one_attack_and_model_only(pool_suite, tmp_path):
    plan, _ = _plan_and_ctx(pool_suite, tmp_path)
    by_key = {t.key: t for t in plan.tasks}
    crafts = plan.by_kind("craft")
    groups = fusion_groups(crafts, by_key)
    assert sorted(len(g) for g in groups) == [2, 4]
    for group in groups:
        assert len({t.config["attack"]["name"] for t in group}) == 1
        assert len({t.config["budget"] for t in group}) == len(group)
    assert all(len(g) == 1 for g in fusion_groups(crafts, by_key, kinds=("score",)))
    scores = plan.by_kind("score")  # the six crafted sets' scores on the one model fuse; clean accuracy alone
    assert sorted(len(g) for g in fusion_groups(scores, by_key)) == [1, 6]
    assert all(len(g) == 1 for g in fusion_groups(scores, by_key, kinds=("craft",)))


class _InProcessWorkers:
    """One in-process worker that reports its first fused job as having found the artifact of its first task's
    crafted set damaged (as every task of a fused job does when one of them meets it; ``reported``: that craft's
    key), then runs jobs for real."""

    def __init__(self):
        self.slots, self.broken, self.queue, self.reported = ["cpu#0"], True, [], None

    def submit(self, slot, tasks, upstream, ctx):
        self.queue.append((slot, tasks, upstream, ctx))

    def wait(self, timeout):
        from bench.runner.tasks import run_fused

        slot, tasks, upstream, ctx = self.queue.pop(0)
        if len(tasks) > 1 and self.broken:
            self.reported, self.broken = tasks[0].deps[1], False
            outcomes = [("broken", self.reported)] * len(tasks)
        else:
            outcomes = run_fused(tasks, upstream, ctx)
        return [Finished(slot, outcomes, wall_s=0.1, where="cpu#0")]

    def replace(self, slot):
        pass

    def close(self):
        pass


def test_a_fused_job_that_meets_a_broken_artifact_repairs_it_once_and_reruns_its_tasks(pool_suite, sequential_store,
                                                                                       tmp_path):
    plan, ctx = _plan_and_ctx(pool_suite, tmp_path / "store")
    crafts = {t.key: t for t in plan.by_kind("craft")}
    lines: list[str] = []
    store = Store(tmp_path / "store")
    workers = _InProcessWorkers()
    try:
        summary = Scheduler(workers, fuse=("score",), echo=lines.append, poll_s=0.01).run(plan, ctx, store)
    finally:
        store.close()
    # The scores of one fused job said "broken" together: one re-run of the craft, no task failed.
    assert summary.ok and [line for line in lines if "re-running it" in line] == \
        [f"artifact of {crafts[workers.reported].label} unreadable: re-running it"]
    assert _results(tmp_path / "store") == _results(sequential_store)


class _KillingWorkers:
    """A ProcessWorkers that kills the worker it sends a train task to (SIGKILL, as the OOM killer does),
    ``times`` times."""

    def __init__(self, inner: ProcessWorkers, times: int):
        self.inner, self.times = inner, times
        self.slots = inner.slots

    def submit(self, slot, tasks, upstream, ctx):
        self.inner.submit(slot, tasks, upstream, ctx)
        if self.times and tasks[0].kind == "train":
            self.times -= 1
            os.kill(self.inner.pid(slot), signal.SIGKILL)

    def wait(self, timeout):
        return self.inner.wait(timeout)

    def replace(self, slot):
        self.inner.replace(slot)

    def close(self):
        self.inner.close()


def test_a_killed_worker_is_replaced_and_its_task_retried(pool_suite, sequential_store, tmp_path):
    plan, ctx = _plan_and_ctx(pool_suite, tmp_path / "store")
    lines: list[str] = []
    store = Store(tmp_path / "store")
    summary = Scheduler(_KillingWorkers(ProcessWorkers(["cpu"], 1, 1), times=1), echo=lines.append,
                        max_retries=2).run(plan, ctx, store)
    assert summary.ok and summary.ran == 14
    died = [line for line in lines if "died" in line]
    assert len(died) == 1 and "killed by SIGKILL" in died[0] and "retrying (1 of 2 retries)" in died[0]
    assert _results(tmp_path / "store") == _results(sequential_store)


def test_a_task_whose_worker_keeps_dying_is_failed_with_the_reason_and_the_rest_skipped(pool_suite, tmp_path):
    plan, ctx = _plan_and_ctx(pool_suite, tmp_path / "store")
    store = Store(tmp_path / "store")
    summary = Scheduler(_KillingWorkers(ProcessWorkers(["cpu"], 1, 1), times=2), echo=lambda line: None,
                        max_retries=1).run(plan, ctx, store)
    assert [label for label, _ in summary.failed] == [plan.by_kind("train")[0].label]
    assert "died 2 times" in summary.failed[0][1] and "SIGKILL" in summary.failed[0][1]
    assert len(summary.skipped) == 13
    (failed,) = store.failed_tasks(plan.keys)
    assert failed["error"].startswith("WorkerDied")


def test_a_pool_run_and_a_sequential_run_share_one_store_without_duplicates(pool_suite, sequential_store, tmp_path):
    """Two `advbench run` processes at once on one store: every task runs exactly once between them."""
    store_dir = tmp_path / "shared"
    common = [sys.executable, "-m", "bench", "run", str(pool_suite), "--store", str(store_dir), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(common + ["--leaderboard", str(tmp_path / "a"), "--workers", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    second = subprocess.Popen(common + ["--leaderboard", str(tmp_path / "b")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    outputs = [first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]]
    assert first.returncode == second.returncode == 0, outputs
    finished = [line.split("] ", 1)[1].split(":")[0] for out in outputs for line in out.splitlines()
                if line.startswith("[")]
    assert len(finished) == len(set(finished)) == 14  # each task once, by one of the two runs
    assert _results(store_dir) == _results(sequential_store)


# -- batch sizes: the largest that fits, halved on out-of-memory ------------------------------------------

@pytest.mark.cuda
def test_out_of_memory_halves_the_batch_and_remembers_what_fitted():
    forget_fitted()
    task = Task("craft", "k1", "craft x", {}, ["train-key"])
    tried = []

    def run(batch_size):
        tried.append(batch_size)
        if batch_size > 600:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return "crafted"

    assert run_with_backoff(task, "cuda:0", 256, run) == ("crafted", 512)
    assert tried == [4096, 2048, 1024, 512]
    assert starting_batch_size(task, "cuda:0", 256) == 512  # found once per model and kind
    assert starting_batch_size(task, "cpu", 256) == 256  # the suite's batch size on the CPU
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with_backoff(Task("score", "k2", "score", {}, ["m"]), "cpu", 4, lambda bs: (_ for _ in ()).throw(
            torch.cuda.OutOfMemoryError("always")))
    forget_fitted()


OOM_FACTORY = '''\
import torch
from torch import nn

class OutOfMemoryAbove(nn.Module):
    """A tiny linear model that raises CUDA's out-of-memory error on batches larger than 16 (as a GPU would)."""
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        if len(x) > 16:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated at batch {len(x)})")
        return self.linear(x.flatten(1))

def build():
    return OutOfMemoryAbove()
'''


def test_a_model_that_runs_out_of_memory_is_run_at_half_the_batch_and_the_row_says_so(write_suite, tmp_path):
    forget_fitted()
    (tmp_path / "oom_model.py").write_text(OOM_FACTORY)
    suite = write_suite(f"""\
        name: oom
        device: cpu
        batch_size: 64
        checks: false
        datasets:
          - name: digits
            eval_size: 40
        defenses:
          - name: pretrained
            label: oom
            params: {{factory: "{tmp_path / 'oom_model.py'}:build"}}
        attacks:
          - name: fgsm
            budgets: [0.1]
        """)
    plan, ctx = _plan_and_ctx(suite, tmp_path / "store")
    store = Store(tmp_path / "store")
    assert LocalExecutor(echo=lambda line: None).run(plan, ctx, store).ok
    with sqlite3.connect(tmp_path / "store" / "advbench.sqlite") as db:
        assert {b for (b,) in db.execute("SELECT batch_size FROM results")} == {16}
        assert dict(db.execute("SELECT kind, batch_size FROM tasks WHERE kind != 'train'")) == {"craft": 16,
                                                                                                 "score": 16}
    forget_fitted()


# -- cost estimates, packing and affinity ---------------------------------------------------------------

def test_costs_put_training_before_crafting_before_scoring_and_learn_from_timings(pool_suite, tmp_path):
    plan, _ = _plan_and_ctx(pool_suite, tmp_path)
    costs = TaskCosts(plan)
    train, craft, score = plan.by_kind("train")[0], plan.by_kind("craft")[-1], plan.by_kind("score")[-1]
    assert costs.seconds(train) > costs.seconds(craft) > costs.seconds(score) > 0
    pgd = [t for t in plan.by_kind("craft") if t.config["attack"]["name"] == "pgd-linf"]
    costs.record(pgd[0], 7.0)  # a stored timing: the other budgets of the same attack cost the same
    assert costs.seconds(pgd[1]) == pytest.approx(7.0)
    assert TaskCosts(plan, {pgd[0].key: 7.0}).seconds(pgd[2]) == pytest.approx(7.0)


def test_a_worker_prefers_jobs_on_the_model_it_holds_and_otherwise_the_longest():
    def job(model, cost):
        return Job([Task("score", f"{model}-{cost}", "", {}, [model])], cost)

    jobs = [job("a", 10.0), job("b", 6.0), job("c", 5.5)]
    memory = {"w0": ["b"], "w1": ["a"]}
    assert Scheduler._pick(jobs, "w0", memory, {}).model == "b"  # held here: 12 beats 10 / 2
    assert Scheduler._pick(jobs, "w1", memory, {}).model == "a"
    assert Scheduler._pick(jobs, "w2", {**memory, "w2": []}, {}).model == "c"  # 5.5 beats 10 / 2 and 6 / 2
    assert Scheduler._pick([], "w0", memory, {}) is None


@pytest.mark.cuda
def test_devices_are_checked_against_this_machine():
    assert parse_devices("cpu") == ["cpu"]
    if not torch.cuda.is_available():
        assert parse_devices("auto") == ["cpu"]
        with pytest.raises(UserError, match=r"--devices: cuda:1 is not visible to PyTorch here \(0 CUDA devices\)"):
            parse_devices("cuda:1")
    with pytest.raises(UserError, match="'gpu0' is not a device"):
        parse_devices("cpu,gpu0")
    with pytest.raises(UserError, match="names no device or one twice"):
        parse_devices("cpu,cpu")


def test_bad_pool_options_are_one_line_errors(write_suite, tmp_path, capsys):
    from bench.cli import main

    suite = write_suite()
    store = ["--store", str(tmp_path / "s"), "--leaderboard", str(tmp_path / "b"), "--quiet"]
    assert main(["run", str(suite), *store, "--workers", "0"]) == 2
    assert "--workers must be at least 1, got 0" in capsys.readouterr().err
    assert main(["run", str(suite), *store, "--devices", "tpu"]) == 2
    assert "--devices: 'tpu' is not a device" in capsys.readouterr().err
    assert main(["run", str(suite), *store, "--executor", "local", "--no-fuse"]) == 2
    assert "--executor local does not take --no-fuse" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # nothing half-written
