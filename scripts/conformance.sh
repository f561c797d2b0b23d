#!/bin/sh
# libiscsi conformance (iscsi-test-cu, one process per suite); see
# integration/README.md.
#
#   scripts/conformance.sh            metrolun demo vs testdata/conformance-baseline.txt
#   scripts/conformance.sh --compare  the same, plus tgtd, and list the tests that differ
#   scripts/conformance.sh --update   record the run as the new baseline
#   scripts/conformance.sh --tgtd     measure tgtd alone (--update rewrites
#                                     testdata/conformance-tgtd.txt)
#
# CONFORMANCE_REPORT=path keeps the per-test table (default: a file in $TMPDIR).
set -eu
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh

test=TestConformance
update=
for arg in "$@"; do
	case "$arg" in
	--compare) export METROLUN_CONFORMANCE_TGTD=1 ;;
	--tgtd) test=TestConformanceTgtd; export METROLUN_TGTD_CONFORMANCE=1 ;;
	--update) update=-update ;;
	*) echo "usage: $0 [--compare] [--tgtd] [--update]" >&2; exit 2 ;;
	esac
done
exec go test ./integration -run "^$test\$" -count=1 -v -timeout 90m $update
