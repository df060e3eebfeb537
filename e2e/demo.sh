#!/usr/bin/env bash
# make demo: builds nothing itself (make does), brings up a virtual rack of
# QEMU machines in a private network namespace whose airlock runs the
# install pipeline on them, waits until every machine has booted from its
# own disk, shows the inventory and the install status, and removes
# everything on Ctrl-C (or at once when not run from a terminal, or with
# DEMO_EXIT=1).
set -euo pipefail
cd "$(dirname "$0")/.."
state=${STATE:-$PWD/.cache/demo-state}
nodes=${NODES:-4}
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || { echo "no /boot/vmlinuz-*-cloud-amd64: run make deps (it installs linux-image-cloud-amd64)" >&2; exit 1; }
modules=/lib/modules/${kernel#/boot/vmlinuz-}

echo "the node OS image (built from Debian packages the first time, about 6-10 minutes; cached after):"
image=$(AIRLOCK_CACHE=${OSIMAGE_CACHE:-/var/cache/airlock} bash e2e/osimage/build.sh)

mkdir -p "$state"
bin/airlock lab down --state "$state" >/dev/null   # whatever a crashed run left
cleanup() { trap - EXIT INT TERM; echo; bin/airlock lab down --state "$state"; }
trap cleanup EXIT INT TERM

bin/airlock lab up --state "$state" --nodes "$nodes" --racks 2 --firmware mixed --kernel "$kernel" --modules "$modules" --install --os-image "$image" --cache "${OSIMAGE_CACHE:-/var/cache/airlock}"
echo "waiting for the machines to network-boot and report (TCG emulation: about a minute)..."
start=$(date +%s)
while :; do
  found=$(bin/airlock inventory -o json --state "$state" | grep -c '^    "id":' || true)
  printf '\r%d of %d machines discovered after %ds' "$found" "$nodes" "$(( $(date +%s) - start ))"
  [ "$found" -ge "$nodes" ] && break
  if [ $(( $(date +%s) - start )) -gt 300 ]; then
    echo; echo "not all machines reported within 300 s; the lab's airlock log ends:"; tail -n 20 "$state/lab/airlock.log"; exit 1
  fi
  sleep 2
done
echo; echo "installing: each machine's disk gets the OS image and its seed, then it reboots into it (several minutes under emulation)..."
while :; do
  json=$(bin/airlock status -o json --state "$state")
  booted=$(grep -c '"state": "booted"' <<<"$json" || true)
  failed=$(grep -c '"state": "failed"' <<<"$json" || true)
  printf '\r%d of %d machines booted from their own disks after %ds' "$booted" "$nodes" "$(( $(date +%s) - start ))"
  [ $(( booted + failed )) -ge "$nodes" ] && break
  if [ $(( $(date +%s) - start )) -gt 1800 ]; then
    echo; echo "the install did not finish within 30 minutes; the lab's airlock log ends:"; tail -n 20 "$state/lab/airlock.log"; exit 1
  fi
  sleep 5
done
echo
echo
bin/airlock inventory --state "$state"
echo
bin/airlock status --state "$state"
echo
bin/airlock lab status --state "$state"
if [ -t 0 ] && [ "${DEMO_EXIT:-0}" != 1 ]; then
  echo; echo "The lab keeps running (airlock inventory --state $state). Ctrl-C removes it."
  while sleep 10; do :; done
fi
