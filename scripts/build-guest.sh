#!/bin/sh
# Builds the Linux guest that the host tests (integration/hosts, `make
# hosts`) boot under qemu-system-x86_64 to drive metrolun with the kernel
# iSCSI initiator, dm-multipath and LVM: Debian bookworm from Debian's own
# packages, a kernel, an initrd and an ext4 root image.
#
#   scripts/build-guest.sh            build into $METROLUN_GUEST_DIR if out of date
#   scripts/build-guest.sh --print    print the guest directory and exit
#
# METROLUN_GUEST_DIR    where the guest goes (default $XDG_CACHE_HOME or
#                       $HOME/.cache, then metrolun-guest)
# METROLUN_GUEST_MIRROR Debian mirror for debootstrap (default: the first
#                       bookworm mirror in the host's apt sources)
#
# Idempotent and cached: the slow part (debootstrap, a few minutes) is
# keyed on the package list, the image on the init script; a second run
# with nothing changed does nothing. Installs its own host tools
# (scripts/install-guest-deps.sh). Needs root: debootstrap chroots.
#
# The guest's init is /sbin/metrolun-init (below), not systemd: it mounts
# the usual file systems, runs udev, brings up QEMU's user network
# (10.0.2.15, the host's 127.0.0.1 is 10.0.2.2), mounts the harness's
# 9p share, copies the harness's iscsid.conf and multipath.conf from it,
# starts iscsid and multipathd and runs the harness's agent from the
# share. Booting straight into that keeps a TCG boot to seconds.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dir=${METROLUN_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/metrolun-guest}
if [ "${1:-}" = "--print" ]; then
	echo "$dir"
	exit 0
fi

suite=bookworm
# Raise when a step below changes what the rootfs or image holds, so a
# cached guest is rebuilt.
recipe=2
# What the host tests drive, and what the init needs to run them.
packages="linux-image-amd64 open-iscsi multipath-tools lvm2 sg3-utils
udev kmod iproute2 procps util-linux e2fsprogs initramfs-tools busybox-static"
# Modules the initrd must hold to find and mount the root disk (with
# their dependencies, from modules.dep); the rest load from the root.
initrd_modules="virtio_pci virtio_blk crc32c_generic ext4"

# The initrd's init: Debian's initramfs runs udev and takes about 10 s
# under TCG to find the root disk; this loads five modules and switches.
initrd_init='#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t devtmpfs dev /dev
mount -t proc proc /proc
for m in $(cat /modules.list); do
	insmod /$m || echo "initrd: insmod $m failed" >/dev/console
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
	echo "initrd: cannot mount /dev/vda" >/dev/console
	echo o >/proc/sysrq-trigger
fi
umount /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/metrolun-init
'

init_script='#!/bin/bash
# metrolun guest init (scripts/build-guest.sh). PID 1.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "metrolun-init: $*" >/dev/ttyS0; }
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock /run/lvm
mount -o remount,rw /
hostname metrolun-guest
ctl=
for a in $(cat /proc/cmdline); do
	case $a in metrolun.ctl=*) ctl=${a#metrolun.ctl=} ;; esac
done
# udev for the devices that come later (iSCSI disks, dm maps: multipathd
# and LVM rely on its database); no coldplug, which costs 20 s under
# TCG: the modules the guest needs are loaded by name.
/lib/systemd/systemd-udevd --daemon
modprobe -a virtio_net 9p 9pnet_virtio iscsi_tcp dm_multipath dm_round_robin scsi_dh_alua sd_mod sg
udevadm settle --timeout=30
nic=
for i in $(seq 100); do
	for n in /sys/class/net/*; do
		case ${n##*/} in lo) ;; *) nic=${n##*/} ;; esac
	done
	[ -n "$nic" ] && break
	sleep 0.05
done
ip link set lo up
ip link set "$nic" up
ip addr add 10.0.2.15/24 dev "$nic"
ip route add default via 10.0.2.2
mkdir -p /mnt/share
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt/share; then
	say "cannot mount the 9p share"
	echo o >/proc/sysrq-trigger
fi
for f in iscsid.conf multipath.conf; do
	[ -f /mnt/share/etc/$f ] || continue
	case $f in iscsid.conf) cp /mnt/share/etc/$f /etc/iscsi/$f ;; *) cp /mnt/share/etc/$f /etc/$f ;; esac
done
# In the foreground, so that its log (there is no syslog here) is kept.
iscsid -f -d 1 >/run/iscsid.log 2>&1 &
# iscsiadm exits 20 while it cannot reach iscsid.
for i in $(seq 200); do
	iscsiadm -m session >/dev/null 2>&1
	[ $? -ne 20 ] && break
	sleep 0.05
done
multipathd
say "ready in $(cut -d" " -f1 /proc/uptime)s"
/mnt/share/agent agent -connect "10.0.2.2:$ctl" >/dev/ttyS0 2>&1
say "agent exited ($?), powering off"
sync
echo o >/proc/sysrq-trigger
sleep 10
'

"$here/install-guest-deps.sh"

