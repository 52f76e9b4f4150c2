"""Portable CPU numerics (bench/numerics.py) and the numbers CI compares (bench/report/numbers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.numerics import PORTABLE_ENV, cpu_has_avx2, pin_portable_numerics, requested_mode
from bench.report import build_leaderboard
from bench.report.numbers import NUMBERS_FILE, compare_numbers, read_numbers

from test_report import _frame

REPO = Path(__file__).resolve().parent.parent
needs_avx2 = pytest.mark.skipif(not cpu_has_avx2(), reason="portable numerics need an x86-64 CPU with AVX2")


def _python(code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter (the kernel choice is fixed per process); its last stdout line."""
    child_env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    child_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env, capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return out.strip().splitlines()[-1]


def test_suite_key_is_read_before_validation(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nnumerics: portable\ndatasets: []\n")
    assert requested_mode(suite) == "portable"
    suite.write_text("name: s\nnumerics: fast\n")  # not a mode: left to validation, which names the key
    assert requested_mode(suite) is None
    suite.write_text("name: [unclosed\n")
    assert requested_mode(suite) is None


def test_pinning_after_torch_is_imported_is_refused():
    assert "torch" in sys.modules  # conftest imports it: as in any session that has run a model
    if all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items()):
        pytest.skip("this test session already runs with portable numerics")
    with pytest.raises(RuntimeError, match="before torch is imported"):
        pin_portable_numerics()


@needs_avx2
def test_portable_mode_pins_atens_kernels_and_says_so_in_provenance():
    line = _python("from bench.numerics import pin_portable_numerics; pin_portable_numerics()\n"
                   "import json, torch\nfrom bench.provenance import environment\n"
                   "print(json.dumps([torch.backends.cpu.get_cpu_capability(), environment()['env:numerics']]))")
    isa, mode = json.loads(line)
    assert isa == "AVX2" and mode.startswith("portable")


@needs_avx2
def test_portable_weights_do_not_depend_on_the_thread_count():
    """The property portable numerics promise: a model trained with 1 and with 2 threads is bit-identical
    (in native mode MKL splits matrix products by thread count, and the weights differ)."""
    code = ("from bench.numerics import pin_portable_numerics; pin_portable_numerics()\n"
            "import hashlib, torch\ntorch.set_num_threads({threads})\n"
            "from bench.data import DataContext, load_dataset\nfrom bench.registry import defenses\n"
            "data = load_dataset('digits', {{}}, DataContext('data'))\n"
            "d = defenses.get('undefended').build(epochs=2, batch_size=32)\n"
            "d.setup(data.input_spec(), seed=0, device=torch.device('cpu')); d.fit(data, seed=0, progress=False)\n"
            "h = hashlib.sha256()\n"
            "[h.update(t.contiguous().numpy().tobytes()) for _, t in sorted(d.deployed().state_dict().items())]\n"
            "print(h.hexdigest())")
    one, two = (_python(code.format(threads=t), {"OMP_NUM_THREADS": str(t)}) for t in (1, 2))
    assert one == two


def _numbers(values: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"key": k, "suite": "s", "dataset": "d", "defense": "def", "attack": "fgsm",
                          "threat_model": "linf", "budget": 0.3, "seed": 0, "metric": "robust_acc", "n": 500,
                          "value": v, "ci_low": lo, "ci_high": hi} for k, (v, lo, hi) in values.items()])


def test_compare_sorts_changes_into_moved_and_within_the_intervals():
    baseline = _numbers({"a": (0.144, 0.116, 0.177), "b": (0.50, 0.456, 0.544), "c": (0.9, 0.87, 0.92),
                         "gone": (0.1, 0.08, 0.13)})
    current = _numbers({"a": (0.088, 0.066, 0.116),   # the case: each outside the other's interval
                        "b": (0.52, 0.476, 0.564),    # changed, but within both intervals
                        "c": (0.9, 0.87, 0.92),       # equal
                        "new": (0.3, 0.26, 0.34)})
    comparison = compare_numbers(baseline, current)
    assert not comparison.ok
    assert len(comparison.moved) == 1 and "14.4% [11.6%, 17.7%] n=500 → 8.8%" in comparison.moved[0]
    assert "(key a)" in comparison.moved[0]
    assert len(comparison.shifted) == 1 and "(key b)" in comparison.shifted[0]
    assert (comparison.same, comparison.new, comparison.gone) == (1, 1, 1)


def test_compare_command_exit_status(tmp_path, capsys):
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    _numbers({"a": (0.144, 0.116, 0.177)}).to_csv(old, index=False)
    _numbers({"a": (0.088, 0.066, 0.116)}).to_csv(new, index=False)
    assert main(["compare", str(old), str(new)]) == 1
    assert "moved beyond them" in capsys.readouterr().out
    assert main(["compare", str(old), str(old)]) == 0
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["compare", str(empty), str(new)]) == 0  # the first CI run has no baseline: an empty file
    assert "no baseline numbers" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "absent.csv"), str(new)]) == 2  # a path that does not exist: a typo
    assert main(["compare", str(old), str(tmp_path / "absent.csv")]) == 2


def test_every_build_writes_its_numbers(tmp_path):
    frame = _frame()
    paths = build_leaderboard(frame, tmp_path)
    assert tmp_path / NUMBERS_FILE in paths
    numbers = read_numbers(tmp_path / NUMBERS_FILE)
    rows = numbers[numbers["metric"] != "best_known"]
    assert sorted(rows["key"]) == sorted(frame["key"])
    # ... and each defense's best-known robust accuracy at the headline budget, keyed by what it is of
    best = numbers[numbers["metric"] == "best_known"]
    assert len(best) == frame["defense"].nunique() and best["key"].str.startswith("best-known:").all()
    row = frame.iloc[2]
    line = numbers.set_index("key").loc[row["key"]]
    assert line["value"] == pytest.approx(row["robust_acc"]) and line["n"] == row["n"]
    assert line["ci_low"] == pytest.approx(row["robust_ci_low"], abs=1e-6)
    assert compare_numbers(numbers, read_numbers(tmp_path / NUMBERS_FILE)).same == len(numbers)
