#!/bin/bash
# Image write benchmark (the node agent's path against curl | zstd -dc | dd
# oflag=direct); see bench/RESULTS.md. Runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./bench/imagewrite "$@"
