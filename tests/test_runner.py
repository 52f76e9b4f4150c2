"""The runner's registries: task steps by kind (version, table) and executors by name."""

from __future__ import annotations

import json

import pytest

from bench.benchmark import write_results
from bench.cli import main
from bench.errors import UserError
from bench.registry import executors, task_steps
from bench.runner import get_executor
from bench.runner.local import LocalExecutor
from bench.store import TABLES, Store

# The step versions are part of every stored task key: changing one re-runs every task of that kind.
STEP_VERSIONS = {"train": "1", "craft": "1", "score": "1", "detector-data": "2", "detect": "2", "adaptive": "4",
                 "probe": "1", "check-noise": "1", "certify": "1"}


def test_every_task_kind_is_registered_with_its_version_and_a_known_table():
    assert {k: task_steps.get(k).version for k in task_steps.names()} == STEP_VERSIONS
    for kind in task_steps.names():
        table = task_steps.get(kind).meta["table"]
        assert table is None or table in TABLES, (kind, table)
    assert task_steps.get("score").meta["table"] == "results"
    assert task_steps.get("adaptive").meta["table"] == "detection_results"


def test_executors_come_from_the_registry():
    assert {"local", "ray"} <= set(executors.names())
    assert isinstance(get_executor("local"), LocalExecutor)
    with pytest.raises(UserError, match=r"--executor: unknown executor 'lcoal'; did you mean 'local'\?"):
        get_executor("lcoal")


def test_unknown_executor_fails_before_anything_is_written(write_suite, tmp_path, capsys):
    store = tmp_path / "store"
    code = main(["run", str(write_suite()), "--store", str(store), "--leaderboard", str(tmp_path / "board"),
                 "--executor", "lcoal", "--quiet"])
    assert code == 2
    assert "did you mean 'local'" in capsys.readouterr().err
    assert not store.exists() and not (tmp_path / "board").exists()


def test_benchmark_tables_are_written_as_data(tmp_path):
    rows = [{"attack": "fgsm", "harness ex/s": 2244.0, "ratio": 0.97}, {"attack": "bim", "harness ex/s": 284.0,
                                                                         "ratio": 1.01}]
    csv_path, json_path = write_results("attacks", rows, tmp_path / "benchmarks", device="cpu", n=256)
    assert csv_path.read_text().splitlines() == ["attack,harness ex/s,ratio", "fgsm,2244.0,0.97", "bim,284.0,1.01"]
    record = json.loads(json_path.read_text())
    assert record["benchmark"] == "attacks" and record["rows"] == rows
    assert record["device"] == "cpu" and record["n"] == 256 and "torch" in record["versions"]


def test_a_partial_benchmark_run_replaces_its_rows_and_keeps_the_others(tmp_path):
    out = tmp_path / "benchmarks"
    write_results("attacks", [{"attack": "fgsm", "ratio": 0.97}, {"attack": "bim", "ratio": 1.01}], out,
                  merge_on="attack", repeats=5)
    csv_path, json_path = write_results("attacks", [{"attack": "bim", "ratio": 1.2}, {"attack": "apgd", "ratio": 2.0}],
                                        out, merge_on="attack", repeats=1)
    assert csv_path.read_text().splitlines() == ["attack,ratio", "fgsm,0.97", "bim,1.2", "apgd,2.0"]
    runs = json.loads(json_path.read_text())["runs"]
    assert [(r["repeats"], r["rows"]) for r in runs] == [(5, ["fgsm"]), (1, ["bim", "apgd"])]
    for attack in ("square", "fab"):  # rows written one by one as a run measures them: still one run
        write_results("attacks", [{"attack": attack, "ratio": 1.0}], out, merge_on="attack", repeats=1)
    runs = json.loads(json_path.read_text())["runs"]
    assert [(r["repeats"], r["rows"]) for r in runs] == [(5, ["fgsm"]), (1, ["bim", "apgd", "square", "fab"])]


