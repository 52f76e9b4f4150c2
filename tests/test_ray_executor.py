"""The Ray executor runs the same task graph as the local one (skipped where Ray is not installed)."""

import sqlite3

import pytest

ray = pytest.importorskip("ray")

from bench.cli import main  # noqa: E402


def test_ray_executor_stores_the_same_cells_and_resumes(write_suite, tmp_path):
    suite = write_suite()
    args = ["run", str(suite), "--store", str(tmp_path / "store"), "--leaderboard", str(tmp_path / "board"),
            "--quiet", "--executor", "ray"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(args) == 0
        with sqlite3.connect(tmp_path / "store" / "advbench.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 11
            assert db.execute("SELECT COUNT(*) FROM tasks WHERE status = 'done'").fetchone()[0] == 21
        assert main(args) == 0  # everything stored: nothing is submitted
    finally:
        ray.shutdown()
    assert (tmp_path / "board" / "README.md").exists()


def test_ray_workers_spread_over_two_gpus_and_store_the_local_executors_numbers(write_suite, tmp_path):
    """ray.init(num_gpus=2) on a machine without GPUs: each worker gets its own "GPU" (Ray sets
    CUDA_VISIBLE_DEVICES) and, without CUDA, computes on the CPU; the rows equal the local executor's."""
    import torch

    from bench.config import load_suite
    from bench.data import DataContext
    from bench.plan import build_plan
    from bench.runner import RunContext
    from bench.runner.local import LocalExecutor
    from bench.runner.ray_executor import RayExecutor
    from bench.store import Store

    suite = load_suite(write_suite())
    plan = build_plan(suite)

    def context(name):
        return RunContext(store_dir=tmp_path / name, data=DataContext("data"), device="cpu", batch_size=128,
                          progress=False, suite=suite.name)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker (one CPU each)
    try:
        assert LocalExecutor(echo=lambda line: None).run(plan, context("local"), Store(tmp_path / "local")).ok
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        lines = []
        executor = RayExecutor(gpus_per_worker=1, echo=lines.append)
        summary = executor.run(plan, context("ray"), Store(tmp_path / "ray"))
    finally:
        ray.shutdown()
    assert summary.ok and summary.ran == len(plan.tasks)
    assert lines[0] == "ray: 2 workers, 1 GPU each"
    assert {where.rsplit(" ", 2)[1:] == ["GPU", where[-1]] for where in summary.placements.values()} == {True}
    assert {where[-1] for where in summary.placements.values()} == {"0", "1"}  # both GPUs had work

    def rows(name):
        with sqlite3.connect(tmp_path / name / "advbench.sqlite") as db:
            return dict(db.execute("SELECT key, robust_acc FROM results"))

    assert rows("ray") == rows("local") and len(rows("ray")) == 11
