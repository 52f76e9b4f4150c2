"""The ``advbench`` command line.

    advbench run SUITE [--dry-run]     plan, run what is not stored yet, rebuild the leaderboard
    advbench validate SUITE            check a suite without running anything
    advbench list defenses|attacks|datasets|architectures|baseline-detectors|executors|views
    advbench leaderboard               rebuild leaderboard/ from the store
    advbench store check [--repair]    artifacts against their recorded hashes, orphans, failed tasks
    advbench export --format csv|json|parquet   the stored results as a file (bench.api)
    advbench compare OLD.csv NEW.csv   two leaderboards' numbers: exit 1 if one moved beyond its 95% interval
    advbench bench attacks             throughput and strength of each attack vs a baseline
    advbench bench ensembles           ensemble members in a loop vs batched (vmap): forward and input gradient
    advbench bench numerics            portable vs native CPU numerics: weights' hash per thread count and ISA, cost

User errors print one line and exit 2; a run with failed tasks exits 1;
Ctrl-C exits 130 and the next run resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError

# The keys of bench.registry.REGISTRIES (not imported here: `advbench --help` stays fast).
REGISTRY_KINDS = ("defenses", "attacks", "datasets", "architectures", "baseline-detectors", "executors", "views")

DEFAULT_STORE = "results"
DEFAULT_LEADERBOARD = "leaderboard"
DEFAULT_DATA = "data"


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=DEFAULT_DATA, help="where torchvision datasets live (default: data)")
    p.add_argument("--download", action="store_true", help="download missing torchvision datasets into --data-dir")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advbench", description="Benchmark harness for adversarial robustness.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (resumes; skips stored work) and rebuild the leaderboard")
    run.add_argument("suite", type=Path)
    run.add_argument("--store", default=DEFAULT_STORE, help="results directory (default: results)")
    run.add_argument("--leaderboard", default=DEFAULT_LEADERBOARD, help="leaderboard directory (default: leaderboard)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="overrides the suite's device")
    run.add_argument("--executor", default="local",
                     help="local: in this process (default); pool: worker processes (implied by --workers or --devices); "
                          "ray: workers on a Ray cluster (pip install 'advbench[ray]'); or one a plugin registers "
                          "(advbench list executors)")
    run.add_argument("--devices", help="pool: auto (every CUDA device, else the CPU), cpu, cuda, or cuda:0,cuda:1")
    run.add_argument("--workers", type=int, help="pool: worker processes per device (default 1; on the CPU the cores "
                                                 "are divided between them); ray: workers in all (default: the cluster's)")
    run.add_argument("--gpus-per-worker", type=float,
                     help="ray: the GPU share each worker asks for (0.25: four workers share a GPU; default 1 with a "
                          "CUDA device, else 0)")
    run.add_argument("--no-fuse", action="store_true",
                     help="pool/ray: run every task alone: no craft tasks fused across budgets (the default on GPUs) "
                          "and no score tasks fused across crafted sets (the default everywhere)")
    run.add_argument("--numerics", choices=["native", "portable"],
                     help="portable: pin CPU kernels to AVX2 so any x86-64 machine computes the same numbers; "
                          "native: the fastest kernels for this CPU (default: the suite's numerics, else native)")
    run.add_argument("--dry-run", action="store_true", help="print the planned tasks and how many are done")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_args(run)

    val = sub.add_parser("validate", help="check a suite: schema, names, parameters, budgets, data")
    val.add_argument("suite", type=Path)
    _add_data_args(val)

    lst = sub.add_parser("list", help="list registered entries with their parameters and defaults")
    lst.add_argument("kind", choices=list(REGISTRY_KINDS))

    lb = sub.add_parser("leaderboard", help="rebuild the leaderboard from the store")
    lb.add_argument("--store", default=DEFAULT_STORE)
    lb.add_argument("--out", default=DEFAULT_LEADERBOARD)
    lb.add_argument("--suite", help="only this suite's results (default: every suite, each its own sections)")

    st = sub.add_parser("store", help="check a results store (artifacts against their hashes, orphans, failures)")
    st.add_argument("action", choices=["check"])
    st.add_argument("--store", default=DEFAULT_STORE)
    st.add_argument("--repair", action="store_true",
                    help="drop what is broken (artifacts and their tasks, orphan files, failed tasks' records) so "
                         "the next run recomputes it")

    cmp = sub.add_parser("compare", help="compare two leaderboards' numbers.csv: exit 1 if a number moved beyond "
                                         "the 95% intervals")
    cmp.add_argument("baseline", type=Path, help="the earlier numbers.csv (e.g. the committed leaderboard's)")
    cmp.add_argument("current", type=Path, help="the new numbers.csv")

    ex = sub.add_parser("export", help="write the stored results (and detection results) as CSV, JSON or Parquet")
    ex.add_argument("--store", default=DEFAULT_STORE)
    ex.add_argument("--format", default="csv", choices=["csv", "json", "parquet"],
                    help="csv (default), json (a list of records) or parquet (needs pyarrow)")
    ex.add_argument("--out", help="the results file (detection rows beside it as <stem>.detection<suffix>); "
                                  "default: <store>/export/results.<format>")
    ex.add_argument("--suite", help="only this suite's results (default: every suite's latest plan)")

    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("what", choices=["attacks", "ensembles", "numerics", "scheduler"])
    bench.add_argument("--suite", type=Path, default=Path("suites/mnist-quick.yaml"),
                       help="scheduler: the suite run cold by the sequential executor and 1 and 2 pool workers")
    bench.add_argument("--epochs", type=int, default=2, help="numerics: training epochs per probe")
    bench.add_argument("--n", type=int, default=256, help="examples per attack or timed ensemble pass")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--attacks", nargs="*",
                       help="attacks: a subset of benchmark names (or 'torchattacks'); their rows replace the "
                            "same rows of the existing table, the others are kept")
    bench.add_argument("--repeats", type=int, default=5,
                       help="attacks, ensembles: timed runs per case, best kept (1: one run after a warm-up on 8 "
                            "examples, for cases that take minutes)")
    bench.add_argument("--members", nargs="+", type=int, default=[3, 10], help="ensembles: member counts")
    bench.add_argument("--out", default=f"{DEFAULT_LEADERBOARD}/benchmarks",
                       help="where the table is written as <what>.csv and <what>.json (default: leaderboard/benchmarks)")
    return parser


def _data_ctx(args):
    from .data import DataContext

    return DataContext(Path(args.data_dir), args.download)


def cmd_validate(args) -> int:
    from .config import load_suite
    from .plan import build_plan

    suite = load_suite(args.suite, data_ctx=_data_ctx(args))
    plan = build_plan(suite)
    kinds = dict.fromkeys(t.kind for t in plan.tasks)  # in plan order: train, craft, score, detector steps
    counts = {k: len(plan.by_kind(k)) for k in kinds}
    detectors = f", {len(suite.detectors)} detector(s)" if suite.detectors else ""
    print(f"{args.suite}: ok — {len(suite.datasets)} dataset(s), {len(suite.defenses)} defense(s), "
          f"{len(suite.attacks)} attack(s){detectors}, {len(suite.seeds)} seed(s); "
          f"{len(plan.tasks)} tasks ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    return 0


def cmd_list(args) -> int:
    from tabulate import tabulate

    from .registry import REGISTRIES

    rows = []
    for entry in REGISTRIES[args.kind].entries():
        extra = ""
        if args.kind == "attacks":
            cls = entry.factory
            extra = f"{cls.threat_model}, budget={cls.budget_param}, backends={'/'.join(cls.backends)}"
        params = ", ".join(p.describe() for p in entry.params if p.name != "backend")
        rows.append([entry.name, entry.description, *([extra] if extra else []), params])
    headers = ["name", "description", *(["threat model"] if args.kind == "attacks" else []), "parameters (= default)"]
    print(tabulate(rows, headers=headers, tablefmt="simple", maxcolwidths=[None, 50, 30, 70][-len(headers):]))
    return 0


def _rebuild_leaderboard(store, out: Path, suite: str | None = None) -> list[Path]:
    """The leaderboard from every result in some suite's latest plan (or in ``suite``'s only), each suite
    its own sections; returns the written paths."""
    from .registry import UnknownName
    from .report import build_leaderboard

    results, detections = store.results(), store.detections()
    if suite is not None:
        known = store.suites()
        if suite not in known:
            raise UserError(f"--suite: {UnknownName('suite in this store', suite, known)}")
        keys = store.plan_keys(suite)
        mine = results["key"].isin(keys)
        results = results[mine].assign(plan_suites=[[suite]] * int(mine.sum()))  # this suite's sections only
        detections = detections[detections["task_key"].isin(keys)]
    if results.empty and detections.empty and (out / "README.md").exists():
        # A run that stored nothing (every training failed, a new store) must not wipe a good leaderboard.
        print(f"leaderboard: the store has no results yet; {out} left as it was")
        return []
    def warn(problem: str) -> None:
        print(f"advbench: warning: leaderboard: {problem}", file=sys.stderr)

    try:
        paths = build_leaderboard(results, out, detections=detections, settings=store.suite_settings(),
                                  on_problem=warn)
    except OSError as e:  # a read-only or full disk, a file where the directory should be
        raise UserError(f"{out}: cannot write the leaderboard there: {e.strerror or e}"
                        f"{f' ({e.filename})' if e.filename else ''}") from None
    extra = f" and {len(detections)} detection results" if len(detections) else ""
    print(f"leaderboard: {len(results)} results{extra} -> {', '.join(str(p) for p in paths[:2])}")
    return paths


def cmd_leaderboard(args) -> int:
    from .store import Store

    store = Store.open_existing(args.store, readonly=True)  # a report needs no write access to the store
    if store is None:
        raise UserError(f"--store {args.store}: no results store there; run a suite first (advbench run SUITE)")
    _rebuild_leaderboard(store, Path(args.out), args.suite)
    return 0


def cmd_store(args) -> int:
    """``store check``: exit 0 if the store is sound (or was repaired), 1 if it has problems left."""
    from .runner.heal import check_store, repair_store
    from .store import Store

    store = Store.open_existing(args.store)
    if store is None:
        raise UserError(f"--store {args.store}: no results store there")
    report = check_store(store)
    for line in report.lines():
        print(line)
    tasks = len(store.task_rows())
    print(f"{args.store}: {tasks} tasks; {len(report.broken)} broken artifacts, {len(report.orphans)} orphan "
          f"files, {len(report.failed)} failed tasks")
    if report.clean:
        return 0
    if args.repair:
        repair_store(store, report)
        print("repaired: the next run recomputes what was dropped")
        return 0
    print("run with --repair to drop them, so that the next run recomputes them")
    return 1


def _executor_choice(args) -> tuple[str, dict]:
    """The executor's name and the options the command line gives it; --workers or --devices alone pick the pool."""
    name = args.executor
    if name == "local" and (args.workers is not None or args.devices is not None):
        name = "pool"
    options = {"devices": args.devices, "workers": args.workers, "fuse": False if args.no_fuse else None,
               "gpus_per_worker": args.gpus_per_worker}
    options = {k: v for k, v in options.items() if v is not None}
    if name == "pool":
        options.pop("gpus_per_worker", None)
    return name, options


