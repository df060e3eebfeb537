// Package dhcp is airlock's DHCPv4 server for network boot: a full
// (authoritative) server for a pool, a proxyDHCP server beside an existing
// one, or "auto" (probe the segment, then pick). Relayed requests get
// addresses from the relayed subnet matching their giaddr.
//
// The parts are separate: Handler is a pure function from a request (and the
// lease table, Prober and Config) to a reply; Server owns the sockets, a
// bounded worker pool and the batched writes to a LeaseStore.
package dhcp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// Mode says how the server behaves on its segment.
type Mode string

// Modes.
const (
	// ModeFull hands out addresses from the pool (authoritative).
	ModeFull Mode = "full"
	// ModeProxy gives no addresses: PXE boot options only, on 67 and 4011,
	// beside another DHCP server.
	ModeProxy Mode = "proxy"
	// ModeAuto probes the segment at start: proxy if another server
	// offers, otherwise full.
	ModeAuto Mode = "auto"
)

// Config is the DHCP service's configuration. The CLI maps the answer file
// onto it; Defaults fills what may be left out and Validate reports every
// problem at once.
type Config struct {
	// Interface is the one interface served. The server never starts
	// without it: it must be named explicitly.
	Interface string
	Mode      Mode
	// ServerIP is airlock's address on Interface (server identifier).
	ServerIP netip.Addr
	// Subnet is the directly attached segment. Required in full mode.
	Subnet Subnet
	// Relayed are subnets reached through DHCP relays (giaddr inside).
	Relayed      []Subnet
	Reservations []Reservation

	LeaseTime time.Duration
	// OfferHold is how long an offered address stays held for a client.
	// Short: the client asks for it within seconds, and an address it
	// asks for after that is still given if free.
	OfferHold time.Duration
	// DeclineHold is how long a declined address is kept out of the pool.
	DeclineHold time.Duration
	// ProbeTimeout bounds the ARP/ICMP probe of an address before it is
	// offered; 0 disables probing.
	ProbeTimeout time.Duration
	// ConflictHold keeps an address that answered a probe out of the pool.
	ConflictHold time.Duration

	// ForeignProbe is how long to listen for other servers' offers at
	// start (full and auto modes).
	ForeignProbe time.Duration
	// AllowForeignServer lets full mode start although another DHCP
	// server answered the probe. Dangerous: two authoritative servers on
	// one segment hand out conflicting addresses.
	AllowForeignServer bool

	// Limits bound what clients unknown to the Admitter can take.
	Limits Limits

	Boot Boot
}

// Subnet is a range of addresses to lease and the options that go with it.
type Subnet struct {
	Prefix     netip.Prefix
	RangeStart netip.Addr
	RangeEnd   netip.Addr
	Router     netip.Addr
	DNS        []netip.Addr
	DomainName string
}

// Reservation pins a machine (by MAC) to an address and hostname.
type Reservation struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Hostname string
}

// Boot says what network-boot clients are told.
type Boot struct {
	// TFTPServer serves the first stage; defaults to ServerIP.
	TFTPServer netip.Addr
	// HTTPBase is the http:// base URL of the httpboot service, e.g.
	// "http://10.0.0.1:8080". iPXE and UEFI HTTP clients are sent there.
	HTTPBase string
	// First-stage files by firmware, as served by TFTP and by httpboot
	// under /ipxe/. Empty means "none available": such clients get an
	// address but no boot file.
	BIOSFile  string
	UEFIFile  string
	ARM64File string
}

// Defaults returns a Config with every optional field set.
func Defaults() Config {
	return Config{
		Mode:         ModeAuto,
		LeaseTime:    time.Hour,
		OfferHold:    10 * time.Second,
		DeclineHold:  10 * time.Minute,
		ProbeTimeout: 300 * time.Millisecond,
		ConflictHold: 10 * time.Minute,
		ForeignProbe: 5 * time.Second, // dnsmasq pings before it offers: its offer comes after ~3 s
		Limits:       DefaultLimits(),
		Boot: Boot{
			BIOSFile: "undionly.kpxe",
			// snponly.efi starts ~4 s faster than ipxe.efi under UEFI
			// (measured here with OVMF).
			UEFIFile: "snponly.efi",
		},
	}
}

// ChainURL is the iPXE script URL for a machine.
func (b Boot) ChainURL(mac net.HardwareAddr) string {
	return strings.TrimSuffix(b.HTTPBase, "/") + "/ipxe/boot.ipxe?mac=" + mac.String()
}

// FileURL is the http:// URL of a first-stage file for UEFI HTTP boot.
func (b Boot) FileURL(name string) string {
	return strings.TrimSuffix(b.HTTPBase, "/") + "/ipxe/" + name
}

