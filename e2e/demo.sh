#!/usr/bin/env bash
# make demo: builds nothing of airlock itself (make does). It makes a site
# bundle as a site's is made (`airlock bundle build`, from registries on
# loopback standing in for registry.k8s.io and docker.io), brings up a
# virtual rack of QEMU machines in a private network namespace whose airlock
# installs them from that bundle and forms a Kubernetes cluster on them,
# waits until every Node is Ready, shows the inventory, the install status
# and `kubectl get nodes` through the kubeconfig airlock wrote, and removes
# everything on Ctrl-C (or at once when not run from a terminal, or with
# DEMO_EXIT=1).
#
# NODES (default 4: one control plane, the others workers, in two racks,
# BIOS and UEFI mixed). DEMO_KUBERNETES=0 stops when the machines have booted
# their own disks (no cluster; the bundle then holds the OS image only).
set -euo pipefail
cd "$(dirname "$0")/.."
state=${STATE:-$PWD/.cache/demo-state}
nodes=${NODES:-4}
kube=${DEMO_KUBERNETES:-1}
cache=${OSIMAGE_CACHE:-/var/cache/airlock}
k8s_cache=${K8S_CACHE:-/var/cache/airlock}
kube_version=v1.35.4 # what e2e/k8s/build.sh builds
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || { echo "no /boot/vmlinuz-*-cloud-amd64: run make deps (it installs linux-image-cloud-amd64)" >&2; exit 1; }
modules=/lib/modules/${kernel#/boot/vmlinuz-}
elapsed() { echo $(( $(date +%s) - start )); }

echo "the node OS image (built from Debian packages the first time, about 6-10 minutes; cached after):"
image=$(AIRLOCK_CACHE=$cache bash e2e/osimage/build.sh)

mkdir -p "$state"
bin/airlock lab down --state "$state" >/dev/null   # whatever a crashed run left
serve_pid=
cleanup() {
  trap - EXIT INT TERM
  [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true
  echo; bin/airlock lab down --state "$state"
}
trap cleanup EXIT INT TERM

up=(bin/airlock lab up --state "$state" --nodes "$nodes" --racks 2 --firmware mixed)
if [ "$kube" = 1 ]; then
  echo "Kubernetes $kube_version from Go modules, and its images (built the first time, about 15-25 minutes; cached after):"
  bins=$(AIRLOCK_K8S_CACHE=$k8s_cache bash e2e/k8s/build.sh)
  layout=$(AIRLOCK_K8S_CACHE=$k8s_cache bash e2e/k8s/images.sh)
  site=$state/site
  rm -rf "$site"; mkdir -p "$site/pkg/boot" "$site/pkg/lib/modules" "$site/pkg/DEBIAN"
  # The discovery kernel, as a site carries it: a Debian package.
  cp "$kernel" "$site/pkg/boot/"; cp -a "$modules" "$site/pkg/lib/modules/"
  printf 'Package: linux-image-demo\nVersion: 1\nArchitecture: amd64\nMaintainer: airlock demo <demo@airlock.invalid>\nDescription: the demo discovery kernel\n' >"$site/pkg/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip -z1 -b "$site/pkg" "$site/kernel.deb" >/dev/null
  rm -rf "$site/pkg"
  # kubelet, kubeadm and kubectl laid out as dl.k8s.io lays them out.
  rel=$site/k8s-release/$kube_version/bin/linux/amd64
  mkdir -p "$rel"
  for b in kubelet kubeadm kubectl; do
    cp "$bins/$b" "$rel/$b"
    sha256sum "$rel/$b" | cut -d' ' -f1 >"$rel/$b.sha256"
  done
  # registry.k8s.io and docker.io, played by registries on loopback.
  "$layout/../k8s-images" serve -layout "$layout" >"$site/mirrors" 2>"$site/serve.log" &
  serve_pid=$!
  for _ in $(seq 300); do
    [ "$(grep -c ': http://127.0.0.1:' "$site/mirrors" || true)" -ge 2 ] && break
    kill -0 "$serve_pid" 2>/dev/null || { echo "k8s-images serve stopped:" >&2; cat "$site/serve.log" >&2; exit 1; }
    sleep 0.1
  done
  mirror() { sed -n "s|^ *$1: \(http://127.0.0.1:[0-9]*\)$|\1|p" "$site/mirrors"; }
  [ -n "$(mirror registry.k8s.io)" ] && [ -n "$(mirror docker.io)" ] || { echo "k8s-images serve printed no mirrors:" >&2; cat "$site/mirrors" "$site/serve.log" >&2; exit 1; }
  cat >"$site/bundle.yaml" <<EOF
apiVersion: airlock.dev/v1alpha1
kind: Bundle
metadata: {name: demo-site}
files:
  - name: boot/kernel.deb
    url: $site/kernel.deb
    sha256: $(sha256sum "$site/kernel.deb" | cut -d' ' -f1)
osImages:
  - name: debian-12
    path: $image/disk.raw.zst
    rawSHA256: $(cat "$image/disk.raw.sha256")
kubernetes:
  version: $kube_version
  binaries: $site/k8s-release
  kubeVIP: false   # kube-vip does not build here (the Go module proxy refuses it)
registryMirrors:
  registry.k8s.io: $(mirror registry.k8s.io)
  docker.io: $(mirror docker.io)
images:
  - ref: docker.io/airlock/testapp:1.0
EOF
  echo; echo "the site bundle: airlock bundle build -f $site/bundle.yaml"
  [ -f "$state/site.key" ] || bin/airlock bundle keygen --out "$state/site" >/dev/null
  bin/airlock bundle build -f "$site/bundle.yaml" -o "$state/site.bundle" --key "$state/site.key"
  kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid= # the site has no connection
  bin/airlock bundle inspect "$state/site.bundle" >"$site/inspect.txt"
  head -n 20 "$site/inspect.txt"
  echo
  up+=(--install --kubernetes "$kube_version" --bundle "$state/site.bundle" --bundle-key "$state/site.pub"
       --control-plane-cpus 2 --control-plane-memory 3072 --cpus 1 --memory 1536)
  goal=ready
else
  up+=(--kernel "$kernel" --modules "$modules" --install --os-image "$image" --cache "$cache")
  goal=booted
fi
"${up[@]}"
echo "waiting for the machines to network-boot and report (TCG emulation: about a minute)..."
start=$(date +%s)
while :; do
  found=$(bin/airlock inventory -o json --state "$state" | grep -c '^    "id":' || true)
  printf '\r%d of %d machines discovered after %ds' "$found" "$nodes" "$(elapsed)"
  [ "$found" -ge "$nodes" ] && break
  if [ "$(elapsed)" -gt 600 ]; then
    echo; echo "not all machines reported within 600 s; the lab's airlock log ends:"; tail -n 20 "$state/lab/airlock.log"; exit 1
  fi
  sleep 2
done
echo; echo "installing: each machine's disk gets the OS image and its seed, then it reboots into it (several minutes under emulation)..."
[ "$goal" = booted ] || echo "then kubeadm forms the cluster from the seeds: the control plane first, the workers join (15-30 minutes under emulation)"
while :; do
  json=$(bin/airlock status -o json --state "$state")
  count() { grep -c "\"state\": \"$1\"" <<<"$json" || true; }
  installed=$(count installed); booted=$(count booted); joined=$(count joined); ready=$(count ready); failed=$(count failed)
  if [ "$goal" = booted ]; then
    printf '\r%d of %d machines booted from their own disks after %ds' "$booted" "$nodes" "$(elapsed)"
    done=$booted
  else
    # A machine phones home (booted) when its seed is done, kubeadm
    # included: until then it shows as installed while it boots its disk.
    printf '\r%d of %d machines installed to disk, %d through kubeadm, %d Ready after %ds' "$(( installed + booted + joined + ready ))" "$nodes" "$(( booted + joined + ready ))" "$ready" "$(elapsed)"
    done=$ready
  fi
  [ $(( done + failed )) -ge "$nodes" ] && break
  if [ "$(elapsed)" -gt 3600 ]; then
    echo; echo "not finished within 60 minutes; the lab's airlock log ends:"; tail -n 20 "$state/lab/airlock.log"; exit 1
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
rc=0
[ "$failed" = 0 ] || rc=1
if [ "$goal" = ready ]; then
  ns=$(bin/airlock lab status -o json --state "$state" | sed -n 's/^  "namespace": "\(.*\)",$/\1/p')
  echo
  echo "kubectl get nodes, through the kubeconfig airlock wrote ($state/kubeconfig), from inside the lab's namespace $ns:"
  ip netns exec "$ns" "$bins/kubectl" --kubeconfig "$state/kubeconfig" get nodes -o wide || rc=1
fi
if [ "$rc" = 0 ] && [ -t 0 ] && [ "${DEMO_EXIT:-0}" != 1 ]; then
  echo; echo "The lab keeps running (airlock status --state $state). Ctrl-C removes it."
  while sleep 10; do :; done
fi
exit "$rc"
