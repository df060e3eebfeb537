//go:build ipxe_embed

package ipxe

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// The binaries embedded with -tags ipxe_embed are Debian's, byte for byte
// (make test runs this package with the tag; see the Makefile).
func TestEmbeddedAreDebians(t *testing.T) {
	if !Embedded() {
		t.Fatal("built with ipxe_embed but Embedded() is false")
	}
	fsys, err := FS()
	if err != nil {
		t.Fatal(err)
	}
	if m := Missing(fsys); len(m) > 0 {
		t.Fatalf("embedded build lacks %v", m)
	}
	for _, n := range Names {
		got, err := fs.ReadFile(fsys, n)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("/usr/lib/ipxe", n))
		if err != nil {
			t.Fatalf("%v: apt-get install ipxe", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("embedded %s (%d bytes) differs from Debian's /usr/lib/ipxe/%s (%d bytes): run `cd services/ipxe && sh fetch.sh`", n, len(got), n, len(want))
		}
	}
}
