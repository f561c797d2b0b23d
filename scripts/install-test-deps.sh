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

me=install-test-deps
. "$(dirname "$0")/apt-lib.sh"

missing=$(missing_packages)
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

apt_install $missing
if ! has_iscsi_module; then
	echo "install-test-deps: qemu's iscsi block module still missing after installing$missing" >&2
	exit 1
fi
