#!/usr/bin/env bash
# Builds the node OS image of the virtual rack: a small Debian 12 raw disk
# image from Debian packages (debootstrap), bootable under SeaBIOS and OVMF,
# with cloud-init reading a NoCloud seed (the CIDATA filesystem airlock adds
# as the disk's last partition).
#
#   GPT: 1 bios_grub (1 MiB, GRUB's core.img) | 2 EFI system (63 MiB, FAT,
#   \EFI\BOOT\BOOTX64.EFI) | 3 root ext4 (label "root", fixed UUID), and
#   free space after it for the seed; cloud-init's growpart grows 3 to the
#   seed partition (or the disk's end when there is none).
#
# GRUB is installed from the host's grub-pc-bin and grub-efi-amd64-bin with
# grub-mkimage (no grub-install: this host makes no partition device nodes);
# the BIOS stage (boot.img, core.img) is linked and placed by this script
# (Debian 12 has no grub-bios-setup). The kernel command line has console=ttyS0 and root=UUID=.
#
# The result is cached under .cache/osimage/debian12-KEY/ where KEY hashes
# this script (package list, layout, configuration): disk.raw.zst, and
# disk.raw.sha256 and disk.raw.size of the raw image. A second run with the
# same script prints the cached directory and does nothing else.
#
# Usage (root): e2e/osimage/build.sh     prints the output directory
# Needs: debootstrap grub-pc-bin grub-efi-amd64-bin fdisk dosfstools mtools
#        e2fsprogs zstd (Debian packages), and a Debian mirror
#        (DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${AIRLOCK_CACHE:-$repo/.cache}/osimage
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

key=$(sha256sum "$here/build.sh" | cut -c1-16)
out=$cache/debian12-$key
if [ -s "$out/disk.raw.zst" ] && [ -s "$out/disk.raw.sha256" ] && [ -s "$out/disk.raw.size" ]; then
  echo "$out"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "build.sh: run as root (debootstrap)" >&2; exit 2; }
for t in debootstrap:debootstrap grub-mkimage:grub-common sfdisk:fdisk mkfs.vfat:dosfstools mcopy:mtools mkfs.ext4:e2fsprogs zstd:zstd; do
  command -v "${t%%:*}" >/dev/null || { echo "build.sh: ${t%%:*} missing: apt-get install ${t#*:}" >&2; exit 2; }
done
[ -d /usr/lib/grub/x86_64-efi ] || { echo "build.sh: apt-get install grub-efi-amd64-bin" >&2; exit 2; }
[ -d /usr/lib/grub/i386-pc ] || { echo "build.sh: apt-get install grub-pc-bin" >&2; exit 2; }

start=$(date +%s)
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
root=$work/root
cleanup() {
  for m in proc sys; do umount "$root/$m" 2>/dev/null || true; done
  # --one-file-system: never descend into something still mounted.
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# Everything inside the image. ifupdown, ifenslave, vlan and net-tools are
# what cloud-init's ENI renderer needs for static addresses, bonds and
# VLANs. The rest is for Kubernetes (kubelet, kubeadm and kubectl are not
# here: the seed installs them from the bundle): containerd and runc;
# apparmor (its parser: containerd's CRI loads its default profile when
# the kernel has AppArmor on, and fails without it); curl (the seed fetches
# the binaries); what kubeadm 1.34's preflight runs or looks for (mount,
# losetup, cp: util-linux and coreutils are in minbase; kmod for modprobe;
# procps for sysctl); what the kubelet and CNI plugins call (iptables,
# conntrack, ethtool, socat); and the standard CNI plugins (bridge,
# host-local, loopback, portmap) in /usr/lib/cni, linked from /opt/cni/bin
# where containerd and kubeadm's defaults look. resolvconf makes
# /etc/resolv.conf at every boot, with the name servers the seed's network
# configuration gives (ENI's dns-nameservers) or none: the kubelet refuses
# to start any pod without that file.
packages=(
  systemd-sysv udev dbus linux-image-cloud-amd64 initramfs-tools zstd
  cloud-init cloud-guest-utils fdisk e2fsprogs
  ifupdown isc-dhcp-client net-tools iproute2 ifenslave vlan
  ca-certificates systemd-timesyncd openssh-server
  containerd runc apparmor curl kmod procps util-linux mount
  iptables conntrack ethtool socat containernetworking-plugins resolvconf
)
# The root filesystem's UUID is fixed so that GRUB and fstab can name it.
root_uuid=8d3a1f2e-4a1c-4e53-9b1e-a1010c4e0001

echo "osimage: debootstrap $suite from $mirror" >&2
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -30 "$work/debootstrap.log" "$root/debootstrap/debootstrap.log" >&2; exit 1; }
# The rest with apt inside the tree (debootstrap's own resolver misses
# virtual packages); nothing may start a service while it installs.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
echo "osimage: apt-get install ${packages[*]}" >&2
chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 sh -c \
  'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"' sh "${packages[@]}" \
  >"$work/apt.log" 2>&1 || { tail -40 "$work/apt.log" >&2; exit 1; }
chroot "$root" apt-get clean
umount "$root/proc" "$root/sys"
rm -f "$root/usr/sbin/policy-rc.d"

kver=$(basename "$(ls -d "$root"/lib/modules/*)")
[ -f "$root/boot/vmlinuz-$kver" ] && [ -f "$root/boot/initrd.img-$kver" ] ||
  { echo "build.sh: no kernel or initramfs for $kver" >&2; exit 1; }

