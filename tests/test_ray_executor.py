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
