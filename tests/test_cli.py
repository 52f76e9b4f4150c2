"""The ``advbench`` command line itself (bench/cli.py): help for every command, ``--version``, ``compare``'s
inputs and exit codes, run options refused before anything happens, ``export``'s format, and ``list``."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

import bench
from bench.cli import _HelpFormatter, _parser, main
from bench.report.numbers import COLUMNS

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "suites" / "mnist-quick.yaml"
NATIVE = ("--numerics", "native")  # torch is loaded in this process: the suite's portable numerics cannot be pinned


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, read from the parser itself (a new command is covered without a test edit)."""
    [action] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """main's exit code (it returns one for --help and a malformed command line too), stdout, stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single line a user error prints (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("advbench: error: "), err
    return lines[0]


# -- help and version ------------------------------------------------------------------------------------


def test_there_are_subcommands_to_check():
    assert {"run", "validate", "list", "leaderboard", "store", "export", "compare", "bench"} <= set(_subcommands())


@pytest.mark.parametrize("argv", [["--help"], ["-h"], *([name, "--help"] for name in _subcommands())],
                         ids=lambda argv: " ".join(argv))
def test_help_of_the_program_and_every_subcommand(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    prog = " ".join(["advbench", *argv[:-1]])
    assert out.startswith(f"usage: {prog}") and err == ""
    if len(argv) == 1:  # the program's help names every command
        assert all(name in out for name in _subcommands())


@pytest.mark.parametrize("name", list(_subcommands()))
def test_every_subcommand_has_a_description_help_texts_and_shown_defaults(name):
    sub = _subcommands()[name]
    assert sub.description and len(sub.description) > 20, f"{name}: no description"
    formatter = _HelpFormatter(f"advbench {name}")
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        shown = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"advbench {name} {shown}: no help text"
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in formatter._get_help_string(action), f"advbench {name} {shown}: default not shown"


def test_defaults_are_shown_in_the_help(capsys):
    out = " ".join(run_cli(capsys, "leaderboard", "--help")[1].split())  # as one line: help text is wrapped
    assert "(default: results)" in out and "(default: leaderboard)" in out
    out = " ".join(run_cli(capsys, "bench", "--help")[1].split())
    assert "(default: 256)" in out and "(default: 3 10)" in out


def test_help_imports_nothing_heavy():
    """``--help`` answers at once: no torch, pandas or pydantic is imported to print it."""
    code = ("import sys\nfrom bench.cli import main\nfor argv in (['--help'], ['run', '--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'pandas', 'pydantic', 'numpy') if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "[]", done.stderr


def test_version(capsys):
    try:
        expected = importlib.metadata.version("advbench")
    except importlib.metadata.PackageNotFoundError:
        expected = bench.__version__
    code, out, err = run_cli(capsys, "--version")
    assert (code, out, err) == (0, f"advbench {expected}\n", "")
    # the package's own version is the project's
    assert bench.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_without_installed_metadata(capsys, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert run_cli(capsys, "--version")[:2] == (0, f"advbench {bench.__version__}\n")


# -- compare ---------------------------------------------------------------------------------------------


def _numbers(path: Path, values: dict[str, tuple[float, float, float]]) -> Path:
    rows = [{"key": key, "suite": "s", "dataset": "d", "defense": "undefended", "attack": "fgsm",
             "threat_model": "linf", "budget": 0.1, "seed": 0, "metric": "robust_acc", "n": 500,
             "value": v, "ci_low": lo, "ci_high": hi} for key, (v, lo, hi) in values.items()]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


@pytest.fixture
def numbers(tmp_path) -> tuple[Path, Path]:
    """(baseline, current): the same numbers, and one that moved far beyond its interval."""
    return (_numbers(tmp_path / "old.csv", {"a": (0.5, 0.45, 0.55)}),
            _numbers(tmp_path / "new.csv", {"a": (0.5, 0.45, 0.55)}))


def test_compare_equal_and_moved(capsys, numbers, tmp_path):
    old, new = numbers
    assert run_cli(capsys, "compare", old, new)[0] == 0
    moved = _numbers(tmp_path / "moved.csv", {"a": (0.2, 0.17, 0.24)})
    code, out, _ = run_cli(capsys, "compare", old, moved)
    assert code == 1 and "1 moved beyond them" in out


@pytest.mark.parametrize("which", ["baseline", "current"])
def test_compare_a_missing_file_is_an_error(capsys, numbers, tmp_path, which):
    old, new = numbers
    missing = tmp_path / "MISSING.csv"
    argv = (missing, new) if which == "baseline" else (old, missing)
    code, out, err = run_cli(capsys, "compare", *argv)
    line = one_error_line(err)
    assert code == 2 and str(missing) in line and "no such file" in line and which in line
    assert "nothing to compare" not in out


def test_compare_an_empty_baseline_is_nothing_to_compare(capsys, numbers, tmp_path):
    _, new = numbers
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")  # CI's first run: `git show` found no committed numbers
    code, out, err = run_cli(capsys, "compare", empty, new)
    assert code == 0 and "no baseline numbers" in out and "nothing to compare" in out and err == ""


def test_compare_an_empty_current_file_is_an_error(capsys, numbers, tmp_path):
    old, _ = numbers
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    code, _, err = run_cli(capsys, "compare", old, empty)
    assert code == 2 and str(empty) in one_error_line(err)


@pytest.mark.parametrize("which", ["baseline", "current"])
def test_compare_a_csv_that_is_not_a_numbers_file(capsys, numbers, tmp_path, which):
    old, new = numbers
    other = ROOT / "leaderboard" / "benchmarks" / "attacks.csv"  # a real CSV of another kind
    if not other.is_file():
        other = tmp_path / "attacks.csv"
        other.write_text("attack,harness backend,harness ex/s\nfgsm eps=0.1,torch,3502.6\n")
    argv = (other, new) if which == "baseline" else (old, other)
    code, _, err = run_cli(capsys, "compare", *argv)
    line = one_error_line(err)
    assert code == 2 and str(other) in line and "not a numbers file" in line and which in line
    assert "key" in line and "ci_high" in line  # the missing columns, named
    assert "KeyError" not in err


def test_compare_other_unreadable_inputs(capsys, numbers, tmp_path):
    old, new = numbers
    code, _, err = run_cli(capsys, "compare", tmp_path, new)  # a directory
    assert code == 2 and str(tmp_path) in one_error_line(err)
    some = _numbers(tmp_path / "some.csv", {"a": (0.5, 0.45, 0.55)})
    some.write_text(some.read_text().replace("0.45", "low"))  # a value that is not a number
    code, _, err = run_cli(capsys, "compare", old, some)
    line = one_error_line(err)
    assert code == 2 and "ci_low" in line and "'low'" in line
    binary = tmp_path / "numbers.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage\x00\n\x80\x81")
    code, _, err = run_cli(capsys, "compare", binary, new)
    assert code == 2 and str(binary) in one_error_line(err)


# -- run's options: refused before anything --------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_an_unknown_executor_is_refused_with_the_choices(capsys, tmp_path, dry_run):
    store = tmp_path / "store"
    argv = ["run", SUITE, *NATIVE, "--executor", "ry", "--store", store, "--leaderboard", tmp_path / "lb"]
    code, out, err = run_cli(capsys, *argv, *(["--dry-run"] if dry_run else []))
    line = one_error_line(err)
    assert code == 2 and "did you mean 'ray'" in line and "local, pool, ray" in line
    assert out == "" and not store.exists()  # nothing planned, nothing written


def test_an_unknown_executor_far_from_any_name_lists_them(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", SUITE, *NATIVE, "--dry-run", "--executor", "zzz", "--store", tmp_path / "s")
    line = one_error_line(err)
    assert code == 2 and "'zzz'" in line and "local, pool, ray" in line


@pytest.mark.parametrize("option,value,says", [("--workers", "0", "--workers must be at least 1, got 0"),
                                               ("--workers", "-2", "--workers must be at least 1, got -2"),
                                               ("--gpus-per-worker", "0", "above 0 and at most 1"),
                                               ("--gpus-per-worker", "-0.5", "got -0.5"),
                                               ("--gpus-per-worker", "1.5", "or a whole number of GPUs, got 1.5"),
                                               ("--gpus-per-worker", "nan", "got nan")])
@pytest.mark.parametrize("executor", ["pool", "ray"])
def test_bad_worker_counts_are_refused_before_anything(capsys, tmp_path, option, value, says, executor):
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "run", tmp_path / "no-such-suite.yaml", *NATIVE, "--dry-run", "--store", store,
                             "--executor", executor, option, value)
    assert code == 2 and says in one_error_line(err)  # before the suite is even read
    assert out == "" and not store.exists()


def test_a_malformed_number_is_argparses_error(capsys):
    code, _, err = run_cli(capsys, "run", SUITE, "--workers", "two")
    assert code == 2 and "argument --workers: invalid int value: 'two'" in err


def test_an_option_the_executor_does_not_take_is_refused_in_a_dry_run(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", SUITE, *NATIVE, "--dry-run", "--executor", "ray", "--devices", "cpu",
                           "--store", tmp_path / "s")
    line = one_error_line(err)
    assert code == 2 and "--executor ray does not take --devices" in line and "--gpus-per-worker" in line
    code, _, err = run_cli(capsys, "run", SUITE, *NATIVE, "--dry-run", "--no-fuse", "--store", tmp_path / "s")
    assert code == 2 and "--executor local does not take --no-fuse" in one_error_line(err)


def test_a_plugin_executor_is_accepted_by_name(monkeypatch):
    """The check reads the registry (where plugins register), not a fixed list of names."""
    from bench.errors import UserError
    from bench.registry import Entry, executors
    from bench.runner.executor import check_executor

    class Remote:
        """A plugin's executor."""

        def __init__(self, *, workers: int | None = None):
            self.workers = workers

    executors.names()  # the built-in entries are loaded first
    monkeypatch.setitem(executors._entries, "remote", Entry("executor", "remote", Remote))
    assert check_executor("remote", {"workers": 4}).factory is Remote
    with pytest.raises(UserError, match=r"--executor: unknown executor 'remot'; did you mean 'remote'\?"):
        check_executor("remot", {})
    with pytest.raises(UserError, match=r"--executor remote does not take --devices \(it takes --workers\)"):
        check_executor("remote", {"devices": "cpu"})


