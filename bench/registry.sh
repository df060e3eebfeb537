#!/usr/bin/env bash
# airlock registry vs Debian's docker-registry: blob throughput and server
# CPU-seconds per GiB (needs: apt-get install docker-registry).
set -euo pipefail
cd "$(dirname "$0")/.."
go run ./bench/registry "$@"