// Validate returns every problem in c at once (errors.Join), each prefixed
// with its field name.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Interface == "" {
		bad("Interface", "no interface named: airlock never serves DHCP on an interface it was not told to use")
	}
	switch c.Mode {
	case ModeFull, ModeProxy, ModeAuto:
	default:
		bad("Mode", "%q is not one of full, proxy, auto", c.Mode)
	}
	if !c.ServerIP.Is4() {
		bad("ServerIP", "an IPv4 address of the interface is required")
	}
	if c.Mode != ModeProxy {
		c.Subnet.validate("Subnet", bad)
		if c.Subnet.Prefix.IsValid() && c.ServerIP.IsValid() && !c.Subnet.Prefix.Contains(c.ServerIP) {
			bad("Subnet.Prefix", "%s does not contain the server address %s", c.Subnet.Prefix, c.ServerIP)
		}
	}
	for i, s := range c.Relayed {
		s.validate(fmt.Sprintf("Relayed[%d]", i), bad)
		for j := range i {
			if c.Relayed[j].Prefix.Overlaps(s.Prefix) {
				bad(fmt.Sprintf("Relayed[%d].Prefix", i), "overlaps Relayed[%d]", j)
			}
		}
	}
	seenMAC := map[string]int{}
	seenIP := map[netip.Addr]int{}
	for i, r := range c.Reservations {
		f := fmt.Sprintf("Reservations[%d]", i)
		if len(r.MAC) != 6 {
			bad(f+".MAC", "an Ethernet MAC address is required")
		} else if j, ok := seenMAC[r.MAC.String()]; ok {
			bad(f+".MAC", "%s is also reserved by Reservations[%d]", r.MAC, j)
		} else {
			seenMAC[r.MAC.String()] = i
		}
		if !r.IP.Is4() {
			bad(f+".IP", "an IPv4 address is required")
			continue
		}
		if j, ok := seenIP[r.IP]; ok {
			bad(f+".IP", "%s is also reserved by Reservations[%d]", r.IP, j)
		}
		seenIP[r.IP] = i
		if c.subnetFor(r.IP) == nil && c.Mode != ModeProxy {
			bad(f+".IP", "%s is in no configured subnet", r.IP)
		}
		if r.IP == c.ServerIP {
			bad(f+".IP", "%s is the server's own address", r.IP)
		}
	}
	if c.LeaseTime < time.Minute {
		bad("LeaseTime", "%s is shorter than a minute", c.LeaseTime)
	}
	if c.OfferHold <= 0 || c.DeclineHold <= 0 || c.ConflictHold <= 0 {
		bad("OfferHold/DeclineHold/ConflictHold", "must be positive")
	}
	if c.ProbeTimeout < 0 || c.ForeignProbe < 0 {
		bad("ProbeTimeout/ForeignProbe", "must not be negative")
	}
	if l := c.Limits; l.NewPerSecond < 0 || l.NewBurst < 0 || l.SourcePerSecond < 0 || l.SourceBurst < 0 {
		bad("Limits", "rates and bursts must not be negative")
	}
	if l := c.Limits; l.StrangerShare < 0 || l.StrangerShare > 100 {
		bad("Limits.StrangerShare", "%d is not a percentage", l.StrangerShare)
	}
	if c.Boot.HTTPBase != "" {
		u, err := url.Parse(c.Boot.HTTPBase)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			bad("Boot.HTTPBase", "%q is not an http:// URL", c.Boot.HTTPBase)
		}
	} else {
		bad("Boot.HTTPBase", "required: iPXE and UEFI HTTP clients are sent to it")
	}
	for _, f := range []struct{ field, name string }{
		{"Boot.BIOSFile", c.Boot.BIOSFile}, {"Boot.UEFIFile", c.Boot.UEFIFile}, {"Boot.ARM64File", c.Boot.ARM64File},
	} {
		if len(f.name) > 127 || strings.ContainsAny(f.name, "\x00\\") || strings.HasPrefix(f.name, "/") || strings.Contains(f.name, "..") {
			bad(f.field, "%q is not a plain relative file name", f.name)
		}
	}
	return errors.Join(errs...)
}

func (s Subnet) validate(field string, bad func(field, format string, args ...any)) {
	if !s.Prefix.IsValid() || !s.Prefix.Addr().Is4() {
		bad(field+".Prefix", "an IPv4 prefix is required")
		return
	}
	if s.Prefix.Bits() > 30 {
		bad(field+".Prefix", "%s is too small to lease from", s.Prefix)
	}
	if !s.RangeStart.Is4() || !s.RangeEnd.Is4() {
		bad(field+".Range", "start and end addresses are required")
		return
	}
	if !s.Prefix.Contains(s.RangeStart) || !s.Prefix.Contains(s.RangeEnd) {
		bad(field+".Range", "%s-%s is not inside %s", s.RangeStart, s.RangeEnd, s.Prefix)
	}
	if s.RangeEnd.Less(s.RangeStart) {
		bad(field+".Range", "end %s is before start %s", s.RangeEnd, s.RangeStart)
	}
	if s.Router.IsValid() && !s.Prefix.Contains(s.Router) {
		bad(field+".Router", "%s is not inside %s", s.Router, s.Prefix)
	}
}

// subnetFor returns the subnet (local or relayed) containing ip.
func (c *Config) subnetFor(ip netip.Addr) *Subnet {
	if c.Subnet.Prefix.IsValid() && c.Subnet.Prefix.Contains(ip) {
		return &c.Subnet
	}
	for i := range c.Relayed {
		if c.Relayed[i].Prefix.Contains(ip) {
			return &c.Relayed[i]
		}
	}
	return nil
}
