#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests run, from the Go module proxy:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubeadm,
# kubectl, kube-proxy (k8s.io/kubernetes v1.35.4, module e2e/k8s/tools), etcd
# (v3.6.6, module e2e/k8s/etcd) and a static pause (e2e/k8s/tools/pause).
# The Kubernetes binaries carry their version (ldflags), as released ones do.
#
# The result is cached in $AIRLOCK_K8S_CACHE (default /var/cache/airlock)
# under k8s-v1.35.4-KEY/, KEY hashing both modules' files and the build
# recipe, so a fresh clone reuses it and a change to what is built makes a new
# directory. It is built in a temporary directory beside it and renamed into
# place; a second build.sh started meanwhile waits for the first (flock) and
# reuses its result. Prints the directory. Cold on 2 cores: ~5-10 minutes and
# ~5 GB of Go caches.
#
# Usage: e2e/k8s/build.sh            build if needed, print the directory
#        e2e/k8s/build.sh --cached   print the directory if it is built, else exit 1
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
k8s_version=v1.35.4
etcd_version=v3.6.6
cache=${AIRLOCK_K8S_CACHE:-/var/cache/airlock}
kube=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm kubectl kube-proxy)
bins=("${kube[@]}" etcd pause)

major=${k8s_version#v}; major=${major%%.*}
minor=${k8s_version#v$major.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
done
etcd_ld="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version"

key=$( (cd "$here" && cat tools/go.mod tools/go.sum tools/pause/main.go etcd/go.mod etcd/go.sum etcd/main.go
        echo "$ld|$etcd_ld|${bins[*]}") | sha256sum | cut -c1-12)
out=$cache/k8s-$k8s_version-$key

complete() {
  for b in "${bins[@]}"; do [ -x "$1/$b" ] || return 1; done
}
if complete "$out"; then echo "$out"; exit 0; fi
if [ "${1:-}" = --cached ]; then
  echo "k8s/build.sh: $out is not built (make k8s-bins)" >&2
  exit 1
fi

command -v go >/dev/null || { echo "k8s/build.sh: go missing (https://go.dev/dl, or Debian's golang-go)" >&2; exit 2; }
mkdir -p "$cache"
exec 9>"$cache/k8s-$k8s_version.lock"
flock 9
if complete "$out"; then echo "$out"; exit 0; fi

start=$(date +%s)
tmp=$(mktemp -d "$cache/k8s-$k8s_version-$key.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
echo "k8s/build.sh: building Kubernetes $k8s_version and etcd $etcd_version into $tmp" >&2
(cd "$here/tools" && go build -trimpath -ldflags "$ld" -o "$tmp/" "${kube[@]/#/k8s.io/kubernetes/cmd/}")
(cd "$here/tools" && go build -trimpath -ldflags "-s -w" -o "$tmp/pause" ./pause)
(cd "$here/etcd" && go build -trimpath -ldflags "$etcd_ld" -o "$tmp/etcd" .)

got=$("$tmp/kube-apiserver" --version)
[ "$got" = "Kubernetes $k8s_version" ] || { echo "k8s/build.sh: kube-apiserver --version says '$got'" >&2; exit 1; }
got=$("$tmp/etcd" --version) # all of it: `| head -1` would SIGPIPE etcd under pipefail
got=${got%%$'\n'*}
[ "$got" = "etcd Version: ${etcd_version#v}" ] || { echo "k8s/build.sh: etcd --version says '$got'" >&2; exit 1; }
complete "$tmp" || { echo "k8s/build.sh: a binary is missing in $tmp" >&2; exit 1; }
chmod 755 "$tmp"
rm -rf "$out" # an incomplete one (under the lock nobody else uses it)
mv -T "$tmp" "$out"
trap - EXIT
echo "k8s/build.sh: built in $(( $(date +%s) - start )) s: $out" >&2
echo "$out"
