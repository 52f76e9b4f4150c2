"""The device check (issue 28, scripts/device/): ``check.sh --smoke`` runs every stage on the CPU and writes the
summary a GPU run would; the pieces it sums up (GPU samples, stages, pytest's report, estimates) read right;
the wheel list covers the dependencies; the committed estimate table has every paper-scale suite.

The ``test_cuda_*`` tests need a GPU and skip without one: check.sh runs them on the device, selected by name
(``-k "cuda or gpu or ..."``), so no other test here has "cuda" or "gpu" in its name. Nothing else needs one.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from bench import device_check as dc

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "scripts" / "device"
STAGES = ["install", "env", "data", "suite", "scheduler", "tests", "estimates"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """check.sh --smoke, once: (exit status, output, $OUT, summary)."""
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "PYTHON": sys.executable}
    env.pop("CHECK_STAGES", None)
    proc = subprocess.run(["bash", str(DEVICE / "check.sh"), "--smoke"], check=False, env=env, capture_output=True,
                          text=True, timeout=600)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None
    return proc.returncode, proc.stdout + proc.stderr, out, summary


def test_smoke_run_passes_every_stage_and_brings_back_few_flat_files(smoke):
    rc, output, out, summary = smoke
    assert rc == 0, output[-3000:]
    assert summary is not None and summary["ok"] is True and summary["problems"] == []
    files = sorted(p.name for p in out.iterdir())
    assert all(p.is_file() for p in out.iterdir()) and len(files) <= 8  # the device tool brings back 8, flat
    assert {"summary.json", "check.log", "scheduler.csv", "estimates.csv"} <= set(files)
    assert "gpu.csv" not in files and "nvidia-smi.txt" not in files


def test_smoke_summary_names_each_stage_with_its_status_and_seconds(smoke):
    summary = smoke[3]
    assert summary["mode"] == "smoke" and summary["device"] == "cpu" and summary["gpus"] == []
    assert [s["name"] for s in summary["stages"]] == STAGES
    by_name = {s["name"]: s for s in summary["stages"]}
    assert by_name["install"]["status"] == "skipped" and "smoke" in by_name["install"]["note"]
    for name in STAGES[1:]:
        stage = by_name[name]
        assert stage["status"] == "ok" and stage["rc"] == 0, stage
        assert 0 < stage["seconds"] <= stage["limit_s"]
    assert summary["seconds"] >= sum(s["seconds"] for s in summary["stages"])
    assert summary["nvidia_smi"] == "absent" and summary["gpu_utilization"] == {"status": "absent"}


def test_smoke_summary_records_versions_suite_scheduler_tests_and_estimates(smoke):
    summary = smoke[3]
    versions = summary["versions"]
    assert versions["python"] and versions["torch"] == version("torch")
    for name in ("torchvision", "adversarial-robustness-toolbox", "foolbox", "pydantic", "mlxtend"):
        assert versions[name], name
    assert "torch_cuda" in versions and "cudnn" in versions
    assert summary["git_commit"]

    suite = summary["suite"]
    assert suite["suite"] == "device-tiny" and suite["file"] == "scripts/device/tiny.yaml"
    assert suite["tasks"] == suite["done"] == 22 and suite["failed"] == 0
    assert set(suite["by_kind"]) == {"train", "craft", "score"}
    assert suite["by_kind"]["craft"]["batch_sizes"] == {"250": 8}  # the suite's batch size: no search on a CPU
    assert 0 < suite["sum_task_s"] <= suite["wall_s"] * 2 and suite["estimated_s"] > 0

    scheduler = summary["scheduler"]
    assert scheduler["device"] == "cpu" and scheduler["pool"] is False
    fused = [r for r in scheduler["rows"] if r["benchmark"] == "fused"]
    assert [r["attack"] for r in fused] == ["pgd-linf", "fgsm", "pgd-l2"]
    assert all(r["identical"] and r["unfused_s"] > 0 for r in fused)

    tests = summary["tests"]
    assert tests["status"] == "reported" and tests["failed"] == tests["errors"] == 0
    assert tests["skipped"] >= 2 and tests["passed"] == 0  # this file's CUDA-only tests, skipped on a CPU

    (estimate,) = summary["estimates"]
    assert estimate["suite"] == "device-tiny" and estimate["tasks"] == 22 and estimate["basis"] == "measured"
    assert estimate["throughput"].startswith("measured on cpu")


# ---- the pieces ---------------------------------------------------------------------------------------------

def test_nvidia_smi_samples_are_summed_up_and_unreadable_lines_skipped(tmp_path):
    samples = tmp_path / "gpu.csv"
    samples.write_text("utilization.gpu [%], memory.used [MiB]\n0 %, 500 MiB\n50 %, 2000 MiB\n100 %, 3000 MiB\n"
                       "[N/A], [N/A]\n")
    stats = dc.gpu_stats(samples)
    assert stats == {"status": "sampled", "samples": 3, "interval_ms": 500, "utilization_mean": 50.0,
                     "utilization_median": 50.0, "utilization_max": 100.0, "busy_share": 0.667,
                     "memory_used_max_mib": 3000.0}
    assert dc.gpu_stats(tmp_path / "none.csv") == {"status": "absent"}
    (tmp_path / "empty.csv").write_text("utilization.gpu [%], memory.used [MiB]\n")
    assert dc.gpu_stats(tmp_path / "empty.csv") == {"status": "no samples"}


def test_stage_lines_read_as_ok_timeout_failed_or_skipped(tmp_path):
    tsv = tmp_path / "stages.tsv"
    tsv.write_text("install\tskipped\t0\t\tsmoke\nenv\t0\t1.23\t45\t\nsuite\t124\t240.0\t240\t\n"
                   "tests\t137\t130\t120\t\nscheduler\t1\t3\t90\tboom\n")
    assert [(s["name"], s["status"], s["rc"]) for s in dc.read_stages(tsv)] == [
        ("install", "skipped", None), ("env", "ok", 0), ("suite", "timeout", 124), ("tests", "timeout", 137),
        ("scheduler", "failed", 1)]
    assert dc.read_stages(tsv)[1]["seconds"] == 1.2 and dc.read_stages(tsv)[4]["note"] == "boom"


def test_summary_is_not_ok_for_a_failed_stage_or_a_device_run_on_a_cpu(tmp_path):
    (tmp_path / "env.json").write_text(json.dumps({"device": "cpu", "gpus": [], "versions": {"torch": "x"}}))
    (tmp_path / "stages.tsv").write_text("env\t0\t1\t45\t\nsuite\t124\t240\t240\t\n")
    out = dc.summary(tmp_path, "device", started=0.0)
    assert out["ok"] is False and out["problems"] == [
        "stage suite: timeout", "device mode, but PyTorch sees no GPU here (device cpu)"]
    assert out["tests"] == {"status": "no report"} and out["suite"] is None and out["nvidia_smi"] == "absent"
    (tmp_path / "stages.tsv").write_text("env\t0\t1\t45\t\n")
    assert dc.summary(tmp_path, "smoke", started=0.0)["ok"] is True


def test_pytest_report_counts_and_names_failures(tmp_path):
    xml = tmp_path / "tests.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" '
                   'tests="4"><testcase classname="tests.a" name="test_ok"/><testcase classname="tests.a" '
                   'name="test_ok2"/><testcase classname="tests.a" name="test_bad"><failure message="x"/></testcase>'
                   '<testcase classname="tests.a" name="test_cuda_x"><skipped message="no"/></testcase></testsuite>'
                   '</testsuites>')
    counts = dc.test_counts(xml)
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"]) == (2, 1, 0, 1)
    assert counts["failed_ids"] == ["tests.a::test_bad"] and len(counts["ran"]) == 3
    assert dc.test_counts(tmp_path / "none.xml") == {"status": "no report"}


def test_a_suite_over_a_day_says_what_to_shrink():
    groups = [dc.Group("craft", "rse", "pgd-eot20", 30 * 3600), dc.Group("train", "rse", None, 6 * 3600),
              dc.Group("score", "rse", "pgd", 1 * 3600)]
    note = dc.shrink_note(37 * 3600, groups)
    assert note.startswith("over 24 h: shrink craft pgd-eot20 on rse (81%: fewer steps, restarts or EOT draws")
    assert "train rse" not in note  # cutting the costliest group is enough
    assert "13 h must go" in note
    assert dc.shrink_note(20 * 3600, groups) == ""


def test_wheel_list_pins_every_dependency_the_device_image_lacks():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    lines = (DEVICE / "wheels.txt").read_text().splitlines()
    pinned = {line.split("==")[0].strip().lower() for line in lines if line.strip() and not line.startswith("#")}
    assert all("==" in line for line in lines if line.strip() and not line.startswith("#"))
    image = next(line for line in lines if line.startswith("# image-has:")).split(":", 1)[1].split()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for d in deps}
    assert names <= pinned | {n.lower() for n in image}, names - pinned - set(image)
    assert {"pydantic-core", "eagerpy", "gitpython"} <= pinned  # what pydantic and foolbox need beside them


def test_committed_estimates_price_every_paper_scale_suite_at_a_stated_assumption():
    with (ROOT / "leaderboard" / "benchmarks" / "estimates.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["suite"] for r in rows] == list(dc.PAPER_SUITES)
    for row in rows:
        assert row["file"] == f"suites/{row['suite']}.yaml" and int(row["tasks"]) > 0
        assert row["device"] == "cuda"
        if row["basis"] == "assumed":  # the stated assumption, no GPU run behind it
            assert row["throughput"].startswith("assumed for cuda, which this machine lacks")
            assert "H100" in row["throughput"]
        else:  # remade on a GPU: rates timed there
            assert row["basis"] == "measured" and row["throughput"].startswith("measured on cuda")
        assert float(row["gpu_hours"]) > 0 and len(row["suite_sha"]) == 40
        assert bool(row["shrink"]) == (float(row["gpu_hours"]) > dc.SHRINK_ABOVE_HOURS)


def test_estimate_rows_price_a_suite_and_name_where_its_time_goes():
    (row,) = dc.estimate_rows([DEVICE / "tiny.yaml"], "cuda")
    assert row["suite"] == "device-tiny" and row["tasks"] == 22 and row["file"] == "scripts/device/tiny.yaml"
    assert row["basis"] == ("measured" if torch.cuda.is_available() else "assumed")
    assert row["gpu_hours"] > 0 and row["shrink"] == "" and " on " in row["costliest"]
    assert row["suite_sha"] == dc.blob_sha(DEVICE / "tiny.yaml")
    assert dc.readme_line(row).startswith("`device-tiny`: ≈ ")


# ---- on a GPU only (check.sh runs these on the device) ------------------------------------------------------

@pytest.mark.cuda
@needs_cuda
def test_cuda_fused_budgets_give_what_each_budget_gives_alone():
    from bench.benchmark_scheduler import fused_rows

    rows = fused_rows(256, "cuda", repeats=1)
    assert rows and all(r["identical"] for r in rows), [(r["attack"], r["identical"]) for r in rows]


@pytest.mark.cuda
@needs_cuda
def test_cuda_pool_stores_the_numbers_one_process_stores(tmp_path):
    import sqlite3

    from bench.cli import main

    def run(store: Path, *options: str) -> dict:
        code = main(["run", str(DEVICE / "tiny.yaml"), "--store", str(store), "--leaderboard",
                     str(tmp_path / "lb"), "--quiet", *options])
        assert code == 0
        with sqlite3.connect(store / "advbench.sqlite") as db:
            assert not db.execute("SELECT COUNT(*) FROM tasks WHERE status != 'done'").fetchone()[0]
            return {r[0]: r[1:] for r in db.execute("SELECT key, n, clean_acc, robust_acc FROM results")}

    alone = run(tmp_path / "local", "--device", "cuda")
    pooled = run(tmp_path / "pool", "--devices", "cuda", "--workers", "2")
    assert alone and pooled == alone