mirror=${METROLUN_GUEST_MIRROR:-}
if [ -z "$mirror" ]; then
	mirror=$(grep -rhoE '(URIs:|deb) +https?://[^ ]*/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
		grep -v security | head -n1 | sed -E 's/^(URIs:|deb) +//; s/ *$//')
	[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

mkdir -p "$dir"
# One build at a time per directory; a second waits, then finds it done.
exec 9>"$dir/.lock"
flock 9
rootfs_key=$(printf '%s\n' "$recipe" "$suite" "$packages" "$initrd_modules" | sha256sum | cut -c1-16)
image_key=$(printf '%s\n' "$rootfs_key" "$init_script" "$initrd_init" | sha256sum | cut -c1-16)
if [ "$(cat "$dir/image.key" 2>/dev/null)" = "$image_key" ] &&
	[ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.img" ] && [ -s "$dir/root.img" ]; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "build-guest: need root to debootstrap (chroot) the guest into $dir" >&2
	exit 1
fi

log="$dir/build.log"
: >"$log"
root="$dir/rootfs"
start=$(date +%s)
if [ "$(cat "$dir/rootfs.key" 2>/dev/null)" != "$rootfs_key" ]; then
	echo "build-guest: debootstrap $suite from $mirror into $root (log: $log)" >&2
	rm -rf "$root" "$dir/rootfs.key"
	# The kernel's postinst builds Debian's initrd, which the guest does
	# not use (its own is made below); a short module list keeps that
	# build quick.
	mkdir -p "$root/etc/initramfs-tools/conf.d"
	printf 'MODULES=list\nCOMPRESS=gzip\n' >"$root/etc/initramfs-tools/conf.d/metrolun"
	# modules.d, not /etc/initramfs-tools/modules: that one is a conffile
	# of initramfs-tools, and dpkg would ask about a changed one.
	mkdir -p "$root/usr/share/initramfs-tools/modules.d"
	printf '%s\n' $initrd_modules >"$root/usr/share/initramfs-tools/modules.d/metrolun"
	include=$(echo $packages | tr ' ' ',')
	if ! debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >>"$log" 2>&1; then
		tail -n 30 "$log" >&2
		echo "build-guest: debootstrap failed (log: $log)" >&2
		exit 1
	fi
	# The downloaded packages (110 MB) have no use in the guest.
	rm -f "$root"/var/cache/apt/archives/*.deb
	echo "$rootfs_key" >"$dir/rootfs.key"
fi

echo "build-guest: assembling kernel, initrd and root image in $dir" >&2
printf '%s' "$init_script" >"$root/sbin/metrolun-init"
chmod 755 "$root/sbin/metrolun-init"
echo "InitiatorName=iqn.2026-11.io.metrolun:guest" >"$root/etc/iscsi/initiatorname.iscsi"
echo metrolun-guest >"$root/etc/hostname"
kver=$(ls "$root/lib/modules" | sort -V | tail -n1)
if [ -z "$kver" ]; then
	echo "build-guest: no kernel modules in $root/lib/modules" >&2
	exit 1
fi
# The initrd: busybox, the modules to mount the root, and the init above,
# packed by the guest's own cpio (no cpio needed on the host).
rm -rf "$root/tmp/initrd"
mkdir -p "$root/tmp/initrd/bin"
cp "$root/bin/busybox" "$root/tmp/initrd/bin/busybox"
printf '%s' "$initrd_init" >"$root/tmp/initrd/init"
chmod 755 "$root/tmp/initrd/init"
moddir="$root/lib/modules/$kver"
: >"$root/tmp/initrd/modules.list"
add_module() { # $1: path relative to $moddir; dependencies first
	grep -qxF "lib/modules/$kver/$1" "$root/tmp/initrd/modules.list" && return 0
	for d in $(grep "^$1:" "$moddir/modules.dep" | cut -d: -f2 | tr ' ' '\n' | tac); do
		add_module "$d"
	done
	mkdir -p "$root/tmp/initrd/lib/modules/$kver/$(dirname "$1")"
	cp "$moddir/$1" "$root/tmp/initrd/lib/modules/$kver/$1"
	echo "lib/modules/$kver/$1" >>"$root/tmp/initrd/modules.list"
}
for m in $initrd_modules; do
	path=$(grep -oE "^[^:]*/$m\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -n1 | tr -d :)
	if [ -z "$path" ]; then
		echo "build-guest: module $m not in $moddir/modules.dep" >&2
		exit 1
	fi
	add_module "$path"
done
if ! chroot "$root" sh -c 'cd /tmp/initrd && find . | cpio -o -H newc --quiet | gzip -1' >"$dir/initrd.img.tmp"; then
	echo "build-guest: packing the initrd failed" >&2
	exit 1
fi
rm -rf "$root/tmp/initrd"
cp "$root/boot/vmlinuz-$kver" "$dir/vmlinuz.tmp"
# mke2fs -d copies the tree into the image: no loop mount needed.
rm -f "$dir/root.img.tmp"
if ! mke2fs -q -t ext4 -L metrolun-root -d "$root" "$dir/root.img.tmp" 2G >>"$log" 2>&1; then
	tail -n 30 "$log" >&2
	echo "build-guest: mke2fs failed (log: $log)" >&2
	exit 1
fi
mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
mv "$dir/initrd.img.tmp" "$dir/initrd.img"
mv "$dir/root.img.tmp" "$dir/root.img"
echo "$image_key" >"$dir/image.key"
echo "build-guest: done in $(($(date +%s) - start))s: $dir (kernel $kver)" >&2
