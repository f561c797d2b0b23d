#!/bin/sh
# Installs the external clients and the reference target that the
# integration tests drive (see integration/README.md). Idempotent: does
# nothing when every needed program is already there; quiet on success.
set -eu

# program:package
needs="
iscsi-test-cu:libiscsi-bin
iscsi-ls:libiscsi-bin
iscsi-inq:libiscsi-bin
iscsi-perf:libiscsi-bin
iscsi-readcapacity16:libiscsi-bin
qemu-img:qemu-utils
qemu-io:qemu-utils
tgtd:tgt
tgtadm:tgt
"

have() {
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

missing=""
for pair in $needs; do
	prog=${pair%%:*}
	pkg=${pair#*:}
	if ! have "$prog"; then
		case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
	fi
done
# qemu's iscsi:// driver is a module in qemu-block-extra; qemu-img runs
# without it but cannot open an iscsi:// URL.
has_iscsi_module() {
	for f in /usr/lib/*/qemu/block-iscsi.so /usr/lib/qemu/block-iscsi.so; do
		[ -e "$f" ] && return 0
	done
	return 1
}
if have qemu-img && ! has_iscsi_module; then
	missing="$missing qemu-block-extra"
fi
[ -z "$missing" ] && exit 0
case " $missing " in *" qemu-utils "*) missing="$missing qemu-block-extra" ;; esac

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo="sudo"
	else
		echo "install-test-deps: need root (or sudo) to install:$missing" >&2
		exit 1
	fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --no-install-recommends keeps tgt from pulling in extras; tgt's package
# may try to start its service, which fails harmlessly without systemd.
if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; } >"$log" 2>&1; then
	cat "$log" >&2
	echo "install-test-deps: apt-get install$missing failed" >&2
	exit 1
fi

for pair in $needs; do
	prog=${pair%%:*}
	if ! have "$prog"; then
		echo "install-test-deps: $prog still missing after installing$missing" >&2
		exit 1
	fi
done
if ! has_iscsi_module; then
	echo "install-test-deps: qemu's iscsi block module still missing after installing$missing" >&2
	exit 1
fi
