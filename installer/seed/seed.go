// Package seed renders the cloud-init NoCloud seed of an installed machine
// (meta-data, user-data and network-config v2) from plain Go values, and
// packs it into the small FAT filesystem labelled CIDATA that cloud-init's
// NoCloud datasource finds on any attached disk.
//
// Every document is built as Go structs and marshalled (YAML, TOML): no
// input string is ever pasted into a document as text. The package is a
// leaf: it imports nothing else of airlock.
package seed

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"strings"
)

// DefaultUpstreams are the registries whose images nodes pull by their
// original names through airlock's registry.
var DefaultUpstreams = []string{"registry.k8s.io", "docker.io", "nvcr.io", "quay.io", "ghcr.io"}

// Config is everything one machine's seed says.
type Config struct {
	// InstanceID must change whenever the machine is installed again, so
	// that cloud-init runs its per-instance modules on the new system.
	InstanceID string
	Hostname   string // short host name, one DNS label
	FQDN       string // optional fully qualified name
	Network    Network
	NTPServers []string // addresses or host names
	// CACertificates are PEM certificates added to the trust store
	// (airlock's CA).
	CACertificates []string
	// OnlyTheseCAs drops the image's default trust store (Mozilla's roots,
	// of no use without the internet) so that only CACertificates are
	// trusted. It also saves a minute or more of boot under emulation,
	// where update-ca-certificates forks per certificate.
	OnlyTheseCAs      bool
	SSHAuthorizedKeys []string // authorized_keys lines of the default user
	Mirror            *Mirror
	PhoneHome         *PhoneHome
	// WriteFiles and RunCmd are hooks for later phases (the Kubernetes
	// bootstrap): extra files, and commands run once in argv form (never
	// through a shell unless the caller names one as argv[0]).
	WriteFiles []File
	RunCmd     [][]string
}

// Network is the installed system's network configuration.
type Network struct {
	Ethernets []Ethernet
	Bonds     []Bond
	VLANs     []VLAN
}

// IPConfig is the layer-3 configuration of one interface.
type IPConfig struct {
	DHCP4       bool
	Addresses   []netip.Prefix // static addresses with prefix length
	Gateway     netip.Addr     // default route via this address (IPv4 or IPv6)
	Routes      []Route
	Nameservers []netip.Addr
	Search      []string // DNS search domains
	MTU         int
}

// Route is a static route.
type Route struct {
	To     netip.Prefix
	Via    netip.Addr
	Metric int // 0: unset
}

// Ethernet is a physical NIC, matched by its MAC address and renamed to Name.
type Ethernet struct {
	Name string
	MAC  net.HardwareAddr
	IPConfig
}

// Bond aggregates Ethernets (named by their Name).
type Bond struct {
	Name       string
	Interfaces []string
	// Mode is a Linux bonding mode: 802.3ad, active-backup, balance-xor,
	// balance-alb, balance-tlb, balance-rr, broadcast (default active-backup).
	Mode string
	// MIIMonitorInterval in milliseconds (default 100).
	MIIMonitorInterval int
	// LACPRate (802.3ad): slow or fast; TransmitHashPolicy e.g. layer3+4.
	LACPRate           string
	TransmitHashPolicy string
	IPConfig
}

// VLAN is a tagged interface on an Ethernet or Bond (Link names it).
type VLAN struct {
	Name string // e.g. bond0.100
	ID   int
	Link string
	IPConfig
}

// Mirror points containerd at airlock's registry for each upstream name.
type Mirror struct {
	// Endpoint is airlock's registry: http://HOST:PORT or https://HOST:PORT.
	Endpoint string
	// CA is the PEM certificate that signs the registry's TLS certificate;
	// it is written next to the hosts.toml files and named in them. With
	// https and no CA, the system trust store is used (airlock's CA is in
	// it when it is among Config.CACertificates).
	CA string
	// SkipVerify turns TLS verification off (lab use only).
	SkipVerify bool
	// Upstreams defaults to DefaultUpstreams.
	Upstreams []string
}

