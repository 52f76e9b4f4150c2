"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from bench.metrics import cell_metrics, wilson_interval


def test_wilson_interval_matches_hand_computation():
    # 8 of 10, z = 1.959964: centre = (0.8 + z^2/20) / (1 + z^2/10), half-width likewise by hand.
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(centre - half, abs=1e-9)
    assert high == pytest.approx(centre + half, abs=1e-9)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # textbook values for 8/10


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.0 < high < 0.08
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and 0.92 < low < 1.0


def test_cell_metrics_by_hand():
    # 4 examples of 2 pixels. Clean: 0,1,2 correct, 3 wrong. After attack: 0 still right, 1 and 2 fooled,
    # 3 still wrong. Perturbations: ex1 (3, 4) -> L2 5, Linf 4, MSE 12.5; ex2 (0, 1) -> L2 1, Linf 1, MSE 0.5.
    x = np.zeros((4, 1, 1, 2), dtype=np.float32)
    x_adv = x.copy()
    x_adv[0, 0, 0] = [0.1, 0.0]
    x_adv[1, 0, 0] = [3.0, 4.0]
    x_adv[2, 0, 0] = [0.0, 1.0]
    x_adv[3, 0, 0] = [2.0, 2.0]   # not counted: the defense was already wrong
    y = np.array([0, 1, 2, 3])
    pred_clean = np.array([0, 1, 2, 0])
    pred_adv = np.array([0, 2, 0, 0])
    m = cell_metrics(x, x_adv, y, pred_clean, pred_adv)
    assert m.n == 4
    assert m.clean_acc == 0.75
    assert m.robust_acc == 0.25
    assert m.attack_success_rate == pytest.approx(2 / 3)
    assert (m.l2_mean, m.l2_median) == pytest.approx((3.0, 3.0))
    assert (m.linf_mean, m.linf_median) == pytest.approx((2.5, 2.5))
    assert (m.mse_mean, m.mse_median) == pytest.approx((6.5, 6.5))
    assert (m.robust_ci_low, m.robust_ci_high) == pytest.approx(wilson_interval(1, 4))


def test_targeted_success_counts_only_hits_on_the_target():
    x = np.zeros((3, 1, 1, 1), dtype=np.float32)
    y = np.array([0, 0, 0])
    pred_clean = np.array([0, 0, 0])
    pred_adv = np.array([1, 2, 0])
    m = cell_metrics(x, x + 0.5, y, pred_clean, pred_adv, targets=np.array([1, 1, 1]))
    assert m.attack_success_rate == pytest.approx(1 / 3)
    assert m.robust_acc == pytest.approx(1 / 3)


def test_no_successful_example_gives_no_perturbation_summary():
    x = np.zeros((2, 1, 1, 1), dtype=np.float32)
    m = cell_metrics(x, x, np.array([0, 1]), np.array([0, 1]), np.array([0, 1]))
    assert m.attack_success_rate == 0.0 and m.l2_median is None and m.robust_acc == 1.0


# The results table's columns as every existing store was created with them (and in this order).
STORE_RESULT_COLUMNS = [
    "key", "suite", "dataset", "defense", "defense_name", "defense_config", "attack", "attack_config",
    "threat_model", "surface", "source", "budget_param", "budget", "seed", "n", "clean_acc", "robust_acc",
    "robust_ci_low", "robust_ci_high", "attack_success_rate", "l2_mean", "l2_median", "linf_mean",
    "linf_median", "mse_mean", "mse_median", "wall_time_s", "versions", "git_commit", "created_at", "correct",
    "evaluated_on", "diversity_kappa", "repeats", "robust_acc_strict", "robust_acc_spread",
    "acc_rate", "acc_rate_ci_low", "acc_rate_ci_high", "reject_rate", "reject_rate_ci_low", "reject_rate_ci_high",
    "error_rate", "error_rate_ci_low", "error_rate_ci_high", "batch_size", "examples",
    "example_indices", "perturbation_l2", "perturbation_linf", "wrong_class",
]


def test_store_columns_derived_from_the_specs_keep_their_order(tmp_path):
    from bench.metrics import RESULT_METRICS
    from bench.store import RESULT_COLUMNS, Store

    assert RESULT_COLUMNS == STORE_RESULT_COLUMNS
    assert {m.name for m in RESULT_METRICS} <= set(RESULT_COLUMNS)
    store = Store(tmp_path)
    try:
        created = [row[1] for row in store._db.execute("PRAGMA table_info(results)")]
    finally:
        store.close()
    assert created == STORE_RESULT_COLUMNS


def test_cell_metrics_fields_are_the_specs_it_computes():
    from dataclasses import fields

    from bench.metrics import RESULT_METRICS, CellMetrics

    names = [f.name for f in fields(CellMetrics)]
    assert names == [m.name for m in RESULT_METRICS if m.in_cell_metrics]
    x = np.zeros((2, 1, 1, 1), dtype=np.float32)
    keys = list(cell_metrics(x, x, np.array([0, 1]), np.array([0, 1]), np.array([0, 1])).as_dict())
    assert keys == ["n", "clean_acc", "robust_acc", "robust_ci_low", "robust_ci_high", "attack_success_rate",
                    "l2_mean", "l2_median", "linf_mean", "linf_median", "mse_mean", "mse_median",
                    "acc_rate", "acc_rate_ci_low", "acc_rate_ci_high", "reject_rate", "reject_rate_ci_low",
                    "reject_rate_ci_high", "error_rate", "error_rate_ci_low", "error_rate_ci_high"]
