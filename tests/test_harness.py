"""End to end on the tiny digits suite: results stored, reruns do nothing, crashes resume, failures recorded."""

import json
import sqlite3

import pytest
import torch

from bench.cli import main
from bench.errors import TaskFailed
from bench.registry import task_steps
from bench.store import Store
from bench.training import TrainConfig, train_classifier


@pytest.fixture
def count_steps(monkeypatch):
    """Count how often each step runs; optionally raise on the n-th step call."""
    calls = {"train": 0, "craft": 0, "score": 0, "total": 0}
    interrupt_at = {"n": None}

    def wrap(kind, step):
        def counted(*args, **kwargs):
            calls["total"] += 1
            if interrupt_at["n"] is not None and calls["total"] == interrupt_at["n"]:
                raise KeyboardInterrupt
            calls[kind] += 1
            return step(*args, **kwargs)
        return counted

    for kind in task_steps.names():
        entry = task_steps.get(kind)
        monkeypatch.setattr(entry, "factory", wrap(kind, entry.factory))
    return calls, interrupt_at


def run(suite, tmp_path, *extra):
    return main(["run", str(suite), "--store", str(tmp_path / "store"), "--leaderboard", str(tmp_path / "board"),
                 "--quiet", *map(str, extra)])


def results_rows(tmp_path):
    with sqlite3.connect(tmp_path / "store" / "advbench.sqlite") as db:
        return db.execute("SELECT key, defense, attack, budget, robust_acc, clean_acc, n, suite, versions, "
                          "git_commit, source FROM results").fetchall()


def test_run_stores_every_cell_then_rerun_does_nothing(write_suite, tmp_path, count_steps, capsys):
    calls, _ = count_steps
    suite = write_suite()
    assert run(suite, tmp_path) == 0
    assert (calls["train"], calls["craft"], calls["score"]) == (2, 8, 11)
    rows = results_rows(tmp_path)
    assert len(rows) == 11
    by_cell = {(r[1], r[2], r[3], r[10]): r for r in rows}
    clean = by_cell[("undefended", "none", None, "")]
    assert clean[5] > 0.8, "the undefended CNN learns the digits"
    # robust accuracy falls as the FGSM budget grows, and PGD is at least as strong as FGSM
    for defense in ("undefended", "gauss"):
        fgsm_small, fgsm_big = by_cell[(defense, "fgsm", 0.1, "white-box")][4], by_cell[(defense, "fgsm", 0.3, "white-box")][4]
        assert fgsm_big < fgsm_small < clean[5] + 0.05
        assert by_cell[(defense, "pgd-linf", 0.3, "white-box")][4] <= fgsm_big + 0.05
    assert by_cell[("gauss", "fgsm-transfer", 0.3, "transfer:undefended")][6] == 60
    assert all(r[7] == "tiny" and "torch" in json.loads(r[8]) and r[9] for r in rows)
    # What besides package versions can change a number (issue 16): torch's build, the CPU, threads, determinism.
    import torch

    environment = json.loads(rows[0][8])
    assert environment["env:threads"] == str(torch.get_num_threads())
    assert environment["env:deterministic"] in ("true", "false")
    assert environment["env:torch-build"].startswith(torch.__version__) and environment["env:cpu"]
    board = tmp_path / "board"
    readme = (board / "README.md").read_text()
    assert "digits" in readme and "undefended" in readme and (board / "index.html").exists()
    assert list((board / "plots").glob("*.png"))

    calls.update({k: 0 for k in calls})
    capsys.readouterr()
    assert run(suite, tmp_path) == 0
    assert calls["total"] == 0, "a finished suite does no work again"
    assert "0 run, 21 already stored" in capsys.readouterr().out
    assert len(results_rows(tmp_path)) == 11


def test_interrupted_run_resumes_without_losing_or_double_counting(write_suite, tmp_path, count_steps, capsys):
    calls, interrupt_at = count_steps
    suite = write_suite()
    interrupt_at["n"] = 7  # Ctrl-C during the 7th task
    assert run(suite, tmp_path) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert Store(tmp_path / "store").done_keys().__len__() == 6
    assert not list((tmp_path / "store" / "artifacts").glob(".*.tmp")), "no half-written artifacts"

    interrupt_at["n"] = None
    calls.update({k: 0 for k in calls})
    assert run(suite, tmp_path) == 0
    assert calls["total"] == 21 - 6, "only the tasks not yet stored run"
    rows = results_rows(tmp_path)
    assert len(rows) == len({r[0] for r in rows}) == 11


