package dhcp

import (
	"context"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

var update = flag.Bool("update", false, "rewrite golden files")

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func testConfig() Config {
	c := Defaults()
	c.Interface = "eth0"
	c.Mode = ModeFull
	c.ServerIP = netip.MustParseAddr("10.50.0.1")
	c.Subnet = Subnet{
		Prefix:     netip.MustParsePrefix("10.50.0.0/24"),
		RangeStart: netip.MustParseAddr("10.50.0.100"),
		RangeEnd:   netip.MustParseAddr("10.50.0.199"),
		Router:     netip.MustParseAddr("10.50.0.1"),
		DNS:        []netip.Addr{netip.MustParseAddr("10.50.0.1")},
		DomainName: "rack.lab",
	}
	c.Relayed = []Subnet{{
		Prefix:     netip.MustParsePrefix("10.60.0.0/24"),
		RangeStart: netip.MustParseAddr("10.60.0.10"),
		RangeEnd:   netip.MustParseAddr("10.60.0.20"),
		Router:     netip.MustParseAddr("10.60.0.1"),
	}}
	c.Reservations = []Reservation{{
		MAC: mustMAC("52:54:00:00:00:99"), IP: netip.MustParseAddr("10.50.0.50"), Hostname: "cp-1",
	}}
	c.Boot.HTTPBase = "http://10.50.0.1:8080"
	c.Boot.ARM64File = "arm64/snponly.efi"
	return c
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// clientKind describes what one kind of firmware sends, with the vendor
// class strings measured from Debian's firmware (ENVIRONMENT.md).
type clientKind struct {
	name   string
	arch   iana.Arch
	vendor string
	ipxe   bool
}

var clientKinds = []clientKind{
	{"bios-pxe", iana.INTEL_X86PC, "PXEClient:Arch:00000:UNDI:002001", false},
	{"uefi-pxe", iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003000", false},
	{"ipxe-bios", iana.INTEL_X86PC, "PXEClient:Arch:00000:UNDI:002001", true},
	{"ipxe-efi", iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003010", true},
	{"edk2-http", iana.EFI_X86_64_HTTP, "HTTPClient:Arch:00016", false},
	{"arm64-pxe", iana.EFI_ARM64, "PXEClient:Arch:00011:UNDI:003000", false},
	{"udhcpc", 0, "udhcp 1.35.0", false},
}

// ipxeOpt175 is what Debian's iPXE sends as option 175 (its feature list).
var ipxeOpt175 = []byte{0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0xeb, 0x03, 0x01, 0x00, 0x00, 0x17, 0x01, 0x01, 0x22, 0x01, 0x01, 0x13, 0x01, 0x01, 0x14, 0x01, 0x01, 0x11, 0x01, 0x01, 0x27, 0x01, 0x01, 0x19, 0x01, 0x01, 0x29, 0x01, 0x01, 0x10, 0x01, 0x02, 0x21, 0x01, 0x01, 0x15, 0x01, 0x01, 0x18, 0x01, 0x01, 0x12, 0x01, 0x01}

func makePacket(k clientKind, typ dhcpv4.MessageType, mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	all := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithHwAddr(mac),
		dhcpv4.WithTransactionID(dhcpv4.TransactionID{0xde, 0xad, 0xbe, 0xef}),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(k.vendor)),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionBootfileName),
	}
	if k.name != "udhcpc" {
		all = append(all,
			dhcpv4.WithOption(dhcpv4.OptClientArch(k.arch)),
			dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 3, 16}),
			dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, []byte("0123456789abcdef")...)),
		)
	}
	if k.ipxe {
		all = append(all,
			dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")),
			dhcpv4.WithGeneric(dhcpv4.GenericOptionCode(175), ipxeOpt175),
		)
	}
	m, err := dhcpv4.New(append(all, mods...)...)
	if err != nil {
		panic(err)
	}
	m.OpCode = dhcpv4.OpcodeBootRequest
	return m
}

// fakeProber answers from a set of addresses in use.
type fakeProber map[netip.Addr]bool

func (f fakeProber) InUse(_ context.Context, ip netip.Addr) bool { return f[ip] }

func newTestHandler(t *testing.T, mode Mode, leases []Lease, p Prober) *Handler {
	t.Helper()
	cfg := testConfig()
	cfg.Mode = mode
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h := NewHandler(cfg, mode, leases, p, nil, nil)
	h.now = func() time.Time { return t0 }
	return h
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name+".txt")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from golden file %s (go test -update to accept):\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
}

