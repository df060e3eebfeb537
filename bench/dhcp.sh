#!/bin/bash
# dhcp benchmark against its peer; see bench/RESULTS.md. Runs as root.
# Leases go to the bbolt state store, as airlock serve keeps them.
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./bench/dhcp -state "$@"
