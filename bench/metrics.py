"""Metrics of one (dataset, defense, attack, budget) cell, and the one spec of every stored metric.

Accuracies carry n and a 95% Wilson score interval; perturbation sizes are
summarized over the examples the attack succeeded on, since a failed attack's
output says nothing about the perturbation it needs.

Every metric of a results row is declared once, as a :class:`MetricSpec` in
:data:`RESULT_METRICS`. What is read from there: the fields of
:class:`CellMetrics` (the specs computed by :func:`cell_metrics`), the metric
columns of the results table (``bench.store.RESULT_COLUMNS``), and the
leaderboard's defaults for older stores and its details columns (bench.report).
A new metric is its spec plus its computation: in :func:`cell_metrics`, or in
the task step that writes it (``in_cell_metrics=False``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, make_dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import norm

# How rows of several seeds combine into one leaderboard cell:
#   "counts"   a fraction of a count (``of``): pooled as total hits / total count, so each seed weighs
#              as many examples as it has (an average of per-seed fractions would weigh them equally);
#   "per-seed" not poolable (a median of per-seed medians is not the pooled median): listed per seed;
#   "sum"      summed over seeds (example counts, wall time);
#   "mean"     the mean over seeds;
#   "none"     not pooled from stored values: recomputed from the pooled counts (intervals).
Pooling = Literal["counts", "per-seed", "sum", "mean", "none"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a results row: its column, how it is shown and how it pools over seeds."""

    name: str  # column of the results table; key of CellMetrics.as_dict()
    label: str  # its heading in leaderboard tables
    fmt: str  # "pct" (a fraction, shown as a percentage with one decimal) or a format spec (".4g")
    higher_is_better: bool | None  # seen from the defense; None: neither (a count, a description)
    pooling: Pooling
    of: str = "n"  # for "counts": the count it is a fraction of ("clean_acc": the examples correct when clean)
    type: Any = float  # the field's type in CellMetrics (None where no example qualifies)
    in_cell_metrics: bool = True  # computed by cell_metrics; otherwise by the code that writes the row
    detail: bool = False  # a column of its own in the leaderboard's details table, pooled as above
    attack_only: bool = False  # meaningless for a clean (no attack) row, shown as missing there
    # Added to the results table after its first schema. SQLite appends an added column, so a
    # store made earlier has it last: the store lists these after its provenance columns.
    appended: bool = False


