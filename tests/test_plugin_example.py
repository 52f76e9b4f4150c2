"""The template plugin package under examples/: installed like a user would (offline, into a temporary
folder, never into this environment), it registers through entry points and its suite runs end to end."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.store import Store

TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "advbench-plugin-template"


def _advbench(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``advbench ARGS`` in a fresh interpreter that sees the installed plugin (and this environment)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The template built and installed with pip into a temporary site folder: (site, work folder)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: the template cannot be built without network")
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"  # a copy: pip builds in the source tree (build/, *.egg-info), which must stay clean
    shutil.copytree(TEMPLATE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--disable-pip-version-check", "--target", str(site), str(source)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(site.glob("advbench_plugin_example-*.dist-info/entry_points.txt"))
    return site, root


def test_the_template_is_listed_after_install(installed):
    site, root = installed
    listed = _advbench(["list", "defenses"], site, root)
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith("bit-depth ") for line in listed.stdout.splitlines()), listed.stdout
    assert "bits: int = 3" in listed.stdout  # its parameters, read from its __init__
    assert "warning" not in listed.stderr, listed.stderr  # the plugin imported cleanly


def test_the_template_suite_runs_and_stores_the_plugin_rows(installed):
    site, root = installed
    store, board = root / "store", root / "board"
    ran = _advbench(["run", str(TEMPLATE / "suite.yaml"), "--store", str(store), "--leaderboard", str(board),
                     "--device", "cpu", "--quiet"], site, root)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "0 failed" in ran.stdout

    results = Store(store).results()
    mine = results[results["defense_name"] == "bit-depth"]
    clean = mine[mine["attack"] == "none"]
    assert len(clean) == 1 and clean["clean_acc"].item() > 0.5  # ten classes: chance is 0.1
    for attack in ("rand-fgsm", "fgsm"):
        rows = mine[mine["attack"] == attack].sort_values("budget")
        assert rows["budget"].tolist() == [0.1, 0.3], attack
        assert (rows["n"] == 100).all() and (rows["robust_acc"] <= rows["clean_acc"]).all()
        # a larger budget is at least as strong; the L-infinity distance stays within it
        assert rows["robust_acc"].is_monotonic_decreasing
        assert (rows["linf_median"].fillna(0) <= rows["budget"] + 1e-6).all()
    on_plain = results[(results["defense"] == "undefended") & (results["attack"] == "rand-fgsm")]
    assert len(on_plain) == 2  # the plugin's attack runs on a built-in defense too
    # FGSM at eps 0.3 goes through the quantizer (its gradient passes straight through)
    fgsm = mine[(mine["attack"] == "fgsm") & (mine["budget"] == 0.3)]
    assert fgsm["robust_acc"].item() < clean["clean_acc"].item() / 2

    leaderboard = (board / "README.md").read_text()
    assert "bit-depth-2" in leaderboard and "rand-fgsm" in leaderboard