def test_cost_estimates_fall_back_from_timings_to_kind_means_to_counted_work():
    from bench.plan import Plan, Task
    from bench.runner.cost import DEFAULT_SECONDS_PER_PASS, TaskCosts
    from bench.runner.progress import duration

    # Stored task configs (spec payloads): a made-up dataset and attack, so only these numbers count.
    dataset = {"name": "made-up", "version": "1", "params": {}, "train_size": 100, "test_size": None, "subset_seed": 0}
    train = Task("train", "t", "", {"dataset": dataset, "defense": {"name": "undefended", "params": {"epochs": 2}},
                                    "seed": 0}, [])
    crafts = [Task("craft", f"c{i}", "", {"attack": {"name": "pgd", "params": {"steps": 5}}, "budget": b,
                                          "surface": "deployed", "eval": {"dataset": dataset, "eval_size": 10},
                                          "seed": 0}, ["t"]) for i, b in enumerate([0.1, 0.3])]
    plan = Plan(None, [train, *crafts])
    fresh = TaskCosts(plan)  # nothing timed: counted work at the default rate
    assert fresh.seconds(train) == pytest.approx(2 * 100 * 3 * DEFAULT_SECONDS_PER_PASS)
    assert fresh.seconds(crafts[0]) == pytest.approx(10 * 5 * 3 * DEFAULT_SECONDS_PER_PASS)
    assert TaskCosts(plan, kind_means={"train": 10.0}).seconds(train) == 10.0  # other suites' mean of the kind
    timed = TaskCosts(plan, {"c0": 3.0})  # a stored timing of the same signature (another budget)
    assert timed.seconds(crafts[1]) == 3.0
    assert timed.seconds(train) == pytest.approx(600 * 3.0 / 150)  # counted work at the timed rate
    assert [duration(s) for s in (None, 42.4, 185, 3720)] == ["?", "42s", "3m05s", "1h02m"]


def test_progress_lines_and_dry_run_give_time_estimates(write_suite, tmp_path, capsys):
    args = ["--store", str(tmp_path / "store"), "--leaderboard", str(tmp_path / "board"), "--quiet"]
    suite = write_suite()
    assert main(["run", str(suite), *args]) == 0
    out = capsys.readouterr().out
    assert "left" in out.splitlines()[1] and "[21/21]" in out and "left" not in out.split("[21/21]")[1].splitlines()[0]
    edited = write_suite(suite.read_text().replace("budgets: [0.1, 0.3]", "budgets: [0.1, 0.2, 0.3]", 1), "more.yaml")
    assert main(["run", str(edited), "--dry-run", *args[:2]]) == 0
    assert "to run, about " in capsys.readouterr().out


def test_craft_tasks_show_their_batches_under_the_attack_budget_and_defense(write_suite, tmp_path, monkeypatch):
    """With progress on, a craft task's bar counts its batches (10 images in batches of 4: 3 of 3; ART's
    one library call: 1 of 1) under ``craft <attack label> <budget> on <defense label>``; with progress
    off (--quiet) there is no bar."""
    import dataclasses

    from tqdm.auto import tqdm

    from bench.config import load_suite
    from bench.data import DataContext
    from bench.plan import build_plan
    from bench.runner import RunContext, steps

    bars = {}

    class Recorded(tqdm):  # what each bar showed when it closed (the screen itself is throttled)
        def close(self):
            bars.setdefault(self.desc, (self.n, self.total))  # tqdm closes again on garbage collection
            super().close()

    monkeypatch.setattr(steps, "tqdm", Recorded)
    suite = load_suite(write_suite("""\
        name: craft-progress
        seeds: [0]
        device: cpu
        batch_size: 4
        checks: false
        datasets:
          - {name: digits, train_size: 300, test_size: 40, eval_size: 10}
        defenses:
          - {name: undefended, label: plain net, params: {epochs: 1, batch_size: 64}}
        attacks:
          - {name: pgd-linf, params: {steps: 2}, budgets: [0.3]}
          - {name: pgd-linf, label: pgd on art, params: {steps: 2, backend: art}, budgets: [0.3]}
        """))
    plan = build_plan(suite)
    ctx = RunContext(store_dir=tmp_path / "store", data=DataContext("data"), device="cpu", batch_size=4,
                     progress=True, suite=suite.name)
    assert LocalExecutor(echo=lambda line: None).run(plan, ctx, Store(tmp_path / "store")).ok
    assert bars == {"craft pgd-linf eps=0.3 on plain net": (3, 3), "craft pgd on art eps=0.3 on plain net": (1, 1)}
    with steps._craft_progress(plan.by_kind("craft")[0], dataclasses.replace(ctx, progress=False)) as bar:
        assert bar is None