RESULT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("n", "n", "d", None, "sum", type=int),
    MetricSpec("clean_acc", "Clean (%)", "pct", True, "counts"),
    MetricSpec("robust_acc", "Accuracy (%)", "pct", True, "counts"),
    MetricSpec("robust_ci_low", "95% CI low (%)", "pct", True, "none"),
    MetricSpec("robust_ci_high", "95% CI high (%)", "pct", True, "none"),
    MetricSpec("attack_success_rate", "ASR (%)", "pct", False, "counts", of="clean_acc", type=float | None,
               detail=True, attack_only=True),
    MetricSpec("l2_mean", "L2 mean", ".4g", True, "per-seed", type=float | None),
    MetricSpec("l2_median", "L2 median", ".4g", True, "per-seed", type=float | None, detail=True),
    MetricSpec("linf_mean", "L∞ mean", ".4g", True, "per-seed", type=float | None),
    MetricSpec("linf_median", "L∞ median", ".4g", True, "per-seed", type=float | None, detail=True),
    MetricSpec("mse_mean", "MSE mean", ".2e", True, "per-seed", type=float | None),
    MetricSpec("mse_median", "MSE median", ".2e", True, "per-seed", type=float | None),
    # Stamped by bench.runner.tasks.run_task (the task's own time plus its craft task's).
    MetricSpec("wall_time_s", "Wall time (s)", ".1f", False, "sum", in_cell_metrics=False, detail=True),
    # The ensemble members' interrater agreement (bench.diversity), written by the score step.
    MetricSpec("diversity_kappa", "κ", ".3f", None, "mean", type=float | None, in_cell_metrics=False,
               appended=True),
    # Repeated prediction of a stochastic defense (the score step): every example is scored ``repeats``
    # times with fresh randomness; the accuracies above are then means over the repeats, these say how
    # far one prediction strays from that mean and how many examples survive every repeat.
    MetricSpec("repeats", "Repeats", ".0f", None, "mean", type=int | None, in_cell_metrics=False, detail=True,
               appended=True),
    MetricSpec("robust_acc_strict", "Every repeat (%)", "pct", True, "counts", type=float | None,
               in_cell_metrics=False, detail=True, appended=True),
    MetricSpec("robust_acc_spread", "SD over repeats (%)", "pct", None, "mean", type=float | None,
               in_cell_metrics=False, detail=True, appended=True),
    # The three outcomes of a decision (Abbasi et al. 2018, Table I): correct (Acc.), rejected (Rej.: a
    # reject option's extra class) and wrong (Err. = 1 - Acc. - Rej.), each with its 95% Wilson interval.
    # Rej. is None for a defense without a reject option. ``rejection_outcome`` computes them.
    *(spec for name, label, better in (("acc_rate", "Acc. (%)", True), ("reject_rate", "Rej. (%)", None),
                                       ("error_rate", "Err. (%)", False))
      for spec in (MetricSpec(name, label, "pct", better, "counts", type=float | None, appended=True),
                   MetricSpec(f"{name}_ci_low", f"{label} 95% CI low", "pct", better, "none", type=float | None,
                              appended=True),
                   MetricSpec(f"{name}_ci_high", f"{label} 95% CI high", "pct", better, "none", type=float | None,
                              appended=True))),
)
METRICS: dict[str, MetricSpec] = {m.name: m for m in RESULT_METRICS}
# The Acc. / Rej. / Err. metrics and their intervals (``rejection_outcome``'s keys): also columns of the detector
# track's rows, whose guarded classifier is a reject option too.
REJECTION_FIELDS: tuple[str, ...] = tuple(f"{m}{suffix}" for m in ("acc_rate", "reject_rate", "error_rate")
                                          for suffix in ("", "_ci_low", "_ci_high"))


def _check(specs: tuple[MetricSpec, ...]) -> None:
    names = [m.name for m in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"metric names repeat: {names}")
    for m in specs:
        if m.pooling == "counts" and m.of != "n" and m.of not in names:
            raise ValueError(f"metric {m.name!r} counts over unknown metric {m.of!r}")
        if m.detail and m.pooling == "none":
            raise ValueError(f"metric {m.name!r}: a details column needs a pooling")


_check(RESULT_METRICS)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The ends are exactly 0 and 1 at p = 0 and p = 1; float rounding would leave them a hair off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


class HitsOfN:
    """Mixin of a share of examples (a dataclass with ``hits`` and ``n``): its accuracy and 95% Wilson interval.
    ``hits`` may be fractional where it is a mean over repeats."""

    hits: float
    n: int

    @property
    def acc(self) -> float:
        return self.hits / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.hits, self.n)


# The ``attack`` of a result row scored on a dataset's out-distribution test set (its ``out_distribution:``).
OUT_DISTRIBUTION_ATTACK = "out-distribution"

# How a reject option counts, stated once for the whole leaderboard (robustness tables and the detector track).
REJECTION_CONVENTION = ("Reject option (Acc. / Rej. / Err., Abbasi et al. 2018): a rejected adversarial or "
                        "out-distribution example counts as defended in robust accuracy; a rejected clean "
                        "in-distribution example counts as an error in clean accuracy; Err. = 1 − Acc. − Rej. "
                        "is the share of wrong decisions.")


