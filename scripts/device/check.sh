#!/usr/bin/env bash
# The device check (issue 28): everything advbench can learn from one short window on a GPU machine, in one
# command, each stage under its own time limit so one slow stage cannot eat the others.
#
#   bash scripts/device/check.sh            # on the GPU machine: the tree with .whl/ and .device-data/
#                                           # (scripts/device/prepare.sh made them), $OUT set; ~6 min on one H100
#   bash scripts/device/check.sh --smoke    # here, on the CPU, tiny sizes, no wheels: that the script works
#
# Stages: install (the carried wheels into a target dir), env (nvidia-smi, torch/CUDA and package versions),
# data (Fashion-MNIST unpacked; the suite validated), suite (scripts/device/fashion-full.yaml through
# `--devices auto --workers N`, nvidia-smi sampling utilization and memory every 500 ms), scheduler
# (`advbench bench scheduler`'s fused against unfused budgets on the device), tests (the tests that take a
# CUDA path), estimates (the paper-scale suites priced at rates timed on this device), then one summary.json.
# --smoke: the same stages on the CPU with scripts/device/tiny.yaml, no install, no nvidia-smi (recorded as
# absent), one timed run per scheduler case, the estimates of the tiny suite only.
#
# Writes under $OUT (at most 8 files, no folders): summary.json (everything, the file to commit from),
# check.log (every stage's output), and where measured gpu.csv, nvidia-smi.txt, scheduler.csv, estimates.csv.
# Scratch (store, data, site-packages) goes to $WORK (default: a new folder under /tmp).
# Settings (environment): OUT (default: results/device-check), WORK, PYTHON (default: python3), WORKERS
# (pool workers per device, default 2: on a CPU one thread each, which tiny nets need on a busy machine), CHECK_TOTAL_S (every stage's limit is cut to what is left of this;
# default 470 s, so the whole check ends within 8 minutes), CHECK_STAGES (a space-separated subset to run).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"

MODE=device
case "${1:-}" in
    --smoke) MODE=smoke ;;
    "") ;;
    *) echo "usage: bash scripts/device/check.sh [--smoke]" >&2; exit 2 ;;
esac

OUT="${OUT:-$REPO/results/device-check}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/advbench-check.XXXXXX")}"
PY="${PYTHON:-python3}"
TOTAL_S="${CHECK_TOTAL_S:-470}"
RESERVE_S=25  # kept for the report and the summary at the end
mkdir -p "$OUT" "$WORK"
: > "$WORK/stages.tsv"
LOG="$OUT/check.log"
: > "$LOG"
STARTED="$(date +%s.%N)"

export PYTHONUNBUFFERED=1
export GIT_PYTHON_REFRESH=quiet        # foolbox imports GitPython, which wants a git binary otherwise
export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
export REPO WORK OUT PY MODE

if [ "$MODE" = smoke ]; then
    SUITE=scripts/device/tiny.yaml
    DEVICE=cpu
    export WORKERS="${WORKERS:-2}" SCHED_N=32 SCHED_OPTIONS="--no-pool --repeats 1"
    ESTIMATE_SUITES="$SUITE"
    TEST_FILES="tests/test_device_check.py"
else
    SUITE=scripts/device/fashion-full.yaml
    DEVICE=cuda
    export WORKERS="${WORKERS:-2}" SCHED_N=1000 SCHED_OPTIONS="--no-pool --repeats 3"
    ESTIMATE_SUITES="$SUITE $(printf 'suites/%s.yaml ' cifar10 ensembles-cifar10 detector-cifar10 \
        randomized-cifar10 dustbin-cifar10 ensembles-mnist detector-mnist randomized-mnist dustbin-mnist)"
    TEST_FILES="tests/test_device_check.py tests/test_dry_run.py tests/test_scheduler.py"
fi
# The tests that take a CUDA path where PyTorch sees a GPU (no marker yet: selected by name). In --smoke only
# this file's CUDA-only tests, which skip on a CPU: the wiring is what the smoke run checks.
TEST_M="${TEST_M:-cuda}"  # the tests marked @pytest.mark.cuda (pyproject.toml)
export SUITE DEVICE ESTIMATE_SUITES TEST_FILES TEST_M

log() { echo "$*" | tee -a "$LOG"; }

elapsed() { awk -v s="$STARTED" -v n="$(date +%s.%N)" 'BEGIN { printf "%d", n - s }'; }

# stage NAME LIMIT_S: runs stage_NAME (a function below) under `timeout`, the limit cut to what is left of
# TOTAL_S; one line in stages.tsv: name, exit status (124/137: timed out) or "skipped", seconds, limit, note.
stage() {
    local name="$1" limit="$2" left rc t0 t1
    if [ -n "${CHECK_STAGES:-}" ] && [[ " $CHECK_STAGES " != *" $name "* ]]; then
        return
    fi
    left=$((TOTAL_S - RESERVE_S - $(elapsed)))
    if [ "$left" -lt 5 ]; then
        printf '%s\tskipped\t0\t%s\t%s\n' "$name" "$limit" "no time left of CHECK_TOTAL_S=$TOTAL_S" >> "$WORK/stages.tsv"
        log "== $name: skipped, no time left"
        return
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    log "== $name (limit ${limit}s, at $(elapsed)s)"
    t0="$(date +%s.%N)"
    # SIGINT at the limit, as Ctrl-C: pytest still writes its report, a run leaves its store consistent.
    timeout -s INT -k 15 "$limit" bash -c "stage_$name" 2>&1 | tee -a "$LOG"
    rc="${PIPESTATUS[0]}"
    t1="$(date +%s.%N)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" "$limit" \
        "$(cat "$WORK/note.$name" 2>/dev/null)" >> "$WORK/stages.tsv"
    log "== $name: exit $rc"
}

