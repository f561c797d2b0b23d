#!/bin/sh
# Installs the host tools that scripts/build-guest.sh and the host tests
# (integration/hosts) need: qemu-system-x86_64 to boot the guest,
# debootstrap to build it, mke2fs to make its root image. Idempotent:
# does nothing when every program is already there; quiet on success.
set -eu

# program:package
needs="
qemu-system-x86_64:qemu-system-x86
debootstrap:debootstrap
mke2fs:e2fsprogs
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
[ -z "$missing" ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo="sudo"
	else
		echo "install-guest-deps: need root (or sudo) to install:$missing" >&2
		exit 1
	fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; } >"$log" 2>&1; then
	cat "$log" >&2
	echo "install-guest-deps: apt-get install$missing failed" >&2
	exit 1
fi
for pair in $needs; do
	prog=${pair%%:*}
	if ! have "$prog"; then
		echo "install-guest-deps: $prog still missing after installing$missing" >&2
		exit 1
	fi
done