def cmd_run(args) -> int:
    from .numerics import pin_portable_numerics, requested_mode

    # Before anything imports torch: the kernel choice is read once (bench/numerics.py).
    if (args.numerics or requested_mode(args.suite)) == "portable":
        pin_portable_numerics(where=f"{args.suite}: numerics" if args.numerics is None else "--numerics")

    from .config import load_suite
    from .plan import build_plan
    from .runner import RunContext, get_executor, resolve_device
    from .store import Store

    suite = load_suite(args.suite, data_ctx=_data_ctx(args))
    plan = build_plan(suite)
    device = resolve_device(args.device or suite.device)

    if args.dry_run:
        existing = Store.open_existing(args.store)
        done = existing.done_keys(plan.keys) if existing else set()
        failed = {r["key"] for r in existing.failed_tasks(plan.keys)} if existing else set()
        for task in plan.tasks:
            state = "done" if task.key in done else ("failed, will retry" if task.key in failed else "to run")
            print(f"{task.kind:13}  {task.key}  {state:17}  {task.label}")
        from .runner.cost import TaskCosts
        from .runner.progress import duration

        todo = [t for t in plan.tasks if t.key not in done]
        costs = TaskCosts(plan, existing.wall_times(plan.keys), existing.mean_wall_times()) if existing else None
        guess = f", about {duration(costs.total(todo))} from the store's timings" if todo and costs else ""
        print(f"{len(plan.tasks)} tasks planned: {len(done)} done, {len(todo)} to run{guess} "
              f"(device {device}; store {args.store})")
        return 0

    executor = get_executor(*_executor_choice(args))  # a bad name or option fails before anything is written
    store = Store(args.store)
    store.set_suite_plan(suite.name, plan.keys, settings={"headline": suite.headline})
    ctx = RunContext(store_dir=Path(args.store), data=_data_ctx(args), device=device,
                     batch_size=suite.batch_size, progress=not args.quiet and sys.stderr.isatty(), suite=suite.name)
    print(f"{suite.name}: {len(plan.tasks)} tasks, {len(store.done_keys(plan.keys))} already stored; device {device}")
    try:
        summary = executor.run(plan, ctx, store)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(store.done_keys(plan.keys))}/{len(plan.tasks)} tasks are stored; "
              f"run the same command again to resume", file=sys.stderr)
        return 130
    print(f"{summary.ran} run, {summary.already_done} already stored, {len(summary.failed)} failed, "
          f"{len(summary.skipped)} skipped")
    try:
        _rebuild_leaderboard(store, Path(args.leaderboard))
    except KeyboardInterrupt:  # every file is written atomically: the old leaderboard stands
        print(f"\ninterrupted while building the leaderboard: every task is stored and {args.leaderboard} is "
              f"as it was; run advbench leaderboard --store {args.store} to build it", file=sys.stderr)
        return 130
    for label, error in summary.failed:
        print(f"  FAILED {label}: {error}", file=sys.stderr)
    if not summary.ok:
        print("failed tasks are retried on the next run; errors and tracebacks are in the store's tasks table",
              file=sys.stderr)
    return 0 if summary.ok else 1


