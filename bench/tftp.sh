#!/bin/bash
# tftp benchmark against its peer; see bench/RESULTS.md. Runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./bench/tftp "$@"
