package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
	"airlock.dev/airlock/services/dhcp"
	"airlock.dev/airlock/services/httpboot"
	"airlock.dev/airlock/services/ipxe"
	"airlock.dev/airlock/services/ra"
	"airlock.dev/airlock/services/registry"
	"airlock.dev/airlock/services/tftp"
)

// ErrNoInterface is returned when the answers name no provisioning NIC.
var ErrNoInterface = errors.New("network.interface is not set: airlock never serves DHCP on an interface it was not told to use; name the provisioning NIC in the answer file")

// ServeOptions are what Serve needs beyond the answers.
type ServeOptions struct {
	Answers  *config.Answers
	Store    state.Store // owned by the caller, open for writing
	StateDir string      // where the control socket goes
	// IPXE holds the iPXE first stages (nil: none, machines get an address
	// but no boot file, and Serve says so).
	IPXE fs.FS
	// Files is served under /files/ (kernels, boot images); Image names the
	// discovery kernel and initramfs in it.
	Files fs.FS
	Image DiscoveryImage
	// HTTPPort is httpboot's port (default 8080).
	HTTPPort int
	// Registry, when set, is served as a read-only OCI registry on
	// RegistryPort (default 5000): the bundle's images, for the nodes.
	Registry     registry.Backend
	RegistryPort int
	// AllowForeignDHCP lets full mode start beside another DHCP server.
	AllowForeignDHCP bool
	Log              *slog.Logger
	// Ready, if set, is called once every service is serving.
	Ready func(Serving)
}

// Serving describes running services.
type Serving struct {
	Interface string    `json:"interface"`
	Mode      dhcp.Mode `json:"mode"`
	HTTP      string    `json:"http"` // base URL
	TFTP      bool      `json:"tftp"`
	Registry  string    `json:"registry,omitempty"` // host:port, empty when no bundle is served
}

// Serve runs the boot services (DHCP, TFTP, HTTP boot with the agent API)
// and the control socket on the answers' provisioning network until ctx is
// cancelled; it returns nil then.
func Serve(ctx context.Context, o ServeOptions) error {
	a := o.Answers
	log := o.Log
	if a.Network.Interface == "" {
		return ErrNoInterface
	}
	if o.HTTPPort == 0 {
		o.HTTPPort = 8080
	}
	if o.RegistryPort == 0 {
		o.RegistryPort = 5000
	}
	addr := a.Network.Address
	if err := checkAddressOn(a.Network.Interface, addr); err != nil {
		return err
	}
	base := "http://" + net.JoinHostPort(addr.String(), strconv.Itoa(o.HTTPPort))
	dcfg := DHCPConfig(a, base, o.IPXE != nil)
	dcfg.AllowForeignServer = o.AllowForeignDHCP
	if err := dcfg.Validate(); err != nil {
		return fmt.Errorf("DHCP configuration from the answer file: %w", err)
	}
	if o.IPXE == nil {
		log.Warn("no iPXE binaries: machines get an address but no boot file; " + ipxe.ErrNotEmbedded.Error())
	} else if missing := ipxe.Missing(o.IPXE); len(missing) > 0 {
		log.Warn("some iPXE binaries are missing", "missing", strings.Join(missing, ", "))
	}

	inv := inventory.New(o.Store, a.Racks, log.With("part", "inventory"))
	// Open every socket and build every server before anything serves, so
	// that a port in use or a bad setting fails cleanly. Until the servers
	// run (and own them), opened sockets are closed on the way out.
	var opened []io.Closer
	fail := func(err error) error {
		for i := len(opened) - 1; i >= 0; i-- {
			err = errors.Join(err, opened[i].Close())
		}
		return err
	}
	httpLn, err := net.Listen("tcp", net.JoinHostPort(addr.String(), strconv.Itoa(o.HTTPPort)))
	if err != nil {
		return fmt.Errorf("listen for HTTP boot: %w", err)
	}
	opened = append(opened, httpLn)
	var tftpConn net.PacketConn
	if o.IPXE != nil {
		if tftpConn, err = net.ListenPacket("udp4", net.JoinHostPort(addr.String(), "69")); err != nil {
			return fail(fmt.Errorf("listen for TFTP: %w", err))
		}
		opened = append(opened, tftpConn)
	}
	socks, err := dhcp.Listen(a.Network.Interface, dcfg.Mode != dhcp.ModeFull)
	if err != nil {
		return fail(err)
	}
	opened = append(opened, socks)
	var regLn net.Listener
	if o.Registry != nil {
		if regLn, err = net.Listen("tcp", net.JoinHostPort(addr.String(), strconv.Itoa(o.RegistryPort))); err != nil {
			return fail(fmt.Errorf("listen for the registry: %w", err))
		}
		opened = append(opened, regLn)
	}
	// "No IPv6 router here", so that firmware iPXE does not wait ~13 s for
	// one; sent only once DHCP runs in full mode (airlock owns the segment).
	adv, err := ra.Open(a.Network.Interface)
	if err != nil {
		log.Warn("no IPv6 router advertisements: iPXE will wait ~13 s for an IPv6 router at each boot", "err", err)
	} else {
		defer adv.Close()
	}
	ctlLn, err := control.Listen(o.StateDir)
	if err != nil {
		return fail(err)
	}
	opened = append(opened, ctlLn)

	hcfg := httpboot.Defaults()
	hcfg.BaseURL = base
	files := o.Files
	if files == nil {
		files = emptyFS{}
	}
	hb, err := httpboot.New(hcfg, httpLn, &BootDecider{Inventory: inv, Image: o.Image}, o.IPXE, files, log.With("part", "httpboot"))
	if err != nil {
		return fail(err)
	}
	hb.Mount(agentapi.Prefix, agentapi.NewHandler(inv, log.With("part", "agentapi")))
	dsrv, err := dhcp.New(dcfg, socks, Leases{o.Store}, log.With("part", "dhcp"))
	if err != nil {
		return fail(err)
	}
	var tsrv *tftp.Server
	if tftpConn != nil {
		if tsrv, err = tftp.New(o.IPXE, tftpConn, tftp.Defaults(), log.With("part", "tftp")); err != nil {
			return fail(err)
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return dsrv.Run(gctx) })
	g.Go(func() error { return hb.Run(gctx) })
	g.Go(func() error {
		return control.Serve(gctx, ctlLn, control.Handler(control.EngineSource{Inventory: inv, Store: o.Store}, log.With("part", "control")))
	})
	if regLn != nil {
		reg := registry.New(o.Registry, log.With("part", "registry"))
		g.Go(func() error { return reg.Run(gctx, regLn) })
	}
	if tsrv != nil {
		g.Go(func() error { return tsrv.Run(gctx) })
	}
	g.Go(func() error {
		select {
		case <-dsrv.Ready():
		case <-gctx.Done():
			return nil
		}
		if adv != nil && dsrv.Mode() == dhcp.ModeFull {
			g.Go(func() error { return adv.Run(gctx, time.Second) })
		}
		s := Serving{Interface: a.Network.Interface, Mode: dsrv.Mode(), HTTP: base, TFTP: tsrv != nil}
		if regLn != nil {
			s.Registry = regLn.Addr().String()
		}
		log.Info("serving", "interface", s.Interface, "dhcp", s.Mode, "http", s.HTTP, "tftp", s.TFTP, "registry", s.Registry)
		if o.Ready != nil {
			o.Ready(s)
		}
		return nil
	})
	return g.Wait()
}

