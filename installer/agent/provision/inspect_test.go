package provision

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// TestProbeSynthetic covers the signatures this machine's kernel cannot
// make with the real tools (md RAID needs the md driver, absent here):
// each magic placed where its format puts it.
func TestProbeSynthetic(t *testing.T) {
	const size = 8 << 20
	md := func(off int64) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint32(b[off:], 0xa92b4efc) }
	}
	for _, tc := range []struct {
		name string
		put  func([]byte)
		want string
	}{
		{"md 1.2", md(4096), "linux_raid_member"},
		{"md 1.1", md(0), "linux_raid_member"},
		{"md 1.0", md(((size >> 9) - 16) &^ 7 * 512), "linux_raid_member"},
		{"md 0.90", md(size&^(65536-1) - 65536), "linux_raid_member"},
		{"luks", func(b []byte) { copy(b, "LUKS\xba\xbe") }, "crypto_LUKS"},
		{"iso9660", func(b []byte) { copy(b[0x8001:], "CD001") }, "iso9660"},
		{"lvm in sector 1", func(b []byte) { copy(b[512:], "LABELONE"); copy(b[512+24:], "LVM2 001") }, "LVM2_member"},
		{"nothing", func([]byte) {}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := make([]byte, size)
			tc.put(b)
			s := probe(bytes.NewReader(b), size)
			var got string
			if len(s.Found) > 0 {
				got = s.Found[0].Type
			}
			if got != tc.want || len(s.Found) > 1 {
				t.Fatalf("probe = %s, want %q", s, tc.want)
			}
		})
	}
}
