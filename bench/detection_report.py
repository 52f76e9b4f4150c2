"""The detector part of the leaderboard: stored detection rows -> display tables and heatmaps.

One section per (dataset, detector) with the paper's views (Monteiro et al. 2019):

* the attacks that built the detector data: success rate and mean MSE (Table II);
* k-fold cross-validation per attack and method (the detector and its baselines on the same data):
  accuracy, F1, ROC AUC (Table III), detection rate (Table IV) and TPR at a clean-chosen FPR;
* the train-attack x test-attack accuracy matrix of every method (Figs. 5-6), as a table and a heatmap;
* detector-aware attacks next to the same attacks on the guarded model alone.

Seeds are not pooled here: each seed is its own detector, and its rows are shown with the seed when
a suite has more than one.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .labels import budget_label

MISSING = "—"


@dataclass(frozen=True)
class Heatmap:
    """A train x test accuracy matrix drawn as a PNG (values in [0, 1], NaN where not measured)."""

    filename: str
    caption: str
    matrix: pd.DataFrame

    @property
    def path(self) -> str:
        return f"plots/{self.filename}"


@dataclass(frozen=True)
class DetectorSection:
    name: str                       # "<dataset> — detector <label>"
    tables: list                    # bench.report.Table
    heatmaps: list[Heatmap]


def _missing(value) -> bool:
    """No number in the store: NULL (None) or NaN (how pandas reads a NULL in a float column)."""
    return value is None or bool(pd.isna(value))


def _mean_std(mean, std) -> str:
    if _missing(mean):
        return MISSING
    return f"{mean:.3f}" if _missing(std) else f"{mean:.3f} ± {std:.3f}"


def _num(value, fmt: str) -> str:
    return MISSING if _missing(value) else format(value, fmt)


def _pct(value) -> str:
    """A fraction as a percentage with one decimal; "—" where the store has none."""
    return MISSING if _missing(value) else f"{100 * value:.1f}"


def _order(labels, preferred: list[str]) -> list[str]:
    """Attack labels in suite order where known (the cross rows give it), others after, sorted."""
    labels = list(dict.fromkeys(labels))
    return [p for p in preferred if p in labels] + sorted(x for x in labels if x not in preferred)


def detector_sections(detections: pd.DataFrame | None, make_table, sanitize) -> list[DetectorSection]:
    """Sections for every (dataset, detector) in the rows. ``make_table(heading, setting, frame,
    left_columns=1)``
    builds a ``bench.report.Table`` from a display frame; ``sanitize`` makes a file-name part."""
    if detections is None or detections.empty:
        return []
    rows = detections.sort_values("created_at", kind="stable").drop_duplicates("key", keep="last")
    sections = []
    for (dataset, detector), group in sorted(rows.groupby(["dataset", "detector"], sort=False),
                                             key=lambda item: item[0]):
        seeds = sorted(group["seed"].unique())
        multi_seed = len(seeds) > 1
        cross = group[group["evaluation"] == "cross"]
        attack_order = list(dict.fromkeys([*cross["train_attack"], *cross["test_attack"]]))
        heading = f"{dataset} — detector {detector}"
        tables, heatmaps = [], []

        def seed_col(frame_rows: list[dict], row: pd.Series, record: dict) -> None:
            if multi_seed:
                record["Seed"] = int(row["seed"])
            frame_rows.append(record)

        data_rows = group[group["evaluation"] == "attack-data"]
        if not data_rows.empty:
            records: list[dict] = []
            for _, r in data_rows.assign(_o=data_rows["train_attack"].map(
                    {a: i for i, a in enumerate(_order(data_rows["train_attack"], attack_order))})
            ).sort_values(["_o", "seed"]).iterrows():
                seed_col(records, r, {"Attack": r["train_attack"],
                                      "Success rate (%)": _pct(r["attack_success_rate"]),
                                      "Mean MSE": _num(r["mse_mean"], ".2e"),
                                      "Attacked images": _num(r["n"], ".0f"),
                                      "Adversarial share (%)": _pct(r["adversarial_fraction"])})
            setting = "detector data: attack success rate and mean MSE (Monteiro et al. Table II)"
            tables.append(make_table(f"{heading} — {setting}", setting, pd.DataFrame(records)))

        cv = group[group["evaluation"] == "cv"]
        if not cv.empty:
            methods = list(dict.fromkeys([detector, *sorted(m for m in cv["method"].unique() if m != detector)]))
            fpr = cv["target_fpr"].dropna()
            fpr_text = f"{100 * fpr.iloc[0]:g}%" if len(fpr) else "FPR"
            records = []
            order = _order(cv["train_attack"], attack_order)
            cv = cv.assign(_a=cv["train_attack"].map({a: i for i, a in enumerate(order)}),
                           _m=cv["method"].map({m: i for i, m in enumerate(methods)}))
            for _, r in cv.sort_values(["_a", "_m", "seed"]).iterrows():
                seed_col(records, r, {
                    "Attack": r["train_attack"], "Method": r["method"],
                    "Accuracy": _mean_std(r["accuracy"], r["accuracy_std"]),
                    "F1": _mean_std(r["f1"], r["f1_std"]), "ROC AUC": _mean_std(r["roc_auc"], r["roc_auc_std"]),
                    "Detection rate": _mean_std(r["detection_rate"], r["detection_rate_std"]),
                    "Its clean FPR": _mean_std(r["false_positive_rate"], r["false_positive_rate_std"]),
                    f"TPR @ FPR {fpr_text}": _mean_std(r["tpr_at_fpr"], r["tpr_at_fpr_std"]),
                    "Clean FPR (held out)": _num(r["clean_fpr"], ".3f"),
                    "n": _num(r["n"], ".0f"), "Folds": _num(r["folds"], ".0f")})
            setting = (f"detection, {int(cv['folds'].iloc[0])}-fold cross-validation: accuracy, F1, AUC "
                       "(Table III), detection rate (Table IV) and the false-positive rate of that decision, "
                       "TPR at a threshold set on clean data only")
            tables.append(make_table(f"{heading} — {setting}", setting, pd.DataFrame(records), 2))

        for (method, seed), m_rows in cross.groupby(["method", "seed"], sort=True):
            matrix = m_rows.pivot_table(index="train_attack", columns="test_attack", values="accuracy",
                                        aggfunc="first", dropna=False)
            rows_order = _order(m_rows["train_attack"], attack_order)
            cols_order = _order(m_rows["test_attack"], attack_order)
            matrix = matrix.reindex(index=rows_order, columns=cols_order).astype(float)
            suffix = f" (seed {seed})" if multi_seed else ""
            setting = f"cross-attack accuracy of {method}{suffix}: trained on row, tested on column (Figs. 5-6)"
            frame = matrix.map(lambda v: _num(v, ".3f"))
            frame.index.name, frame.columns.name = "train \\ test", None
            tables.append(make_table(f"{heading} — {setting}", setting, frame.reset_index()))
            stem = "__".join(sanitize(p) for p in (dataset, "detector", detector, "cross", method)) + \
                (f"__seed{seed}" if multi_seed else "")
            heatmaps.append(Heatmap(f"{stem}.png", f"{dataset} — {method}: cross-attack detection accuracy{suffix}",
                                    matrix))

        attackers = {"non-adaptive": "model only", "adaptive": "detector-aware (adaptive)",
                     "worst-case": "per image, either one"}
        adaptive = group[group["evaluation"].isin(list(attackers))]
        if not adaptive.empty:
            records = []
            adaptive = adaptive.assign(_b=adaptive["budget"].fillna(np.inf),
                                       _e=adaptive["evaluation"].map({e: i for i, e in enumerate(attackers)}))
            for _, r in adaptive.sort_values(["test_attack", "_b", "_e", "seed"]).iterrows():
                seed_col(records, r, {
                    "Attack": r["test_attack"],
                    "Budget": budget_label(None, r["budget"]),
                    "Attacker": attackers[r["evaluation"]],
                    "Detection rate": _num(r["detection_rate"], ".3f"),
                    "Guarded robust acc. (%)": f"{_pct(r['robust_acc'])} "
                                               f"[{_pct(r['robust_ci_low'])}, {_pct(r['robust_ci_high'])}]",
                    "Model alone robust acc. (%)": _pct(r["model_robust_acc"]),
                    "Undetected errors (%)": _pct(r["attack_success_rate"]),
                    "Clean acc. guarded (%)": _pct(r["clean_acc"]),
                    "Clean rejected (%)": _pct(r["clean_rejected"]),
                    "Clean acc. model alone (%)": _pct(r["model_clean_acc"]),
                    "n": _num(r["n"], ".0f")})
            fitted_on = " / ".join(sorted(set(adaptive["train_attack"])))
            fprs = adaptive["target_fpr"].dropna()
            operating = (f"threshold at {100 * fprs.iloc[0]:g}% false positives on clean held-out test images"
                         if len(fprs) else "threshold: the binary classifier's own decision")
            setting = ("detector-aware attacks: the detector folded in as an extra class, vs. the same attack "
                       "on the guarded model alone (a rejected input counts as defended; detector fitted on "
                       f"data pooled over {fitted_on.replace('+', ', ')}; {operating})")
            tables.append(make_table(f"{heading} — {setting}", setting, pd.DataFrame(records), 3))
        sections.append(DetectorSection(name=heading, tables=tables, heatmaps=heatmaps))
    return sections


def render_heatmap(heatmap: Heatmap, text) -> bytes:
    """PNG of the matrix, each cell annotated; ``text`` escapes strings for matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = heatmap.matrix
    size = max(4.0, 0.9 * len(matrix.columns) + 2.5)
    fig = Figure(figsize=(size, max(3.5, 0.7 * len(matrix.index) + 2.0)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.5, vmax=1.0)
    ax.set_xticks(range(len(matrix.columns)), [text(c) for c in matrix.columns], rotation=40, ha="right")
    ax.set_yticks(range(len(matrix.index)), [text(r) for r in matrix.index])
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not math.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize="small",
                        color="black" if values[i, j] > 0.8 else "white")
    fig.colorbar(image, ax=ax, label="detection accuracy")
    ax.set_title(text(heatmap.caption), fontsize="medium")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    fig.clear()
    return buffer.getvalue()