type emptyFS struct{}

func (emptyFS) Open(name string) (fs.File, error) {
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

// checkAddressOn makes sure addr is configured on the interface; airlock
// does not change the host's addresses itself.
func checkAddressOn(ifname string, addr netip.Addr) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("network.interface %q: %w", ifname, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", ifname, err)
	}
	var have []string
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			if p.Addr().Unmap() == addr {
				return nil
			}
			have = append(have, p.String())
		}
	}
	return fmt.Errorf("network.address %s is not configured on %s (it has %s): add it with `ip addr add %s/PREFIX dev %s`, or set network.address to one it has",
		addr, ifname, orNone(have), addr, ifname)
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "no IPv4 address"
	}
	return strings.Join(list, ", ")
}

// DHCPConfig maps the answers' network section onto the DHCP service.
func DHCPConfig(a *config.Answers, httpBase string, haveIPXE bool) dhcp.Config {
	n := a.Network
	c := dhcp.Defaults()
	c.Interface = n.Interface
	c.Mode = dhcp.Mode(n.Mode)
	c.ServerIP = n.Address
	c.LeaseTime = time.Duration(n.LeaseTime)
	c.Subnet = dhcp.Subnet{Prefix: n.Subnet, Router: n.Gateway, DNS: n.DNS, DomainName: a.Site.Domain}
	if n.DynamicRange != nil {
		c.Subnet.RangeStart, c.Subnet.RangeEnd = n.DynamicRange.Start, n.DynamicRange.End
	}
	for _, r := range n.RelayedSubnets {
		s := dhcp.Subnet{Prefix: r.Subnet, Router: r.Gateway, DNS: r.DNS, DomainName: a.Site.Domain}
		if len(s.DNS) == 0 {
			s.DNS = n.DNS
		}
		if r.DynamicRange != nil {
			s.RangeStart, s.RangeEnd = r.DynamicRange.Start, r.DynamicRange.End
		}
		c.Relayed = append(c.Relayed, s)
	}
	for _, rule := range a.Machines {
		if !rule.Address.IsValid() || len(rule.Match.MACs) != 1 {
			continue
		}
		mac, err := net.ParseMAC(string(rule.Match.MACs[0]))
		if err != nil {
			continue // validated already; unreachable
		}
		hostname := rule.Hostname
		if strings.Contains(hostname, "{") {
			hostname = ""
		}
		c.Reservations = append(c.Reservations, dhcp.Reservation{MAC: mac, IP: rule.Address.Addr(), Hostname: hostname})
	}
	c.Boot.HTTPBase = httpBase
	if !haveIPXE {
		c.Boot.BIOSFile, c.Boot.UEFIFile, c.Boot.ARM64File = "", "", ""
	}
	return c
}
