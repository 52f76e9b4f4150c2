"""The README's promises: every command it shows is run by CI or by this test, and every link resolves.

A command in one of README.md's ```bash blocks (a line, or a part of a line between ``&&``, that starts
with ``advbench`` or ``python``) is either

- run by CI: ``.ci/run`` runs the same command, up to where it puts its store and leaderboard
  (``--store``, ``--leaderboard``, ``--quiet``); commands that train or attack belong here, or
- cheap, and run here with its exit status checked: ``advbench --help`` (or a command's ``--help``),
  ``advbench list KIND``, ``advbench validate SUITE``.

Anything else fails with the command named, so a command added to the README is run by someone. Every
relative link of README.md and docs/*.md must name a file of the repository (and, for a markdown file with
a ``#fragment``, one of its headings).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

PROGRAMS = ("advbench", "python")  # "python" also matches python3
# Where CI puts its output; the same command with the defaults is the README's.
PLACEMENT_OPTIONS = {"--store": True, "--leaderboard": True, "--quiet": False}  # option -> takes a value


def _commands(lines: list[str]) -> list[str]:
    """The parts of ``lines`` (split at ``&&``, a leading ``time`` dropped) that start with a program of
    ours, without their trailing comments."""
    out = []
    for line in lines:
        for part in line.split("&&"):
            part = part.strip()
            part = part[len("time "):].strip() if part.startswith("time ") else part
            if part.split(" ", 1)[0].startswith(PROGRAMS):
                out.append(shlex.join(shlex.split(part, comments=True)))
    return out


def readme_commands() -> list[str]:
    """Commands of the README's ```bash blocks."""
    lines, inside = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash" if not inside else False
        elif inside:
            lines.append(line)
    return _commands(lines)


def ci_commands() -> list[str]:
    """Commands that .ci/run runs."""
    lines = [line for line in CI.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
    return _commands(lines)


def _without_placement(command: str) -> list[str]:
    tokens, out, i = shlex.split(command), [], 0
    while i < len(tokens):
        option = tokens[i].split("=", 1)[0]
        if option in PLACEMENT_OPTIONS:
            i += 1 if "=" in tokens[i] or not PLACEMENT_OPTIONS[option] else 2
            continue
        out.append(tokens[i])
        i += 1
    return out


def run_by_ci(command: str) -> bool:
    return any(_without_placement(command) == _without_placement(ci) for ci in ci_commands())


def cheap(command: str) -> bool:
    """A command this test runs: help, a registry listing, a suite's validation (seconds each)."""
    tokens = shlex.split(command)
    if tokens[0] != "advbench":
        return False
    args = tokens[1:]
    return (args[-1:] in (["--help"], ["-h"]) and len(args) <= 3
            or len(args) == 2 and args[0] == "list"
            or len(args) == 2 and args[0] == "validate" and args[1].startswith("suites/"))


def _advbench() -> str:
    beside = Path(sys.executable).with_name("advbench")
    found = str(beside) if beside.exists() else shutil.which("advbench")
    if not found:
        pytest.skip("the advbench console script is not installed")
    return found


def test_the_readme_shows_the_two_commands():
    commands = readme_commands()
    assert "advbench run suites/mnist-quick.yaml" in commands
    assert "python -m pytest" in commands


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_is_run_by_ci_or_here(command):
    if run_by_ci(command):
        return
    assert cheap(command), (f"README.md shows `{command}`, which neither .ci/run nor this test runs: run it in "
                            "CI, or show a command this test can run (help, list, validate)")
    done = subprocess.run([_advbench(), *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"


def test_ci_installs_what_the_readme_installs():
    """The README's `pip install -e '.[extras]'`: CI installs the same package with at least those extras."""
    def extras(text: str) -> set[str] | None:
        match = re.search(r"pip install (?:-q )?-e '\.\[([^\]]*)\]'", text)
        return set(match.group(1).split(",")) if match else None

    shown = extras(README.read_text(encoding="utf-8"))
    assert shown is not None, "README.md shows no `pip install -e '.[...]'`"
    installed = extras(CI.read_text(encoding="utf-8"))
    assert installed is not None and shown <= installed


def test_the_matching_rules():
    assert _without_placement("advbench run s.yaml --store results/ci --leaderboard lb --quiet --workers 2") \
        == ["advbench", "run", "s.yaml", "--workers", "2"]
    assert _commands(["time advbench run s.yaml --quiet  # a comment", "python3 -m venv .venv && . x && pip y"]) \
        == ["advbench run s.yaml --quiet", "python3 -m venv .venv"]
    assert cheap("advbench list defenses") and cheap("advbench validate suites/mnist-quick.yaml")
    assert cheap("advbench --help") and cheap("advbench run --help")
    assert not cheap("advbench run suites/mnist-quick.yaml") and not cheap("python examples/x/train.py")


# ---- links ------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    heading = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", heading))


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.M)}


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(_prose(page.read_text(encoding="utf-8")))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I)]  # http:, https:, mailto:


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_name_files_that_exist(page):
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
            broken.append(f"{target}: no heading #{fragment} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_check_sees_links():
    assert "docs/architecture.md" in relative_links(README)
    assert "docs/images/leaderboard.png" in relative_links(README)
    assert _slug("CI's comparison: `numbers.csv` and `advbench compare`") \
        == "cis-comparison-numberscsv-and-advbench-compare"
