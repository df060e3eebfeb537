package engine

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"airlock.dev/airlock/installer/config"
)

// One validation for every command: whatever `airlock validate` accepts,
// the DHCP configuration serve builds from it accepts too. Run over every
// example answer file, every golden problem file that validates, and
// thousands of generated variants around the limits (modes, ranges, lease
// times, relayed subnets, reservations, servers).
//
// An answer file without network.interface is the one documented
// difference: validate warns (airlock init leaves the NIC for the engineer
// to name) and serve refuses with ErrNoInterface before building any DHCP
// configuration. For such files the test checks that the warning is there
// and that, with an interface named, DHCP accepts the rest.
func TestWhatValidateAcceptsServeAccepts(t *testing.T) {
	type input struct{ name, text string }
	var inputs []input
	for _, pattern := range []string{"../config/examples/*.yaml", "../config/testdata/problems/*.yaml"} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			inputs = append(inputs, input{f, string(data)})
		}
	}
	fileInputs := len(inputs)
	for i, text := range variants() {
		inputs = append(inputs, input{fmt.Sprintf("variant-%d", i), text})
	}

	accepted, rejected := 0, 0
	acceptedFiles := 0
	for _, in := range inputs {
		a, src, problems := config.Parse(in.name, []byte(in.text))
		if _, parsed := src.Positions[""]; parsed {
			problems = append(problems, a.Validate(src)...)
		}
		if problems.Err() != nil {
			rejected++
			continue
		}
		accepted++
		if strings.HasSuffix(in.name, ".yaml") {
			acceptedFiles++
		}
		if a.Network.Interface == "" {
			warned := false
			for _, p := range problems.Warnings() {
				warned = warned || p.Path == "network.interface"
			}
			if !warned {
				t.Errorf("%s: no network.interface, and validate did not warn about it", in.name)
			}
			named := *a
			named.Network.Interface = "prov0"
			a = &named
		}
		base := "http://" + net.JoinHostPort(a.Network.Address.String(), "8080")
		cfg := DHCPConfig(a, base, true)
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s passes validate, but serve's DHCP configuration refuses it:\n%v\n--- answer file:\n%s", in.name, err, in.text)
		}
		// Without iPXE binaries serve still starts (no boot file).
		if err := DHCPConfig(a, base, false).Validate(); err != nil {
			t.Errorf("%s: without iPXE: %v", in.name, err)
		}
	}
	t.Logf("%d inputs (%d files): %d accepted by validate (%d files), %d refused", len(inputs), fileInputs, accepted, acceptedFiles, rejected)
	// The test proves nothing unless both sides of the line were reached.
	if acceptedFiles < 4 || accepted < 200 || rejected < 200 {
		t.Errorf("too few inputs on one side: %d accepted (%d files), %d refused", accepted, acceptedFiles, rejected)
	}
}

// And the other way: the files serve's DHCP checks refuse are refused by
// validate already, at their line, so the operator never meets them first
// at serve.
func TestValidateRefusesWhatServeRefuses(t *testing.T) {
	for name, o := range map[string]variantOpts{
		"lease time zero":        {mode: "full", lease: "0s"},
		"lease time 30s":         {mode: "full", lease: "30s"},
		"auto without a range":   {mode: "auto", noRange: true},
		"no mode, no range":      {noRange: true},
		"relayed /31":            {mode: "full", relayed: "10.50.0.0/31"},
		"relayed without range":  {mode: "full", relayed: "10.50.0.0/24", relayedNoRange: true},
		"reservation outside":    {mode: "full", reservation: "192.168.50.10/24"},
		"reservation IPv6":       {mode: "full", reservation: "fd00::10/64"},
		"reservation on airlock": {mode: "full", reservation: "10.40.0.1/24"},
	} {
		text := variant(o)
		a, src, problems := config.Parse(name, []byte(text))
		problems = append(problems, a.Validate(src)...)
		if problems.Err() == nil {
			t.Errorf("%s: validate accepts it:\n%s", name, text)
		}
		for _, p := range problems.Errors() {
			if p.Line < 1 || p.Col < 1 {
				t.Errorf("%s: error without a position: %s", name, p)
			}
		}
		// Serve's own check refuses it too: the two agree.
		if err := DHCPConfig(a, "http://10.40.0.1:8080", true).Validate(); err == nil {
			t.Errorf("%s: the DHCP configuration accepts it; this case no longer shows a serve check", name)
		}
	}
}

