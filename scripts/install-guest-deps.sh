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

me=install-guest-deps
. "$(dirname "$0")/apt-lib.sh"

missing=$(missing_packages)
[ -z "$missing" ] && exit 0
apt_install $missing