// PhoneHome makes the installed system report to airlock once, at the end
// of its first boot.
type PhoneHome struct {
	URL   string // http(s) URL; the token is added as the query parameter "token"
	Token string // single-use; letters, digits, '-' and '_'
	Tries int    // default 10
}

// File is one extra file written by cloud-init.
type File struct {
	Path        string
	Content     []byte
	Permissions uint32 // default 0644
	Owner       string // user:group, default root:root
	// Defer writes the file in the final stage, after users and packages.
	Defer bool
}

// Files are the NoCloud seed documents (NetworkConfig is nil when the
// Config names no interface).
type Files struct {
	MetaData      []byte
	UserData      []byte
	NetworkConfig []byte
}

// Limits on inputs, so that a seed stays small enough for its filesystem
// and nothing unbounded reaches a document.
const (
	maxFileSize  = 1 << 20
	maxTotalSize = 8 << 20
	maxListLen   = 256
	maxStringLen = 4096
)

var (
	labelRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	ifnameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)
	tokenRE    = regexp.MustCompile(`^[A-Za-z0-9_-]{16,256}$`)
	instanceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	ownerRE    = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}(:[a-z_][a-z0-9_-]{0,31})?$`)
)

func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !labelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// Validate reports every problem of c at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !instanceRE.MatchString(c.InstanceID) {
		bad("instance ID %q: want 1-128 letters, digits, '.', '_' or '-'", c.InstanceID)
	}
	if !labelRE.MatchString(c.Hostname) {
		bad("hostname %q: want one DNS label (lower case letters, digits, '-')", c.Hostname)
	}
	if c.FQDN != "" && (!validHostname(c.FQDN) || !strings.HasPrefix(c.FQDN, c.Hostname+".")) {
		bad("FQDN %q: want a DNS name that starts with the hostname %q", c.FQDN, c.Hostname)
	}
	errs = append(errs, c.Network.validate()...)
	if len(c.NTPServers) > maxListLen {
		bad("%d NTP servers: at most %d", len(c.NTPServers), maxListLen)
	}
	for _, s := range c.NTPServers {
		if _, err := netip.ParseAddr(s); err != nil && !validHostname(s) {
			bad("NTP server %q: want an IP address or host name", s)
		}
	}
	for i, p := range c.CACertificates {
		if err := checkPEM(p); err != nil {
			bad("CA certificate %d: %w", i, err)
		}
	}
	if len(c.SSHAuthorizedKeys) > maxListLen {
		bad("%d SSH keys: at most %d", len(c.SSHAuthorizedKeys), maxListLen)
	}
	for i, k := range c.SSHAuthorizedKeys {
		if len(k) > maxStringLen || strings.ContainsAny(k, "\r\n\x00") || len(strings.Fields(k)) < 2 {
			bad("SSH key %d %q: want one authorized_keys line (type and key)", i, trunc(k))
		}
	}
	if c.Mirror != nil {
		errs = append(errs, c.Mirror.validate()...)
	}
	if c.OnlyTheseCAs && len(c.CACertificates) == 0 {
		bad("only-these-CAs without a CA certificate would trust nothing")
	}
	if c.PhoneHome != nil {
		u, err := url.Parse(c.PhoneHome.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Fragment != "" ||
			len(c.PhoneHome.URL) > maxStringLen || strings.Contains(c.PhoneHome.URL, "$") {
			bad("phone-home URL %q: want an http or https URL without user info, fragment or '$'", trunc(c.PhoneHome.URL))
		}
		if !tokenRE.MatchString(c.PhoneHome.Token) {
			bad("phone-home token: want 16-256 letters, digits, '-' or '_'")
		}
		if c.PhoneHome.Tries < 0 || c.PhoneHome.Tries > 100 {
			bad("phone-home tries %d: want 0-100", c.PhoneHome.Tries)
		}
	}
	if len(c.WriteFiles) > maxListLen {
		bad("%d extra files: at most %d", len(c.WriteFiles), maxListLen)
	}
	total := 0
	for _, f := range c.WriteFiles {
		total += len(f.Content)
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" || len(f.Path) > maxStringLen ||
			strings.ContainsAny(f.Path, "\x00\r\n") {
			bad("file path %q: want a clean absolute path", trunc(f.Path))
		}
		if len(f.Content) > maxFileSize {
			bad("file %q: %d bytes, at most %d", trunc(f.Path), len(f.Content), maxFileSize)
		}
		if f.Permissions&^0o7777 != 0 {
			bad("file %q: permissions %o beyond 07777", trunc(f.Path), f.Permissions)
		}
		if f.Owner != "" && !ownerRE.MatchString(f.Owner) {
			bad("file %q: owner %q: want user or user:group", trunc(f.Path), f.Owner)
		}
	}
	if total > maxTotalSize {
		bad("extra files: %d bytes in all, at most %d", total, maxTotalSize)
	}
	if len(c.RunCmd) > maxListLen {
		bad("%d commands: at most %d", len(c.RunCmd), maxListLen)
	}
	for i, argv := range c.RunCmd {
		if len(argv) == 0 || argv[0] == "" {
			bad("command %d: empty", i)
		}
		for _, a := range argv {
			if len(a) > maxFileSize || strings.ContainsRune(a, 0) {
				bad("command %d: an argument is too long or holds NUL", i)
				break
			}
		}
	}
	return errors.Join(errs...)
}

func (m *Mirror) validate() []error {
	var errs []error
	u, err := url.Parse(m.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		errs = append(errs, fmt.Errorf("mirror endpoint %q: want http://HOST:PORT or https://HOST:PORT", trunc(m.Endpoint)))
	} else if u.Scheme == "http" && (m.CA != "" || m.SkipVerify) {
		errs = append(errs, fmt.Errorf("mirror endpoint %q: a CA or skip-verify needs https", m.Endpoint))
	}
	if m.CA != "" {
		if err := checkPEM(m.CA); err != nil {
			errs = append(errs, fmt.Errorf("mirror CA: %w", err))
		}
		if m.SkipVerify {
			errs = append(errs, fmt.Errorf("mirror: a CA and skip-verify together"))
		}
	}
	seen := map[string]bool{}
	for _, h := range m.Upstreams {
		if !validHostname(h) || seen[h] {
			errs = append(errs, fmt.Errorf("mirror upstream %q: want a registry host name, once", trunc(h)))
		}
		seen[h] = true
	}
	return errs
}

func (n *Network) validate() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	names := map[string]string{} // name -> kind
	add := func(kind, name string) {
		if !ifnameRE.MatchString(name) {
			bad("%s name %q: want 1-15 letters, digits, '.', '_' or '-'", kind, name)
		}
		if _, dup := names[name]; dup {
			bad("%s %q: name used twice", kind, name)
		}
		names[name] = kind
	}
	if len(n.Ethernets)+len(n.Bonds)+len(n.VLANs) > maxListLen {
		bad("more than %d interfaces", maxListLen)
		return errs
	}
	macs := map[string]bool{}
	for _, e := range n.Ethernets {
		add("ethernet", e.Name)
		if len(e.MAC) != 6 {
			bad("ethernet %q: want a 6-byte MAC address", e.Name)
		} else if macs[e.MAC.String()] {
			bad("ethernet %q: MAC %s used twice", e.Name, e.MAC)
		}
		macs[e.MAC.String()] = true
		errs = append(errs, e.IPConfig.validate("ethernet "+e.Name)...)
	}
	members := map[string]bool{}
	for _, b := range n.Bonds {
		add("bond", b.Name)
		switch b.Mode {
		case "", "802.3ad", "active-backup", "balance-xor", "balance-alb", "balance-tlb", "balance-rr", "broadcast":
		default:
			bad("bond %q: unknown mode %q", b.Name, b.Mode)
		}
		switch b.LACPRate {
		case "", "slow", "fast":
		default:
			bad("bond %q: LACP rate %q: want slow or fast", b.Name, b.LACPRate)
		}
		switch b.TransmitHashPolicy {
		case "", "layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4":
		default:
			bad("bond %q: transmit hash policy %q unknown", b.Name, b.TransmitHashPolicy)
		}
		if b.MIIMonitorInterval < 0 {
			bad("bond %q: negative MII monitor interval", b.Name)
		}
		if len(b.Interfaces) == 0 {
			bad("bond %q: no member interfaces", b.Name)
		}
		for _, m := range b.Interfaces {
			if names[m] != "ethernet" {
				bad("bond %q: member %q is not an ethernet of this seed", b.Name, m)
			} else if members[m] {
				bad("bond %q: member %q is already in a bond", b.Name, m)
			}
			members[m] = true
		}
		errs = append(errs, b.IPConfig.validate("bond "+b.Name)...)
	}
	for _, e := range n.Ethernets {
		if members[e.Name] && !e.IPConfig.isZero() {
			bad("ethernet %q is a bond member and cannot have its own addresses", e.Name)
		}
	}
	for _, v := range n.VLANs {
		add("vlan", v.Name)
		if v.ID < 1 || v.ID > 4094 {
			bad("vlan %q: ID %d outside 1-4094", v.Name, v.ID)
		}
		if k := names[v.Link]; k != "ethernet" && k != "bond" {
			bad("vlan %q: link %q is not an ethernet or bond of this seed", v.Name, v.Link)
		}
		errs = append(errs, v.IPConfig.validate("vlan "+v.Name)...)
	}
	return errs
}

func (c *IPConfig) isZero() bool {
	return !c.DHCP4 && len(c.Addresses) == 0 && !c.Gateway.IsValid() && len(c.Routes) == 0 &&
		len(c.Nameservers) == 0 && len(c.Search) == 0
}

func (c *IPConfig) validate(what string) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(what+": "+format, a...)) }
	if len(c.Addresses)+len(c.Routes)+len(c.Nameservers)+len(c.Search) > maxListLen {
		bad("too many addresses, routes or name servers")
		return errs
	}
	for _, p := range c.Addresses {
		if !p.IsValid() || p.Addr().IsUnspecified() {
			bad("address %v: want an address with prefix length", p)
		}
	}
	if c.Gateway.IsValid() {
		onLink := false
		for _, p := range c.Addresses {
			if p.Contains(c.Gateway) {
				onLink = true
			}
		}
		if !onLink && !c.DHCP4 {
			bad("gateway %v is in none of its addresses' subnets", c.Gateway)
		}
	}
	for _, r := range c.Routes {
		if !r.To.IsValid() || !r.Via.IsValid() || r.To.Addr().Is4() != r.Via.Is4() || r.Metric < 0 {
			bad("route to %v via %v: want a destination prefix and a gateway of the same family", r.To, r.Via)
		}
	}
	for _, s := range c.Search {
		if !validHostname(s) {
			bad("search domain %q invalid", trunc(s))
		}
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		bad("MTU %d outside 576-65535", c.MTU)
	}
	return errs
}

// checkPEM accepts one or more PEM CERTIFICATE blocks that parse, and
// nothing else.
func checkPEM(s string) error {
	if len(s) > maxFileSize {
		return fmt.Errorf("%d bytes, at most %d", len(s), maxFileSize)
	}
	rest := []byte(s)
	n := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q: want CERTIFICATE", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("parse certificate: %w", err)
		}
		n++
	}
	if n == 0 || strings.TrimSpace(string(rest)) != "" {
		return fmt.Errorf("want PEM certificates only")
	}
	return nil
}

// trunc shortens s for an error message (messages print it with %q).
func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
