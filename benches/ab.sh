#!/usr/bin/env bash
# Before/after of one change: runs two builds of the comparison bench in turn, N times each, on
# one workload, and prints one line per figure: `before|after <metric> <client> <value>`.
# Alternating the binaries spreads this machine's drift over both sides; compare each pair's
# syncws/raw ratio, not absolute figures.
#
# Usage: benches/ab.sh BEFORE_BIN AFTER_BIN N pinned|unpinned WORKLOAD CLIENTS
#   e.g. benches/ab.sh /tmp/old/compare-* target/release/deps/compare-* 2 pinned \
#        outbound_64B_plain syncws,raw_batched
# Build BEFORE_BIN from a worktree of the older commit:
#   git worktree add /tmp/before <commit> && cd /tmp/before &&
#   CARGO_TARGET_DIR=/tmp/before-target cargo bench -p syncws-compare --bench compare --no-run
set -u
[ $# -eq 6 ] || { sed -n 2,12p "$0" >&2; exit 2; }
before=$1 after=$2 n=$3 mode=$4 only=$5 clients=$6
pre=()
[ "$mode" = pinned ] && pre=(taskset -c 0)
for _ in $(seq 1 "$n"); do
    for which in before after; do
        bin=$before
        [ "$which" = after ] && bin=$after
        "${pre[@]}" "$bin" --quick --mode "$mode" --only "$only" --clients "$clients" 2>/dev/null |
            awk -v w="$which" '$1 == "RESULT" {print w, $3, $4, $5}'
    done
done
