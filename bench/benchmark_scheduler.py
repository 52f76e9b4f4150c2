"""``advbench bench scheduler``: the worker pool against the sequential executor, and fused budgets
against one craft per budget, measured on this machine (issue 13's goals: 2 workers ≥ 1.7× one on the
CPU quick suite; fused budgets never slower than unfused).

* **pool**: the suite, cold, into a fresh temporary store, three times: the sequential executor (one
  process, every core), the pool with 1 worker (every core) and with 2 workers (the cores divided). Per
  run: wall time, the sum of the tasks' own wall times (from the store), the ideal (that sum / workers)
  and the efficiency (ideal / wall), and the speed-up over the 1-worker pool.
* **scoring**: on the sequential run's store, every group of score tasks that the scheduler would fuse
  (one model's surface on several crafted sets, ``fusion_groups``) scored as one job
  (``run_score_fused``) against one task at a time (``run_score``), best of ``repeats``, interleaved;
  the rows must be equal.
* **fused**: one trained model (``bench.benchmark.trained_model``), an attack at 4 budgets on ``n``
  images: ``Attack.run`` once per budget against ``Attack.run_budgets`` once (best of ``repeats``,
  interleaved), on ``device``, with the same batch size per budget (4x the rows per pass) and with the
  batch split among the budgets (the same rows per pass); the outputs must be identical.

Nothing else should run meanwhile (two torch processes on 2 cores thrash).
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

import torch

from .benchmark import interleaved_best, trained_model, write_results

FUSED_CASES = [("pgd-linf", {"steps": 10}, [0.05, 0.1, 0.2, 0.3]), ("fgsm", {}, [0.05, 0.1, 0.2, 0.3]),
               ("pgd-l2", {"steps": 10}, [0.5, 1.0, 2.0, 3.0])]


def _sum_of_task_times(store_dir: Path) -> float:
    with sqlite3.connect(store_dir / "advbench.sqlite") as db:
        return float(db.execute("SELECT SUM(wall_time_s) FROM tasks WHERE status = 'done'").fetchone()[0] or 0.0)


def _run_suite(suite_path: Path, store_dir: Path, executor) -> tuple[float, int]:
    from .config import load_suite
    from .data import DataContext
    from .plan import build_plan
    from .runner import RunContext
    from .store import Store

    suite = load_suite(suite_path)
    plan = build_plan(suite)
    ctx = RunContext(store_dir=store_dir, data=DataContext("data"), device="cpu", batch_size=suite.batch_size,
                     progress=False, suite=suite.name)
    store = Store(store_dir)
    start = time.perf_counter()
    try:
        summary = executor.run(plan, ctx, store)
    finally:
        store.close()
    if not summary.ok:
        raise RuntimeError(f"{suite_path}: {len(summary.failed)} tasks failed: {summary.failed[:3]}")
    return time.perf_counter() - start, len(plan.tasks)


def scoring_rows(suite_path: Path, store_dir: Path, repeats: int = 3) -> list[dict]:
    from .config import load_suite
    from .data import DataContext
    from .plan import build_plan
    from .runner import RunContext
    from .runner.scheduler import fusion_groups
    from .runner.steps import run_score, run_score_fused
    from .store import Store

    suite = load_suite(suite_path)
    plan = build_plan(suite)
    by_key = {t.key: t for t in plan.tasks}
    ctx = RunContext(store_dir=store_dir, data=DataContext("data"), device="cpu", batch_size=suite.batch_size,
                     progress=False, suite=suite.name)
    groups = [g for g in fusion_groups(plan.by_kind("score"), by_key, ("score",)) if len(g) > 1]
    store = Store(store_dir)
    try:
        def strip(rows):  # the numbers, without per-example flags (arrays) that == cannot compare
            return [{k: v for k, v in r.items() if k != "correct"} for (r,) in rows]

        total = {"alone": 0.0, "fused": 0.0}
        identical = True
        for group in groups:
            upstream = {d: by_key[d] for t in group for d in t.deps}
            runs = {"alone": lambda g=group: [run_score(t, upstream, ctx, store) for t in g],
                    "fused": lambda g=group: run_score_fused(g, upstream, ctx, store)}
            for run in runs.values():  # warm: the checkpoint enters the trained-defense cache
                run()
            best = interleaved_best(runs, repeats)
            identical &= strip(best["alone"][1]) == strip(best["fused"][1])
            for name in total:
                total[name] += best[name][0]
    finally:
        store.close()
    row = {"benchmark": "scoring", "suite": str(suite_path), "jobs": len(groups),
           "tasks": sum(len(g) for g in groups), "alone_s": round(total["alone"], 3),
           "fused_s": round(total["fused"], 3), "fused_speedup": round(total["alone"] / total["fused"], 2),
           "identical": identical}
    print(f"scoring: {row['tasks']} score tasks in {row['jobs']} fused jobs: alone {row['alone_s']:.2f}s, fused "
          f"{row['fused_s']:.2f}s ({row['fused_speedup']:.2f}x); identical: {identical}")
    return [row]


def pool_rows(suite_path: Path) -> list[dict]:
    from .runner.local import LocalExecutor
    from .runner.pool import PoolExecutor, usable_cores

    quiet = lambda line: None  # noqa: E731
    runs = [("sequential", 1, LocalExecutor(echo=quiet)), ("pool", 1, PoolExecutor(workers=1, echo=quiet)),
            ("pool", 2, PoolExecutor(workers=2, echo=quiet))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="advbench-bench-") as tmp:
        for i, (executor_name, workers, executor) in enumerate(runs):
            store_dir = Path(tmp) / f"store{i}"
            wall, tasks = _run_suite(suite_path, store_dir, executor)
            busy = _sum_of_task_times(store_dir)
            rows.append({"benchmark": "pool", "suite": str(suite_path), "executor": executor_name, "workers": workers,
                         "threads_per_worker": max(1, usable_cores() // workers), "tasks": tasks,
                         "wall_s": round(wall, 1), "sum_task_s": round(busy, 1),
                         "ideal_s": round(busy / workers, 1), "efficiency": round(busy / workers / wall, 3)})
            print(f"{executor_name} x{workers}: {wall:.1f}s wall, tasks {busy:.1f}s, efficiency "
                  f"{rows[-1]['efficiency']:.2f}")
            if i == 0:
                scoring = scoring_rows(suite_path, store_dir)
    one = next(r["wall_s"] for r in rows if r["executor"] == "pool" and r["workers"] == 1)
    for row in rows:
        row["speedup_vs_pool_1"] = round(one / row["wall_s"], 2)
    return rows + scoring


def fused_rows(n: int, device: str, repeats: int, batch_size: int = 256) -> list[dict]:
    from .registry import attacks

    dev = torch.device(device)
    model, x, y = trained_model(dev)
    x, y = x[:n], y[:n]
    rows = []
    for name, params, budgets in FUSED_CASES:
        attack = attacks.get(name).build(**params)
        seeds = list(range(len(budgets)))
        targets = [None] * len(budgets)
        split = max(4, batch_size // len(budgets) // 4 * 4)  # the same rows per pass as one budget alone
        runs = {
            "unfused": lambda: torch.stack([attack.run(model, x, y, b, batch_size=batch_size, device=dev, seed=s)
                                            for b, s in zip(budgets, seeds)]),
            "fused": lambda: torch.stack(attack.run_budgets(model, x, y, budgets, seeds=seeds, targets=targets,
                                                            batch_size=batch_size, device=dev)),
            "fused_split": lambda: torch.stack(attack.run_budgets(model, x, y, budgets, seeds=seeds, targets=targets,
                                                                  batch_size=split, device=dev)),
        }
        best = interleaved_best(runs, repeats)
        unfused = best["unfused"][0]
        row = {"benchmark": "fused", "attack": name, "params": params, "budgets": len(budgets), "n": n,
               "device": device, "batch_size": batch_size, "fuses_budgets": attack.fuses_budgets,
               "unfused_s": round(unfused, 3), "fused_s": round(best["fused"][0], 3),
               "fused_speedup": round(unfused / best["fused"][0], 2),
               "fused_split_batch": split, "fused_split_s": round(best["fused_split"][0], 3),
               "fused_split_speedup": round(unfused / best["fused_split"][0], 2),
               "identical": all(torch.equal(best[k][1], best["unfused"][1]) for k in ("fused", "fused_split"))}
        rows.append(row)
        print(f"{name} x{len(budgets)} budgets, batch {batch_size}: unfused {unfused:.2f}s, fused "
              f"{row['fused_s']:.2f}s ({row['fused_speedup']:.2f}x), fused at {split} per budget "
              f"{row['fused_split_s']:.2f}s ({row['fused_split_speedup']:.2f}x); identical: {row['identical']}")
    return rows


def run_scheduler_benchmark(*, suite: Path, n: int = 256, device: str = "cpu", repeats: int = 3,
                            out_dir: str | Path | None = None, pool: bool = True) -> list[dict]:
    rows = fused_rows(n, device, repeats) + (pool_rows(suite) if pool else [])
    if out_dir is not None:
        write_results("scheduler", rows, out_dir, suite=str(suite))
    return rows
