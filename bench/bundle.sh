#!/usr/bin/env bash
# airlock bundle verify vs sha256sum, and bundle build vs skopeo copy into an
# OCI layout + tar | zstd (needs: apt-get install skopeo zstd).
set -euo pipefail
cd "$(dirname "$0")/.."
go run ./bench/bundle verify
go run ./bench/bundle build