func summary(r *Response) string {
	if r == nil || r.Msg == nil {
		return "(no reply)\n"
	}
	return "to " + r.Dest.String() + "\n" + r.Msg.Summary()
}

// TestGoldenReplies renders OFFER and ACK for each client kind in full and
// proxy mode, and for a relayed request.
func TestGoldenReplies(t *testing.T) {
	mac := mustMAC("52:54:00:12:34:56")
	for _, mode := range []Mode{ModeFull, ModeProxy} {
		for _, k := range clientKinds {
			t.Run(string(mode)+"-"+k.name, func(t *testing.T) {
				h := newTestHandler(t, mode, nil, nil)
				offer := h.Handle(context.Background(), Request{Msg: makePacket(k, dhcpv4.MessageTypeDiscover, mac), Port: 67})
				out := "# DISCOVER -> \n" + summary(offer)
				var reqMods []dhcpv4.Modifier
				port := 67
				if mode == ModeFull && offer != nil {
					reqMods = append(reqMods,
						dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.Msg.ServerIdentifier())),
						dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.Msg.YourIPAddr)))
				}
				if mode == ModeProxy {
					// Firmware asks the boot server on 4011 with its own address.
					port = ProxyPort
					reqMods = append(reqMods, dhcpv4.WithClientIP(net.IPv4(10, 50, 0, 77)))
				}
				ack := h.Handle(context.Background(), Request{
					Msg: makePacket(k, dhcpv4.MessageTypeRequest, mac, reqMods...), Port: port,
					Peer: netip.MustParseAddrPort("10.50.0.77:68"),
				})
				out += "# REQUEST -> \n" + summary(ack)
				golden(t, string(mode)+"-"+k.name, out)
			})
		}
	}
	t.Run("full-relayed-ipxe-efi", func(t *testing.T) {
		h := newTestHandler(t, ModeFull, nil, nil)
		rai := dhcpv4.OptRelayAgentInfo(
			dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte("rack7-port12")),
			dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(2), []byte("tor-7")))
		m := makePacket(clientKinds[3], dhcpv4.MessageTypeDiscover, mac,
			dhcpv4.WithRelay(net.IPv4(10, 60, 0, 1)), dhcpv4.WithOption(rai))
		m.HopCount = 1
		golden(t, "full-relayed-ipxe-efi", summary(h.Handle(context.Background(), Request{Msg: m, Port: 67})))
	})
}

func TestClassify(t *testing.T) {
	mac := mustMAC("52:54:00:12:34:56")
	for _, k := range clientKinds {
		c := Classify(makePacket(k, dhcpv4.MessageTypeDiscover, mac))
		if c.IPXE != k.ipxe {
			t.Errorf("%s: IPXE = %v", k.name, c.IPXE)
		}
		if k.name == "udhcpc" {
			if c.Netboot() {
				t.Errorf("udhcpc classified as netboot: %+v", c)
			}
			continue
		}
		if c.Arch != k.arch || !c.HasArch {
			t.Errorf("%s: arch %v", k.name, c.Arch)
		}
		if (k.name == "edk2-http") != (c.HTTP && !c.PXE) {
			t.Errorf("%s: HTTP=%v PXE=%v", k.name, c.HTTP, c.PXE)
		}
	}
	// RFC 3004 user class form, and arch from the vendor class alone.
	m := makePacket(clientKind{name: "x", vendor: "PXEClient:Arch:00009:UNDI:003016"}, dhcpv4.MessageTypeDiscover, mac,
		dhcpv4.WithoutOption(dhcpv4.OptionClientSystemArchitectureType),
		dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte{4, 'i', 'P', 'X', 'E'}))
	c := Classify(m)
	if !c.IPXE || c.Arch != iana.EFI_BC || c.firmware() != fwUEFI {
		t.Errorf("RFC 3004 / vendor arch: %+v", c)
	}
}

func discoverReq(k clientKind, mac string, mods ...dhcpv4.Modifier) Request {
	return Request{Msg: makePacket(k, dhcpv4.MessageTypeDiscover, mustMAC(mac), mods...), Port: 67}
}

func requestReq(k clientKind, mac string, ip netip.Addr, sid netip.Addr, mods ...dhcpv4.Modifier) Request {
	all := []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice()))}
	if sid.IsValid() {
		all = append(all, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(sid.AsSlice())))
	}
	return Request{Msg: makePacket(k, dhcpv4.MessageTypeRequest, mustMAC(mac), append(all, mods...)...), Port: 67}
}