skip() {  # skip NAME NOTE: a stage this mode does not run
    if [ -n "${CHECK_STAGES:-}" ] && [[ " $CHECK_STAGES " != *" $1 "* ]]; then
        return
    fi
    printf '%s\tskipped\t0\t\t%s\n' "$1" "$2" >> "$WORK/stages.tsv"
    log "== $1: skipped ($2)"
}

advbench() { "$PY" -m bench "$@"; }
export -f advbench

stage_install() {
    # The wheels prepare.sh downloaded: into a target dir on PYTHONPATH (the image's own packages stay as they are).
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "no wheels under .whl/: run scripts/device/prepare.sh where the registries are reachable, and carry .whl" \
            | tee "$WORK/note.install"
        return 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
        && "$PY" -c "import art, foolbox, pydantic, mlxtend, tabulate; print('imports ok')"
}

stage_env() {
    if [ "$MODE" = device ] && command -v nvidia-smi >/dev/null; then
        nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
            >> "$WORK/nvidia-smi.txt" 2>&1
        head -20 "$WORK/nvidia-smi.txt"
    else
        echo "nvidia-smi: absent$([ "$MODE" = smoke ] && echo " (--smoke: not queried)")" | tee "$WORK/note.env"
    fi
    "$PY" -m bench.device_check env --out "$WORK/env.json" && cat "$WORK/env.json"
}

stage_data() {
    if [ "$MODE" = device ]; then
        # Fashion-MNIST's gzipped idx files (prepare.sh copied them): unpacked in torchvision's layout, unless
        # the Debian package is installed here (the loader reads that first).
        mkdir -p "$WORK/data/FashionMNIST/raw"
        for f in .device-data/fashion-mnist/*.gz; do
            [ -e "$f" ] || { echo "no .device-data/fashion-mnist/: run prepare.sh and carry .device-data" \
                | tee "$WORK/note.data"; break; }
            gunzip -c "$f" > "$WORK/data/FashionMNIST/raw/$(basename "$f" .gz)"
        done
    fi
    advbench validate "$SUITE" --data-dir "$WORK/data"
}

stage_suite() {
    local sampler="" rc
    if [ "$MODE" = device ] && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -lms 500 > "$WORK/gpu.csv" 2>/dev/null &
        sampler=$!
    fi
    advbench run "$SUITE" --store "$WORK/store" --leaderboard "$WORK/leaderboard" --data-dir "$WORK/data" \
        --devices auto --workers "$WORKERS" --quiet
    rc=$?
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
    return "$rc"
}

stage_scheduler() {
    # advbench bench scheduler's measurements (bench/benchmark_scheduler.py): fused vs unfused budgets on this
    # device. Not its pool part (three runs of a suite on the CPU, a minute here): the suite stage ran the pool.
    "$PY" -m bench.device_check scheduler --suite scripts/device/tiny.yaml --device "$DEVICE" --n "$SCHED_N" \
        --out-dir "$WORK/bench" --json "$WORK/scheduler.json" $SCHED_OPTIONS \
        && cp "$WORK/bench/scheduler.csv" "$WORK/scheduler.csv"
}

stage_tests() {
    # shellcheck disable=SC2086
    "$PY" -m pytest -q -p no:cacheprovider $TEST_FILES -m "$TEST_M" --junitxml="$WORK/tests.xml" -o addopts=""
}

stage_estimates() {
    # shellcheck disable=SC2086
    "$PY" -m bench.device_check estimates $ESTIMATE_SUITES --device "$DEVICE" --csv "$WORK/estimates.csv" \
        --json "$WORK/estimates.json"
}

export -f stage_install stage_env stage_data stage_suite stage_scheduler stage_tests stage_estimates
export -f log elapsed
export STARTED LOG TOTAL_S

log "advbench device check, $MODE mode: device $DEVICE, suite $SUITE, $WORKERS worker(s); out $OUT; work $WORK"
if [ "$MODE" = smoke ]; then
    skip install "smoke: the packages are installed here"
else
    stage install 90
fi
stage env 45
stage data 60
stage suite 240
stage scheduler 90
stage tests 120
stage estimates 90

# The store read back (also after a suite stopped at its limit), then the summary; then the files to bring back.
suite_s="$(awk -F'\t' '$1 == "suite" {print $3}' "$WORK/stages.tsv")"
timeout 30 "$PY" -m bench.device_check suite-report --store "$WORK/store" --suite "$SUITE" \
    ${suite_s:+--wall "$suite_s"} --out "$WORK/suite.json" >> "$LOG" 2>&1
for f in gpu.csv nvidia-smi.txt scheduler.csv estimates.csv; do
    [ -s "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"
done
timeout 30 "$PY" -m bench.device_check summary --work "$WORK" --mode "$MODE" --started "$STARTED" \
    --out "$OUT/summary.json" 2>&1 | tee -a "$LOG"
rc="${PIPESTATUS[0]}"
[ "$rc" = 0 ] || exit "$rc"
# The exit status: 0 where every stage ran ok (or was skipped by design), 1 otherwise; the summary says which.
"$PY" -c "import json, sys; sys.exit(0 if json.load(open('$OUT/summary.json'))['ok'] else 1)"