def defended_mask(pred: np.ndarray, y: np.ndarray, reject_class: int | None = None, *,
                  attacked: bool = True) -> np.ndarray:
    """Per example, whether the defense held: predicted its class, or (``attacked`` and a reject option
    ``reject_class``) rejected it. A clean in-distribution example is held only if classified correctly
    (``REJECTION_CONVENTION``). Works on numpy arrays and torch tensors alike."""
    correct = pred == y
    if reject_class is None or not attacked:
        return correct
    return correct | (pred == reject_class)


def rejection_outcome(pred: np.ndarray, y: np.ndarray, reject_class: int | None = None) -> dict[str, float | None]:
    """Acc. (predicted y), Rej. (predicted ``reject_class``; None without a reject option) and Err. (neither),
    as fractions of the n examples, each with its 95% Wilson interval: the ``*_rate`` and ``*_rate_ci_*``
    metrics. Labels y = -1 (an out-distribution image: no class is right) make rejection the only right answer."""
    pred, y = np.asarray(pred), np.asarray(y)
    n = int(len(y))
    counts = {"acc_rate": int((pred == y).sum()),
              "reject_rate": None if reject_class is None else int((pred == reject_class).sum())}
    counts["error_rate"] = n - counts["acc_rate"] - (counts["reject_rate"] or 0)
    out: dict[str, float | None] = {}
    for name, count in counts.items():
        if count is None:
            out[name] = out[f"{name}_ci_low"] = out[f"{name}_ci_high"] = None
            continue
        out[name] = count / n if n else 0.0
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = wilson_interval(count, n)
    return out


def _as_dict(self) -> dict:
    return asdict(self)


# One field per spec computed here, in the specs' order (attack_success_rate: over the examples the
# defense got right when clean; distortions: over the examples the attack succeeded on).
CellMetrics = make_dataclass(
    "CellMetrics", [(m.name, m.type) for m in RESULT_METRICS if m.in_cell_metrics],
    namespace={"as_dict": _as_dict, "__doc__": "The metrics cell_metrics computes; fields from RESULT_METRICS."},
)
CellMetrics.__module__ = __name__


def _summary(values: np.ndarray) -> tuple[float | None, float | None]:
    if values.size == 0:
        return (None, None)
    return (float(values.mean()), float(np.median(values)))


def cell_metrics(x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, pred_clean: np.ndarray,
                 pred_adv: np.ndarray, targets: np.ndarray | None = None, *, reject_class: int | None = None,
                 attacked: bool = True) -> CellMetrics:
    """Metrics from clean inputs, adversarial inputs, labels and both predictions.

    An attack succeeds on an example the defense classified correctly when clean
    and (untargeted) misclassifies after the attack, or (targeted) assigns the target.
    A defense with a reject option passes its reject label (``reject_class``, = K): on ``attacked``
    examples a rejection counts as defended (robust accuracy, attack success), on clean ones
    (``attacked`` False: ``x_adv`` is ``x``) as an error (``REJECTION_CONVENTION``); Acc./Rej./Err.
    (``rejection_outcome``) keep the three apart.
    """
    n = int(len(y))
    clean_correct = pred_clean == y
    adv_correct = defended_mask(pred_adv, y, reject_class, attacked=attacked)
    fooled = (pred_adv == targets) if targets is not None else ~adv_correct
    success = clean_correct & fooled
    delta = _deltas(x, x_adv)
    l2, linf = (sizes[success] for sizes in _sizes(delta))
    mse = (delta ** 2).mean(1)[success]
    robust = int(adv_correct.sum())
    low, high = wilson_interval(robust, n)
    attacked = int(clean_correct.sum())
    return CellMetrics(
        n=n,
        clean_acc=float(clean_correct.mean()) if n else 0.0,
        robust_acc=robust / n if n else 0.0,
        robust_ci_low=low,
        robust_ci_high=high,
        attack_success_rate=float(success.sum() / attacked) if attacked else None,
        l2_mean=_summary(l2)[0], l2_median=_summary(l2)[1],
        linf_mean=_summary(linf)[0], linf_median=_summary(linf)[1],
        mse_mean=_summary(mse)[0], mse_median=_summary(mse)[1],
        **rejection_outcome(pred_adv, y, reject_class),
    )


