"""Claims (bench/runner/claims.py): two runs on one store share the work; nothing runs twice, nothing is lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from bench.config import load_suite
from bench.data import DataContext
from bench.plan import build_plan
from bench.runner.claims import Claims
from bench.runner.context import RunContext
from bench.runner.local import LocalExecutor
from bench.runner.tasks import run_task
from bench.store import Store

REPO = Path(__file__).resolve().parent.parent

SMALL_SUITE = """\
name: shared
seeds: [0]
device: cpu
batch_size: 128
checks: false
datasets:
  - name: digits
    eval_size: 40
defenses:
  - name: undefended
    params: {epochs: 1, batch_size: 64}
  - name: gaussian-augment
    label: gauss
    params: {std: 0.2, epochs: 1, batch_size: 64}
attacks:
  - name: fgsm
    budgets: [0.1, 0.2, 0.3]
"""


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fake_claim(store: Store, key: str, *, pid: int, heartbeat: float) -> None:
    store._db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                      (key, f"other:{pid}", Claims(store.root).host, pid, heartbeat))


def test_a_claim_is_exclusive_until_released_and_a_stored_task_is_done(tmp_path):
    store = Store(tmp_path)
    first, second = Claims(tmp_path), Claims(tmp_path)
    assert first.take(store, "k") == "claimed"
    assert first.take(store, "k") == "claimed"  # its own claim: taking it again is fine
    assert second.take(store, "k") == "held"
    first.release(store, "k")
    assert second.take(store, "k") == "claimed"
    store._db.execute("INSERT INTO tasks (key, kind, label, status, config) VALUES ('d', 'train', 'x', 'done', '{}')")
    assert first.take(store, "d") == "done"


def test_abandoned_claims_are_taken_over(tmp_path):
    store, mine = Store(tmp_path), Claims(tmp_path)
    _fake_claim(store, "dead", pid=_dead_pid(), heartbeat=time.time())     # kill -9: the process is gone
    _fake_claim(store, "silent", pid=os.getppid(), heartbeat=time.time() - 10 * 60)  # alive, heartbeat stopped
    _fake_claim(store, "live", pid=os.getppid(), heartbeat=time.time())
    assert mine.take(store, "dead") == "claimed"
    assert mine.take(store, "silent") == "claimed"
    assert mine.take(store, "live") == "held"


def test_heartbeat_renews_and_exit_drops_every_claim(tmp_path):
    store = Store(tmp_path)
    with Claims(tmp_path, heartbeat_s=0.05) as claims:
        assert claims.take(store, "a") == "claimed" and claims.take(store, "b") == "claimed"
        before = store.claims_held(["a"])[0]["heartbeat"]
        time.sleep(0.3)
        assert store.claims_held(["a"])[0]["heartbeat"] > before
    assert store.claims_held(["a", "b"]) == []


def test_a_run_does_other_tasks_first_then_waits_for_a_held_one(write_suite, tmp_path):
    """Another live run holds the first training task: this run trains and attacks the other defense, waits,
    and finishes the held task's readers once the other run has stored it; it never runs the held task."""
    suite = load_suite(write_suite(SMALL_SUITE))
    plan = build_plan(suite)
    store_dir = tmp_path / "store"
    store = Store(store_dir)
    held = plan.by_kind("train")[0]
    _fake_claim(store, held.key, pid=os.getppid(), heartbeat=time.time())
    ctx = RunContext(store_dir=store_dir, data=DataContext("data"), device="cpu", batch_size=128, suite=suite.name)
    lines: list[str] = []
    summary = {}
    runner = threading.Thread(target=lambda: summary.update(
        result=LocalExecutor(echo=lines.append, poll_s=0.05).run(plan, ctx, Store(store_dir))))
    runner.start()
    readers = {t.key for t in plan.tasks if held.key in t.deps}
    deadline = time.time() + 120
    while not any(line.startswith("waiting for") for line in lines) and time.time() < deadline:
        time.sleep(0.05)
    assert any(line.startswith("waiting for") and f"pid {os.getppid()}" in line for line in lines)
    # Everything that does not need the held task is done by now; its readers are not.
    independent = {t.key for t in plan.tasks if t.key != held.key and t.key not in readers
                   and not set(t.deps) & readers}
    assert independent <= store.done_keys(plan.keys)
    assert not readers & store.done_keys(plan.keys)
    # The other run finishes its task and drops its claim.
    assert run_task(held, {}, ctx) == ("done", None)
    store._db.execute("DELETE FROM claims WHERE key = ?", (held.key,))
    runner.join(timeout=120)
    assert not runner.is_alive()
    assert summary["result"].ok and summary["result"].ran == len(plan.tasks) - 1
    assert store.done_keys(plan.keys) == set(plan.keys)


def test_two_runs_at_once_on_one_store_split_the_work(tmp_path):
    suite = tmp_path / "shared.yaml"
    suite.write_text(textwrap.dedent(SMALL_SUITE))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--store", str(tmp_path / "store"),
                              "--leaderboard", str(tmp_path / f"board{i}"), "--quiet"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    planned = len(build_plan(load_suite(suite)).tasks)
    ran = [int(re.search(r"^(\d+) run, ", out, re.M).group(1)) for out in outputs]
    assert sum(ran) == planned, outputs  # each task ran exactly once, in one of the two
    store = Store(tmp_path / "store")
    assert len(store.done_keys()) == planned
    assert len(store.results()) == 4 * 2  # clean + three budgets, two defenses: no row lost or doubled
    assert store.claims_held(list(store.done_keys())) == []
