// Package ipxe carries the iPXE first-stage binaries inside the airlock
// executable: undionly.kpxe (BIOS), ipxe.efi and snponly.efi (UEFI x86-64).
//
// They are taken at build time from Debian's ipxe package (go generate
// copies them into bin/, which git ignores) and embedded only when building
// with -tags ipxe_embed. A plain `go build` compiles without them; Embedded
// then reports false and serve must say so (a bundle may still supply them).
//
// Debian's iPXE is 1.0.0+git-20190125: it has no arm64 build on amd64, waits
// ~13 s for IPv6 router advertisements, and sends its user class as the raw
// string "iPXE".
package ipxe

import (
	"errors"
	"io/fs"
)

// Names are the first-stage files airlock serves, by firmware.
var Names = []string{BIOS, UEFI, UEFISNP}

// File names.
const (
	BIOS    = "undionly.kpxe"
	UEFI    = "ipxe.efi"
	UEFISNP = "snponly.efi"
)

// ErrNotEmbedded says the binary was built without iPXE.
var ErrNotEmbedded = errors.New("no iPXE binaries are embedded in this airlock build " +
	"(build with `go generate ./services/ipxe && go build -tags ipxe_embed`, or supply them in the bundle)")

// Embedded reports whether this build carries the binaries.
func Embedded() bool { return embedded }

// FS returns the embedded binaries at the root of an fs.FS, or
// ErrNotEmbedded.
func FS() (fs.FS, error) {
	if !embedded {
		return nil, ErrNotEmbedded
	}
	return fs.Sub(files, "bin")
}

// Missing returns which of Names fsys lacks (e.g. a bundle's override).
func Missing(fsys fs.FS) []string {
	var out []string
	for _, n := range Names {
		if st, err := fs.Stat(fsys, n); err != nil || st.Size() == 0 {
			out = append(out, n)
		}
	}
	return out
}
