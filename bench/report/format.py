"""How the leaderboard writes values: the one missing-value marker, percentages, numbers, file names.

Nothing here knows a table; every other module of bench.report formats through these.
"""

from __future__ import annotations

import re

from ..newest_rows import is_missing  # noqa: F401  (the one missing-value test; the report imports it from here)

MISSING = "—"  # cell text where no number exists (not run, or not computable)
PLOTS_DIR = "plots"  # PNGs, relative to the leaderboard directory (and so in README/HTML links)
PCT = "pct"  # a MetricSpec.fmt: a fraction written as a percentage


def interval_text(acc: float, interval: tuple[float, float]) -> str:
    """A share with its 95% interval, as every table shows one: "16.0 [11.2, 22.0]"."""
    low, high = interval
    return f"{pct(acc)} [{pct(low)}, {pct(high)}]"


def pct(value, of=None) -> str:
    """A fraction as a percentage with one decimal (``value`` out of ``of`` when given); MISSING if none."""
    if is_missing(value):
        return MISSING
    return f"{100 * value:.1f}" if of is None else f"{100 * value / of:.1f}"


def num(value, fmt: str) -> str:
    """A number in a format spec (".3f", ".2e"); MISSING if none."""
    return MISSING if is_missing(value) else format(value, fmt)


def metric_text(value, fmt: str) -> str:
    """A value in a MetricSpec's ``fmt``: PCT or a format spec."""
    return pct(value) if fmt == PCT else num(value, fmt)


def sanitize(name: str) -> str:
    """A file-name part: runs of anything but letters, digits, ``._-`` become one ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "_"


def natural_key(text: str) -> tuple:
    """A sort key that orders the numbers inside text as numbers: fixed:5 before fixed:10, pgd-eot5 before
    pgd-eot20."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(text))
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)
