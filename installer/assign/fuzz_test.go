package assign

import (
	"testing"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
)

// FuzzEmptyIdentityNeverMatches: whatever a rule lists and whatever a
// machine reports, a serial condition matches only a usable serial equal to
// a usable entry, a MAC condition only a real unicast MAC, and an empty
// rack or GPU model nothing.
func FuzzEmptyIdentityNeverMatches(f *testing.F) {
	for _, s := range [][4]string{
		{"", "", "", ""},
		{"To Be Filled By O.E.M.", "To Be Filled By O.E.M.", "00:00:00:00:00:00", "00:00:00:00:00:00"},
		{"Default string", "default string", "ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff"},
		{"0", "0", "01:00:5e:00:00:01", "01:00:5e:00:00:01"},
		{" SN-1", "SN-1", "52:54:00:00:00:01", "52:54:00:00:00:01"},
		{"SN\u200b1", "SN\u200b1", "", "52:54:00:00:00:01"},
		{"SN-1", "SN-1", "52:54:00:00:00:01", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, ruleSerial, serial, ruleMAC, mac string) {
		m := inventory.Machine{ID: "m-1", Serial: serial, BootMAC: mac, MACs: []string{mac}}
		if Matches(config.Match{Serials: []string{ruleSerial}}, m) {
			if config.SerialProblem(ruleSerial) != "" || config.SerialProblem(serial) != "" || ruleSerial != serial {
				t.Fatalf("serials: [%q] matched a machine with serial %q", ruleSerial, serial)
			}
		}
		if Matches(config.Match{MACs: []config.MAC{config.MAC(ruleMAC)}}, m) {
			if !config.MAC(ruleMAC).Usable() || !config.UsableMAC(mac) {
				t.Fatalf("macs: [%q] matched a machine with MAC %q", ruleMAC, mac)
			}
		}
		m.Rack, m.Summary.GPUModel = serial, mac
		if Matches(config.Match{Racks: []string{""}}, m) || Matches(config.Match{GPUModels: []string{"", " "}}, m) {
			t.Fatalf("an empty rack or GPU model matched rack %q, GPU %q", serial, mac)
		}
	})
}