# Configuration of the installed system.
cat >"$root/etc/fstab" <<EOF
UUID=$root_uuid / ext4 errors=remount-ro 0 1
EOF
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat >"$root/etc/cloud/cloud.cfg.d/90-airlock.cfg" <<'EOF'
# airlock node image: the seed comes from a CIDATA filesystem (NoCloud).
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
ssh_genkeytypes: [ ed25519, ecdsa ]
EOF
# CNI plugins where containerd's and kubeadm's defaults look.
[ -x "$root/usr/lib/cni/bridge" ] || { echo "build.sh: no bridge CNI plugin in /usr/lib/cni" >&2; exit 1; }
mkdir -p "$root/opt/cni"
ln -sfn /usr/lib/cni "$root/opt/cni/bin"
echo localhost >"$root/etc/hostname"
# /etc/resolv.conf is resolvconf's link into /run; the build host's name
# servers (debootstrap copied them) must not stay in the image.
[ "$(readlink "$root/etc/resolv.conf")" = ../run/resolvconf/resolv.conf ] ||
  { echo "build.sh: /etc/resolv.conf is not resolvconf's link: $(ls -l "$root/etc/resolv.conf")" >&2; exit 1; }
rm -f "$root/etc/resolvconf/resolv.conf.d/original" "$root/etc/resolvconf/resolv.conf.d/tail"
: >"$root/etc/resolvconf/resolv.conf.d/head"
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
grep -q 'interfaces.d' "$root/etc/network/interfaces" 2>/dev/null ||
  printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' >"$root/etc/network/interfaces"

# GRUB: modules and configuration on the root filesystem.
mkdir -p "$root/boot/grub"
cp -r /usr/lib/grub/i386-pc /usr/lib/grub/x86_64-efi "$root/boot/grub/"
rm -f "$root"/boot/grub/*/*.image "$root"/boot/grub/*/*.module
cat >"$root/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root $root_uuid
menuentry 'Debian GNU/Linux 12 (airlock node)' {
  linux /boot/vmlinuz-$kver root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200n8
  initrd /boot/initrd.img-$kver
}
EOF
cat >"$work/early.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $root_uuid
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF
grubmods="part_gpt ext2 fat search search_fs_uuid normal configfile linux echo test serial terminal gzio"

# Shrink: documentation, manuals, locales, package caches.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} +

# Layout (MiB): 1-2 bios_grub, 2-65 ESP, 65-END root.
size_mib=1024
esp_start=2 esp_mib=63 root_start=65
root_mib=$((size_mib - root_start - 1))
img=$work/disk.raw
truncate -s "${size_mib}M" "$img"
sfdisk --quiet --label gpt "$img" <<EOF
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios
start=$((esp_start * 2048)), size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=$((root_start * 2048)), size=$((root_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69C8477DE4, name=root
EOF

# EFI system partition: GRUB for x86_64-efi as the removable-media path.
grub-mkimage -O x86_64-efi -o "$work/BOOTX64.EFI" -c "$work/early.cfg" -p /boot/grub $grubmods efi_gop all_video
mkfs.vfat -C -n ESP "$work/esp.img" $((esp_mib * 1024)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$work/esp.img" of="$img" bs=1M seek=$esp_start conv=notrunc status=none

# Root filesystem, built from the tree.
mkfs.ext4 -q -F -L root -U "$root_uuid" -d "$root" -E root_owner=0:0 "$work/root.img" "${root_mib}M"
dd if="$work/root.img" of="$img" bs=1M seek=$root_start conv=notrunc,sparse status=none
rm -f "$work/root.img" "$work/esp.img"

# BIOS: core.img into the bios_grub partition (LBA 2048), boot.img into the
# MBR, linked as grub-install's setup does: boot.img's kernel_sector (0x5c)
# names core.img's first sector, its boot-drive check (0x66) becomes two
# NOPs (hard disk), and the blocklist at the end of core.img's first sector
# (start u64, count u16, segment u16) points at the rest of core.img. The
# protective MBR's disk signature and partition table (0x1b8-0x1ff) stay.
grub-mkimage -O i386-pc -o "$work/core.img" -c "$work/early.cfg" -p /boot/grub biosdisk $grubmods
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
[ "$core_sectors" -le 2048 ] || { echo "build.sh: core.img of $core_sectors sectors exceeds bios_grub" >&2; exit 1; }
le() { # le VALUE BYTES: VALUE little-endian
  local v=$1 n=$2 i
  for ((i = 0; i < n; i++)); do printf '\\x%02x' $(( (v >> (8 * i)) & 255 )); done
}
put() { # put FILE OFFSET BYTES-AS-PRINTF-ESCAPES
  printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
put "$work/core.img" 500 "$(le $((2048 + 1)) 8)$(le $((core_sectors - 1)) 2)$(le $((0x820)) 2)"
dd if="$work/core.img" of="$img" bs=512 seek=2048 conv=notrunc status=none
head -c 440 /usr/lib/grub/i386-pc/boot.img >"$work/mbr"
put "$work/mbr" $((0x5c)) "$(le 2048 8)"
put "$work/mbr" $((0x66)) '\x90\x90'
dd if="$work/mbr" of="$img" bs=440 count=1 conv=notrunc status=none

sha=$(sha256sum "$img" | cut -d' ' -f1)
zstd -q -T0 -10 --rm "$img" -o "$work/disk.raw.zst"
mkdir -p "$out.tmp"
mv "$work/disk.raw.zst" "$out.tmp/"
echo "$sha" >"$out.tmp/disk.raw.sha256"
echo $((size_mib * 1024 * 1024)) >"$out.tmp/disk.raw.size"
echo "$kver" >"$out.tmp/kernel"
printf '%s\n' "${packages[@]}" >"$out.tmp/packages"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "osimage: built $out in $(($(date +%s) - start)) s (raw $(cat "$out/disk.raw.size") bytes, zstd $(stat -c %s "$out/disk.raw.zst"))" >&2
echo "$out"
