package config

import (
	"bytes"
	_ "embed"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"text/template"
	"unicode"
)

//go:embed init.yaml.tmpl
var initTemplate string

// InitOptions fill in the network section of the example answer file.
type InitOptions struct {
	Site      string       // site and cluster name; default "dc1"
	Interface string       // provisioning NIC; empty leaves it commented out
	Subnet    netip.Prefix // default 10.40.0.0/24
	Mode      string       // auto, full or proxy; default auto
	BundleKey string       // the bundle's public key file; empty leaves a placeholder validate warns about
}

// Example renders the commented example answer file. The result always
// validates without errors; invalid options are refused instead.
func Example(o InitOptions) ([]byte, error) {
	if o.Site == "" {
		o.Site = "dc1"
	}
	if o.Mode == "" {
		o.Mode = ModeAuto
	}
	if !o.Subnet.IsValid() {
		o.Subnet = netip.MustParsePrefix("10.40.0.0/24")
	}
	if !slices.Contains([]string{ModeAuto, ModeFull, ModeProxy}, o.Mode) {
		return nil, fmt.Errorf("mode %q: use auto, full or proxy", o.Mode)
	}
	if !dnsLabelRE.MatchString(o.Site) {
		return nil, fmt.Errorf("site %q is not a DNS label", o.Site)
	}
	if o.Interface != "" && !interfaceNameRE.MatchString(o.Interface) {
		return nil, fmt.Errorf("interface %q is not a valid Linux interface name", o.Interface)
	}
	if strings.ContainsFunc(o.BundleKey, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '"' || r == '\\' || !unicode.IsPrint(r) }) {
		return nil, fmt.Errorf("bundle key path %q: quotes, backslashes and control characters are not supported", o.BundleKey)
	}
	if !o.Subnet.Addr().Is4() || o.Subnet.Bits() > 29 || o.Subnet.Bits() < 8 {
		return nil, fmt.Errorf("subnet %s: use an IPv4 subnet between /8 and /29", o.Subnet)
	}
	subnet := o.Subnet.Masked()
	hosts := uint32(1)<<(32-subnet.Bits()) - 2
	rangeStart := max(3, hosts/2)
	data := map[string]any{
		"Site":       o.Site,
		"Interface":  o.Interface,
		"BundleKey":  o.BundleKey,
		"Mode":       o.Mode,
		"Subnet":     subnet,
		"Address":    nthHost(subnet, 1),
		"Endpoint":   nthHost(subnet, 2),
		"RangeStart": nthHost(subnet, rangeStart),
		"RangeEnd":   nthHost(subnet, hosts),
	}
	tmpl := template.Must(template.New("init").Option("missingkey=error").Parse(initTemplate))
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		return nil, fmt.Errorf("render example answer file: %w", err)
	}
	return out.Bytes(), nil
}

// nthHost returns the n-th address after the network address of p.
func nthHost(p netip.Prefix, n uint32) netip.Addr {
	return fromUint32(toUint32(p.Masked().Addr()) + n)
}
