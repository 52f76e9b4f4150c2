"""The device check's Python side (issue 28): what ``scripts/device/check.sh`` records on a GPU machine (or,
with ``--smoke``, on the CPU), and the paper-scale estimate table ``scripts/device/estimates.py`` writes.

``check.sh`` is the orchestration: each stage a command under its own ``timeout``, one line per stage in
``stages.tsv`` (name, status, exit status, seconds, limit). Everything that reads or computes is here, as
subcommands of ``python -m bench.device_check``:

* ``env``: Python, torch (its CUDA and cuDNN), the GPU torch sees, and the harness's packages' versions;
* ``scheduler``: ``advbench bench scheduler``'s measurements (``run_scheduler_benchmark``: fused against
  unfused budgets on the device, and the worker pool on a suite), written as a table;
* ``suite-report``: a suite run's store read back: tasks done and failed, the sum of the tasks' wall times by
  kind, the batch sizes each kind ran at (on CUDA, what the batch-size search settled on);
* ``gpu-stats``: ``nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -lms 500``'s samples
  summed up (utilization mean, median and maximum; most memory used);
* ``estimates``: the cost model's estimate of each suite on a device (``bench.runner.estimate``): measured
  rates where the device is here, else the stated assumption; its tasks and the task groups the time goes to;
* ``summary``: the stages and every part above in one ``summary.json``.

Nothing here needs a GPU: on a machine without one, the same code records that there is none.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "suites"

# The suites issue 28 asks estimates of: the papers' settings, each meant for a GPU.
PAPER_SUITES = ("cifar10", "ensembles-cifar10", "detector-cifar10", "randomized-cifar10", "dustbin-cifar10",
                "ensembles-mnist", "detector-mnist", "randomized-mnist", "dustbin-mnist", "reference-cifar10",
                "reference-mnist")
# Beyond this a suite "would take more than a day": its row says what to shrink.
SHRINK_ABOVE_HOURS = 24.0
# The packages recorded besides torch: what the wheels carried to a bare GPU image provide, and what they need.
PACKAGES = ("advbench", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib",
            "adversarial-robustness-toolbox", "foolbox", "eagerpy", "GitPython", "pydantic", "pydantic-core",
            "typing-extensions", "mlxtend", "tabulate", "PyYAML", "jinja2", "tqdm", "pytest")
STAGE_STATUS = {0: "ok", 124: "timeout", 137: "timeout"}  # else "failed"; "skipped" as check.sh writes it


# ---- env -------------------------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    """Where the check ran: Python, torch and its CUDA/cuDNN, the GPUs torch sees, the packages' versions."""
    import torch

    from .provenance import versions_of

    versions = versions_of(PACKAGES, None)
    versions["torch_cuda"] = torch.version.cuda
    versions["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_mib": p.total_memory // 2**20,
                         "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
    return {"device": "cuda" if gpus else "cpu", "gpus": gpus, "versions": versions,
            "platform": platform.platform(), "machine": platform.machine(), "cpu_count": _cpu_count(),
            "torch_threads": torch.get_num_threads()}


def _cpu_count() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ---- scheduler -------------------------------------------------------------------------------------------

def scheduler(suite: Path, n: int, device: str, out_dir: Path, pool: bool, repeats: int = 3) -> list[dict]:
    """``advbench bench scheduler --device DEVICE --n N --suite SUITE``'s rows (without its pool part where
    ``pool`` is off: three runs of the suite, too long for the smoke run; best of ``repeats``, the command's
    3 by default), its table in ``out_dir``."""
    from .benchmark_scheduler import run_scheduler_benchmark

    return run_scheduler_benchmark(suite=suite, n=n, device=device, repeats=repeats, out_dir=out_dir, pool=pool)


# ---- suite-report ----------------------------------------------------------------------------------------

def suite_report(store_dir: Path, suite_path: Path, wall_s: float | None = None) -> dict[str, Any]:
    """A suite's run read back from its store: of the plan's tasks, how many are done or failed (a run stopped
    at its time limit leaves the rest to run), the tasks' own wall times by kind, and the batch sizes each
    kind ran at. Reads the store's SQLite file directly: no torch, works on a store a killed run left."""
    import sqlite3

    from .config import load_suite
    from .plan import build_plan

    suite = load_suite(suite_path)
    plan = build_plan(suite)
    keys = set(plan.keys)
    out: dict[str, Any] = {"suite": suite.name, "file": _relative(suite_path), "tasks": len(plan.tasks),
                           "done": 0, "failed": 0, "wall_s": None if wall_s is None else round(wall_s, 1)}
    db_path = Path(store_dir) / "advbench.sqlite"
    if not db_path.is_file():
        out["note"] = f"no store at {store_dir}: the run wrote nothing"
        return out
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        rows = [r for r in db.execute("SELECT key, kind, status, wall_time_s, batch_size, error FROM tasks")
                if r[0] in keys]
    by_kind: dict[str, dict[str, Any]] = {}
    for _key, kind, status, wall, batch, _error in rows:
        k = by_kind.setdefault(kind, {"tasks": 0, "done": 0, "seconds": 0.0, "batch_sizes": {}})
        k["tasks"] += 1
        if status == "done":
            k["done"] += 1
            k["seconds"] += float(wall or 0.0)
            if batch is not None:
                k["batch_sizes"][str(batch)] = k["batch_sizes"].get(str(batch), 0) + 1
    for k in by_kind.values():
        k["seconds"] = round(k["seconds"], 1)
    out["done"] = sum(1 for r in rows if r[2] == "done")
    out["failed"] = sum(1 for r in rows if r[2] == "failed")
    out["errors"] = sorted({(r[5] or "").splitlines()[0][:200] for r in rows if r[2] == "failed"})[:5]
    out["sum_task_s"] = round(sum(k["seconds"] for k in by_kind.values()), 1)
    out["by_kind"] = by_kind
    return out


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ---- gpu-stats -------------------------------------------------------------------------------------------

def gpu_stats(samples: Path) -> dict[str, Any]:
    """``nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -lms 500``'s output summed up: one
    line per GPU per sample (``87 %, 1234 MiB``) under a header; unreadable lines are skipped."""
    if not Path(samples).is_file():
        return {"status": "absent"}
    util, mem = [], []
    for line in Path(samples).read_text(errors="replace").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            continue
        try:
            u, m = float(parts[0].split()[0]), float(parts[1].split()[0])
        except (ValueError, IndexError):  # the header, or "[N/A]"
            continue
        util.append(u)
        mem.append(m)
    if not util:
        return {"status": "no samples"}
    return {"status": "sampled", "samples": len(util), "interval_ms": 500,
            "utilization_mean": round(statistics.fmean(util), 1), "utilization_median": statistics.median(util),
            "utilization_max": max(util), "busy_share": round(sum(u > 0 for u in util) / len(util), 3),
            "memory_used_max_mib": max(mem)}


# ---- estimates -------------------------------------------------------------------------------------------

@dataclass
class Group:
    """Tasks of one kind on one defense (and attack): what a suite's time goes to, and what one would shrink."""

    kind: str
    defense: str
    attack: str | None
    seconds: float

    @property
    def name(self) -> str:
        return f"{self.kind} {self.attack} on {self.defense}" if self.attack else f"{self.kind} {self.defense}"


def _group_key(task) -> tuple[str, str, str | None]:
    about = task.about
    owner = about.defense or about.detector or about.method or "?"
    attack = about.attack if task.kind not in ("train",) else None
    return task.kind, owner, attack


def estimate_suite(suite_path: Path, device: str, rates=None) -> dict[str, Any]:
    """The cost model's estimate of every task of a suite on ``device`` (no store: the whole suite), with
    its task count, seconds by kind, and the groups of tasks (kind, defense, attack) by cost."""
    from .config import load_suite
    from .plan import build_plan
    from .runner.estimate import estimate_plan

    suite = load_suite(suite_path)  # no data context: nothing on disk is read
    plan = build_plan(suite)
    rates = rates or fresh_rates(device)
    est = estimate_plan(plan, device, rates=rates)
    groups: dict[tuple, list] = {}
    for task in plan.tasks:
        groups.setdefault(_group_key(task), []).append(task)
    priced = [Group(k[0], k[1], k[2], estimate_plan(plan, device, todo, rates=rates).seconds)
              for k, todo in groups.items()]
    priced.sort(key=lambda g: -g.seconds)
    return {"suite": suite.name, "file": _relative(suite_path),
            "tasks": len(plan.tasks), "seconds": est.seconds, "by_kind": est.by_kind, "rates": est.rates,
            "groups": priced, "notes": est.notes}


def fresh_rates(device: str):
    """The rates ``rates_for`` would give, uncached: each suite priced as its own dry run prices it (the
    rates remember one module per architecture label, the first they are asked about, so a second suite in
    the same process would otherwise be priced with the first one's modules of the same label)."""
    from .runner.estimate import Assumed, Measured, device_is_here

    return Measured(device) if device_is_here(device) else Assumed(device)


def shrink_note(seconds: float, groups: list[Group], limit_hours: float = SHRINK_ABOVE_HOURS) -> str:
    """Where a suite would take more than ``limit_hours``: the costliest groups of tasks, each with its share
    and the knob that cuts it, until cutting them would bring the suite under the limit; "" otherwise."""
    hours = seconds / 3600
    if hours <= limit_hours:
        return ""
    excess, cut, parts = seconds - limit_hours * 3600, 0.0, []
    for g in groups:
        parts.append(f"{g.name} ({g.seconds / seconds:.0%}: {_knob(g)})")
        cut += g.seconds
        if cut >= excess or len(parts) == 3:
            break
    return (f"over {limit_hours:g} h: shrink {'; '.join(parts)}; {excess / 3600:.0f} h must go "
            f"(or split the suite across GPUs: --devices cuda:0,cuda:1,...)")


def _knob(group: Group) -> str:
    return {"train": "fewer epochs or seeds, or a smaller train_size",
            "craft": "fewer steps, restarts or EOT draws, or a smaller eval_size",
            "score": "fewer repeats or a smaller eval_size",
            "detector-data": "fewer detector training examples",
            "adaptive": "fewer steps or a smaller eval_size",
            }.get(group.kind, "a smaller eval_size")


def estimate_rows(suite_paths: Iterable[Path], device: str, rates=None, throughput: str | None = None,
                  limit_hours: float = SHRINK_ABOVE_HOURS, shown: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per suite: tasks, estimated hours on ``device``, where the time goes, what to shrink.
    ``shown``: the file each row names (default: the path, relative to the repository)."""
    rows = []
    for i, path in enumerate(suite_paths):
        e = estimate_suite(Path(path), device, rates)
        if shown is not None:
            e["file"] = shown[i]
        seconds = e["seconds"]
        kinds = ", ".join(f"{k} {s / seconds:.0%}" for k, s in sorted(e["by_kind"].items(), key=lambda kv: -kv[1])
                          if s / seconds >= 0.01)
        top = e["groups"][0]
        rows.append({"suite": e["suite"], "file": e["file"], "suite_sha": blob_sha(Path(path)),
                     "tasks": e["tasks"], "device": device, "basis": _basis(device, rates),
                     "gpu_hours": _hours(seconds), "seconds": round(seconds), "by_kind": kinds,
                     "costliest": f"{top.name} ({top.seconds / seconds:.0%})",
                     "shrink": shrink_note(seconds, e["groups"], limit_hours),
                     "throughput": throughput or e["rates"]})
    return rows


def _basis(device: str, rates) -> str:
    """"measured" where the cost model times passes on this machine's device, else "assumed"."""
    return "measured" if (rates or fresh_rates(device)).here else "assumed"


def blob_sha(path: Path) -> str:
    """A file's git blob hash (``git hash-object``; ``git rev-parse REV:PATH`` of a committed one): which
    version of a suite an estimate row priced."""
    import hashlib

    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def suite_files(names: Iterable[str], rev: str | None, into: Path) -> list[Path]:
    """``suites/<name>.yaml`` for each name: the working tree's, or as committed at ``rev`` (copied into
    ``into`` under the same names), so a table can price the committed suites while others edit theirs."""
    import subprocess

    paths = []
    for name in names:
        path = SUITES / f"{name}.yaml"
        if rev is not None:
            text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:suites/{name}.yaml"], check=True,
                                  capture_output=True).stdout
            path = Path(into) / "suites" / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text)
        paths.append(path)
    return paths


