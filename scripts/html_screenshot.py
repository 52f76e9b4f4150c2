#!/usr/bin/env python3
"""Open a leaderboard page in headless Chromium: a PNG for a human to look at, or its DOM after its scripts ran.

    python scripts/html_screenshot.py                         # leaderboard/index.html -> /tmp/advbench-leaderboard.png
    python scripts/html_screenshot.py PAGE -o OUT.png --height 6000

Uses Debian's chromium (``apt-get install chromium``) with a fresh profile and its background network
traffic off, so the picture is what the page shows offline. Writes only the PNG it is given (by default
in /tmp, never next to the page). tests/test_html_browser.py drives the browser through these functions.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1")
# Time the page gets to run its scripts and load its images before the browser reads it.
VIRTUAL_TIME_MS = 3000


def chromium(page: Path, *args: str, timeout: float = 120) -> str:
    """Run Chromium on ``page`` with ``args`` in a throwaway profile; its stdout."""
    with tempfile.TemporaryDirectory(prefix="advbench-chromium-") as profile:
        done = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}",
                               f"--virtual-time-budget={VIRTUAL_TIME_MS}", *args, Path(page).resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def dump_dom(page: Path) -> str:
    """The page's DOM, serialized after its scripts ran."""
    return chromium(page, "--dump-dom")


def screenshot(page: Path, out: Path, *, width: int = 1280, height: int = 3000) -> Path:
    """The top ``width`` x ``height`` pixels of ``page`` as a PNG at ``out``."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    chromium(page, f"--screenshot={out}", f"--window-size={width},{height}")
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", type=Path, default=Path("leaderboard/index.html"))
    parser.add_argument("-o", "--out", type=Path, default=Path(tempfile.gettempdir()) / "advbench-leaderboard.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        parser.error(f"{CHROMIUM} not found: apt-get install chromium")
    if not args.page.is_file():
        parser.error(f"{args.page}: no such page")
    print(screenshot(args.page, args.out, width=args.width, height=args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
