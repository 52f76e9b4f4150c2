"""Stored rows -> the Leaderboard model (no I/O): robustness sections with their views, detector sections."""

from __future__ import annotations

import pandas as pd

from .. import checks
from ..metrics import OUT_DISTRIBUTION_ATTACK, REJECTION_CONVENTION
from . import best_known, certified, detection, robustness, rows, summary
from .legend import model_legend
from .model import Leaderboard
from .soundness import LEGEND as CHECKS_LEGEND
from .soundness import flag_view
from .views import view_tables

DEFAULT_TITLE = "advbench leaderboard"


def compute_leaderboard(results: pd.DataFrame | None, *, title: str = DEFAULT_TITLE,
                        detections: pd.DataFrame | None = None, settings: dict | None = None,
                        certificates: pd.DataFrame | None = None) -> Leaderboard:
    """Compute every table and plot series of the leaderboard (no I/O). ``settings``: each suite's report
    settings by name (``{"headline": {"linf": 0.3}}``), as the store keeps them; ``certificates``: the store's
    certificate rows (bench.report.certified)."""
    certificate_rows = certified.certificate_rows(certificates)
    detectors = detection.detector_sections(detections)
    results, problems = rows.screen(results) if results is not None else (results, [])
    legend = (f"{best_known.RULE} {robustness.LEGEND}"
              + (f" {REJECTION_CONVENTION}" if _has_rejections(results, detections) else ""))
    if results is None or results.empty:
        legend += f" {CHECKS_LEGEND}" if any(d.flagged for d in detectors) else ""
        produced = detection.produced_line(detections) if detectors else ""
        return Leaderboard(title=title, produced=produced, legend=legend, detectors=detectors,
                           problems=problems)
    taken_files: set[str] = set()
    sections = []
    flagged = False  # some row failed a soundness check: the legend says what its mark means
    shown: dict[object, rows.Row] = {}  # every row some section shows, once (a row two suites share)
    suites_known: list[summary.SuiteEvidence] = []
    parts = suite_frames(results)
    for suite, frame in parts:
        headline = ((settings or {}).get(suite) or {}).get("headline") or {}
        frame = rows.separate_models(frame)  # one row per trained model, also in the views
        # Out-distribution rows have no class to be right about: the reject-option view shows them, not the tables.
        every_row = rows.dedupe(rows.normalize(frame[frame["attack"] != OUT_DISTRIBUTION_ATTACK]))
        evidence = best_known.collect(every_row)  # every row on a deployed model counts, the checks' own included
        certificates_here = [c for c in certificate_rows if c.belongs_to(suite)]
        # Where the suite ran its soundness checks; check 8 where it certified (every certified example against
        # every attack on it).
        verdicts = checks.evaluate(frame) + certified.contradictions(certificates_here, evidence)
        # The checks' rows are evidence for the verdicts and the best known, not table rows.
        frame = checks.split(frame)[0]
        suite_rows = [r for r in every_row if not r.source.startswith(checks.CHECK_SOURCE)]
        shown.update((r.key or id(r), r) for r in suite_rows)
        failed = checks.flags(verdicts)
        for dataset in sorted({r.dataset for r in suite_rows}):
            name = f"{suite} — {dataset}" if len(parts) > 1 else dataset
            mine = frame[frame["dataset"] == dataset]
            certificates_of = [c for c in certificates_here if c.dataset == dataset]
            clean: dict[str, tuple[float, int]] = {}
            for r in suite_rows:
                if r.dataset == dataset and r.is_clean:
                    hits, n = clean.get(r.defense, (0.0, 0))
                    clean[r.defense] = (hits + r.hits, n + r.n)
            known = summary.SuiteEvidence(
                suite=suite, section=name, dataset=dataset,
                evidence={d: found for (ds, d), found in evidence.items() if ds == dataset}, clean=clean,
                headline={tm: float(eps) for tm, eps in headline.items() if eps is not None},
                flags={(d, tm): numbers for (ds, d, tm), numbers in failed.items() if ds == dataset},
                certificates={d: [c for c in certificates_of if c.defense == d]
                              for d in {c.defense for c in certificates_of}})
            suites_known.append(known)
            radius_plot = certified.radius_plot(name, certificates_of, taken_files)
            sections.append(robustness.dataset_section(
                name, [r for r in suite_rows if r.dataset == dataset], taken_files,
                views=[flag_view(view, _flags_by_defense(failed, dataset)) for view in view_tables(name, mine)],
                legend=model_legend(name, mine), headline=headline,
                verdicts=[v for v in verdicts if v.dataset == dataset], best=summary.suite_tables(known)))
            if radius_plot is not None:
                sections[-1].plots.append(radius_plot)
        flagged = flagged or any(v.failed for v in verdicts)
    # Out-distribution rows are not counted as superseded for not being in the tables.
    produced = rows.produced_line(list(shown.values()),
                                        total=int(((results["attack"] != OUT_DISTRIBUTION_ATTACK)
                                                   & ~checks.is_check_row(results)).sum()))
    if detectors:
        produced += " " + detection.produced_line(detections, lead="Also")
    legend += f" {CHECKS_LEGEND}" if flagged or any(d.flagged for d in detectors) else ""
    legend += f" {certified.LEGEND}" if certificate_rows else ""
    summary_tables, entries = summary.summary(suites_known)
    return Leaderboard(title=title, produced=produced, legend=legend, datasets=sections,
                       detectors=detectors, problems=problems, summary=summary_tables, best_known=entries)


