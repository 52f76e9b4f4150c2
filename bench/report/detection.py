"""The detector part of the leaderboard: stored detection rows -> display tables and heatmaps.

One section per (dataset, detector) with the paper's views (Monteiro et al. 2019):

* the attacks that built the detector data: success rate and mean MSE (Table II);
* k-fold cross-validation per attack and method (the detector and its baselines on the same data):
  accuracy, F1, ROC AUC (Table III), detection rate (Table IV) and TPR at a clean-chosen FPR;
* the train-attack x test-attack accuracy matrix of every method (Figs. 5-6), as a table and a heatmap;
* detector-aware attacks next to the same attacks on the guarded model alone;
* the guarded classifier's soundness checks (``bench.checks``), where the suite ran them: its row in the
  detector-aware table carries the flag, and the checks tables say on what evidence.

Seeds are not pooled here: each seed is its own detector, and its rows are shown with the seed when
a suite has more than one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import checks
from ..labels import budget_label
from .format import MISSING, is_missing, num, pct, sanitize
from .model import DetectorSection, Heatmap, frame_table
from .soundness import checks_tables, flagged


def _mean_std(mean, std) -> str:
    if is_missing(mean):
        return MISSING
    return f"{mean:.3f}" if is_missing(std) else f"{mean:.3f} ± {std:.3f}"


def _order(labels, preferred: list[str]) -> list[str]:
    """Attack labels in suite order where known (the cross rows give it), others after, sorted."""
    labels = list(dict.fromkeys(labels))
    return [p for p in preferred if p in labels] + sorted(x for x in labels if x not in preferred)


def detector_sections(detections: pd.DataFrame | None) -> list[DetectorSection]:
    """Sections for every (dataset, detector) in the rows."""
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
                                      "Success rate (%)": pct(r["attack_success_rate"]),
                                      "Mean MSE": num(r["mse_mean"], ".2e"),
                                      "Attacked images": num(r["n"], ".0f"),
                                      "Adversarial share (%)": pct(r["adversarial_fraction"])})
            setting = "detector data: attack success rate and mean MSE (Monteiro et al. Table II)"
            tables.append(frame_table(f"{heading} — {setting}", setting, pd.DataFrame(records)))

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
                    "Clean FPR (held out)": num(r["clean_fpr"], ".3f"),
                    "n": num(r["n"], ".0f"), "Folds": num(r["folds"], ".0f")})
            setting = (f"detection, {int(cv['folds'].iloc[0])}-fold cross-validation: accuracy, F1, AUC "
                       "(Table III), detection rate (Table IV) and the false-positive rate of that decision, "
                       "TPR at a threshold set on clean data only")
            tables.append(frame_table(f"{heading} — {setting}", setting, pd.DataFrame(records), 2))

        for (method, seed), m_rows in cross.groupby(["method", "seed"], sort=True):
            matrix = m_rows.pivot_table(index="train_attack", columns="test_attack", values="accuracy",
                                        aggfunc="first", dropna=False)
            rows_order = _order(m_rows["train_attack"], attack_order)
            cols_order = _order(m_rows["test_attack"], attack_order)
            matrix = matrix.reindex(index=rows_order, columns=cols_order).astype(float)
            suffix = f" (seed {seed})" if multi_seed else ""
            setting = f"cross-attack accuracy of {method}{suffix}: trained on row, tested on column (Figs. 5-6)"
            frame = matrix.map(lambda v: num(v, ".3f"))
            frame.index.name, frame.columns.name = "train \\ test", None
            tables.append(frame_table(f"{heading} — {setting}", setting, frame.reset_index()))
            stem = "__".join(sanitize(p) for p in (dataset, "detector", detector, "cross", method)) + \
                (f"__seed{seed}" if multi_seed else "")
            heatmaps.append(Heatmap(f"{stem}.png", f"{dataset} — {method}: cross-attack detection accuracy{suffix}",
                                    matrix))

        # The guarded classifier's soundness checks (bench.checks), from its detector-aware rows and the checks'.
        verdicts = checks.evaluate(checks.guarded_rows(group))
        failed = checks.flags(verdicts)
        attackers = {"non-adaptive": "model only", "adaptive": "detector-aware (adaptive)",
                     "worst-case": "per image, either one"}
        adaptive = group[group["evaluation"].isin(list(attackers))
                         & ~group["test_attack"].astype(str).map(checks.is_check_attack)]
        if not adaptive.empty:
            records = []
            adaptive = adaptive.assign(_b=adaptive["budget"].fillna(np.inf),
                                       _e=adaptive["evaluation"].map({e: i for i, e in enumerate(attackers)}))
            for _, r in adaptive.sort_values(["test_attack", "_b", "_e", "seed"]).iterrows():
                name = checks.config_name(r.get("attack_config"))
                threat_model = str(getattr(checks.attack_class(name) if name else None, "threat_model", ""))
                flag = failed.get((dataset, checks.guarded_label(detector), threat_model)) \
                    if r["evaluation"] == "adaptive" else None
                seed_col(records, r, {
                    "Attack": r["test_attack"],
                    "Budget": budget_label(None, r["budget"]),
                    "Attacker": flagged(attackers[r["evaluation"]], flag),
                    "Detection rate": num(r["detection_rate"], ".3f"),
                    "Guarded robust acc. (%)": f"{pct(r['robust_acc'])} "
                                               f"[{pct(r['robust_ci_low'])}, {pct(r['robust_ci_high'])}]",
                    "Model alone robust acc. (%)": pct(r["model_robust_acc"]),
                    "Undetected errors (%)": pct(r["attack_success_rate"]),
                    # The reject option's three outcomes, as the dustbin's (bench.metrics.rejection_outcome).
                    "Acc. / Rej. / Err. (%)": " / ".join(pct(r.get(m))
                                                         for m in ("acc_rate", "reject_rate", "error_rate")),
                    "Clean acc. guarded (%)": pct(r["clean_acc"]),
                    "Clean rejected (%)": pct(r["clean_rejected"]),
                    "Clean acc. model alone (%)": pct(r["model_clean_acc"]),
                    "n": num(r["n"], ".0f")})
            fitted_on = " / ".join(sorted(set(adaptive["train_attack"])))
            fprs = adaptive["target_fpr"].dropna()
            operating = (f"threshold at {100 * fprs.iloc[0]:g}% false positives on clean held-out test images"
                         if len(fprs) else "threshold: the binary classifier's own decision")
            setting = ("detector-aware attacks: the detector folded in as an extra class, vs. the same attack "
                       "on the guarded model alone (a rejected input counts as defended; detector fitted on "
                       f"data pooled over {fitted_on.replace('+', ', ')}; {operating})")
            tables.append(frame_table(f"{heading} — {setting}", setting, pd.DataFrame(records), 3))
        tables += checks_tables(heading, verdicts)
        sections.append(DetectorSection(name=heading, tables=tables, heatmaps=heatmaps, flagged=bool(failed)))
    return sections



def produced_line(detections: pd.DataFrame, lead: str = "Produced by advbench (bench.report) from") -> str:
    """The "how this was produced" sentence of the detection rows; the newest row's commit."""
    newest = detections.sort_values("created_at").iloc[-1]
    suites = sorted(s for s in detections["suite"].dropna().unique() if s)
    return (f"{lead} {len(detections)} stored detection results of "
            f"suite{'s' if len(suites) != 1 else ''} {', '.join(suites) or MISSING}; newest result "
            f"{newest['created_at'] or MISSING}, commit {newest['git_commit'] or MISSING}.")
