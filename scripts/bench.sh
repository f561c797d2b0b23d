#!/bin/sh
# metrolun vs Debian's tgtd, same sparse 1 GiB LUN, real clients over
# iscsi:// (qemu-img bench, iscsi-perf); see integration/README.md.
#
#   scripts/bench.sh               metrolun demo vs tgtd
#   scripts/bench.sh --tgtd-only   tgtd vs tgtd (checks the harness and the noise)
#
# BENCH_REPORT=path writes the table as markdown; METROLUN_BENCH_REPS,
# METROLUN_BENCH_SCALE and METROLUN_BENCH_CASES tune the run.
set -eu
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
for arg in "$@"; do
	case "$arg" in
	--tgtd-only) export METROLUN_BENCH_TGTD_ONLY=1 ;;
	*) echo "usage: $0 [--tgtd-only]" >&2; exit 2 ;;
	esac
done
export METROLUN_BENCH=1
exec go test ./integration -run '^TestBenchTable$' -count=1 -v -timeout 60m
