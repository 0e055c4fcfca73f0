#!/usr/bin/env bash
# Reproduces the benchmark table in BENCHMARKS.md: builds the bench in release, runs it pinned
# to one CPU (`taskset -c 0`, servers and clients alike) and unpinned, then prints the combined
# table and one machine-readable line per comparison:
#
#   RATIO <metric> <pinned|unpinned> <syncws / raw tungstenite>
#   VS_TOKIO <metric> <pinned|unpinned> <syncws / tokio-tungstenite>
#
# Usage: benches/run.sh [--quick]     (--quick: shorter windows, same workloads, ~2 minutes)
# The RESULT lines of both runs are kept in $BENCH_OUT (default: a fresh temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
case "${1:-}" in
    --quick) quick=(--quick) ;;
    "") ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed for the pinned run" >&2; exit 1; }

t0=$SECONDS
# The bench binary's path, from cargo's own report of what it built.
bin=$(cargo bench -p syncws-compare --bench compare --no-run --message-format=json \
    | grep -o '"executable":"[^"]*compare-[0-9a-f]*"' | tail -n 1 | cut -d'"' -f4)
[ -x "$bin" ] || { echo "could not find the bench executable" >&2; exit 1; }
build=$((SECONDS - t0))

out=${BENCH_OUT:-$(mktemp -d)}
mkdir -p "$out"
t1=$SECONDS
echo "== pinned (taskset -c 0) ==" >&2
taskset -c 0 "$bin" "${quick[@]}" --mode pinned >"$out/pinned.txt"
echo "== unpinned ==" >&2
"$bin" "${quick[@]}" --mode unpinned >"$out/unpinned.txt"
run=$((SECONDS - t1))

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "# command: benches/run.sh ${quick[*]}"
echo "# build ${build}s, runs ${run}s; RESULT lines in $out"
echo
"$bin" --combine "$out/pinned.txt" "$out/unpinned.txt"