def cmd_compare(args) -> int:
    """Exit 1 if a number moved beyond the intervals (each value outside the other's 95% interval)."""
    from .report.numbers import compare_numbers, read_numbers

    current = read_numbers(args.current)
    if current is None:
        raise UserError(f"{args.current}: no numbers there (a leaderboard build writes numbers.csv)")
    baseline = read_numbers(args.baseline)
    if baseline is None:
        print(f"compare: no baseline numbers at {args.baseline}; nothing to compare")
        return 0
    comparison = compare_numbers(baseline, current)
    for line in comparison.lines():
        print(line)
    return 0 if comparison.ok else 1


def cmd_export(args) -> int:
    from .api import export

    for path in export(args.store, fmt=args.format, out=args.out, suite=args.suite):
        print(f"export: {path}")
    return 0


def cmd_bench(args) -> int:
    from .benchmark import run_attack_benchmark, run_ensemble_benchmark

    if args.what == "numerics":  # trains in child processes: the kernel choice is fixed per process
        from .benchmark import run_numerics_benchmark

        run_numerics_benchmark(epochs=args.epochs, out_dir=args.out)
        return 0
    if args.what == "scheduler":
        from .benchmark_scheduler import run_scheduler_benchmark

        run_scheduler_benchmark(suite=args.suite, n=args.n, device=args.device, out_dir=args.out)
        return 0
    if args.what == "ensembles":
        run_ensemble_benchmark(members=args.members, n=args.n, device=args.device, repeats=args.repeats,
                               out_dir=args.out)
    else:
        run_attack_benchmark(n=args.n, device=args.device, only=args.attacks, repeats=args.repeats, out_dir=args.out)
    return 0


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "leaderboard": cmd_leaderboard,
            "bench": cmd_bench, "store": cmd_store, "export": cmd_export, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"advbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
