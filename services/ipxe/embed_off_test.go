//go:build !ipxe_embed

package ipxe

import (
	"errors"
	"testing"
)

// A plain build carries no iPXE and says how to get it.
func TestPlainBuildSaysNotEmbedded(t *testing.T) {
	if Embedded() {
		t.Fatal("built without ipxe_embed but Embedded() is true")
	}
	if _, err := FS(); !errors.Is(err, ErrNotEmbedded) {
		t.Fatalf("FS() err = %v, want ErrNotEmbedded", err)
	}
}
