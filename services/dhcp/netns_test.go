package dhcp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"airlock.dev/airlock/installer/lab/netns"
)

// These tests run real clients (busybox udhcpc, dnsmasq, dhcrelay) against
// the server inside network namespaces the test creates; nothing touches the
// host's network.

// lan is a segment: a bridge in its own namespace, and hosts attached to it
// by veth pairs (one end on the bridge, the other "eth0" in the host's
// namespace).
type lan struct {
	t      *testing.T
	sw     *netns.NS
	nports int
}

func newLAN(t *testing.T) *lan {
	sw := netns.NewTest(t, "alsw")
	if err := sw.AddBridge("br0"); err != nil {
		t.Fatal(err)
	}
	return &lan{t: t, sw: sw}
}

// host attaches a new namespace as eth0 with the given MAC and address
// (either may be empty).
func (l *lan) host(mac, cidr string) *netns.NS {
	l.t.Helper()
	n := netns.NewTest(l.t, "alh")
	l.nports++
	port := fmt.Sprintf("p%d", l.nports)
	netns.MustVeth(l.t, l.sw, port, n, "eth0")
	if err := l.sw.SetMaster(port, "br0"); err != nil {
		l.t.Fatal(err)
	}
	if mac != "" {
		n.MustIP(l.t, "link", "set", "eth0", "address", mac)
	}
	if cidr != "" {
		n.MustAddr(l.t, "eth0", cidr)
	}
	return n
}