def _flags_by_defense(failed: dict[tuple[str, str, str], list[int]], dataset: str) -> dict[str, list[int]]:
    """Each of ``dataset``'s defenses' failed checks over every threat model (what a view, which mixes threat
    models, marks it with)."""
    numbers: dict[str, set[int]] = {}
    for (ds, defense, _), checks_failed in failed.items():
        if ds == dataset:
            numbers.setdefault(defense, set()).update(checks_failed)
    return {defense: sorted(found) for defense, found in numbers.items()}


def _has_rejections(results: pd.DataFrame | None, detections: pd.DataFrame | None) -> bool:
    """Whether a model with a reject option is shown: a dustbin's rows, or a detector-guarded classifier's."""
    rejecting = results is not None and "reject_rate" in results.columns and results["reject_rate"].notna().any()
    guarded = detections is not None and "evaluation" in detections.columns and \
        detections["evaluation"].isin(["adaptive", "non-adaptive"]).any()
    return bool(rejecting or guarded)


# The order a newcomer meets the shipped suites (README, then the defense tracks as CI runs them); any other
# suite follows, by name.
SUITE_ORDER = ("mnist-quick", "pretrained-mnist-quick", "ensembles-mnist-quick", "randomized-mnist-quick",
               "detector-mnist-quick", "dustbin-mnist-quick", "reference-mnist-quick")


def suite_order(suite: str) -> tuple:
    return (SUITE_ORDER.index(suite), "") if suite in SUITE_ORDER else (len(SUITE_ORDER), suite)


def suite_frames(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(suite, its results) for each suite, each a section of its own: a row counts for every suite whose
    latest plan holds it (``plan_suites``, as the store reads it), else for the suite that ran it."""
    ran_by = results["suite"] if "suite" in results.columns else pd.Series("", index=results.index)
    planned = results["plan_suites"] if "plan_suites" in results.columns else pd.Series(None, index=results.index)
    owners = [[("" if pd.isna(s) else str(s)) for s in (p if isinstance(p, (list, tuple)) and len(p) else [r])]
              for p, r in zip(planned, ran_by)]
    suites = sorted({s for o in owners for s in o}, key=suite_order)
    if len(suites) <= 1:
        return [(suites[0] if suites else "", results)]
    return [(suite, results[[suite in o for o in owners]]) for suite in suites]


def leaderboard_tables(results: pd.DataFrame | None,
                       detections: pd.DataFrame | None = None) -> list[tuple[str, pd.DataFrame]]:
    """(heading, display frame) of every table, details included, in rendering order."""
    board = compute_leaderboard(results, detections=detections)
    return ([(t.heading, t.frame) for s in board.datasets for t in (*s.tables, s.details)]
            + [(t.heading, t.frame) for s in board.detectors for t in s.tables])