type variantOpts struct {
	mode, subnet, address, lease string
	noRange                      bool
	rangeStart, rangeEnd         string
	gateway                      string
	dns                          []string
	relayed                      string
	relayedNoRange               bool
	relayedDNS                   []string
	reservation                  string
	iface                        string
}

// variant writes one answer file from opts; empty fields keep a sound
// default.
func variant(o variantOpts) string {
	if o.subnet == "" {
		o.subnet = "10.40.0.0/24"
	}
	if o.rangeStart == "" {
		o.rangeStart, o.rangeEnd = "10.40.0.100", "10.40.0.200"
	}
	var b strings.Builder
	b.WriteString("apiVersion: airlock.dev/v1alpha1\nkind: Install\nsite: {name: dc1, lab: true}\nnetwork:\n")
	if o.iface != "-" {
		fmt.Fprintf(&b, "  interface: %s\n", cmpOr(o.iface, "prov0"))
	}
	if o.mode != "" {
		fmt.Fprintf(&b, "  mode: %s\n", o.mode)
	}
	fmt.Fprintf(&b, "  subnet: %s\n", o.subnet)
	if o.address != "" {
		fmt.Fprintf(&b, "  address: %s\n", o.address)
	}
	if !o.noRange {
		fmt.Fprintf(&b, "  dynamicRange: {start: %s, end: %s}\n", o.rangeStart, o.rangeEnd)
	}
	if o.gateway != "" {
		fmt.Fprintf(&b, "  gateway: %s\n", o.gateway)
	}
	if len(o.dns) > 0 {
		fmt.Fprintf(&b, "  dns: [%s]\n", strings.Join(o.dns, ", "))
	}
	if o.lease != "" {
		fmt.Fprintf(&b, "  leaseTime: %s\n", o.lease)
	}
	if o.relayed != "" {
		fmt.Fprintf(&b, "  relayedSubnets:\n    - subnet: %s\n", o.relayed)
		if !o.relayedNoRange {
			p := strings.Split(strings.Split(o.relayed, "/")[0], ".")
			fmt.Fprintf(&b, "      dynamicRange: {start: %s.%s.%s.2, end: %s.%s.%s.6}\n", p[0], p[1], p[2], p[0], p[1], p[2])
		}
		if len(o.relayedDNS) > 0 {
			fmt.Fprintf(&b, "      dns: [%s]\n", strings.Join(o.relayedDNS, ", "))
		}
	}
	b.WriteString("machines:\n  - name: cp\n    match: {macs: [\"52:54:00:00:00:01\"]}\n    role: control-plane\n    hostname: cp-1\n")
	if o.reservation != "" {
		fmt.Fprintf(&b, "    address: %s\n", o.reservation)
	}
	b.WriteString("  - name: workers\n    role: worker\n    hostname: worker-{index}\nadmission: {policy: any}\ncluster: {name: dc1}\n")
	return b.String()
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// variants draws answer files around the limits serve's DHCP checks
// depend on: each dimension takes a sound value most of the time and a
// value at or past a limit otherwise, so that both sides of every limit
// are reached, alone and together (fixed seed: the same files every run).
func variants() []string {
	rng := rand.New(rand.NewPCG(13, 5))
	// pick returns one of good most of the time, else one of edge.
	pick := func(good, edge []string) string {
		if rng.IntN(100) < 88 {
			return good[rng.IntN(len(good))]
		}
		return edge[rng.IntN(len(edge))]
	}
	type net struct{ subnet, start, end, address, gateway, reservation string }
	goodNets := []net{
		{"10.40.0.0/24", "10.40.0.100", "10.40.0.200", "", "", "10.40.0.10/24"},
		{"10.40.0.0/24", "10.40.0.20", "10.40.0.253", "10.40.0.1", "10.40.0.254", "10.40.0.2/24"},
		{"10.40.0.0/29", "10.40.0.3", "10.40.0.6", "", "", "10.40.0.2/29"},
		{"10.40.0.0/16", "10.40.1.0", "10.40.255.254", "10.40.0.1", "10.40.0.2", "10.40.0.10/16"},
	}
	edgeNets := []net{
		{"10.40.0.0/24", "10.40.0.1", "10.40.0.254", "", "", ""},
		{"10.40.0.0/24", "10.40.0.200", "10.40.0.100", "", "", ""},
		{"10.40.0.0/24", "10.40.1.100", "10.40.1.200", "", "", ""},
		{"10.40.0.0/30", "10.40.0.2", "10.40.0.2", "", "", ""},
		{"10.40.0.5/24", "10.40.0.100", "10.40.0.200", "", "", ""},
		{"127.0.0.0/24", "127.0.0.100", "127.0.0.200", "", "", ""},
		{"169.254.0.0/24", "169.254.0.100", "169.254.0.200", "", "", ""},
		{"fd00::/64", "fd00::100", "fd00::200", "", "", ""},
		{"10.40.0.0/24", "10.40.0.100", "10.40.0.200", "10.40.1.1", "", ""},
		{"10.40.0.0/24", "10.40.0.100", "10.40.0.200", "", "10.40.0.150", ""},
		{"10.40.0.0/24", "10.40.0.100", "10.40.0.200", "10.40.0.255", "", ""},
		{"10.40.0.0/24", "10.40.0.100", "10.40.0.200", "10.40.0.0", "", ""},
	}
	var out []string
	for range 2000 {
		n := goodNets[rng.IntN(len(goodNets))]
		if rng.IntN(100) < 20 {
			n = edgeNets[rng.IntN(len(edgeNets))]
		}
		o := variantOpts{
			mode:   pick([]string{"full", "proxy", "auto", ""}, []string{`""`, "~"}),
			subnet: n.subnet, rangeStart: n.start, rangeEnd: n.end, address: n.address, gateway: n.gateway,
			noRange:     pick([]string{"no"}, []string{"yes"}) == "yes",
			lease:       pick([]string{"", "1m", "1h", "168h"}, []string{"0s", "59s", "169h", "-1h", "~"}),
			relayed:     pick([]string{"", "10.50.0.0/24", "10.50.0.0/28"}, []string{"10.50.0.0/31", "10.50.0.1/32", "10.40.0.0/25", "224.0.1.0/24", "10.244.1.0/24"}),
			reservation: pick([]string{"", n.reservation}, []string{"10.40.0.150/24", "10.50.0.30/24", "192.168.7.7/24", "fd00::7/64", "10.40.0.1/24", "10.40.0.10/16"}),
			iface:       pick([]string{"prov0", "eth0.100"}, []string{"-", "eth0:1"}),
		}
		o.relayedNoRange = o.relayed != "" && pick([]string{"no"}, []string{"yes"}) == "yes"
		if d := pick([]string{"", "10.40.0.53", "10.40.0.53, 10.40.0.54"}, []string{"127.0.0.1", "0.0.0.0", "fd00::53", "10.40.0.53, 10.40.0.53", "1.1.1.1, 1.1.1.2, 1.1.1.3, 1.1.1.4, 1.1.1.5, 1.1.1.6, 1.1.1.7, 1.1.1.8, 1.1.1.9"}); d != "" {
			o.dns = []string{d}
		}
		if o.relayed != "" {
			if d := pick([]string{"", "10.50.0.53"}, []string{"127.0.0.53", "fd00::53"}); d != "" {
				o.relayedDNS = []string{d}
			}
		}
		out = append(out, variant(o))
	}
	return out
}

// The check is not vacuous: DHCP's Validate does refuse the configuration
// a variant would give it without validate's new checks (a zero lease).
func TestParityCheckCanFail(t *testing.T) {
	a, src, problems := config.Parse("x", []byte(variant(variantOpts{mode: "full", lease: "1h"})))
	if err := append(problems, a.Validate(src)...).Err(); err != nil {
		t.Fatal(err)
	}
	a.Network.LeaseTime = 0
	err := DHCPConfig(a, "http://10.40.0.1:8080", true).Validate()
	if err == nil || !strings.Contains(err.Error(), "LeaseTime") {
		t.Fatalf("DHCP accepted a zero lease time: %v", err)
	}
}
