"""The ``advbench`` command line.

    advbench run SUITE [--dry-run]     plan, run what is not stored yet, rebuild the leaderboard
    advbench validate SUITE            check a suite without running anything
    advbench list defenses|attacks|datasets|architectures|baseline-detectors|executors|views
    advbench leaderboard               rebuild leaderboard/ from the store
    advbench store check [--repair]    artifacts against their recorded hashes, orphans, failed tasks
    advbench export [--out FILE]       the stored results as CSV, JSON or Parquet (from FILE's extension; bench.api)
    advbench compare OLD.csv NEW.csv   two leaderboards' numbers: exit 1 if one moved beyond its 95% interval
    advbench bench attacks             throughput and strength of each attack vs a baseline
    advbench bench ensembles           ensemble members in a loop vs batched (vmap): forward and input gradient
    advbench bench numerics            portable vs native CPU numerics: weights' hash per thread count and ISA, cost
    advbench --version                 the installed version

User errors print one line and exit 2; a run with failed tasks exits 1;
Ctrl-C exits 130 and the next run resumes. Nothing heavy (torch, pandas) is imported before a command
runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from .errors import UserError

# The keys of bench.registry.REGISTRIES (not imported here: `advbench --help` stays fast).
REGISTRY_KINDS = ("defenses", "attacks", "datasets", "architectures", "baseline-detectors", "classifiers", "certifiers",
                  "executors", "views")

DEFAULT_STORE = "results"
DEFAULT_LEADERBOARD = "leaderboard"
DEFAULT_DATA = "data"


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one and the text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "default" in text
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})"


def _version() -> str:
    """The installed distribution's version, else the package's (a source tree on sys.path), else pyproject's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("advbench")
    except PackageNotFoundError:
        pass
    from . import __version__

    if __version__:
        return __version__
    import tomllib  # pragma: no cover - bench always defines __version__

    return tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["version"]


