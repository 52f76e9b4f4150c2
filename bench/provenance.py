"""What every stored row records about where it came from: package versions and git commit, the
environment that can change a number (torch build, CPU, threads, determinism), and any dataset read
without torchvision's checksum check (``verify: false``)."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

from .numerics import numerics_mode

PACKAGES = ("advbench", "torch", "torchvision", "adversarial-robustness-toolbox", "foolbox", "numpy",
            "scikit-learn", "pandas")


def versions_of(packages: Iterable[str], missing: Any) -> dict[str, Any]:
    """Python's version and each installed distribution's (``missing`` for one not installed)."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = missing
    return out


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    return versions_of(PACKAGES, "not installed")


def environment() -> dict[str, str]:
    """What besides package versions can change a number (issue 16), as ``env:`` entries stored with the
    versions: torch's build (CUDA or CPU, MKL, oneDNN), the CPU model, torch's thread count and whether
    deterministic algorithms are enforced. Read per call: the thread count and the setting can change."""
    import torch

    backends = [name for name, on in (("MKL", torch.backends.mkl.is_available()),
                                      ("oneDNN", torch.backends.mkldnn.is_available())) if on]
    build = f"{torch.__version__} ({f'CUDA {torch.version.cuda}' if torch.version.cuda else 'CPU only'}" + \
        "".join(f", {b}" for b in backends) + ")"
    return {"env:torch-build": build, "env:cpu": _cpu_model(), "env:threads": str(torch.get_num_threads()),
            "env:deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
            "env:numerics": numerics_mode()}


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:  # Linux names the model here; platform.processor() is often empty or just the architecture
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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


def unverified_data(configs: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Provenance entries (stored with the package versions) for each dataset that ``configs`` (a task's
    config and its upstream tasks') read with ``verify: false``: its files were not checked against
    torchvision's checksums, so they may not be the official data. Empty for every other task."""
    out = {}
    for config in configs:
        for dataset in _dataset_configs(config):
            if dataset.get("verify") is False:
                out[f"data:{dataset['name']}"] = "local copy, checksums not verified (verify: false)"
    return out


def _dataset_configs(config: Any) -> Iterable[dict[str, Any]]:
    """Every ``dataset`` entry in a task config, at any depth (a craft task's is under ``eval``)."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "dataset" and isinstance(value, dict):
                yield value
            else:
                yield from _dataset_configs(value)