# -- export's format -------------------------------------------------------------------------------------


@pytest.fixture
def stored(monkeypatch) -> pd.DataFrame:
    """The store's results, as bench.api.results would read them (the CLI's choice of format is under test)."""
    import bench.api

    frame = pd.DataFrame({"key": ["k1", "k2"], "defense": ["undefended", "adv-training"],
                          "robust_acc": [0.25, 1 / 3], "budget": [None, 0.3]})

    def results(store, *, table="results", suite=None, **_):
        return frame if table == "results" else frame.iloc[:0]

    monkeypatch.setattr(bench.api, "results", results)
    return frame


@pytest.mark.parametrize("suffix", ["json", "csv", "JSON"])
def test_export_takes_the_format_from_the_out_extension(capsys, tmp_path, stored, suffix):
    from bench.api import read_export

    out = tmp_path / f"x.{suffix}"
    code, printed, err = run_cli(capsys, "export", "--store", tmp_path / "s", "--out", out)
    assert code == 0 and printed.strip() == f"export: {out}", err
    if suffix.lower() == "json":
        records = json.loads(out.read_text())  # JSON, not CSV
        assert [r["key"] for r in records] == ["k1", "k2"] and records[0]["budget"] is None
    else:
        assert out.read_text().startswith("key,defense,robust_acc,budget\n")
    pd.testing.assert_frame_equal(read_export(out, suffix.lower()), stored, check_dtype=False)