def repeated_cell_metrics(x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, pred_clean: np.ndarray,
                          pred_adv: np.ndarray, targets: np.ndarray | None = None, *, reject_class: int | None = None,
                          attacked: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of a stochastic defense scored ``repeats`` times: predictions shaped (repeats, N).

    Every metric of :func:`cell_metrics` is its mean over the repeats (the expected value of one
    prediction), with the robust accuracy's 95% interval on the mean's count of N; added are ``repeats``,
    ``robust_acc_strict`` (correct in every repeat) and ``robust_acc_spread`` (the SD of the per-repeat
    robust accuracies). Returns those values and the per-example flags "correct in every repeat", which
    per-example worst cases use: an example counts as robust only if it survived every draw.
    """
    pred_clean, pred_adv = np.atleast_2d(pred_clean), np.atleast_2d(pred_adv)
    repeats, n = pred_adv.shape
    each = [cell_metrics(x, x_adv, y, c, a, targets, reject_class=reject_class, attacked=attacked).as_dict()
            for c, a in zip(pred_clean, pred_adv)]
    values: dict[str, Any] = {}
    for name in each[0]:
        known = [v[name] for v in each if v[name] is not None]
        values[name] = float(np.mean(known)) if known else None
    values["n"] = n
    correct = defended_mask(pred_adv, y, reject_class, attacked=attacked)
    values["robust_ci_low"], values["robust_ci_high"] = wilson_interval(round(correct.mean(0).sum()), n)
    strict = correct.all(axis=0)
    values["repeats"] = repeats
    values["robust_acc_strict"] = float(strict.mean()) if n else 0.0
    values["robust_acc_spread"] = float(correct.mean(axis=1).std(ddof=1)) if repeats > 1 else 0.0
    return values, strict


def row_metrics(x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, pred_clean: np.ndarray, pred_adv: np.ndarray,
                targets: np.ndarray | None = None, *, reject_class: int | None = None,
                attacked: bool = True) -> dict[str, Any]:
    """A result row's metric columns and per-example ``correct`` flags from predictions shaped (repeats, N):
    :func:`cell_metrics` for one prediction per example, :func:`repeated_cell_metrics` for several. The score
    step and the soundness checks' steps score rows alike through this."""
    if len(pred_adv) == 1:
        values = cell_metrics(x, x_adv, y, pred_clean[0], pred_adv[0], targets, reject_class=reject_class,
                              attacked=attacked).as_dict()
        values["correct"] = defended_mask(pred_adv[0], y, reject_class, attacked=attacked)
    else:
        values, values["correct"] = repeated_cell_metrics(x, x_adv, y, pred_clean, pred_adv, targets,
                                                          reject_class=reject_class, attacked=attacked)
    if attacked:
        values.update(perturbation_sizes(x, x_adv))
    return values


def perturbation_sizes(x: np.ndarray, x_adv: np.ndarray) -> dict[str, np.ndarray]:
    """Per example, the L2 and L∞ size of ``x_adv - x`` (float32, the ``perturbation_*`` columns of a row): with
    them a minimum-norm attack's examples count at every budget they fit in (bench.report.best_known)."""
    l2, linf = _sizes(_deltas(x, x_adv))
    return {"perturbation_l2": l2.astype(np.float32), "perturbation_linf": linf.astype(np.float32)}


def _deltas(x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
    """``x_adv - x`` per example, flattened, in float64."""
    return (x_adv - x).reshape(len(x), -1).astype(np.float64)


def _sizes(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The L2 and L∞ size of each row of ``delta``."""
    return np.sqrt((delta ** 2).sum(1)), np.abs(delta).max(1, initial=0.0)