func yi(r *Response) netip.Addr {
	if r == nil || r.Msg == nil {
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(r.Msg.YourIPAddr.To4())
	return a
}

func TestLeaseLifecycle(t *testing.T) {
	ctx := context.Background()
	plain := clientKinds[6]
	srv := netip.MustParseAddr("10.50.0.1")
	probe := fakeProber{netip.MustParseAddr("10.50.0.100"): true}
	h := newTestHandler(t, ModeFull, nil, probe)

	// Probe-before-offer: .100 answers, so the first client gets .101.
	o := h.Handle(ctx, discoverReq(plain, "02:00:00:00:00:01"))
	if got := yi(o); got != netip.MustParseAddr("10.50.0.101") {
		t.Fatalf("offer %v, want 10.50.0.101 (100 answers probes)", got)
	}
	// A second client while the first holds its offer gets another address.
	o2 := h.Handle(ctx, discoverReq(plain, "02:00:00:00:00:02"))
	if yi(o2) == yi(o) || !yi(o2).IsValid() {
		t.Fatalf("second offer %v", yi(o2))
	}
	// An offer is no lease yet.
	if ip, ok := h.LeaseOf("02:00:00:00:00:01"); ok {
		t.Fatalf("LeaseOf an offered client = %v", ip)
	}
	// REQUEST binds and asks to persist.
	a := h.Handle(ctx, requestReq(plain, "02:00:00:00:00:01", yi(o), srv))
	if a == nil || a.Msg.MessageType() != dhcpv4.MessageTypeAck || len(a.Save) != 1 || a.Save[0].State != StateBound {
		t.Fatalf("ack: %v", summary(a))
	}
	if ip, ok := h.LeaseOf("02:00:00:00:00:01"); !ok || ip != yi(o) {
		t.Fatalf("LeaseOf the bound client = %v %v, want %v", ip, ok, yi(o))
	}
	// Another MAC asking for that address is refused.
	n := h.Handle(ctx, requestReq(plain, "02:00:00:00:00:03", yi(o), srv))
	if n == nil || n.Msg.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("want NAK for taken address, got %s", summary(n))
	}
	// A client that chose another server frees our offer.
	if r := h.Handle(ctx, requestReq(plain, "02:00:00:00:00:02", yi(o2), netip.MustParseAddr("10.50.0.254"))); r != nil {
		t.Fatalf("answered a request for another server: %s", summary(r))
	}
	// Rediscover: the bound client gets the same address again.
	if got := yi(h.Handle(ctx, discoverReq(plain, "02:00:00:00:00:01"))); got != yi(o) {
		t.Fatalf("rediscover got %v, want %v", got, yi(o))
	}
	// RELEASE frees it, but the client still gets it back.
	rel := makePacket(plain, dhcpv4.MessageTypeRelease, mustMAC("02:00:00:00:00:01"), dhcpv4.WithClientIP(yi(o).AsSlice()))
	if r := h.Handle(ctx, Request{Msg: rel, Port: 67}); r == nil || r.Msg != nil || len(r.Save) != 1 || r.Save[0].State != StateReleased {
		t.Fatalf("release: %+v", r)
	}
	if ip, ok := h.LeaseOf("02:00:00:00:00:01"); ok {
		t.Fatalf("LeaseOf a released client = %v", ip)
	}
	if got := yi(h.Handle(ctx, discoverReq(plain, "02:00:00:00:00:01"))); got != yi(o) {
		t.Fatalf("after release got %v, want %v", got, yi(o))
	}
	h.Handle(ctx, requestReq(plain, "02:00:00:00:00:01", yi(o), srv))
	// DECLINE: the address is held out; the client gets a different one.
	dec := makePacket(plain, dhcpv4.MessageTypeDecline, mustMAC("02:00:00:00:00:01"),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(yi(o).AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srv.AsSlice())))
	if r := h.Handle(ctx, Request{Msg: dec, Port: 67}); r == nil || len(r.Save) != 1 || r.Save[0].State != StateDeclined {
		t.Fatalf("decline: %+v", r)
	}
	if got := yi(h.Handle(ctx, discoverReq(plain, "02:00:00:00:00:01"))); got == yi(o) || !got.IsValid() {
		t.Fatalf("after decline got %v again", got)
	}
	// Outside the subnet: NAK.
	n = h.Handle(ctx, requestReq(plain, "02:00:00:00:00:04", netip.MustParseAddr("192.168.1.5"), netip.Addr{}))
	if n == nil || n.Msg.MessageType() != dhcpv4.MessageTypeNak || n.Dest != broadcastDest {
		t.Fatalf("want broadcast NAK for foreign subnet, got %s", summary(n))
	}
}

