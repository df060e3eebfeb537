#!/usr/bin/env bash
# 8 machines installing at once: airlock's CPU per GiB of OS image served
# against its registry's CPU per GiB for the same bytes (see
# bench/RESULTS.md). Runs as root; builds bin-less (airlock goes to a
# temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./bench/install8 "$@"
