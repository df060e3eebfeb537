#!/usr/bin/env bash
# Builds the container images the Kubernetes end-to-end test installs, from
# Go binaries, under their upstream names, into one OCI image layout (its
# index names each image by reference): exactly the images the real kubeadm
# v1.35.4 lists (`kubeadm config images list`: kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, coredns, pause,
# etcd) and a test app, docker.io/airlock/testapp:1.0 (a static Go HTTP
# server, e2e/k8s/images/testapp).
#
# Where the binaries come from: the Kubernetes binaries, etcd and pause of
# e2e/k8s/build.sh (make k8s-bins; built first if needed); coredns built
# from the Go module proxy at kubeadm's tag (cached on its own); kube-proxy's
# image also holds Debian's iptables and its libraries (apt-get download of
# the host's Debian release, dpkg -x). kube-vip is not built: the Go module
# proxy refuses github.com/kube-vip/kube-vip here (403), so the test bundle
# has kubeVIP: false.
#
# The etcd image carries kubeadm's tag (3.6.6-0) and holds the etcd v3.6.6
# of make k8s-bins (for v1.34.2 it was tagged 3.6.5-0 but held v3.6.4).
#
# The builder is a Go module of its own (e2e/k8s/images, with
# go-containerregistry): its tests run first, then its command
# (k8s-images) builds the layout and is kept beside it.
#
# The result is cached in $AIRLOCK_K8S_CACHE (default /var/cache/airlock)
# under k8s-images-v1.35.4-KEY/ (layout/ and the k8s-images command), KEY
# hashing this script, the builder module and the binaries' directory;
# built beside it and renamed into place, under a lock. Prints the layout's
# directory. `DIR/../k8s-images serve -layout DIR` serves it from registries
# on 127.0.0.1 and prints the registryMirrors for a bundle.yaml.
#
# Usage: e2e/k8s/images.sh            build if needed, print the layout directory
#        e2e/k8s/images.sh --cached   print it if built, else exit 1
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
k8s_version=v1.35.4
coredns_version=v1.13.1 # kubeadm v1.35.4's (checked below against kubeadm itself)
testapp_ref=docker.io/airlock/testapp:1.0
cache=${AIRLOCK_K8S_CACHE:-/var/cache/airlock}
# Debian's iptables (nf_tables) and what it links, for kube-proxy's image.
debs=(iptables libip4tc2 libip6tc2 libxtables12 libnftnl11 libmnl0 libnetfilter-conntrack3 libnfnetlink0 libc6 libgcc-s1)

if [ "${1:-}" = --cached ]; then
  bins=$(bash "$here/build.sh" --cached)
else
  bins=$(bash "$here/build.sh")
fi
key=$( (cd "$here" && cat images.sh images/go.mod images/go.sum images/images.go images/main.go images/testapp/main.go
        echo "$bins|${debs[*]}|$coredns_version|$testapp_ref") | sha256sum | cut -c1-12)
out=$cache/k8s-images-$k8s_version-$key
if [ -s "$out/layout/index.json" ] && [ -x "$out/k8s-images" ]; then echo "$out/layout"; exit 0; fi
if [ "${1:-}" = --cached ]; then
  echo "k8s/images.sh: $out is not built (make k8s-images)" >&2
  exit 1
fi

command -v go >/dev/null || { echo "k8s/images.sh: go missing (https://go.dev/dl, or Debian's golang-go)" >&2; exit 2; }
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || { echo "k8s/images.sh: needs Debian's apt and dpkg" >&2; exit 2; }
mkdir -p "$cache"
exec 9>"$cache/k8s-images-$k8s_version.lock"
flock 9
if [ -s "$out/layout/index.json" ] && [ -x "$out/k8s-images" ]; then echo "$out/layout"; exit 0; fi

start=$(date +%s)
tmp=$(mktemp -d "$cache/k8s-images-$k8s_version-$key.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# What kubeadm itself asks for.
mapfile -t refs < <("$bins/kubeadm" config images list --kubernetes-version "$k8s_version")
[ "${#refs[@]}" -eq 7 ] || { echo "k8s/images.sh: kubeadm lists ${#refs[@]} images: ${refs[*]}" >&2; exit 1; }
printf '%s\n' "${refs[@]}" | grep -qx "registry.k8s.io/coredns/coredns:$coredns_version" ||
  { echo "k8s/images.sh: kubeadm's coredns is not $coredns_version: ${refs[*]}" >&2; exit 1; }

# coredns from the Go module proxy (no replace directives: go install works).
coredns=$cache/coredns-$coredns_version/coredns
if [ ! -x "$coredns" ]; then
  echo "k8s/images.sh: building coredns $coredns_version" >&2
  mkdir -p "$tmp/coredns"
  GOBIN=$tmp/coredns go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$coredns_version"
  "$tmp/coredns/coredns" -version | grep -q "CoreDNS-${coredns_version#v}" ||
    { echo "k8s/images.sh: coredns -version: $("$tmp/coredns/coredns" -version)" >&2; exit 1; }
  mkdir -p "$(dirname "$coredns")"
  mv "$tmp/coredns/coredns" "$coredns.tmp" && mv "$coredns.tmp" "$coredns"
fi

(cd "$here/images" && go test -count=1 ./... >&2 &&
  go build -trimpath -ldflags "-s -w" -o "$tmp/testapp" ./testapp &&
  go build -trimpath -ldflags "-s -w" -o "$tmp/k8s-images" .)

echo "k8s/images.sh: apt-get download ${debs[*]}" >&2
mkdir -p "$tmp/debs" "$tmp/iptables"
(cd "$tmp/debs" && apt-get download -q "${debs[@]}" >"$tmp/apt.log" 2>&1) ||
  { tail -20 "$tmp/apt.log" >&2; echo "k8s/images.sh: apt-get download failed (apt-get update first?)" >&2; exit 1; }
for d in "$tmp"/debs/*.deb; do dpkg-deb -x "$d" "$tmp/iptables"; done
rm -rf "$tmp/iptables/usr/share/doc" "$tmp/iptables/usr/share/man" "$tmp/iptables/usr/share/locale" "$tmp/iptables/usr/share/lintian"
# It runs there as it will in the image (chroot: the image's own glibc).
chroot "$tmp/iptables" /usr/sbin/xtables-nft-multi iptables --version >/dev/null ||
  { echo "k8s/images.sh: Debian's iptables does not run from its unpacked tree" >&2; exit 1; }

echo "k8s/images.sh: writing ${refs[*]} $testapp_ref" >&2
"$tmp/k8s-images" build -out "$tmp/layout" -bins "$bins" \
  -coredns "$coredns" -testapp "$tmp/testapp" -iptables "$tmp/iptables" -testapp-ref "$testapp_ref" "${refs[@]}"
rm -rf "$tmp/debs" "$tmp/iptables" "$tmp/coredns" "$tmp/testapp" "$tmp/apt.log"
chmod 755 "$tmp"
rm -rf "$out"
mv -T "$tmp" "$out"
trap - EXIT
echo "k8s/images.sh: built in $(( $(date +%s) - start )) s: $out/layout ($(du -sh "$out/layout" | cut -f1))" >&2
echo "$out/layout"
