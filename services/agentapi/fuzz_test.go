package agentapi

import (
	"encoding/json"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeRegistration feeds arbitrary bodies to the decoder and
// validator: neither may panic, and whatever passes both must survive a
// round trip unchanged and still validate.
func FuzzDecodeRegistration(f *testing.F) {
	// Every registration fixture: a hand-written one and one a real agent
	// sent from a QEMU VM (installer/bootimage's QEMU test, flag
	// -capture-registration).
	files, _ := filepath.Glob("testdata/registration*.json")
	if len(files) < 2 {
		f.Fatalf("registration fixtures missing: %v", files)
	}
	for _, file := range files {
		seed, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(seed)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"bootMAC":"52:54:00:12:34:56","arch":"arm64","inventory":{"cpu":{"threads":1},"memory":{"totalBytes":1},"nics":[{"name":"eth0","mac":"52:54:00:12:34:56","link":true}]}}`))
	f.Add([]byte(`{"bootMAC":"52:54:00:12:34:56"} trailing`))
	f.Add([]byte("{\"inventory\":{\"system\":{\"serial\":\"\\u001b[31m\"}}}"))
	for _, seed := range hostileRegistrations(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Registration
		if err := DecodeBytes(data, &r); err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			return
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal valid registration: %v", err)
		}
		var r2 Registration
		if err := DecodeBytes(again, &r2); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if err := r2.Validate(); err != nil {
			t.Fatalf("round trip no longer valid: %v", err)
		}
		_ = Identity(&r2)
		// Totals of a valid report fit, so no reader's sum can wrap.
		var total uint64
		for _, d := range r2.Inventory.Disks {
			var carry uint64
			if total, carry = bits.Add64(total, d.SizeBytes, 0); carry != 0 {
				t.Fatalf("valid report's disk sizes wrap a uint64")
			}
		}
		if total > maxTotalBytes || len(r2.Inventory.Disks) > maxDisks || len(r2.Inventory.NICs) > maxNICs || len(r2.Inventory.PCI) > maxPCI {
			t.Fatalf("valid report over the limits: %d bytes of disks, %d disks, %d NICs, %d PCI devices",
				total, len(r2.Inventory.Disks), len(r2.Inventory.NICs), len(r2.Inventory.PCI))
		}
	})
}

// hostileRegistrations are reports an attacker or broken firmware sends:
// sizes whose sum wraps, placeholder and look-alike identities, invisible
// characters, the boot MAC in another case or missing from the NICs, one
// MAC on two NICs, counts over the caps.
func hostileRegistrations(tb testing.TB) [][]byte {
	tb.Helper()
	base := func() Registration {
		return Registration{BootMAC: "52:54:00:12:34:56", Arch: "amd64", Inventory: Inventory{
			System: System{Serial: "SN-A", UUID: "9b2f3c1e-0000-4000-8000-0000000000a1"},
			CPU:    CPU{Threads: 4, Cores: 2, Sockets: 1}, Memory: Memory{TotalBytes: 1 << 33},
			NICs: []NIC{{Name: "eth0", MAC: "52:54:00:12:34:56", Link: true}},
		}}
	}
	var out []Registration
	wrap := base() // 256 disks of 64 PiB: exactly 2^64
	for i := range maxDisks {
		wrap.Inventory.Disks = append(wrap.Inventory.Disks, Disk{Name: fmt.Sprintf("sd%d", i), SizeBytes: maxBytes})
	}
	out = append(out, wrap)
	over := base() // a total just over the cap
	for i := range 17 {
		over.Inventory.Disks = append(over.Inventory.Disks, Disk{Name: fmt.Sprintf("nvme%dn1", i), SizeBytes: maxBytes - 1})
	}
	out = append(out, over)
	for _, mutate := range []func(*Registration){
		func(r *Registration) {
			r.Inventory.System.Serial = "To be filled by O.E.M."
			r.Inventory.System.UUID = "03000200-0400-0500-0006-000700080009"
		},
		func(r *Registration) { r.Inventory.System.Serial = "SN-A " },
		func(r *Registration) { r.Inventory.System.Serial = "SN-\u202eA" },
		func(r *Registration) { r.Inventory.System.Serial = "SN-A\u200b" },
		func(r *Registration) { r.Inventory.System.UUID = "9B2F3C1E-0000-4000-8000-0000000000A1" },
		func(r *Registration) { r.BootMAC = "52:54:00:12:34:56"; r.Inventory.NICs[0].MAC = "52:54:00:12:34:56" },
		func(r *Registration) { r.BootMAC = "52:54:00:12:34:57" },
		func(r *Registration) { r.BootMAC = "52:54:00:12:34:5A"; r.Inventory.NICs[0].MAC = "52:54:00:12:34:5a" },
		func(r *Registration) {
			r.Inventory.NICs = append(r.Inventory.NICs, NIC{Name: "eth1", MAC: r.BootMAC})
		},
		func(r *Registration) {
			for i := range maxNICs {
				r.Inventory.NICs = append(r.Inventory.NICs, NIC{Name: fmt.Sprintf("eth%d", i+1), MAC: fmt.Sprintf("52:54:00:00:%02x:%02x", i>>8, i&0xff)})
			}
		},
		func(r *Registration) { r.Inventory.Memory.TotalBytes = 1<<64 - 1 },
		func(r *Registration) { r.Inventory.CPU.Threads = -1 },
	} {
		r := base()
		mutate(&r)
		out = append(out, r)
	}
	var seeds [][]byte
	for _, r := range out {
		data, err := json.Marshal(r)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, data)
	}
	return seeds
}

// FuzzParseToken checks that a token that parses prints back identically.
func FuzzParseToken(f *testing.F) {
	f.Add("0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("x.y")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		if tok.String() != s {
			t.Fatalf("ParseToken(%q).String() = %q", s, tok.String())
		}
	})
}
