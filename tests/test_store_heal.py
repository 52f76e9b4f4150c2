"""The store heals itself: a missing or damaged artifact re-runs the task that made it (bench.runner.heal)."""

import shutil

import numpy as np
import pytest

from bench.cli import main
from bench.config import load_suite
from bench.plan import build_plan
from bench.report import leaderboard_tables
from bench.runner.heal import StoreHealer, check_store
from bench.store import ArtifactBroken, Store


def _run(suite, store):
    return main(["run", str(suite), "--store", str(store), "--leaderboard", str(store / "board"), "--quiet"])


def _numbers(store_dir):
    """Every stored result's numbers and per-example flags, by task key."""
    results = Store(store_dir).results()
    return {key: (n, acc, clean, correct.tobytes()) for key, n, acc, clean, correct in
            zip(results["key"], results["n"], results["robust_acc"], results["clean_acc"], results["correct"])}


def _tables(store_dir):
    """The leaderboard's tables without the details (whose wall times differ between runs)."""
    return {h: f.to_dict() for h, f in leaderboard_tables(Store(store_dir).results()) if "details" not in h}


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def stored(write_suite, tmp_path):
    """The tiny suite run once: (suite path, store dir, plan), and an untouched copy of the store."""
    suite = write_suite()
    store = tmp_path / "store"
    assert _run(suite, store) == 0
    shutil.copytree(store, tmp_path / "untouched")
    return suite, store, build_plan(load_suite(suite))


def _artifact(store, task):
    return store / "artifacts" / f"{task.key}.pt"


def test_a_run_re_makes_missing_truncated_and_flipped_artifacts(stored, tmp_path, capsys):
    suite, store, plan = stored
    train = next(t for t in plan.by_kind("train") if t.info["defense"] == "undefended")
    crafts = plan.by_kind("craft")
    _artifact(store, crafts[0]).unlink()                            # deleted
    checkpoint = _artifact(store, train)
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])   # truncated
    _flip_a_byte(_artifact(store, crafts[1]))                       # same size, other bytes
    reader = next(t for t in plan.by_kind("score") if crafts[1].key in t.deps)
    Store(store).forget(reader.key)  # a task of the next run reads it
    capsys.readouterr()

    assert _run(suite, store) == 0
    out = capsys.readouterr().out
    assert f"artifact of {crafts[0].label} missing: re-running it" in out
    assert f"artifact of {train.label} truncated or overwritten" in out
    assert f"artifact of {crafts[1].label} corrupt (its SHA-256 differs from the one recorded): re-running it" in out
    assert _numbers(store) == _numbers(tmp_path / "untouched")
    assert _tables(store) == _tables(tmp_path / "untouched")
    report = check_store(Store(store))
    assert report.clean, report.lines()


def test_a_flipped_byte_found_while_reading_re_runs_its_producer_in_the_same_run(stored, tmp_path, capsys,
                                                                                  monkeypatch):
    suite, store, plan = stored
    craft = plan.by_kind("craft")[0]
    _flip_a_byte(_artifact(store, craft))
    with pytest.raises(ArtifactBroken, match="SHA-256 differs"):
        Store(store).load_artifact(craft.key)
    reader = next(t for t in plan.by_kind("score") if craft.key in t.deps)
    Store(store).forget(reader.key)
    monkeypatch.setattr(StoreHealer, "check_done_artifacts", lambda self: None)  # found by the reader only
    capsys.readouterr()

    assert _run(suite, store) == 0
    out = capsys.readouterr().out
    assert f"artifact of {craft.label} corrupt" in out and reader.label in out
    assert _numbers(store) == _numbers(tmp_path / "untouched")


def test_store_check_reports_each_case_and_repair_lets_the_next_run_recompute(stored, tmp_path, capsys):
    suite, store, plan = stored
    crafts = plan.by_kind("craft")
    _artifact(store, crafts[0]).unlink()
    _flip_a_byte(_artifact(store, crafts[1]))
    (store / "artifacts" / "stray.pt").write_bytes(b"left over")
    capsys.readouterr()

    assert main(["store", "check", "--store", str(store)]) == 1
    out = capsys.readouterr().out
    assert f"broken artifact of {crafts[0].label} ({crafts[0].key}): missing" in out
    assert f"broken artifact of {crafts[1].label} ({crafts[1].key}): corrupt" in out
    assert "artifact without a done task: stray.pt" in out
    assert "2 broken artifacts, 1 orphan files, 0 failed tasks" in out

    assert main(["store", "check", "--store", str(store), "--repair"]) == 0
    assert not (store / "artifacts" / "stray.pt").exists()
    assert main(["store", "check", "--store", str(store)]) == 0
    assert _run(suite, store) == 0
    assert _numbers(store) == _numbers(tmp_path / "untouched")


