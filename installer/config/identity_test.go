package config

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestPlaceholderSerials(t *testing.T) {
	for _, s := range []string{"", " ", "0", "None", "N/A", "To Be Filled By O.E.M.", "to be filled by o.e.m.", " Default string ",
		"System Serial Number", "Chassis Serial Number", "0000000000", "XXXXXXXXXX", "ffffffff", "123456789", "Not Specified", "OEM"} {
		if !PlaceholderSerial(s) {
			t.Errorf("PlaceholderSerial(%q) = false", s)
		}
		if SerialProblem(s) == "" {
			t.Errorf("SerialProblem(%q) accepts it", s)
		}
	}
	for _, s := range []string{"SN-1", "CZ2D4D0ABC", "7X06CTO1WW-J30012AB", "0000000001", "X1"} {
		if PlaceholderSerial(s) {
			t.Errorf("PlaceholderSerial(%q) = true", s)
		}
	}
	for _, s := range []string{"SN\u200b1", "SN\u202e1", "SN\x001", "SN\t1", " SN1", "SN1 ", "SN\xff", string(make([]byte, 65))} {
		if SerialProblem(s) == "" {
			t.Errorf("SerialProblem(%q) accepts it", s)
		}
	}
	if p := SerialProblem("SN 1"); p != "" {
		t.Errorf("an inner space is a serial's own: %s", p)
	}
}

func TestMACProblems(t *testing.T) {
	for mac, ok := range map[MAC]bool{
		"52:54:00:12:34:56": true, "3c:fd:fe:00:00:03": true, "02:00:00:00:00:01": true,
		"": false, "00:00:00:00:00:00": false, "ff:ff:ff:ff:ff:ff": false, "01:00:5e:00:00:01": false,
		"33:33:00:00:00:01": false, "zz:00:00:00:00:00": false, "52:54:00:12:34": false,
	} {
		if got := mac.Problem() == ""; got != ok {
			t.Errorf("MAC(%q).Problem() = %q", mac, mac.Problem())
		}
	}
	if !UsableMAC("52:54:00:AA:BB:CC") || UsableMAC("") || UsableMAC("00-00-00-00-00-00") {
		t.Error("UsableMAC")
	}
}

// The prefix index finds an overlap exactly when a scan of every prefix
// added does (which is what it replaced), on random IPv4 prefixes.
func TestPrefixIndexAgreesWithAScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func() netip.Prefix {
		a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		p, _ := a.Prefix(8 + rng.IntN(25))
		return p
	}
	for round := range 200 {
		x := newPrefixIndex()
		var added []netip.Prefix
		for i := range 30 {
			p := random()
			_, got := x.overlapping(p)
			want := false
			for _, q := range added {
				want = want || q.Overlaps(p)
			}
			if got != want {
				t.Fatalf("round %d: overlapping(%s) = %v, a scan of %v says %v", round, p, got, added, want)
			}
			if np, ok := x.overlapping(p); ok && !np.p.Overlaps(p) {
				t.Fatalf("overlapping(%s) returned %s, which does not overlap it", p, np.p)
			}
			if !got {
				x.add(namedPrefix{path: fmt.Sprint(i), p: p, i: i})
				added = append(added, p)
			}
			a := p.Addr()
			np, in := x.containing(a)
			wantIn := false
			for _, q := range added {
				wantIn = wantIn || q.Contains(a)
			}
			if in != wantIn || (in && !np.p.Contains(a)) {
				t.Fatalf("containing(%s) = %v, %v; want %v", a, np.p, in, wantIn)
			}
		}
	}
}

func TestHostnameTemplates(t *testing.T) {
	for _, c := range []struct {
		template, name string
		match          bool
	}{
		{"w-{index}", "w-3", true},
		{"w-{index}", "w-03", false},
		{"w-{index}", "w-", false},
		{"{rack}-{index}", "rack-a-1", true},
		{"gpu-{serial}", "gpu-sn-7-x", true},
		{"a.{index}", "ab1", false}, // the dot is literal
		{"n{index}x", "n12x", true},
	} {
		tpl := hostnameTemplate{name: c.template}
		if got := tpl.matches(c.name); got != c.match {
			t.Errorf("%q matches %q = %v", c.template, c.name, got)
		}
	}
}

func TestEndpointForms(t *testing.T) {
	base := `apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: dc1}
network: {interface: eth1, mode: full, subnet: 10.40.0.0/24, dynamicRange: {start: 10.40.0.100, end: 10.40.0.200}}
machines: [{name: cp, match: {serials: [SN-1]}, role: control-plane, hostname: cp-1}]
cluster: {name: dc1, controlPlaneEndpoint: "%s"}
`
	for ep, ok := range map[string]bool{
		"10.40.0.5:6443": true, "[fd00::5]:6443": true, "api.dc1.example:443": true, "api:1": true, "10.40.0.5:65535": true,
		"10.40.0.5": false, "fd00::5:6443": false, "[fd00::5]": false, "10.40.0.5:0": false, "10.40.0.5:65536": false,
		"10.40.0.5:06443": false, "10.40.0.5:+443": false, ":6443": false, "127.0.0.1:6443": false, "[::1]:6443": false,
		"0.0.0.0:6443": false, "10.40.0.1:6443": false, "10.40.0.150:6443": false, "[fe80::1%eth0]:6443": false,
		"10.96.0.1:443": false, "Api_Server:6443": false, "224.0.0.1:6443": false,
	} {
		a, src, problems := Parse("ep.yaml", fmt.Appendf(nil, base, ep))
		problems = append(problems, a.Validate(src)...)
		if got := problems.Err() == nil; got != ok {
			t.Errorf("controlPlaneEndpoint %q: valid = %v, want %v\n%s", ep, got, ok, problems)
		}
	}
}