func TestReservation(t *testing.T) {
	ctx := context.Background()
	plain := clientKinds[6]
	h := newTestHandler(t, ModeFull, nil, fakeProber{netip.MustParseAddr("10.50.0.50"): true})
	o := h.Handle(ctx, discoverReq(plain, "52:54:00:00:00:99"))
	if yi(o) != netip.MustParseAddr("10.50.0.50") || o.Msg.HostName() != "cp-1" {
		t.Fatalf("reserved MAC got %s", summary(o))
	}
	// It may not take another address.
	n := h.Handle(ctx, requestReq(plain, "52:54:00:00:00:99", netip.MustParseAddr("10.50.0.120"), netip.Addr{}))
	if n == nil || n.Msg.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("want NAK, got %s", summary(n))
	}
	// Others may not take the reserved address.
	n = h.Handle(ctx, requestReq(plain, "02:00:00:00:00:07", netip.MustParseAddr("10.50.0.50"), netip.Addr{}))
	if n == nil || n.Msg.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("want NAK, got %s", summary(n))
	}
	a := h.Handle(ctx, requestReq(plain, "52:54:00:00:00:99", netip.MustParseAddr("10.50.0.50"), netip.Addr{}))
	if a == nil || a.Msg.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("want ACK, got %s", summary(a))
	}
}

// heldBy lists the records of the table that name mac, "IP state", sorted.
func heldBy(leases []Lease, mac string) []string {
	var out []string
	for _, l := range leases {
		if l.MAC == mac {
			out = append(out, l.IP.String()+" "+string(l.State))
		}
	}
	slices.Sort(out)
	return out
}

// A reservation made while a MAC holds a pool lease: whichever way the
// client reaches its reserved address (DISCOVER then REQUEST, or an
// INIT-REBOOT REQUEST of it straight away), the ACK frees the pool lease
// in the same batch of records to store, and the MAC holds one lease.
// Taking another server's offer instead leaves it with its pool lease.
func TestReservationFreesThePoolLease(t *testing.T) {
	ctx := context.Background()
	plain := clientKinds[6]
	srv := netip.MustParseAddr("10.50.0.1")
	reserved := netip.MustParseAddr("10.50.0.60")
	for _, path := range []string{"discover", "init-reboot", "other-server"} {
		t.Run(path, func(t *testing.T) {
			const mac = "02:00:00:00:0a:01"
			cfg := testConfig()
			adm := NewStaticAdmitter(nil, false)
			h := NewHandler(cfg, ModeFull, nil, nil, adm, nil)
			h.now = func() time.Time { return t0 }
			pool := yi(h.Handle(ctx, discoverReq(plain, mac)))
			if a := h.Handle(ctx, requestReq(plain, mac, pool, srv)); a == nil || a.Msg.MessageType() != dhcpv4.MessageTypeAck {
				t.Fatalf("pool lease: %s", summary(a))
			}
			adm.Reserve(Reservation{MAC: mustMAC(mac), IP: reserved, Hostname: "cp-1"})
			var ack *Response
			switch path {
			case "discover":
				if got := yi(h.Handle(ctx, discoverReq(plain, mac))); got != reserved {
					t.Fatalf("offer %v, want the reservation %v", got, reserved)
				}
				ack = h.Handle(ctx, requestReq(plain, mac, reserved, srv))
			case "init-reboot":
				ack = h.Handle(ctx, requestReq(plain, mac, reserved, netip.Addr{}))
			case "other-server":
				if got := yi(h.Handle(ctx, discoverReq(plain, mac))); got != reserved {
					t.Fatalf("offer %v, want the reservation %v", got, reserved)
				}
				if r := h.Handle(ctx, requestReq(plain, mac, netip.MustParseAddr("10.50.0.240"), netip.MustParseAddr("10.50.0.254"))); r != nil {
					t.Fatalf("answered a request for another server: %s", summary(r))
				}
				if got := heldBy(h.Leases(), mac); !slices.Equal(got, []string{pool.String() + " bound"}) {
					t.Errorf("after taking another server's offer the MAC holds %v, want its pool lease", got)
				}
				if ip, ok := h.LeaseOf(mac); !ok || ip != pool {
					t.Errorf("LeaseOf = %v %v, want the pool lease %v", ip, ok, pool)
				}
				return
			}
			if ack == nil || ack.Msg.MessageType() != dhcpv4.MessageTypeAck || yi(ack) != reserved {
				t.Fatalf("ACK of the reservation: %s", summary(ack))
			}
			want := []Lease{
				{IP: reserved, MAC: mac, Hostname: "cp-1", State: StateBound, Expires: t0.Add(cfg.LeaseTime)},
				{IP: pool, State: StateReleased, Expires: t0},
			}
			if len(ack.Save) != len(want) {
				t.Fatalf("the ACK stores %+v, want %+v", ack.Save, want)
			}
			for i, w := range want {
				g := ack.Save[i]
				if g.IP != w.IP || g.MAC != w.MAC || g.Hostname != w.Hostname || g.State != w.State || !g.Expires.Equal(w.Expires) {
					t.Errorf("stored record %d: %+v, want %+v", i, g, w)
				}
			}
			if got := heldBy(h.Leases(), mac); !slices.Equal(got, []string{reserved.String() + " bound"}) {
				t.Errorf("the MAC holds %v, want only %v bound", got, reserved)
			}
			if ip, ok := h.LeaseOf(mac); !ok || ip != reserved {
				t.Errorf("LeaseOf = %v %v, want %v", ip, ok, reserved)
			}
			// The pool address is free for another client.
			if got := yi(h.Handle(ctx, discoverReq(plain, "02:00:00:00:0a:02", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(pool.AsSlice()))))); got != pool {
				t.Errorf("another client asking for the freed %v got %v", pool, got)
			}
		})
	}
}