def test_a_producer_re_run_with_other_output_recomputes_its_readers_only(stored, capsys):
    suite, store, plan = stored
    craft = plan.by_kind("craft")[0]
    readers = {t.key for t in plan.by_kind("score") if craft.key in t.deps}
    others = {t.key for t in plan.by_kind("score")} - readers
    db = Store(store)
    before = {k: db.task(k)["finished_at"] for k in others}
    # As if the craft's output had been different when its readers ran.
    db._db.execute("UPDATE artifacts SET sha256 = 'old' WHERE key = ?", (craft.key,))
    for key in readers:
        db._db.execute("UPDATE tasks SET inputs = ? WHERE key = ?", (f'{{"{craft.key}": "old"}}', key))
    _artifact(store, craft).unlink()
    capsys.readouterr()

    assert _run(suite, store) == 0
    out = capsys.readouterr().out
    assert all(f"{plan_task.label}: its input from {craft.label!r} changed: recomputing it" in out
               for plan_task in plan.tasks if plan_task.key in readers)
    assert {k: Store(store).task(k)["finished_at"] for k in others} == before  # the others untouched


def test_a_damaged_database_is_one_clear_line(tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    (store / "advbench.sqlite").write_bytes(b"this is not a database" * 100)
    assert main(["store", "check", "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "advbench.sqlite: not a readable advbench store" in err
    assert "move it aside" in err


def test_artifacts_record_their_hash_and_size(tmp_path):
    import hashlib

    import torch

    db = Store(tmp_path)
    path = db.save_artifact("k1", {"x": torch.arange(10)})
    sha, size = db.artifact_record("k1")
    assert size == path.stat().st_size and sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(db.load_artifact("k1")["x"].numpy(), np.arange(10))
    path.unlink()
    assert db.artifact_problem("k1") == "missing"
    with pytest.raises(ArtifactBroken, match="missing"):
        db.load_artifact("k1")


# ---- reports from damaged or read-only stores (issue 17)


def test_a_poisoned_row_is_left_out_by_key_and_the_rest_is_built(stored, capsys):
    suite, store, plan = stored
    score = next(t for t in plan.by_kind("score") if t.info.get("attack"))
    db = Store(store)
    db._db.execute("UPDATE results SET budget = 1e308 WHERE key = ?", (score.key,))
    other = next(t for t in plan.by_kind("score") if t.info.get("attack") and t.key != score.key)
    n = int(db._db.execute("SELECT n FROM results WHERE key = ?", (other.key,)).fetchone()[0])
    garbage = np.packbits(np.ones(n, dtype=bool)).tobytes()  # "every example survived"
    db._db.execute("UPDATE results SET correct = ? WHERE key = ?", (garbage, other.key))
    db.close()
    capsys.readouterr()

    assert main(["leaderboard", "--store", str(store), "--out", str(store / "board")]) == 0
    err = capsys.readouterr().err
    assert f"stored row {score.key} left out: budget 1e+308 is not a budget" in err
    assert f"stored row {other.key} left out: its per-example flags give 100.0%" in err
    readme = (store / "board" / "README.md").read_text()
    assert "Left out of this build:" in readme and score.key in readme
    assert "## digits" in readme  # the other rows are all there


def test_a_report_reads_the_store_without_writing_to_it(stored):
    suite, store, plan = stored
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}
    assert main(["leaderboard", "--store", str(store), "--out", str(store.parent / "board2")]) == 0
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()} == before


def test_an_unwritable_leaderboard_directory_is_one_line(stored, capsys):
    suite, store, plan = stored
    blocked = store.parent / "not-a-dir"
    blocked.write_text("a file where the leaderboard directory should be")
    capsys.readouterr()
    assert main(["leaderboard", "--store", str(store), "--out", str(blocked)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"advbench: error: {blocked}: cannot write the leaderboard there")


def test_ctrl_c_while_the_leaderboard_builds_exits_130_and_keeps_the_old_one(stored, capsys, monkeypatch):
    suite, store, plan = stored
    old = (store / "board" / "README.md").read_text()
    Store(store).forget(plan.by_kind("score")[-1].key)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("bench.report.build_leaderboard", interrupted)
    capsys.readouterr()
    assert _run(suite, store) == 130
    err = capsys.readouterr().err
    assert "interrupted while building the leaderboard" in err and "Traceback" not in err
    assert (store / "board" / "README.md").read_text() == old
