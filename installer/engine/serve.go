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
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/kube"
	"airlock.dev/airlock/installer/pki"
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

// Options are what New needs beyond the answers.
type Options struct {
	Answers *config.Answers
	// StateDir holds the state store and the control socket.
	StateDir string
	// Store, if set, is the state store to use (owned by the caller);
	// otherwise New opens the one in StateDir and Close closes it.
	Store state.Store
	// IPXE holds the iPXE first stages (nil: none, machines get an address
	// but no boot file, and New says so).
	IPXE fs.FS
	// Files is served under /files/ (kernels, boot images); Image names the
	// discovery kernel and initramfs in it.
	Files fs.FS
	Image DiscoveryImage
	// HTTPPort is httpboot's port (default 8080): iPXE scripts, kernels,
	// boot images and the OS image, in clear.
	HTTPPort int
	// APIPort is the agent API's TLS port (default 8443): agent reports
	// and orders, seeds and phone-home, with a certificate of airlock's CA
	// (kept in StateDir).
	APIPort int
	// Registry, when set, is served as a read-only OCI registry on
	// RegistryPort (default 5000): the bundle's images, for the nodes.
	Registry     registry.Backend
	RegistryPort int
	// AllowForeignDHCP lets full mode start beside another DHCP server.
	AllowForeignDHCP bool
	// Decider answers what the engine leaves to a person (nil: every
	// question waits for `airlock approve|deny`).
	Decider events.Decider
	// OSImages are the bundle's OS images: each machine rule's osImage
	// (or the only one) is what the install writes to its machines'
	// disks, and the pipeline then provisions and boots them. Without any
	// the install ends once machines are assigned.
	OSImages BundleOSImages
	// BundleFiles, when set, are the bundle's files, served by name at
	// /bundle/files/NAME; when the bundle carries Kubernetes, the install
	// goes on from booted to a Ready cluster: each machine's seed
	// downloads kubelet, kubeadm and kubectl from there and runs kubeadm.
	BundleFiles BundleFiles
	// Bundle names the opened, verified bundle, when there is one: the
	// install's bundle step records it.
	Bundle *BundleIdentity
	Log    *slog.Logger
}

// BundleIdentity is what the install's bundle step records of the bundle
// it was given: its file name, the key that signed it and how that key
// came to be trusted.
type BundleIdentity struct {
	Name, KeyID, Authenticity string
}

// Serving describes running services.
type Serving struct {
	Interface string    `json:"interface"`
	Mode      dhcp.Mode `json:"mode"`
	HTTP      string    `json:"http"` // base URL
	API       string    `json:"api"`  // the agent API's https base URL
	// CA is the SHA-256 fingerprint of airlock's CA (STATE/ca.pem).
	CA       string `json:"ca"`
	TFTP     bool   `json:"tftp"`
	Registry string `json:"registry,omitempty"` // host:port, empty when no bundle is served
}

// Engine is one airlock at work: the state store with its inventory and
// journal, the event bus, and the network services on the provisioning
// network. New opens everything, Run serves, Install runs the pipeline;
// serve, install, the lab and the wizard all build it the same way.
type Engine struct {
	answers *config.Answers
	store   state.Store
	inv     *inventory.Store
	journal *state.Journal
	bus     *events.Bus
	decider events.Decider
	log     *slog.Logger

	dsrv     *dhcp.Server
	admitter *machineAdmitter
	hb       *httpboot.Server
	api      *apiServer
	ca       *pki.CA
	apiBase  string
	tsrv     *tftp.Server
	adv      *ra.Advertiser
	ctlLn    net.Listener
	regLn    net.Listener
	reg      registry.Backend
	base     string
	ready    chan struct{}
	// stateDir holds the seeds; images are the OS images installs write.
	stateDir    string
	images      osImages
	bootTimeout time.Duration
	// seedTokenTTL bounds a phone-home token's life; now is the clock.
	seedTokenTTL time.Duration
	now          func() time.Time
	// bundleFiles are the bundle's files; kube is what it carries for
	// Kubernetes (nil: none), kubeFiles the binaries nodes download.
	bundleFiles BundleFiles
	bundleID    *BundleIdentity
	kube        *bundle.Kubernetes
	kubeFiles   map[string]bundle.File
	// kubeTimeout bounds a bootstrap or join step, kubePoll is the time
	// between its looks at the API; kubeDial dials the API server (nil:
	// the default dialer; tests reach one in a namespace).
	kubeTimeout, kubePoll time.Duration
	kubeDial              kube.DialFunc
	// owned is closed by Close; sockets too, unless Run ran (its servers
	// close their own sockets when they stop).
	owned, sockets []io.Closer
	ran            bool
}