def test_dry_run_lists_tasks_and_writes_nothing(write_suite, tmp_path, capsys):
    suite = write_suite()
    assert main(["run", str(suite), "--dry-run", "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "21 tasks planned: 0 done, 21 to run" in out and "train" in out
    assert not (tmp_path / "store").exists()


def test_failing_attack_is_recorded_and_the_rest_go_on(write_suite, tmp_path, monkeypatch, capsys):
    from bench.registry import attacks

    pgd = attacks.get("pgd-linf").factory

    def broken(self, *args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(pgd, "run", broken)
    suite = write_suite()
    assert run(suite, tmp_path) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "solver exploded" in err
    store = Store(tmp_path / "store")
    failed = store.failed_tasks()
    assert len(failed) == 4 and all("pgd-linf" in f["label"] for f in failed)
    assert "RuntimeError: solver exploded" in failed[0]["error"]
    assert len(results_rows(tmp_path)) == 11 - 4  # the pgd cells are missing, nothing else

    monkeypatch.undo()
    assert run(suite, tmp_path) == 0, "failed tasks are retried on the next run"
    assert len(results_rows(tmp_path)) == 11


def test_nan_training_fails_its_task_and_skips_dependents(write_suite, tmp_path, monkeypatch, capsys):
    from defenses.gaussian_augment import GaussianAugment

    monkeypatch.setattr(GaussianAugment, "augment", lambda self, x, y, g: (x * float("nan"), y))
    assert run(write_suite(), tmp_path) == 1
    out, err = capsys.readouterr()
    assert "non-finite loss" in err
    # gauss's clean score, its 4 crafts and 4 scores, and the transfer score on it depend on the failed training
    assert "1 failed, 10 skipped" in out
    # one line for the failure's dependents, not one per skipped task
    assert "skipped 10 tasks that need 'train gauss on digits (seed 0)', which failed" in out
    assert "skipped, an upstream" not in out
    rows = results_rows(tmp_path)
    assert {r[1] for r in rows} == {"undefended"} and len(rows) == 5


def test_train_classifier_raises_on_non_finite_loss():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 2, (8,))
    with pytest.raises(TaskFailed, match="non-finite loss"):
        train_classifier(model, x, y, TrainConfig(epochs=1), seed=0, device=torch.device("cpu"),
                         loss_fn=lambda m, xb, yb: torch.tensor(float("nan")), progress=False)


ONE_MODEL_SUITE = """\
name: {name}
seeds: [0]
device: cpu
batch_size: 128
datasets:
  - name: digits
    eval_size: 60
defenses:
  - name: undefended
    params: {{epochs: {epochs}, batch_size: 64}}
attacks:
  - name: fgsm
    budgets: [0.1, 0.3]
"""


def test_two_suites_with_one_label_are_two_leaderboard_rows(write_suite, tmp_path, capsys):
    """Two models labelled `undefended` (1 and 3 epochs) in one store: each suite its own section with its
    own row, never one row mixing the two models."""
    first = write_suite(ONE_MODEL_SUITE.format(name="short", epochs=1), "short.yaml")
    second = write_suite(ONE_MODEL_SUITE.format(name="long", epochs=3), "long.yaml")
    assert run(first, tmp_path) == 0 and run(second, tmp_path) == 0
    readme = (tmp_path / "board" / "README.md").read_text()
    with sqlite3.connect(tmp_path / "store" / "advbench.sqlite") as db:
        stored = dict(db.execute("SELECT suite, robust_acc FROM results WHERE attack = 'fgsm' AND budget = 0.3"))
    assert set(stored) == {"short", "long"} and stored["short"] != stored["long"]
    for suite, acc in stored.items():
        section = readme.split(f"## {suite} — digits\n", 1)[1].split("\n## ", 1)[0]
        table = section.split("### L∞, white-box\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
        col = [c.strip() for c in table[0].split("|")].index("fgsm ε=0.3")
        rows = [line for line in table if line.startswith("| undefended")]
        assert len(rows) == 1 and [c.strip() for c in rows[0].split("|")][col] == f"{100 * acc:.1f}"
    # one suite alone, by name; an unknown name is one line with suggestions
    assert main(["leaderboard", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "short-only"),
                 "--suite", "short"]) == 0
    only = (tmp_path / "short-only" / "README.md").read_text()
    assert "## digits\n" in only and "## long" not in only and "of suite short;" in only
    assert main(["leaderboard", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "x"),
                 "--suite", "shrt"]) == 2
    assert "did you mean 'short'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_run_that_stores_nothing_leaves_the_leaderboard(write_suite, tmp_path, monkeypatch):
    from defenses.baseline import Undefended

    assert run(write_suite(ONE_MODEL_SUITE.format(name="good", epochs=1)), tmp_path) == 0
    readme = tmp_path / "board" / "README.md"
    before = readme.read_text()
    assert "undefended" in before
    monkeypatch.setattr(Undefended, "training_loss", lambda self, m, x, y: torch.tensor(float("nan"), requires_grad=True))
    fresh = tmp_path / "other"
    code = main(["run", str(write_suite(ONE_MODEL_SUITE.format(name="bad", epochs=1), "bad.yaml")), "--store",
                 str(fresh / "store"), "--leaderboard", str(tmp_path / "board"), "--quiet"])
    assert code == 1
    assert readme.read_text() == before


def test_the_suites_headline_reaches_the_leaderboard(write_suite, tmp_path):
    suite = write_suite(ONE_MODEL_SUITE.format(name="h", epochs=1).replace("seeds: [0]", "seeds: [0]\nheadline: {linf: 0.1}"))
    assert run(suite, tmp_path) == 0
    readme = (tmp_path / "board" / "README.md").read_text()
    header = [c.strip() for c in readme.split("### L∞, white-box\n\n", 1)[1].splitlines()[0].split("|")]
    assert header[1:4] == ["Defense", "Clean", "Headline: fgsm ε=0.1"]
