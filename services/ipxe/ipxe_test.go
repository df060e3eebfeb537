package ipxe

import (
	"bytes"
	"os"
	"testing"
	"testing/fstest"
)

func TestMissing(t *testing.T) {
	m := Missing(fstest.MapFS{"undionly.kpxe": {Data: []byte{1}}, "ipxe.efi": {}})
	if len(m) != 2 || m[0] != "ipxe.efi" || m[1] != "snponly.efi" {
		t.Fatalf("Missing = %v", m)
	}
}

// TestDebianIPXEQuirks records what Debian's 2019 iPXE is: the build the
// boot path was measured with (ENVIRONMENT.md).
func TestDebianIPXEQuirks(t *testing.T) {
	b, err := os.ReadFile("/usr/lib/ipxe/undionly.kpxe")
	if err != nil {
		t.Fatalf("%v: apt-get install ipxe", err)
	}
	if len(b) < 50*1024 || len(b) > 1024*1024 {
		t.Errorf("undionly.kpxe is %d bytes; the first stage should be 50 KB-1 MB for TFTP", len(b))
	}
	// No arm64 iPXE in Debian's amd64 ipxe package: arm64 machines need
	// one from the bundle (Boot.ARM64File stays empty by default).
	if _, err := os.Stat("/usr/lib/ipxe/arm64-efi/snponly.efi"); err == nil {
		t.Log("an arm64 iPXE is present now; consider embedding it")
	}
	efi, err := os.ReadFile("/usr/lib/ipxe/snponly.efi")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(efi, []byte("MZ")) {
		t.Error("snponly.efi is not a PE image")
	}
}