def test_export_format_given_explicitly_wins(capsys, tmp_path, stored):
    out = tmp_path / "x.json"
    assert run_cli(capsys, "export", "--store", tmp_path / "s", "--out", out, "--format", "csv")[0] == 0
    assert out.read_text().startswith("key,defense")  # CSV, as asked, whatever the name
    out = tmp_path / "x.txt"
    assert run_cli(capsys, "export", "--store", tmp_path / "s", "--out", out, "--format", "json")[0] == 0
    assert len(json.loads(out.read_text())) == len(stored)


@pytest.mark.parametrize("name", ["x.txt", "results"])
def test_export_an_unknown_extension_without_format_is_an_error(capsys, tmp_path, stored, name):
    out = tmp_path / name
    code, _, err = run_cli(capsys, "export", "--store", tmp_path / "s", "--out", out)
    line = one_error_line(err)
    assert code == 2 and str(out) in line and ".csv, .json or .parquet" in line and "--format" in line
    assert not out.exists()


def test_export_default_is_csv_in_the_store(capsys, tmp_path, stored):
    assert run_cli(capsys, "export", "--store", tmp_path / "s")[0] == 0
    assert (tmp_path / "s" / "export" / "results.csv").read_text().startswith("key,defense")


# -- list ------------------------------------------------------------------------------------------------


def test_list_defenses_shows_the_shared_parameters_once(capsys):
    code, out, _ = run_cli(capsys, "list", "defenses")
    assert code == 0
    assert out.count("every defense also takes") == 1
    table, shared = (" ".join(part.split()) for part in out.split("every defense also takes"))  # unwrapped
    for parameter in ("lr_schedule: Literal['constant', 'cosine'] = 'constant'", "crop_flip: bool = False",
                      "weight_decay: float = 0.0", "epochs: int = 5", "arch: str = 'auto'"):
        assert parameter in shared and parameter not in table  # under the table, on no row
    assert table.count("lr_schedule") == table.count("crop_flip") == 0
    assert "std: float = 0.3" in table  # each row keeps its own
    # an entry with its own default for a shared parameter shows it on its row
    assert "epochs: int = 10" in " ".join(table.split())


def test_list_executors_describes_the_real_options(capsys):
    code, out, _ = run_cli(capsys, "list", "executors")
    assert code == 0 and all(name in out for name in ("local", "pool", "ray"))
    assert "--address" not in out and "fused_kinds" not in out
    flags = set(_subcommands()["run"]._option_string_actions)
    mentioned = {word.strip(";,.()[]'") for word in out.split() if word.startswith("--") and word.strip("-")}
    assert mentioned <= flags, mentioned - flags  # only flags that exist
    assert {"--executor", "--workers", "--devices", "--gpus-per-worker", "--no-fuse"} <= mentioned
