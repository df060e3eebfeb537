#!/usr/bin/env bash
# airlock bundle verify vs sha256sum, and bundle build vs skopeo copy into an
# OCI layout + tar | zstd (needs: apt-get install skopeo zstd): on disk as
# the peer is usually run, on disk with the peer's output fsynced as
# airlock's is, and on tmpfs (no disk at all).
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o "${TMPDIR:-/tmp}/airlock-bench-bundle" ./bench/bundle
bin="${TMPDIR:-/tmp}/airlock-bench-bundle"
trap 'rm -f "$bin"' EXIT
"$bin" verify
echo; "$bin" build
echo; "$bin" build -peer-sync
if [ -d /dev/shm ]; then echo; "$bin" build -dir /dev/shm; fi