// A store that already holds two leases for one MAC (written before a MAC
// was held to one) is repaired at load: the bound lease with the later
// expiry is kept, the other freed, and the repair is handed to the server
// to store.
func TestLoadFreesASecondLeaseOfAMAC(t *testing.T) {
	const mac = "02:00:00:00:0b:01"
	old := []Lease{
		{IP: netip.MustParseAddr("10.50.0.100"), MAC: mac, State: StateBound, Expires: t0.Add(30 * time.Minute)},
		{IP: netip.MustParseAddr("10.50.0.60"), MAC: mac, Hostname: "cp-1", State: StateBound, Expires: t0.Add(time.Hour)},
		{IP: netip.MustParseAddr("10.50.0.101"), MAC: mac, State: StateReleased, Expires: t0.Add(2 * time.Hour)},
		{IP: netip.MustParseAddr("10.50.0.102"), MAC: "02:00:00:00:0b:02", State: StateBound, Expires: t0.Add(time.Hour)},
	}
	h := NewHandler(testConfig(), ModeFull, old, nil, nil, nil)
	h.now = func() time.Time { return t0 }
	if got := heldBy(h.Leases(), mac); !slices.Equal(got, []string{"10.50.0.60 bound"}) {
		t.Errorf("after load the MAC holds %v, want only 10.50.0.60 bound", got)
	}
	var fixed []string
	for _, l := range h.takeRepairs() {
		if l.MAC != "" || l.State != StateReleased {
			t.Errorf("repair %+v: want a released record with no MAC", l)
		}
		fixed = append(fixed, l.IP.String())
	}
	slices.Sort(fixed)
	if !slices.Equal(fixed, []string{"10.50.0.100", "10.50.0.101"}) {
		t.Errorf("repairs %v, want 10.50.0.100 and 10.50.0.101 freed", fixed)
	}
	if again := h.takeRepairs(); len(again) != 0 {
		t.Errorf("repairs handed out twice: %+v", again)
	}
	if got := heldBy(h.Leases(), "02:00:00:00:0b:02"); !slices.Equal(got, []string{"10.50.0.102 bound"}) {
		t.Errorf("another MAC's lease changed: %v", got)
	}
}

func TestRelayed(t *testing.T) {
	ctx := context.Background()
	plain := clientKinds[6]
	h := newTestHandler(t, ModeFull, nil, nil)
	rai := dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte("port1")))
	o := h.Handle(ctx, discoverReq(plain, "02:00:00:00:01:01", dhcpv4.WithRelay(net.IPv4(10, 60, 0, 1)), dhcpv4.WithOption(rai)))
	if got := yi(o); got != netip.MustParseAddr("10.60.0.10") {
		t.Fatalf("relayed offer %v", got)
	}
	if o.Dest != netip.MustParseAddrPort("10.60.0.1:67") {
		t.Fatalf("relayed reply goes to %v", o.Dest)
	}
	if string(o.Msg.GetOneOption(dhcpv4.OptionRelayAgentInformation)) != string(rai.Value.ToBytes()) {
		t.Fatalf("option 82 not echoed: %s", o.Msg.Summary())
	}
	if r := o.Msg.Router(); len(r) != 1 || !r[0].Equal(net.IPv4(10, 60, 0, 1)) {
		t.Fatalf("router %v", r)
	}
	// An unknown relay gets nothing.
	if r := h.Handle(ctx, discoverReq(plain, "02:00:00:00:01:02", dhcpv4.WithRelay(net.IPv4(172, 16, 0, 1)))); r != nil {
		t.Fatalf("answered unknown relay: %s", summary(r))
	}
}