// New opens the state store (unless given one) and every socket, and
// builds every server, before anything serves: a port in use or a bad
// setting fails cleanly, with whatever it had opened closed again.
func New(o Options) (_ *Engine, err error) {
	a := o.Answers
	log := o.Log
	if a.Network.Interface == "" {
		return nil, ErrNoInterface
	}
	if o.HTTPPort == 0 {
		o.HTTPPort = 8080
	}
	if o.RegistryPort == 0 {
		o.RegistryPort = 5000
	}
	if o.APIPort == 0 {
		o.APIPort = 8443
	}
	if o.Decider == nil {
		o.Decider = events.DeferAll{}
	}
	addr := a.Network.Address
	if err := checkAddressOn(a.Network.Interface, addr); err != nil {
		return nil, err
	}
	base := "http://" + net.JoinHostPort(addr.String(), strconv.Itoa(o.HTTPPort))
	apiBase := "https://" + net.JoinHostPort(addr.String(), strconv.Itoa(o.APIPort))
	dcfg := DHCPConfig(a, base, o.IPXE != nil)
	dcfg.AllowForeignServer = o.AllowForeignDHCP
	if err := dcfg.Validate(); err != nil {
		return nil, fmt.Errorf("DHCP configuration from the answer file: %w", err)
	}
	if o.IPXE == nil {
		log.Warn("no iPXE binaries: machines get an address but no boot file; " + ipxe.ErrNotEmbedded.Error())
	} else if missing := ipxe.Missing(o.IPXE); len(missing) > 0 {
		log.Warn("some iPXE binaries are missing", "missing", strings.Join(missing, ", "))
	}
	e := &Engine{answers: a, bus: &events.Bus{}, decider: o.Decider, log: log, base: base, apiBase: apiBase, reg: o.Registry, ready: make(chan struct{}),
		stateDir: o.StateDir, bootTimeout: 30 * time.Minute, seedTokenTTL: DefaultSeedTokenTTL, now: time.Now,
		bundleFiles: o.BundleFiles, bundleID: o.Bundle, kubeTimeout: defaultKubeTimeout, kubePoll: 2 * time.Second}
	e.images = imagesFrom(o.OSImages)
	if err := CheckRuleImages(a, e.images.names()); err != nil {
		return nil, err
	}
	if e.kube, e.kubeFiles, err = kubeFrom(o.BundleFiles, a.Cluster.Distribution.Version); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.Close())
		}
	}()
	e.store = o.Store
	if e.store == nil {
		st, err := state.Open(o.StateDir)
		if err != nil {
			return nil, err
		}
		e.store = st
		e.owned = append(e.owned, st)
	}
	e.inv = inventory.New(e.store, a.Racks, log.With("part", "inventory"))
	e.inv.SetEvents(e.bus)
	e.journal = state.NewJournal(e.store)

	// airlock's CA (made on the first start, kept in the state directory)
	// and its certificate for this address, which the agent API presents.
	if e.ca, err = LoadCA(o.StateDir); err != nil {
		return nil, err
	}
	cert, renewed, err := e.ca.Serving(o.StateDir, []netip.Addr{addr}, time.Now())
	if err != nil {
		return nil, fmt.Errorf("airlock's TLS certificate for %s: %w", addr, err)
	}
	log.Info("airlock's CA", "fingerprint", e.ca.Fingerprint(), "file", filepath.Join(o.StateDir, pki.CACertFile), "new serving certificate", renewed, "address", addr)

	httpLn, err := net.Listen("tcp", net.JoinHostPort(addr.String(), strconv.Itoa(o.HTTPPort)))
	if err != nil {
		return nil, fmt.Errorf("listen for HTTP boot: %w", err)
	}
	e.sockets = append(e.sockets, httpLn)
	apiLn, err := net.Listen("tcp", net.JoinHostPort(addr.String(), strconv.Itoa(o.APIPort)))
	if err != nil {
		return nil, fmt.Errorf("listen for the agent API (TLS): %w", err)
	}
	e.sockets = append(e.sockets, apiLn)
	var tftpConn net.PacketConn
	if o.IPXE != nil {
		if tftpConn, err = net.ListenPacket("udp4", net.JoinHostPort(addr.String(), "69")); err != nil {
			return nil, fmt.Errorf("listen for TFTP: %w", err)
		}
		e.sockets = append(e.sockets, tftpConn)
	}
	socks, err := dhcp.Listen(a.Network.Interface, dcfg.Mode != dhcp.ModeFull)
	if err != nil {
		return nil, err
	}
	e.sockets = append(e.sockets, socks)
	if o.Registry != nil {
		if e.regLn, err = net.Listen("tcp", net.JoinHostPort(addr.String(), strconv.Itoa(o.RegistryPort))); err != nil {
			return nil, fmt.Errorf("listen for the registry: %w", err)
		}
		e.sockets = append(e.sockets, e.regLn)
	}
	// "No IPv6 router here", so that firmware iPXE does not wait ~13 s for
	// one; sent only once DHCP runs in full mode (airlock owns the segment).
	if e.adv, err = ra.Open(a.Network.Interface); err != nil {
		log.Warn("no IPv6 router advertisements: iPXE will wait ~13 s for an IPv6 router at each boot", "err", err)
		e.adv = nil
	} else {
		e.owned = append(e.owned, e.adv)
	}
	if e.ctlLn, err = control.Listen(o.StateDir); err != nil {
		return nil, err
	}
	e.sockets = append(e.sockets, e.ctlLn)

	hcfg := httpboot.Defaults()
	hcfg.BaseURL = base
	files := o.Files
	if files == nil {
		files = emptyFS{}
	}
	if e.hb, err = httpboot.New(hcfg, httpLn, &BootDecider{Inventory: e.inv, Image: o.Image, API: apiBase, Local: e.localBoot}, o.IPXE, files, log.With("part", "httpboot")); err != nil {
		return nil, err
	}
	e.api = newAPIServer(apiLn, cert, log.With("part", "agentapi"))
	e.api.Mount(agentapi.Prefix, agentapi.NewHandler(e.inv, log.With("part", "agentapi")))
	if e.dsrv, err = dhcp.New(dcfg, socks, Leases{e.store}, log.With("part", "dhcp")); err != nil {
		return nil, err
	}
	e.admitter = newMachineAdmitter(a, dcfg.Reservations)
	e.dsrv.Admitter = e.admitter
	// An agent must report from the address airlock leased to its boot
	// MAC (when airlock leased it one: not in proxy mode).
	e.inv.CheckLeases(e.leaseOf)
	if len(e.images) > 0 {
		e.serveOSImages()
		e.serveProvisioning()
	}
	if o.BundleFiles != nil {
		e.serveBundleFiles()
	}
	if tftpConn != nil {
		if e.tsrv, err = tftp.New(o.IPXE, tftpConn, tftp.Defaults(), log.With("part", "tftp")); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// LoadCA returns airlock's CA kept in stateDir, making it on the first
// call (see package pki).
func LoadCA(stateDir string) (*pki.CA, error) { return pki.LoadOrCreate(stateDir, time.Now()) }

// CA is airlock's certificate authority.
func (e *Engine) CA() *pki.CA { return e.ca }

// Events is the engine's event bus: add a sink to follow what happens.
func (e *Engine) Events() *events.Bus { return e.bus }

// Inventory is the engine's machine inventory.
func (e *Engine) Inventory() *inventory.Store { return e.inv }

// Journal is the engine's install journal.
func (e *Engine) Journal() *state.Journal { return e.journal }

// Ready is closed once every service serves.
func (e *Engine) Ready() <-chan struct{} { return e.ready }

// Close releases what New opened. After Run it closes only what the
// servers do not (the store, if New opened it).
func (e *Engine) Close() error {
	list := e.owned
	if !e.ran {
		list = append(list, e.sockets...)
	}
	var err error
	for i := len(list) - 1; i >= 0; i-- {
		err = errors.Join(err, list[i].Close())
	}
	e.owned, e.sockets = nil, nil
	return err
}

// Run serves DHCP, TFTP, HTTP boot with the agent API, the registry and
// the control socket until ctx is cancelled; it returns nil then. ready, if
// set, is called once every service serves.
func (e *Engine) Run(ctx context.Context, ready func(Serving)) error {
	if e.ran {
		return errors.New("engine: Run called twice")
	}
	e.ran = true
	a, log := e.answers, e.log
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return e.admitter.follow(gctx, e.inv) })
	g.Go(func() error { return e.dsrv.Run(gctx) })
	g.Go(func() error { return e.hb.Run(gctx) })
	g.Go(func() error { return e.api.Run(gctx) })
	g.Go(func() error {
		return control.Serve(gctx, e.ctlLn, control.Handler(control.EngineSource{Inventory: e.inv, Store: e.store}, log.With("part", "control")))
	})
	if e.regLn != nil {
		reg := registry.New(e.reg, log.With("part", "registry"))
		g.Go(func() error { return reg.Run(gctx, e.regLn) })
	}
	if e.tsrv != nil {
		g.Go(func() error { return e.tsrv.Run(gctx) })
	}
	g.Go(func() error {
		select {
		case <-e.dsrv.Ready():
		case <-gctx.Done():
			return nil
		}
		if e.adv != nil && e.dsrv.Mode() == dhcp.ModeFull {
			g.Go(func() error { return e.adv.Run(gctx, time.Second) })
		}
		s := Serving{Interface: a.Network.Interface, Mode: e.dsrv.Mode(), HTTP: e.base, API: e.apiBase, CA: e.ca.Fingerprint(), TFTP: e.tsrv != nil}
		if e.regLn != nil {
			s.Registry = e.regLn.Addr().String()
		}
		log.Info("serving", "interface", s.Interface, "dhcp", s.Mode, "http", s.HTTP, "api", s.API, "tftp", s.TFTP, "registry", s.Registry)
		e.bus.Emit(events.Event{Kind: events.ServiceReady, Phase: "serve", Message: fmt.Sprintf("DHCP %s on %s, HTTP %s, agent API %s, TFTP %v, registry %s", s.Mode, s.Interface, s.HTTP, s.API, s.TFTP, orDash(s.Registry))})
		close(e.ready)
		if ready != nil {
			ready(s)
		}
		return nil
	})
	return g.Wait()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
