#!/usr/bin/env bash
# Reproduces the benchmark table in BENCHMARKS.md: builds the bench in release, runs it pinned
# to one CPU (`taskset -c 0`, servers and clients alike) and unpinned, then prints the combined
# table and one machine-readable line per comparison:
#
#   RATIO <metric> <pinned|unpinned> <syncws / raw tungstenite>
#   VS_TOKIO <metric> <pinned|unpinned> <syncws / tokio-tungstenite>
#
# then the hub's (benches/compare/src/hub): fan-out to 1,000 subscribers against a
# tokio-tungstenite broadcast server, and the memory of an idle connection (1,000 connections
# with --quick, 10,000 in the full run):
#
#   RATIO hub_fanout_msgs_per_s_1000 <pinned|unpinned> <syncws / tokio>
#   RATIO hub_fanout_p99_us_1000 <pinned|unpinned> <syncws / tokio>
#   HUB_IDLE_KIB_PER_CONN <connections> <KiB>
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

# The hub.
hub_bin=$(cargo bench -p syncws-compare --bench hub --no-run --message-format=json \
    | grep -o '"executable":"[^"]*hub-[0-9a-f]*"' | tail -n 1 | cut -d'"' -f4)
[ -x "$hub_bin" ] || { echo "could not find the hub bench executable" >&2; exit 1; }
echo "== hub, pinned (taskset -c 0) ==" >&2
taskset -c 0 "$hub_bin" "${quick[@]}" --mode pinned >"$out/hub-pinned.txt"
echo "== hub, unpinned ==" >&2
"$hub_bin" "${quick[@]}" --mode unpinned >"$out/hub-unpinned.txt"
echo
grep -v '^RATIO\|^HUB_IDLE' "$out/hub-pinned.txt" "$out/hub-unpinned.txt" | sed 's/^[^:]*://'
grep -h '^RATIO' "$out/hub-pinned.txt" "$out/hub-unpinned.txt"
# The idle figure from the unpinned run (both runs measure it).
grep -h '^HUB_IDLE' "$out/hub-unpinned.txt"