func TestProxyIgnoresPlainClients(t *testing.T) {
	h := newTestHandler(t, ModeProxy, nil, nil)
	if r := h.Handle(context.Background(), discoverReq(clientKinds[6], "02:00:00:00:00:01")); r != nil {
		t.Fatalf("proxy answered a non-PXE client: %s", summary(r))
	}
	// A REQUEST on 67 addressed to the real server is not ours.
	r := h.Handle(context.Background(), requestReq(clientKinds[0], "02:00:00:00:00:01", netip.MustParseAddr("10.50.0.5"), netip.MustParseAddr("10.50.0.254")))
	if r != nil {
		t.Fatalf("proxy answered a request for the real server: %s", summary(r))
	}
}

func TestPoolExhaustion(t *testing.T) {
	cfg := testConfig()
	cfg.Subnet.RangeEnd = netip.MustParseAddr("10.50.0.102")
	cfg.Limits = Limits{} // the whole pool, to strangers too
	h := NewHandler(cfg, ModeFull, nil, nil, nil, nil)
	ctx := context.Background()
	for i := range 3 {
		if r := h.Handle(ctx, discoverReq(clientKinds[6], net.HardwareAddr{2, 0, 0, 0, 9, byte(i)}.String())); r == nil {
			t.Fatalf("client %d got nothing", i)
		}
	}
	if r := h.Handle(ctx, discoverReq(clientKinds[6], "02:00:00:00:09:09")); r != nil {
		t.Fatalf("exhausted pool offered %v", yi(r))
	}
}

func TestLeasesReloaded(t *testing.T) {
	ctx := context.Background()
	old := []Lease{{IP: netip.MustParseAddr("10.50.0.150"), MAC: "02:00:00:00:00:01", State: StateBound, Expires: t0.Add(time.Hour)}}
	h := newTestHandler(t, ModeFull, old, fakeProber{netip.MustParseAddr("10.50.0.150"): true})
	if got := yi(h.Handle(ctx, discoverReq(clientKinds[6], "02:00:00:00:00:01"))); got != old[0].IP {
		t.Fatalf("reloaded client got %v", got)
	}
	if got := yi(h.Handle(ctx, discoverReq(clientKinds[6], "02:00:00:00:00:02"))); got == old[0].IP {
		t.Fatal("leased address offered to another client")
	}
}

func TestValidate(t *testing.T) {
	if err := testConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := testConfig()
	c.Interface = ""
	c.Mode = "loud"
	c.Subnet.RangeEnd = netip.MustParseAddr("10.99.0.1")
	c.Boot.BIOSFile = "../etc/passwd"
	c.Reservations = append(c.Reservations, Reservation{MAC: mustMAC("52:54:00:00:00:99"), IP: netip.MustParseAddr("10.50.0.50")})
	c.Limits.StrangerShare = 120
	c.Limits.NewBurst = -1
	err := c.Validate()
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"Interface:", "Mode:", "Subnet.Range:", "Boot.BIOSFile:", "Reservations[1].MAC:", "Reservations[1].IP:", "Limits:", "Limits.StrangerShare:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

func TestFileStoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "leases.jsonl")
	s := NewFileStore(path)
	a := Lease{IP: netip.MustParseAddr("10.0.0.5"), MAC: "02:00:00:00:00:01", State: StateBound, Expires: t0}
	b := a
	b.State = StateReleased
	if err := s.Save(ctx, []Lease{a}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx, []Lease{b, {IP: netip.MustParseAddr("10.0.0.6"), State: StateDeclined, Expires: t0}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// A torn line at the end (crash mid-write) is ignored.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"ip":"10.0.0.7","sta`)
	f.Close()
	got, err := NewFileStore(path).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].State != StateReleased || got[1].State != StateDeclined {
		t.Fatalf("loaded %+v", got)
	}
}