class _VersionAction(argparse.Action):
    """``--version``: the version is looked up only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"advbench {_version()}")
        parser.exit()


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=DEFAULT_DATA, help="where torchvision datasets live")
    p.add_argument("--download", action="store_true",
                   help="run: download missing torchvision datasets into --data-dir; validate: accept data not on "
                        "disk yet and say what the run will fetch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advbench", formatter_class=_HelpFormatter,
        description="Benchmark harness for adversarial robustness: run a YAML suite of datasets × defenses × "
                    "attacks × budgets, store every number, and build the leaderboard.",
        epilog="advbench COMMAND --help describes each command. User errors exit 2; a run with failed tasks "
               "exits 1.")
    parser.add_argument("--version", action=_VersionAction, help="print advbench's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description, formatter_class=_HelpFormatter)

    run = command("run", "run a suite (resumes; skips stored work) and rebuild the leaderboard",
                  "Validate and plan a suite, run every task the store does not hold yet, and rebuild the "
                  "leaderboard. Interrupted, the same command resumes; nothing stored is run twice.")
    run.add_argument("suite", type=Path, help="the suite's YAML file (e.g. suites/mnist-quick.yaml)")
    run.add_argument("--store", default=DEFAULT_STORE, help="results directory")
    run.add_argument("--leaderboard", default=DEFAULT_LEADERBOARD, help="leaderboard directory")
    run.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="overrides the suite's device")
    run.add_argument("--executor", default="local", metavar="NAME",
                     help="local: in this process; pool: worker processes (implied by --workers or --devices); "
                          "ray: workers on a Ray cluster (pip install 'advbench[ray]'); or one a plugin registers "
                          "(advbench list executors)")
    run.add_argument("--devices", help="pool: auto (every CUDA device, else the CPU), cpu, cuda, or cuda:0,cuda:1")
    run.add_argument("--workers", type=int, metavar="N",
                     help="pool: worker processes per device (default 1; on the CPU the cores are divided between "
                          "them); ray: workers in all (default: the cluster's)")
    run.add_argument("--gpus-per-worker", type=float, metavar="X",
                     help="ray: the GPU share each worker asks for (0.25: four workers share a GPU; default 1 with a "
                          "CUDA device, else none)")
    run.add_argument("--no-fuse", action="store_true",
                     help="pool/ray: run every task alone: no craft tasks fused across budgets (the default on GPUs) "
                          "and no score tasks fused across crafted sets (the default everywhere)")
    run.add_argument("--numerics", choices=["native", "portable"],
                     help="portable: pin CPU kernels to AVX2 so any x86-64 machine computes the same numbers; "
                          "native: the fastest kernels for this CPU (default: the suite's numerics, else native)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the planned tasks, how many are done and an estimate of the rest; run nothing")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_args(run)

    val = command("validate", "check a suite: schema, names, parameters, budgets, data",
                  "Check a suite without running anything: its schema, every registered name and parameter, the "
                  "budgets and the datasets' files; print the number of tasks it plans. Exit 2 on a mistake.")
    val.add_argument("suite", type=Path, help="the suite's YAML file")
    _add_data_args(val)

    lst = command("list", "list registered entries with their parameters and defaults",
                  "List the registered entries of one kind (built in and from plugins) with their descriptions, "
                  "and the parameters a suite may set, with their types and defaults.")
    lst.add_argument("kind", choices=list(REGISTRY_KINDS), metavar="KIND", help="which registry: %(choices)s")

    lb = command("leaderboard", "rebuild the leaderboard from the store",
                 "Rebuild the leaderboard (README.md, index.html, plots/, numbers.csv) from the results store, "
                 "without running anything.")
    lb.add_argument("--store", default=DEFAULT_STORE, help="the results directory to read")
    lb.add_argument("--out", default=DEFAULT_LEADERBOARD, help="the leaderboard directory to write")
    lb.add_argument("--suite", help="only this suite's results (default: every suite, each its own sections)")

    st = command("store", "check a results store (artifacts against their hashes, orphans, failures)",
                 "Check a results store: every artifact against its recorded SHA-256 and size, files no task "
                 "owns, failed tasks. Exit 0 if it is sound (or was repaired), 1 if problems are left.")
    st.add_argument("action", choices=["check"], help="what to do: %(choices)s")
    st.add_argument("--store", default=DEFAULT_STORE, help="the results directory to check")
    st.add_argument("--repair", action="store_true",
                    help="drop what is broken (artifacts and their tasks, orphan files, failed tasks' records) so "
                         "the next run recomputes it")

    cmp = command("compare", "compare two leaderboards' numbers.csv: exit 1 if a number moved beyond the 95%% "
                             "intervals",
                  "Compare two leaderboards' numbers.csv, row by key: exit 1 if a number moved beyond the 95% "
                  "intervals (each value outside the other's), 0 otherwise; changes within them are printed. An "
                  "empty baseline file means there is nothing to compare yet (exit 0).")
    cmp.add_argument("baseline", type=Path, help="the earlier numbers.csv (e.g. the committed leaderboard's); "
                                                 "an empty file: no baseline yet")
    cmp.add_argument("current", type=Path, help="the new numbers.csv")

    ex = command("export", "write the stored results (and detection results) as CSV, JSON or Parquet",
                 "Write the stored results of every suite's latest plan (and the detection results, beside them) "
                 "as a CSV, JSON or Parquet file that reads back equal.")
    ex.add_argument("--store", default=DEFAULT_STORE, help="the results directory to read")
    ex.add_argument("--format", choices=["csv", "json", "parquet"],
                    help="csv, json (a list of records) or parquet (needs pyarrow) (default: from --out's "
                         "extension, else csv)")
    ex.add_argument("--out", help="the results file (detection rows beside it as <stem>.detection<suffix>); "
                                  "default: <store>/export/results.<format>")
    ex.add_argument("--suite", help="only this suite's results (default: every suite's latest plan)")

    bench = command("bench", "benchmarks of the harness itself",
                    "Measure the harness against a baseline run in the same process and write the table to "
                    "<out>/<what>.csv and .json: attacks (throughput and strength), ensembles (members in a loop "
                    "vs batched), numerics (portable vs native CPU kernels), scheduler (executors on a suite), "
                    "certify (randomized smoothing's CERTIFY, ours vs ART's: radii and throughput).")
    bench.add_argument("what", choices=["attacks", "ensembles", "numerics", "scheduler", "certify"],
                       help="which benchmark: %(choices)s")
    bench.add_argument("--suite", type=Path, default=Path("suites/mnist-quick.yaml"),
                       help="scheduler: the suite run cold by the sequential executor and 1 and 2 pool workers")
    bench.add_argument("--epochs", type=int, default=2, help="numerics: training epochs per probe")
    bench.add_argument("--n", type=int, default=256, help="examples per attack or timed ensemble pass")
    bench.add_argument("--images", type=int, default=100, help="certify: test images certified")
    bench.add_argument("--device", default="cpu", help="attacks, ensembles, scheduler: the device to measure on")
    bench.add_argument("--attacks", nargs="*",
                       help="attacks: a subset of benchmark names (or 'torchattacks'); their rows replace the "
                            "same rows of the existing table, the others are kept (default: all)")
    bench.add_argument("--repeats", type=int, default=5,
                       help="attacks, ensembles: timed runs per case, best kept (1: one run after a warm-up on 8 "
                            "examples, for cases that take minutes)")
    bench.add_argument("--members", nargs="+", type=int, default=[3, 10], help="ensembles: member counts")
    bench.add_argument("--out", default=f"{DEFAULT_LEADERBOARD}/benchmarks",
                       help="where the table is written as <what>.csv and <what>.json")
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
    from .runner.estimate import absurd_estimate

    warning = absurd_estimate(plan, suite.device)
    if warning:
        print(f"advbench: warning: {args.suite}: {warning}", file=sys.stderr)
    return 0


def _shared_params(entries) -> list[str]:
    """The parameters (name, type and default) that nearly every entry takes (at least 3 and 3 in 4 of them:
    the defenses' training parameters), to be listed once under the table rather than on every row."""
    if len(entries) < 3:
        return []
    counts: dict[str, int] = {}
    for entry in entries:
        for described in dict.fromkeys(p.describe() for p in entry.params if p.name != "backend"):
            counts[described] = counts.get(described, 0) + 1
    return [d for d, n in counts.items() if n >= 0.75 * len(entries)]


def cmd_list(args) -> int:
    from tabulate import tabulate

    from .registry import REGISTRIES

    entries = REGISTRIES[args.kind].entries()
    if args.kind == "executors":
        return _list_executors(entries)
    shared = _shared_params(entries)
    shared_names = list(dict.fromkeys(d.split(":")[0] for d in shared))
    rows = []
    for entry in entries:
        extra = ""
        if args.kind == "attacks":
            cls = entry.factory
            extra = f"{cls.threat_model}, budget={cls.budget_param}, backends={'/'.join(cls.backends)}"
        own = [p for p in entry.params if p.name != "backend"]
        params = ", ".join(p.describe() for p in own if p.describe() not in shared)
        lacks = [n for n in shared_names if n not in {p.name for p in own}]
        if lacks:
            note = "none of the shared ones" if len(lacks) == len(shared_names) else f"not {', '.join(lacks)}"
            params = f"{params}; {note}" if params else note
        rows.append([entry.name, entry.description, *([extra] if extra else []), params])
    headers = ["name", "description", *(["threat model"] if args.kind == "attacks" else []), "parameters (= default)"]
    print(tabulate(rows, headers=headers, tablefmt="simple", maxcolwidths=[None, 50, 30, 70][-len(headers):]))
    if shared:
        kind = REGISTRIES[args.kind].kind
        print("\n" + textwrap.fill(f"every {kind} also takes, unless its row says otherwise (\"not ...\", or its "
                                   f"own default): {', '.join(shared)}", width=120, subsequent_indent="  "))
    return 0


def _list_executors(entries) -> int:
    """Executors take command-line options, not suite parameters: each row names the flags it takes."""
    from tabulate import tabulate

    from .runner.executor import executor_flags

    def wrap(text: str, width: int) -> str:  # a flag such as --gpus-per-worker stays whole
        return textwrap.fill(text, width, break_on_hyphens=False, break_long_words=False)

    rows = [[e.name, wrap(e.description, 70), wrap(" ".join(executor_flags(e)) or "none", 30)] for e in entries]
    print(tabulate(rows, headers=["name", "description", "options"], tablefmt="simple"))
    print("\nadvbench run SUITE --executor NAME [--workers N] [--devices D] [--gpus-per-worker X] [--no-fuse]\n"
          "  (--workers or --devices alone pick pool; advbench run --help)")
    return 0


def _rebuild_leaderboard(store, out: Path, suite: str | None = None) -> list[Path]:
    """The leaderboard from every result in some suite's latest plan (or in ``suite``'s only), each suite
    its own sections; returns the written paths."""
    from .registry import UnknownName
    from .report import build_leaderboard

    results, detections, certificates = store.results(), store.detections(), store.certificates()
    if suite is not None:
        known = store.suites()
        if suite not in known:
            raise UserError(f"--suite: {UnknownName('suite in this store', suite, known)}")
        keys = store.plan_keys(suite)
        mine = results["key"].isin(keys)
        results = results[mine].assign(plan_suites=[[suite]] * int(mine.sum()))  # this suite's sections only
        detections = detections[detections["task_key"].isin(keys)]
        certified = certificates["task_key"].isin(keys)
        certificates = certificates[certified].assign(plan_suites=[[suite]] * int(certified.sum()))
    if results.empty and detections.empty and (out / "README.md").exists():
        # A run that stored nothing (every training failed, a new store) must not wipe a good leaderboard.
        print(f"leaderboard: the store has no results yet; {out} left as it was")
        return []
    def warn(problem: str) -> None:
        print(f"advbench: warning: leaderboard: {problem}", file=sys.stderr)

    try:
        paths = build_leaderboard(results, out, detections=detections, settings=store.suite_settings(),
                                  on_problem=warn, certificates=certificates)
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


def _check_executor(args) -> None:
    """``--workers`` and ``--gpus-per-worker`` are positive, and ``--executor`` names a registered executor
    (plugins included) that takes the options given; else a ``UserError`` with the choices or close matches.
    Nothing is built (Ray is not started)."""
    import math

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers} (pool: worker processes per device; "
                        f"ray: workers in all)")
    share = args.gpus_per_worker
    if share is not None and not (math.isfinite(share) and share > 0 and (share <= 1 or share == int(share))):
        raise UserError(f"--gpus-per-worker must be a share of one GPU above 0 and at most 1 (0.25: four workers "
                        f"share a GPU) or a whole number of GPUs, got {share:g}")
    from .runner.executor import check_executor

    check_executor(*_executor_choice(args))


