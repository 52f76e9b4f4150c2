"""Stored rows -> the Leaderboard model (no I/O): robustness sections with their views, detector sections."""

from __future__ import annotations

import pandas as pd

from . import detection, robustness
from .model import Leaderboard
from .views import view_tables

DEFAULT_TITLE = "advbench leaderboard"


def compute_leaderboard(results: pd.DataFrame | None, *, title: str = DEFAULT_TITLE,
                        detections: pd.DataFrame | None = None) -> Leaderboard:
    """Compute every table and plot series of the leaderboard (no I/O)."""
    detectors = detection.detector_sections(detections)
    if results is None or results.empty:
        produced = detection.produced_line(detections) if detectors else ""
        return Leaderboard(title=title, produced=produced, legend=robustness.LEGEND, detectors=detectors)
    results = robustness.separate_models(results)  # one row per trained model, also in the views
    rows = robustness.dedupe(robustness.normalize(results))
    produced = robustness.produced_line(rows, total=len(results))
    if detectors:
        produced += " " + detection.produced_line(detections, lead="Also")

    taken_files: set[str] = set()
    sections = []
    for dataset in sorted({r.dataset for r in rows}):
        section = robustness.dataset_section(
            dataset, [r for r in rows if r.dataset == dataset], taken_files,
            views=view_tables(dataset, results[results["dataset"] == dataset]))
        sections.append(section)
    return Leaderboard(title=title, produced=produced, legend=robustness.LEGEND, datasets=sections,
                       detectors=detectors)


def leaderboard_tables(results: pd.DataFrame | None,
                       detections: pd.DataFrame | None = None) -> list[tuple[str, pd.DataFrame]]:
    """(heading, display frame) of every table, details included, in rendering order."""
    board = compute_leaderboard(results, detections=detections)
    return ([(t.heading, t.frame) for s in board.datasets for t in (*s.tables, s.details)]
            + [(t.heading, t.frame) for s in board.detectors for t in s.tables])
