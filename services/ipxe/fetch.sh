#!/bin/sh
# Copies Debian's iPXE binaries into bin/ for `go build -tags ipxe_embed`.
# Run from this directory (go generate does): go generate ./services/ipxe
set -eu
src=${IPXE_DIR:-/usr/lib/ipxe}
mkdir -p bin
for f in undionly.kpxe ipxe.efi snponly.efi; do
	if [ ! -s "$src/$f" ]; then
		echo "fetch.sh: $src/$f missing: apt-get install ipxe" >&2
		exit 1
	fi
	cp "$src/$f" "bin/$f"
done
echo "fetch.sh: copied iPXE binaries from $src into $(pwd)/bin"
