"""The Python API (bench/api.py): ``bench.evaluate`` on an in-memory model, ``bench.results`` as DataFrames,
and ``export`` / ``advbench export`` writing files that read back equal."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import bench
from bench.api import export, read_export, write_frame
from bench.cli import main
from bench.errors import UserError
from bench.store import DETECTION_COLUMNS, PER_EXAMPLE_ARRAYS, RESULT_COLUMNS
from bench.training import TrainConfig, train_classifier

ATTACKS = [{"name": "fgsm", "budgets": [0.1, 0.3]}]


def _own(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the suite's own cells (not the soundness checks' ``check:*`` rows, where they run)."""
    return frame[~frame["source"].fillna("").str.startswith("check:")]


@pytest.fixture(scope="module")
def model(digits) -> nn.Module:
    """A small MLP trained on the digits, as a notebook user would have one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    train_classifier(net, digits.train_x, digits.train_y, TrainConfig(epochs=3, batch_size=64, lr=3e-3), seed=0,
                     device=torch.device("cpu"), progress=False)
    return net.eval()


@pytest.fixture(scope="module")
def evaluated(model, tmp_path_factory):
    """(store directory, the frame evaluate returned)."""
    store = tmp_path_factory.mktemp("api") / "results"
    frame = bench.evaluate(model, dataset="digits", attacks=ATTACKS, eval_size=60, store=store, label="mlp",
                           device="cpu", verbose=False)
    return store, frame


def test_evaluate_returns_one_row_per_result(evaluated):
    _, frame = evaluated
    assert isinstance(frame, pd.DataFrame)
    # the store's columns, less the per-example arrays (flags, indices, perturbation sizes)
    per_example = {"correct", *PER_EXAMPLE_ARRAYS}
    assert set(RESULT_COLUMNS) - per_example <= set(frame.columns) and not per_example & set(frame.columns)
    own = _own(frame)
    assert sorted(zip(own["attack"], own["budget"].fillna(-1))) == [("fgsm", 0.1), ("fgsm", 0.3), ("none", -1)]
    assert set(own["defense"]) == {"mlp"} and own["key"].is_unique
    clean = own[own.attack == "none"].iloc[0]
    assert clean["n"] == 360 and clean["clean_acc"] > 0.5  # the whole test split; a trained model
    assert (own[own.attack == "fgsm"]["n"] == 60).all()
    assert ((own.robust_ci_low <= own.robust_acc) & (own.robust_acc <= own.robust_ci_high)).all()
    # the model is named by its class and a hash of its architecture and tensors
    assert json.loads(clean["defense_config"])["params"]["module"].startswith("Sequential@")


def test_a_second_call_reads_the_store_and_a_changed_model_runs(evaluated, model):
    store, first = evaluated
    again = bench.evaluate(model, dataset="digits", attacks=ATTACKS, eval_size=60, store=store, label="mlp",
                           device="cpu", verbose=False)
    pd.testing.assert_frame_equal(again, first)  # same keys, same created_at: nothing re-ran
    changed = type(model)(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m for m in model])
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed[3].bias += 0.5
    other = bench.evaluate(changed, dataset="digits", attacks=ATTACKS, eval_size=60, store=store, label="mlp",
                           device="cpu", verbose=False)
    assert set(_own(other)["key"]).isdisjoint(first["key"])


def test_results_reads_the_store(evaluated):
    store, frame = evaluated
    # every stored row (another evaluate under the same label made its own plan the suite's latest)
    stored = bench.results(store, keys=frame["key"], current_only=False)
    pd.testing.assert_frame_equal(stored.drop(columns="plan_suites"), frame.drop(columns="plan_suites"))
    latest = bench.results(store, suite="evaluate-mlp")
    assert len(latest) == len(frame) and set(latest["suite"]) == {"evaluate-mlp"}
    detection = bench.results(store, table="detection")
    assert detection.empty and list(detection.columns) == DETECTION_COLUMNS
    with pytest.raises(UserError, match="unknown table 'detections'; did you mean 'detection'"):
        bench.results(store, table="detections")
    with pytest.raises(UserError, match="no results store there"):
        bench.results(store.parent / "nowhere")


def test_compare_runs_other_defenses_beside_it(model, tmp_path):
    frame = bench.evaluate(model, dataset="digits", attacks=[{"name": "fgsm", "budgets": [0.2]}], eval_size=30,
                           store=tmp_path / "r", label="mine", device="cpu", verbose=False,
                           compare=[{"name": "undefended", "params": {"arch": "monteiro-mlp", "epochs": 1}}])
    own = _own(frame)
    assert sorted(own["defense"]) == ["mine", "mine", "undefended", "undefended"]


def test_bad_arguments_are_one_line(model, tmp_path):
    with pytest.raises(UserError, match="evaluate: model: expected a torch.nn.Module, got str"):
        bench.evaluate("resnet18", store=tmp_path / "r")
    with pytest.raises(UserError, match=r"^evaluate\(\): attacks\[0\]\.name: unknown attack 'pgd-lnf'; did you mean "
                                        r"'pgd-linf'"):
        bench.evaluate(model, dataset="digits", attacks=[{"name": "pgd-lnf", "budgets": [0.1]}], store=tmp_path / "r")
    with pytest.raises(UserError, match=r"defenses\[0\]\.params: dataset 'mnist5k': input shape: the network of "
                                        r"module Sequential@\w+ cannot take images of shape \(1, 28, 28\)"):
        bench.evaluate(model, dataset="mnist5k", store=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # found before anything was written


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_round_trips(evaluated, tmp_path, fmt):
    store, _ = evaluated
    frame = bench.results(store)
    [path] = export(store, fmt=fmt, out=tmp_path / f"all.{fmt}")
    pd.testing.assert_frame_equal(read_export(path), frame, check_dtype=False)
    if fmt == "csv":  # plain pandas reads it back too
        pd.testing.assert_frame_equal(pd.read_csv(path), frame, check_dtype=False)
    else:
        assert json.loads(path.read_text())[0].keys() == set(frame.columns)


def test_export_writes_detection_rows_beside(tmp_path):
    frame = pd.DataFrame({"key": ["a", "b"], "accuracy": [0.1 + 0.2, 1 / 3], "budget": [None, 0.3]})
    for fmt in ("csv", "json"):
        path = write_frame(frame, tmp_path / f"d.{fmt}", fmt)
        pd.testing.assert_frame_equal(read_export(path), frame, check_dtype=False)  # floats exactly


def test_advbench_export(evaluated, tmp_path, capsys):
    store, _ = evaluated
    out = tmp_path / "out.json"
    assert main(["export", "--store", str(store), "--format", "json", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"export: {out}"
    assert len(json.loads(out.read_text())) == len(bench.results(store))
    assert main(["export", "--store", str(store)]) == 0  # default: <store>/export/results.csv
    assert (Path(store) / "export" / "results.csv").is_file()
    capsys.readouterr()
    if importlib.util.find_spec("pyarrow") is None:
        assert main(["export", "--store", str(store), "--format", "parquet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "needs pyarrow, which is not installed" in err
    else:
        assert main(["export", "--store", str(store), "--format", "parquet", "--out", str(tmp_path / "r.parquet")]) == 0
        pd.testing.assert_frame_equal(read_export(tmp_path / "r.parquet"), bench.results(store), check_dtype=False)


def test_import_bench_stays_light():
    code = "import sys, bench; print('torch' in sys.modules, 'pandas' in sys.modules, callable(bench.evaluate))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]
