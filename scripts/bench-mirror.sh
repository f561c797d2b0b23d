#!/bin/sh
# What mirroring costs (issue 13): a single site against a two-site
# cluster, at the writer and at the forwarding site, each `metrolun demo`
# in a network namespace of its own, through the real clients of `make
# bench` (qemu-img bench, iscsi-perf) run in that namespace; IOPS, the
# ratios to the single site, server CPU per operation (/proc/PID/stat of
# every member) and an idle cluster's CPU. Needs root (ip netns).
#
#   scripts/bench-mirror.sh              single, mirrored (TLS)
#   scripts/bench-mirror.sh --plaintext  also a two-site cluster over plain TCP
#   scripts/bench-mirror.sh --old BIN    also a two-site cluster run by BIN
#   scripts/bench-mirror.sh --floor      also the floor of mirroring: single
#                                        sites that send every write to an echo
#                                        process over TLS / plain TCP
#                                        (measuring aid, internal/mirrorfloor)
#
# N=runs per cell (default 3), METROLUN_MIRROR_SCALE, METROLUN_MIRROR_CASES,
# METROLUN_MIRROR_IDLE (default 10s), BENCH_REPORT=path (markdown); see
# integration/benchmirror_test.go.
set -eu
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
while [ $# -gt 0 ]; do
	case "$1" in
	--plaintext) export METROLUN_MIRROR_PLAINTEXT=1 ;;
	--old) shift; export METROLUN_MIRROR_OLD_BIN="$(readlink -f "$1")" ;;
	--floor) export METROLUN_MIRROR_FLOOR=1 ;;
	*) echo "usage: $0 [--plaintext] [--old BIN] [--floor]" >&2; exit 2 ;;
	esac
	shift
done
if [ -n "${N:-}" ]; then export METROLUN_MIRROR_REPS="$N"; fi
export METROLUN_BENCH_MIRROR=1
exec go test ./integration -run '^TestBenchMirror$' -count=1 -v -timeout 60m