def stale_rows(csv_path: Path) -> list[str]:
    """The rows of an estimates table whose suite file has changed since it was priced (or is gone)."""
    stale = []
    with Path(csv_path).open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            path = ROOT / row["file"]
            if not path.is_file() or blob_sha(path) != row["suite_sha"]:
                stale.append(row["suite"])
    return stale


def _hours(seconds: float) -> float:
    """Hours to two significant figures (0.023, 0.23, 2.3, 23, 230)."""
    hours = seconds / 3600
    if hours <= 0:
        return 0.0
    from math import floor, log10

    return round(hours, max(0, 1 - floor(log10(hours))))


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["suite"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def readme_line(row: dict[str, Any], gpu: str = "one H100") -> str:
    """A README line for an estimate row: ``suite: ≈ N GPU-hours on one H100 (T tasks)``."""
    return f"`{row['suite']}`: ≈ {row['gpu_hours']:g} GPU-hours on {gpu} ({row['tasks']} tasks)"


# ---- tests ----------------------------------------------------------------------------------------------

def test_counts(junit: Path) -> dict[str, Any]:
    """pytest's ``--junitxml`` read back: counts and the ids of failed tests."""
    if not Path(junit).is_file():
        return {"status": "no report"}
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    ran = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase") if c.find("skipped") is None]
    return {"status": "reported", "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
            "failed_ids": failed[:20], "ran": ran}


# ---- summary -------------------------------------------------------------------------------------------

def read_stages(path: Path) -> list[dict[str, Any]]:
    """check.sh's ``stages.tsv``: name, status (or the exit status), seconds, limit, note; one line a stage."""
    stages = []
    if not Path(path).is_file():
        return stages
    for line in Path(path).read_text().splitlines():
        name, rc, seconds, limit, note = (line.split("\t") + [""] * 5)[:5]
        status = rc if rc in ("skipped",) else STAGE_STATUS.get(int(rc), "failed")
        stages.append({"name": name, "status": status, "rc": None if rc == "skipped" else int(rc),
                       "seconds": round(float(seconds or 0), 1), "limit_s": int(limit) if limit else None,
                       **({"note": note} if note else {})})
    return stages


def _json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def summary(work: Path, mode: str, started: float) -> dict[str, Any]:
    """Every stage's status and seconds, and what each part file under ``work`` says, as one object."""
    work = Path(work)
    env = _json(work / "env.json") or {}
    stages = read_stages(work / "stages.tsv")
    nvidia = work / "nvidia-smi.txt"
    suite = _json(work / "suite.json")
    estimates = _json(work / "estimates.json")
    if suite and estimates:  # the cost model's estimate of the suite beside what it took
        mine = next((e for e in estimates if e.get("file") == suite.get("file")), None)
        if mine:
            suite["estimated_s"] = mine["seconds"]
    from .provenance import git_commit

    device = env.get("device", "unknown")
    problems = [f"stage {s['name']}: {s['status']}" for s in stages if s["status"] not in ("ok", "skipped")]
    if mode == "device" and device != "cuda":
        problems.append(f"device mode, but PyTorch sees no GPU here (device {device})")
    if not stages:
        problems.append("no stage ran")
    return {
        "schema": 1,
        "issue": 28,
        "mode": mode,
        "device": device,
        "gpus": env.get("gpus", []),
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "git_commit": git_commit(),
        "prepared": _json(ROOT / ".device-data" / "prepared.json"),  # prepare.sh's commit, time and wheels
        "versions": env.get("versions", {}),
        "platform": {k: env.get(k) for k in ("platform", "machine", "cpu_count", "torch_threads")},
        "nvidia_smi": "recorded" if nvidia.is_file() and nvidia.stat().st_size else "absent",
        "stages": stages,
        "ok": not problems,
        "problems": problems,
        "tests": test_counts(work / "tests.xml"),
        "scheduler": _json(work / "scheduler.json"),
        "suite": suite,
        "gpu_utilization": gpu_stats(work / "gpu.csv"),
        "estimates": estimates,
    }


# ---- command line -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("env")
    a.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("scheduler")
    a.add_argument("--suite", type=Path, required=True)
    a.add_argument("--n", type=int, default=256)
    a.add_argument("--device", default="cpu")
    a.add_argument("--out-dir", type=Path, required=True)
    a.add_argument("--json", type=Path, required=True)
    a.add_argument("--no-pool", action="store_true")
    a.add_argument("--repeats", type=int, default=3)
    a = sub.add_parser("suite-report")
    a.add_argument("--store", type=Path, required=True)
    a.add_argument("--suite", type=Path, required=True)
    a.add_argument("--wall", type=float)
    a.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("gpu-stats")
    a.add_argument("samples", type=Path)
    a = sub.add_parser("estimates")
    a.add_argument("suites", type=Path, nargs="+")
    a.add_argument("--device", default="cuda")
    a.add_argument("--csv", type=Path)
    a.add_argument("--json", type=Path)
    a = sub.add_parser("summary")
    a.add_argument("--work", type=Path, required=True)
    a.add_argument("--mode", choices=["device", "smoke"], required=True)
    a.add_argument("--started", type=float, required=True)
    a.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    if args.cmd == "env":
        _write_json(args.out, environment())
    elif args.cmd == "scheduler":
        rows = scheduler(args.suite, args.n, args.device, args.out_dir, pool=not args.no_pool, repeats=args.repeats)
        _write_json(args.json, {"device": args.device, "n": args.n, "suite": _relative(args.suite),
                                "pool": not args.no_pool, "repeats": args.repeats, "rows": rows})
    elif args.cmd == "suite-report":
        _write_json(args.out, suite_report(args.store, args.suite, args.wall))
    elif args.cmd == "gpu-stats":
        print(json.dumps(gpu_stats(args.samples), indent=1))
    elif args.cmd == "estimates":
        rows = estimate_rows(args.suites, args.device)
        for row in rows:
            print(f"{row['suite']}: {row['tasks']} tasks, ≈ {row['gpu_hours']:g} h on {row['device']}; "
                  f"{row['by_kind']}; costliest {row['costliest']}" + (f"; {row['shrink']}" if row["shrink"] else ""))
        if rows:
            print(f"throughput: {rows[0]['throughput']}")
        if args.csv:
            write_csv(rows, args.csv)
        if args.json:
            _write_json(args.json, rows)
    elif args.cmd == "summary":
        out = summary(args.work, args.mode, args.started)
        _write_json(args.out, out)
        print(f"summary: {args.out}: device {out['device']}, {len(out['stages'])} stages in {out['seconds']}s; "
              + ("; ".join(out["problems"]) if out["problems"] else "all ok"))
    return 0


def _write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