type testLogWriter struct {
	mu sync.Mutex
	t  *testing.T
	on bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.on {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

type runningServer struct {
	*Server
	once   sync.Once
	cancel context.CancelFunc
	done   chan error
	logw   *testLogWriter
}

func (r *runningServer) stop(t *testing.T) {
	r.once.Do(func() { r.doStop(t) })
}

func (r *runningServer) doStop(t *testing.T) {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("server Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("server did not stop within 10 s")
	}
	r.logw.mu.Lock()
	r.logw.on = false
	r.logw.mu.Unlock()
}

// startServer opens the sockets inside ns and runs the server; it returns
// once the server serves, or with the error Run returned.
func startServer(t *testing.T, ns *netns.NS, cfg Config, store LeaseStore) (*runningServer, error) {
	t.Helper()
	return startServerSetup(t, ns, cfg, store, nil)
}

// startServerWith is startServer calling setup on the server before Run;
// it fails the test if the server does not start.
func startServerWith(t *testing.T, ns *netns.NS, cfg Config, store LeaseStore, setup func(*Server)) *runningServer {
	t.Helper()
	r, err := startServerSetup(t, ns, cfg, store, setup)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func startServerSetup(t *testing.T, ns *netns.NS, cfg Config, store LeaseStore, setup func(*Server)) (*runningServer, error) {
	t.Helper()
	var socks *Sockets
	if err := ns.Do(func() error {
		var err error
		socks, err = Listen(cfg.Interface, true)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	logw := &testLogWriter{t: t, on: true}
	srv, err := New(cfg, socks, store, slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		socks.Close()
		t.Fatal(err)
	}
	if setup != nil {
		setup(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningServer{Server: srv, cancel: cancel, done: make(chan error, 1), logw: logw}
	go func() { r.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
		t.Cleanup(func() { r.stop(t) })
		return r, nil
	case err := <-r.done:
		cancel()
		logw.on = false
		return nil, err
	case <-time.After(15 * time.Second):
		cancel()
		t.Fatal("server not ready within 15 s")
	}
	return nil, nil
}

func netnsConfig(mode Mode) Config {
	c := Defaults()
	c.Interface = "eth0"
	c.Mode = mode
	c.ServerIP = netip.MustParseAddr("10.70.0.1")
	c.Subnet = Subnet{
		Prefix:     netip.MustParsePrefix("10.70.0.0/24"),
		RangeStart: netip.MustParseAddr("10.70.0.100"),
		RangeEnd:   netip.MustParseAddr("10.70.0.150"),
		Router:     netip.MustParseAddr("10.70.0.1"),
		DNS:        []netip.Addr{netip.MustParseAddr("10.70.0.1")},
		DomainName: "rack.lab",
	}
	c.Boot.HTTPBase = "http://10.70.0.1:8080"
	return c
}

// udhcpc runs busybox udhcpc once in ns and returns the variables its
// script saw on "bound".
func udhcpc(t *testing.T, ns *netns.NS, args ...string) map[string]string {
	t.Helper()
	netns.RequireTool(t, "busybox", "busybox-static")
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nif [ \"$1\" = bound ]; then env > "+out+"; fi\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := append([]string{"udhcpc", "-f", "-q", "-n", "-i", "eth0", "-t", "8", "-T", "1", "-s", script}, args...)
	res, err := ns.Command(ctx, "busybox", all...).CombinedOutput()
	if err != nil {
		t.Fatalf("udhcpc %v: %v\n%s", args, err, res)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("udhcpc bound no lease: %v\n%s", err, res)
	}
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}

func TestNetnsFullModeUdhcpc(t *testing.T) {
	l := newLAN(t)
	srvNS := l.host("", "10.70.0.1/24")
	cfg := netnsConfig(ModeFull)
	cfg.Reservations = []Reservation{{MAC: mustMAC("52:54:00:aa:00:01"), IP: netip.MustParseAddr("10.70.0.42"), Hostname: "cp-1"}}
	store := NewFileStore(filepath.Join(t.TempDir(), "leases.jsonl"))
	// 10.70.0.100, the first pool address, is squatted by a host with a
	// static address: the server must probe it and skip it. 10.70.0.101
	// is squatted by a host that ignores ICMP echo: ARP finds it.
	l.host("", "10.70.0.100/24")
	quiet := l.host("", "10.70.0.101/24")
	if err := quiet.Sysctl("net.ipv4.icmp_echo_ignore_all", "1"); err != nil {
		t.Fatal(err)
	}
	srv, err := startServer(t, srvNS, cfg, store)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Mode() != ModeFull {
		t.Fatalf("mode %s", srv.Mode())
	}

	a := l.host("52:54:00:bb:00:01", "")
	envA := udhcpc(t, a, "-V", "PXEClient:Arch:00000:UNDI:002001", "-O", "bootfile", "-O", "tftp")
	t.Logf("client A: ip=%s boot_file=%s siaddr=%s", envA["ip"], envA["boot_file"], envA["siaddr"])
	if envA["ip"] != "10.70.0.102" {
		t.Errorf("client A got %s, want 10.70.0.102 (10.70.0.100 answers ICMP and ARP, 10.70.0.101 ARP only)", envA["ip"])
	}
	for k, want := range map[string]string{
		"subnet": "255.255.255.0", "router": "10.70.0.1", "dns": "10.70.0.1", "domain": "rack.lab",
		"boot_file": "undionly.kpxe", "siaddr": "10.70.0.1", "serverid": "10.70.0.1", "lease": "3600",
	} {
		if strings.TrimSpace(envA[k]) != want {
			t.Errorf("client A %s = %q, want %q", k, envA[k], want)
		}
	}

	// iPXE's raw user class gets the chain URL.
	envI := udhcpc(t, l.host("52:54:00:bb:00:02", ""), "-V", "PXEClient:Arch:00007:UNDI:003010", "-x", "0x4d:69505845", "-x", "0x5d:0007")
	if want := "http://10.70.0.1:8080/ipxe/boot.ipxe?mac=52:54:00:bb:00:02"; envI["boot_file"] != want {
		t.Errorf("iPXE client boot_file %q, want %q", envI["boot_file"], want)
	}

	// The reserved MAC gets its address and hostname.
	envR := udhcpc(t, l.host("52:54:00:aa:00:01", ""))
	if envR["ip"] != "10.70.0.42" || envR["hostname"] != "cp-1" {
		t.Errorf("reserved client got ip=%s hostname=%s", envR["ip"], envR["hostname"])
	}

	// Restart the server on the same lease file: client A's lease survives.
	srv.stop(t)
	srv2, err := startServer(t, srvNS, cfg, NewFileStore(store.path))
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, le := range srv2.Handler().Leases() {
		if le.MAC == "52:54:00:bb:00:01" && le.IP.String() == envA["ip"] && le.State == StateBound {
			found = true
		}
	}
	if !found {
		t.Fatalf("lease of client A not reloaded: %+v", srv2.Handler().Leases())
	}
	envB := udhcpc(t, l.host("52:54:00:bb:00:03", ""))
	if envB["ip"] == envA["ip"] || envB["ip"] == envI["ip"] {
		t.Errorf("after restart a new client got a leased address %s", envB["ip"])
	}
	envA2 := udhcpc(t, a)
	if envA2["ip"] != envA["ip"] {
		t.Errorf("after restart client A got %s, want its lease %s", envA2["ip"], envA["ip"])
	}
}

// startDnsmasq runs a real full DHCP server in ns on 10.70.0.2.
func startDnsmasq(t *testing.T, ns *netns.NS) {
	t.Helper()
	netns.RequireTool(t, "dnsmasq", "dnsmasq-base")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := ns.Command(ctx, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface=eth0", "--bind-interfaces", "--dhcp-range=10.70.0.50,10.70.0.90,255.255.255.0,1h",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"), "--log-dhcp")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("dnsmasq output:\n%s", out.String())
		}
	})
	time.Sleep(300 * time.Millisecond)
}

func TestNetnsProxyBesideDnsmasq(t *testing.T) {
	l := newLAN(t)
	startDnsmasq(t, l.host("", "10.70.0.2/24"))
	srvNS := l.host("", "10.70.0.1/24")

	// Full mode refuses to start beside the foreign server.
	_, err := startServer(t, srvNS, netnsConfig(ModeFull), nil)
	if !errors.Is(err, ErrForeignServer) {
		t.Fatalf("full mode beside dnsmasq: err = %v, want ErrForeignServer", err)
	}
	t.Logf("full mode refused: %v", err)

	// Auto picks proxy.
	srv, err := startServer(t, srvNS, netnsConfig(ModeAuto), nil)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Mode() != ModeProxy {
		t.Fatalf("auto beside dnsmasq chose %s, want proxy", srv.Mode())
	}

	// A plain client gets its address from dnsmasq; airlock stays silent.
	env := udhcpc(t, l.host("52:54:00:cc:00:01", ""))
	if env["serverid"] != "10.70.0.2" || !strings.HasPrefix(env["ip"], "10.70.0.") {
		t.Fatalf("plain client: ip=%s serverid=%s", env["ip"], env["serverid"])
	}

	// A PXE client (what firmware does, written with the same library):
	// address from dnsmasq's offer, boot file from airlock's proxy offer,
	// then the boot server on 4011.
	pxe := l.host("52:54:00:cc:00:02", "")
	var conn *net.UDPConn
	if err := pxe.Do(func() error {
		var err error
		conn, err = server4.NewIPv4UDPConn("eth0", &net.UDPAddr{Port: dhcpv4.ClientPort})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	k := clientKinds[0] // BIOS PXE
	disc := makePacket(k, dhcpv4.MessageTypeDiscover, mustMAC("52:54:00:cc:00:02"), dhcpv4.WithBroadcast(true))
	disc.TransactionID = dhcpv4.TransactionID{1, 2, 3, 4}
	offers := exchange(t, conn, disc, &net.UDPAddr{IP: net.IPv4bcast, Port: 67}, 4*time.Second)
	var addrOffer, proxyOffer *dhcpv4.DHCPv4
	for _, o := range offers {
		switch {
		case o.ServerIdentifier().Equal(net.IPv4(10, 70, 0, 2)) && !o.YourIPAddr.IsUnspecified():
			addrOffer = o
		case o.ServerIdentifier().Equal(net.IPv4(10, 70, 0, 1)):
			proxyOffer = o
		}
	}
	if addrOffer == nil || proxyOffer == nil {
		t.Fatalf("want an address offer from dnsmasq and a proxy offer from airlock, got %d offers", len(offers))
	}
	if !proxyOffer.YourIPAddr.IsUnspecified() || proxyOffer.BootFileName != "undionly.kpxe" ||
		proxyOffer.ClassIdentifier() != "PXEClient" || !proxyOffer.ServerIPAddr.Equal(net.IPv4(10, 70, 0, 1)) {
		t.Fatalf("proxy offer:\n%s", proxyOffer.Summary())
	}
	// Take dnsmasq's address, then ask the boot server on 4011.
	pxe.MustAddr(t, "eth0", addrOffer.YourIPAddr.String()+"/24")
	req := makePacket(k, dhcpv4.MessageTypeRequest, mustMAC("52:54:00:cc:00:02"), dhcpv4.WithClientIP(addrOffer.YourIPAddr))
	acks := exchange(t, conn, req, &net.UDPAddr{IP: net.IPv4(10, 70, 0, 1), Port: ProxyPort}, 3*time.Second)
	if len(acks) == 0 || acks[0].MessageType() != dhcpv4.MessageTypeAck || acks[0].BootFileName != "undionly.kpxe" {
		t.Fatalf("no boot-server ACK on 4011: %v", acks)
	}
	t.Logf("PXE client: address %s from dnsmasq, boot file %s from airlock", addrOffer.YourIPAddr, acks[0].BootFileName)
}

// exchange sends m to dst and collects replies with m's transaction ID for
// the given time.
func exchange(t *testing.T, conn *net.UDPConn, m *dhcpv4.DHCPv4, dst *net.UDPAddr, wait time.Duration) []*dhcpv4.DHCPv4 {
	t.Helper()
	if _, err := conn.WriteTo(m.ToBytes(), dst); err != nil {
		t.Fatalf("send to %v: %v", dst, err)
	}
	var got []*dhcpv4.DHCPv4
	deadline := time.Now().Add(wait)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		_ = conn.SetReadDeadline(deadline)
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			break
		}
		r, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || r.OpCode != dhcpv4.OpcodeBootReply || r.TransactionID != m.TransactionID {
			continue
		}
		got = append(got, r)
	}
	return got
}

func TestNetnsAutoPicksFullOnEmptySegment(t *testing.T) {
	l := newLAN(t)
	srvNS := l.host("", "10.70.0.1/24")
	srv, err := startServer(t, srvNS, netnsConfig(ModeAuto), nil)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Mode() != ModeFull {
		t.Fatalf("auto on an empty segment chose %s", srv.Mode())
	}
	env := udhcpc(t, l.host("", ""))
	if env["serverid"] != "10.70.0.1" {
		t.Fatalf("client served by %s", env["serverid"])
	}
}

// TestNetnsRelayed: client --- dhcrelay (ISC) --- airlock. The client gets
// an address in the relayed subnet.
func TestNetnsRelayed(t *testing.T) {
	netns.RequireTool(t, "dhcrelay", "isc-dhcp-relay")
	srvNS := netns.NewTest(t, "als")
	relay := netns.NewTest(t, "alr")
	client := netns.NewTest(t, "alc")
	netns.MustVeth(t, srvNS, "eth0", relay, "up0")
	netns.MustVeth(t, client, "eth0", relay, "down0")
	srvNS.MustAddr(t, "eth0", "10.70.0.1/24")
	relay.MustAddr(t, "up0", "10.70.0.254/24")
	relay.MustAddr(t, "down0", "10.80.0.1/24")
	if err := srvNS.AddRoute("10.80.0.0/24", "via", "10.70.0.254"); err != nil {
		t.Fatal(err)
	}
	cfg := netnsConfig(ModeFull)
	cfg.Relayed = []Subnet{{
		Prefix:     netip.MustParsePrefix("10.80.0.0/24"),
		RangeStart: netip.MustParseAddr("10.80.0.100"),
		RangeEnd:   netip.MustParseAddr("10.80.0.120"),
		Router:     netip.MustParseAddr("10.80.0.1"),
	}}
	if _, err := startServer(t, srvNS, cfg, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := relay.Command(ctx, "dhcrelay", "-4", "-d", "--no-pid", "-a", "-id", "down0", "-iu", "up0", "10.70.0.1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("dhcrelay output:\n%s", out.String())
		}
	})
	time.Sleep(500 * time.Millisecond)
	env := udhcpc(t, client)
	ip := netip.MustParseAddr(env["ip"])
	if !cfg.Relayed[0].Prefix.Contains(ip) || env["router"] != "10.80.0.1" {
		t.Fatalf("relayed client got ip=%s router=%s", env["ip"], env["router"])
	}
	t.Logf("relayed client got %s via dhcrelay", ip)
}

// A machine first leases a pool address (discovery), then is given a
// reservation while the server runs (its assignment): at its next DHCP
// exchange (the reboot into the installer) a real udhcpc gets the reserved
// address, and the MAC holds that one lease only, in the server's table
// and in the store after a restart; the pool address is free again.
func TestNetnsReservationReplacesTheDynamicLease(t *testing.T) {
	l := newLAN(t)
	srvNS := l.host("", "10.70.0.1/24")
	cfg := netnsConfig(ModeFull)
	store := NewFileStore(filepath.Join(t.TempDir(), "leases.jsonl"))
	adm := NewStaticAdmitter(nil, false)
	srv := startServerWith(t, srvNS, cfg, store, func(s *Server) { s.Admitter = adm })

	const mac = "52:54:00:dd:00:01"
	machine := l.host(mac, "")
	first := udhcpc(t, machine)
	if first["ip"] != "10.70.0.100" {
		t.Fatalf("before its reservation the machine got %s, want the first pool address 10.70.0.100", first["ip"])
	}
	adm.Reserve(Reservation{MAC: mustMAC(mac), IP: netip.MustParseAddr("10.70.0.42"), Hostname: "cp-1"})
	second := udhcpc(t, machine)
	if second["ip"] != "10.70.0.42" || second["hostname"] != "cp-1" {
		t.Fatalf("with its reservation the machine got ip=%s hostname=%s, want 10.70.0.42 cp-1", second["ip"], second["hostname"])
	}
	held := func(leases []Lease) []string {
		var out []string
		for _, le := range leases {
			if le.MAC == mac {
				out = append(out, le.IP.String()+" "+string(le.State))
			}
		}
		slices.Sort(out)
		return out
	}
	if got := held(srv.Handler().Leases()); !slices.Equal(got, []string{"10.70.0.42 bound"}) {
		t.Errorf("the server's table: %s holds %v, want only 10.70.0.42 bound", mac, got)
	}
	if ip, ok := srv.Handler().LeaseOf(mac); !ok || ip.String() != "10.70.0.42" {
		t.Errorf("LeaseOf(%s) = %v %v, want 10.70.0.42", mac, ip, ok)
	}
	srv.stop(t)
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	stored, err := NewFileStore(store.path).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := held(stored); !slices.Equal(got, []string{"10.70.0.42 bound"}) {
		t.Errorf("the store: %s holds %v, want only 10.70.0.42 bound", mac, got)
	}
	// The pool address went back to the pool: a new client after a
	// restart gets it.
	startServerWith(t, srvNS, cfg, NewFileStore(store.path), func(s *Server) { s.Admitter = adm })
	if other := udhcpc(t, l.host("52:54:00:dd:00:02", "")); other["ip"] != "10.70.0.100" {
		t.Errorf("a new client got %s, want 10.70.0.100, released by the reserved machine", other["ip"])
	}
}

// A lease file holding two leases of one MAC (written before a MAC was
// held to one) is repaired when the server starts, before it serves.
func TestNetnsStartRepairsASecondLeaseOfAMAC(t *testing.T) {
	l := newLAN(t)
	srvNS := l.host("", "10.70.0.1/24")
	path := filepath.Join(t.TempDir(), "leases.jsonl")
	const mac = "52:54:00:dd:00:03"
	exp := time.Now().Add(time.Hour).Round(time.Second)
	seed := NewFileStore(path)
	if err := seed.Save(context.Background(), []Lease{
		{IP: netip.MustParseAddr("10.70.0.100"), MAC: mac, State: StateBound, Expires: exp.Add(-time.Minute)},
		{IP: netip.MustParseAddr("10.70.0.42"), MAC: mac, Hostname: "cp-1", State: StateBound, Expires: exp},
	}); err != nil {
		t.Fatal(err)
	}
	if err := seed.Close(); err != nil {
		t.Fatal(err)
	}
	store := NewFileStore(path)
	srv := startServerWith(t, srvNS, netnsConfig(ModeFull), store, nil)
	srv.stop(t)
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	stored, err := NewFileStore(path).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, le := range stored {
		if le.MAC == mac {
			held = append(held, le.IP.String()+" "+string(le.State))
		}
	}
	if !slices.Equal(held, []string{"10.70.0.42 bound"}) {
		t.Errorf("after a start the store holds %v for %s, want only 10.70.0.42 bound", held, mac)
	}
}
