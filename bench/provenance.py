"""What every stored row records about where it came from: package versions and git commit."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("advbench", "torch", "torchvision", "adversarial-robustness-toolbox", "foolbox", "numpy",
            "scikit-learn", "pandas")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the advbench checkout in use, '+dirty' if its code has local changes; 'unknown' outside git."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        # The generated leaderboard is output, not code: rewriting it does not make the checkout dirty.
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":(exclude)leaderboard"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