def cmd_run(args) -> int:
    from .numerics import pin_portable_numerics, requested_mode

    # Before anything imports torch: the kernel choice is read once (bench/numerics.py).
    if (args.numerics or requested_mode(args.suite)) == "portable":
        pin_portable_numerics(where=f"{args.suite}: numerics" if args.numerics is None else "--numerics")
    _check_executor(args)  # a bad --executor or option fails before anything, a dry run included

    from .config import load_suite
    from .plan import build_plan
    from .runner import RunContext, get_executor, resolve_device
    from .store import Store

    from dataclasses import replace

    data = _data_ctx(args)
    # A dry run reads the datasets' registry meta (shape, sizes), not their files, so it sizes and prices a plan
    # before anything is downloaded; validate and a real run check the files.
    suite = load_suite(args.suite, data_ctx=replace(data, check_files=False) if args.dry_run else data)
    plan = build_plan(suite)
    if args.dry_run:  # before resolve_device: a device this machine lacks (--device cuda) is estimated, not refused
        from .runner.estimate import dry_run

        return dry_run(suite, plan, args.device or suite.device, args.store, data)
    device = resolve_device(args.device or suite.device)

    executor = get_executor(*_executor_choice(args))  # a bad name or option fails before anything is written
    store = Store(args.store)
    store.set_suite_plan(suite.name, plan.keys, settings={"headline": suite.headline})
    ctx = RunContext(store_dir=Path(args.store), data=_data_ctx(args), device=device,
                     batch_size=suite.batch_size, progress=not args.quiet and sys.stderr.isatty(), suite=suite.name)
    print(f"{suite.name}: {len(plan.tasks)} tasks, {len(store.done_keys(plan.keys))} already stored; device {device}")
    from .runner.backfill import backfill_per_example

    filled = backfill_per_example(plan, ctx, store)  # an older store's rows: from their stored inputs, nothing re-run
    if filled:
        print(f"{suite.name}: {filled} stored rows got their per-example indices and perturbation sizes from their "
              f"crafted examples")
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

    current = read_numbers(args.current, role="current")
    if current is None:
        raise UserError(f"current {args.current}: the file is empty (a leaderboard build writes numbers.csv)")
    baseline = read_numbers(args.baseline, role="baseline")
    if baseline is None:  # an empty file: CI's first run, before a leaderboard is committed
        print(f"compare: no baseline numbers at {args.baseline}; nothing to compare")
        return 0
    comparison = compare_numbers(baseline, current)
    for line in comparison.lines():
        print(line)
    return 0 if comparison.ok else 1


def cmd_export(args) -> int:
    from .api import FORMATS, export

    fmt = args.format
    if fmt is None and args.out is not None:
        fmt = Path(args.out).suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            shown = f"extension {Path(args.out).suffix!r}" if Path(args.out).suffix else "no extension"
            raise UserError(f"--out {args.out}: {shown}: end the name in .csv, .json or .parquet, or give "
                            f"--format {'|'.join(FORMATS)}")
    for path in export(args.store, fmt=fmt or "csv", out=args.out, suite=args.suite):
        print(f"export: {path}")
    return 0


def cmd_bench(args) -> int:
    from .benchmark import run_attack_benchmark, run_ensemble_benchmark

    if args.what == "certify":
        from .benchmark_certify import run_certify_benchmark

        run_certify_benchmark(n=args.images, device=args.device, repeats=args.repeats, out_dir=args.out)
        return 0
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
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help and --version (0), a malformed command line (2: argparse said why)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"advbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
