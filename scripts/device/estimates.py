"""Paper-scale estimates before any GPU time (issue 28): leaderboard/benchmarks/estimates.csv.

For each paper-scale suite: its task count and the cost model's GPU hours on one device
(``bench.runner.estimate``: forward/backward passes x examples x FLOPs per pass of each architecture, at a
device throughput). On a machine without that device the throughput is an assumption, stated in the table's
``throughput`` column (``--device cuda`` here: an H100's dense FP32 at 30% utilization); on a machine with
it, one pass of each architecture is timed there. A suite over 24 hours gets a note on what to shrink.

    python scripts/device/estimates.py                   # the committed suites (HEAD), --device cuda
    python scripts/device/estimates.py --rev ''          # the working tree's suites instead
    python scripts/device/estimates.py --check           # exit 1 if a suite changed since the table was made

Needs no data and no GPU; about two minutes on 2 CPU cores. Run single-threaded where other work runs
(OMP_NUM_THREADS=1): the FLOPs are counted on PyTorch's meta device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.device_check import PAPER_SUITES, ROOT, estimate_rows, readme_line, stale_rows, suite_files, write_csv  # noqa: E402

DEFAULT_OUT = ROOT / "leaderboard" / "benchmarks" / "estimates.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suites", nargs="*", default=list(PAPER_SUITES), help="suite names under suites/ (default: "
                   "the paper-scale ones)")
    p.add_argument("--device", default="cuda", help="the device priced (default: cuda)")
    p.add_argument("--rev", default="HEAD", help="price the suites as committed at this git revision ('': the "
                   "working tree's files) (default: HEAD)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the table (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="only say whether the table's suites changed since")
    args = p.parse_args(argv)

    if args.check:
        stale = stale_rows(args.out)
        print(f"{args.out}: " + (f"stale for {', '.join(stale)}: rerun {Path(__file__).name}" if stale
                                 else "every suite as priced"))
        return 1 if stale else 0
    with tempfile.TemporaryDirectory(prefix="advbench-estimates-") as tmp:
        paths = suite_files(args.suites, args.rev or None, Path(tmp))
        rows = estimate_rows(paths, args.device, shown=[f"suites/{name}.yaml" for name in args.suites])
    write_csv(rows, args.out)
    for row in rows:
        print(readme_line(row) + (f" — {row['shrink']}" if row["shrink"] else ""))
    print(f"throughput: {rows[0]['throughput']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
