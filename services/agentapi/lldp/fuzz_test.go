package lldp

import (
	"encoding/hex"
	"testing"
	"unicode"
)

// FuzzParse: Parse must never panic, return only printable strings, and a
// parsed frame must survive Encode/Parse unchanged in its identifying
// fields.
func FuzzParse(f *testing.F) {
	good, _ := Encode(torFrame())
	f.Add(good)
	if sw, err := hex.DecodeString(switchFrame); err == nil {
		f.Add(sw)
	}
	f.Add([]byte{})
	f.Add(good[:20])
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := Parse(data)
		if err != nil {
			return
		}
		for _, s := range []string{fr.ChassisID, fr.PortID, fr.SystemName, fr.PortDescription, fr.SystemDescription} {
			for _, r := range s {
				if !unicode.IsPrint(r) {
					t.Fatalf("non-printable %U in %q", r, s)
				}
			}
		}
		if fr.ChassisID == "" || fr.PortID == "" {
			return
		}
		again, err := Encode(fr)
		if err != nil {
			return // e.g. strings over 255 bytes after parsing
		}
		fr2, err := Parse(again)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if fr2.PortID != fr.PortID || fr2.SystemName != fr.SystemName {
			t.Fatalf("round trip changed %+v to %+v", fr, fr2)
		}
	})
}
