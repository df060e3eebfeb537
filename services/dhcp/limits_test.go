package dhcp

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"airlock.dev/airlock/services/internal/ratelog"
)

// clockHandler is a handler whose clock the test moves.
func clockHandler(t *testing.T, cfg Config, adm Admitter) (*Handler, *time.Time) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h := NewHandler(cfg, ModeFull, nil, nil, adm, nil)
	now := t0
	h.now = func() time.Time { return now }
	return h, &now
}

func macN(i int) string {
	return net.HardwareAddr{0x02, 0xee, byte(i >> 16), byte(i >> 8), byte(i), 0x01}.String()
}

// dora runs DISCOVER then REQUEST for mac and returns the bound address
// (invalid if none).
func dora(h *Handler, mac string, mods ...dhcpv4.Modifier) netip.Addr {
	ctx := context.Background()
	plain := clientKinds[6]
	o := h.Handle(ctx, discoverReq(plain, mac, mods...))
	if o == nil || o.Msg == nil {
		return netip.Addr{}
	}
	a := h.Handle(ctx, requestReq(plain, mac, yi(o), netip.MustParseAddr("10.50.0.1"), mods...))
	if a == nil || a.Msg == nil || a.Msg.MessageType() != dhcpv4.MessageTypeAck {
		return netip.Addr{}
	}
	return yi(a)
}

func activeLeases(h *Handler, now time.Time) (n int) {
	for _, l := range h.Leases() {
		if l.active(now) {
			n++
		}
	}
	return n
}

// TestStrangerFloodLeavesRoomForKnown: a thousand made-up MACs doing full
// DORA exchanges over a minute take at most StrangerShare of the pool; a
// machine the Admitter knows still gets an address, and a reserved one its
// reservation.
func TestStrangerFloodLeavesRoomForKnown(t *testing.T) {
	cfg := testConfig()
	cfg.Limits = Limits{NewPerSecond: 1000, NewBurst: 1000, StrangerShare: 80}
	adm := NewStaticAdmitter(cfg.Reservations, false)
	h, now := clockHandler(t, cfg, adm)
	bound := 0
	for i := range 1000 {
		if i%20 == 0 {
			*now = now.Add(time.Second)
		}
		if dora(h, macN(i)).IsValid() {
			bound++
		}
	}
	if bound != 80 {
		t.Fatalf("strangers bound %d addresses of 100, want 80", bound)
	}
	if n := activeLeases(h, *now); n != 80 {
		t.Fatalf("%d active leases, want 80", n)
	}
	if r := h.Stats().Refused; r < 900 {
		t.Fatalf("refused %d requests, want >= 900", r)
	}
	// A machine admitted while the server runs: known, no fixed address.
	known := mustMAC("52:54:00:00:00:42")
	adm.Reserve(Reservation{MAC: known})
	if ip := dora(h, known.String()); !ip.IsValid() {
		t.Fatal("a known machine got no address after the flood")
	}
	if ip := dora(h, "52:54:00:00:00:99"); ip != netip.MustParseAddr("10.50.0.50") {
		t.Fatalf("the reserved machine got %v, want 10.50.0.50", ip)
	}
	// More known machines fill the reserve, strangers still cannot.
	if ip := dora(h, macN(5000)); ip.IsValid() {
		t.Fatalf("a stranger got %v past its share", ip)
	}
}

// TestNewAddressRate: strangers get NewBurst addresses at once, then
// NewPerSecond; retransmissions of a stranger that holds an offer take no
// token.
func TestNewAddressRate(t *testing.T) {
	cfg := testConfig()
	cfg.Limits = Limits{NewPerSecond: 2, NewBurst: 5}
	h, now := clockHandler(t, cfg, nil)
	ctx := context.Background()
	got := 0
	for i := range 20 {
		if r := h.Handle(ctx, discoverReq(clientKinds[6], macN(i))); r != nil {
			got++
		}
	}
	if got != 5 {
		t.Fatalf("%d offers at once, want the burst of 5", got)
	}
	// The first client's retransmission is answered (its offer is held).
	if r := h.Handle(ctx, discoverReq(clientKinds[6], macN(0))); r == nil {
		t.Fatal("retransmitted DISCOVER of a client holding an offer was refused")
	}
	*now = now.Add(time.Second)
	got = 0
	for i := 100; i < 110; i++ {
		if r := h.Handle(ctx, discoverReq(clientKinds[6], macN(i))); r != nil {
			got++
		}
	}
	if got != 2 {
		t.Fatalf("%d offers one second later, want 2", got)
	}
	// A REQUEST for a free address without an offer is a new address too:
	// refused without a reply (no NAK to amplify a flood).
	if r := h.Handle(ctx, requestReq(clientKinds[6], macN(200), netip.MustParseAddr("10.50.0.180"), netip.Addr{})); r != nil {
		t.Fatalf("REQUEST past the rate answered: %s", summary(r))
	}
	// Known machines are never limited.
	if r := h.Handle(ctx, discoverReq(clientKinds[6], "52:54:00:00:00:99")); yi(r) != netip.MustParseAddr("10.50.0.50") {
		t.Fatalf("reserved machine refused under the rate: %s", summary(r))
	}
}

// TestOfferHoldShort: DISCOVERs alone hold addresses only for OfferHold.
func TestOfferHoldShort(t *testing.T) {
	cfg := testConfig()
	cfg.Subnet.RangeEnd = netip.MustParseAddr("10.50.0.109")
	cfg.Limits = Limits{}
	h, now := clockHandler(t, cfg, nil)
	ctx := context.Background()
	for i := range 10 {
		if r := h.Handle(ctx, discoverReq(clientKinds[6], macN(i))); r == nil {
			t.Fatalf("offer %d", i)
		}
	}
	if r := h.Handle(ctx, discoverReq(clientKinds[6], macN(99))); r != nil {
		t.Fatal("offered from a pool held by offers")
	}
	*now = now.Add(cfg.OfferHold + time.Second)
	if ip := dora(h, macN(99)); !ip.IsValid() {
		t.Fatalf("no address %v after the offers expired (OfferHold %v)", ip, cfg.OfferHold)
	}
	if cfg.OfferHold > 15*time.Second {
		t.Fatalf("default OfferHold %v: offers hold addresses too long", cfg.OfferHold)
	}
}

// TestRelayCircuitLimit: behind a relay that adds option 82, one port
// gets RelayBurst new addresses; another port of the same relay is not
// affected.
func TestRelayCircuitLimit(t *testing.T) {
	cfg := testConfig()
	cfg.Limits = Limits{SourcePerSecond: 1, SourceBurst: 3}
	h, _ := clockHandler(t, cfg, nil)
	port := func(name string) dhcpv4.Modifier {
		return dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte(name))))
	}
	relay := dhcpv4.WithRelay(net.IPv4(10, 60, 0, 1))
	got := 0
	for i := range 8 {
		if dora(h, macN(i), relay, port("port1")).IsValid() {
			got++
		}
	}
	if got != 3 {
		t.Fatalf("one relay port got %d addresses, want 3", got)
	}
	if !dora(h, macN(50), relay, port("port2")).IsValid() {
		t.Fatal("another port of the relay was refused")
	}
}

// TestRelayBucketsBounded: made-up relay agent information cannot grow the
// bucket table without bound.
func TestRelayBucketsBounded(t *testing.T) {
	cfg := testConfig()
	cfg.Limits = Limits{SourcePerSecond: 1, SourceBurst: 1}
	h, _ := clockHandler(t, cfg, nil)
	for i := range maxSourceBuckets + 500 {
		m := makePacket(clientKinds[6], dhcpv4.MessageTypeDiscover, mustMAC(macN(i)), dhcpv4.WithRelay(net.IPv4(10, 60, 0, 1)),
			dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte(macN(i))))))
		h.mu.Lock()
		h.admitNewLocked(Request{Msg: m, Port: 67}, &h.cfg.Relayed[0], t0)
		h.mu.Unlock()
	}
	if n := len(h.sourceBuckets); n > maxSourceBuckets+1 {
		t.Fatalf("%d relay buckets, want <= %d", n, maxSourceBuckets+1)
	}
}

// TestReservationAtRunTime: a reservation added while the handler runs
// applies to the next packet: the machine gets its address and hostname,
// and no stranger is offered that address any more.
func TestReservationAtRunTime(t *testing.T) {
	cfg := testConfig()
	cfg.Reservations = nil
	adm := NewStaticAdmitter(nil, false)
	h, _ := clockHandler(t, cfg, adm)
	ctx := context.Background()
	first := yi(h.Handle(ctx, discoverReq(clientKinds[6], "02:00:00:00:00:01")))
	if first != netip.MustParseAddr("10.50.0.100") {
		t.Fatalf("first offer %v", first)
	}
	// Reserve the next pool address for a machine at run time.
	adm.Reserve(Reservation{MAC: mustMAC("52:54:00:00:07:07"), IP: netip.MustParseAddr("10.50.0.101"), Hostname: "gpu-7"})
	if got := yi(h.Handle(ctx, discoverReq(clientKinds[6], "02:00:00:00:00:02"))); got == netip.MustParseAddr("10.50.0.101") || !got.IsValid() {
		t.Fatalf("a stranger was offered %v (reserved at run time)", got)
	}
	o := h.Handle(ctx, discoverReq(clientKinds[6], "52:54:00:00:07:07"))
	if yi(o) != netip.MustParseAddr("10.50.0.101") || o.Msg.HostName() != "gpu-7" {
		t.Fatalf("machine reserved at run time got %s", summary(o))
	}
	a := h.Handle(ctx, requestReq(clientKinds[6], "52:54:00:00:07:07", yi(o), netip.MustParseAddr("10.50.0.1")))
	if a == nil || a.Msg.MessageType() != dhcpv4.MessageTypeAck || a.Save[0].Hostname != "gpu-7" {
		t.Fatalf("ACK for the run-time reservation: %s", summary(a))
	}
	adm.Unreserve(mustMAC("52:54:00:00:07:07"))
	if _, ok := adm.ReservedFor(netip.MustParseAddr("10.50.0.101")); ok {
		t.Fatal("Unreserve left the address reserved")
	}
}

// TestRefuseStrangers: with an allowlist, unknown MACs get no reply of any
// kind; reserved machines are served.
func TestRefuseStrangers(t *testing.T) {
	cfg := testConfig()
	adm := NewStaticAdmitter(cfg.Reservations, true)
	ctx := context.Background()
	for _, mode := range []Mode{ModeFull, ModeProxy} {
		h := NewHandler(cfg, mode, nil, nil, adm, nil)
		for _, typ := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform} {
			m := makePacket(clientKinds[0], typ, mustMAC("02:00:00:00:00:01"),
				dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 50, 0, 120))), dhcpv4.WithClientIP(net.IPv4(10, 50, 0, 120)))
			if r := h.Handle(ctx, Request{Msg: m, Port: 67}); r != nil {
				t.Errorf("%s: %s from a stranger answered: %s", mode, typ, summary(r))
			}
		}
		if r := h.Handle(ctx, discoverReq(clientKinds[0], "52:54:00:00:00:99")); r == nil {
			t.Errorf("%s: reserved machine refused", mode)
		}
		if h.Stats().Refused != 3 {
			t.Errorf("%s: refused %d, want 3", mode, h.Stats().Refused)
		}
	}
}

// countingWriter counts the lines a logger writes.
type countingWriter struct {
	mu    sync.Mutex
	lines int
	last  string
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines += bytes.Count(p, []byte("\n"))
	w.last = string(p)
	return len(p), nil
}

// TestLogsBounded: refusals, NAKs and "no free address" are logged for
// every packet no more: ten thousand hostile packets from made-up MACs
// make a bounded number of lines, and the same client's repeats a handful.
func TestLogsBounded(t *testing.T) {
	var w countingWriter
	cfg := testConfig()
	cfg.Subnet.RangeEnd = netip.MustParseAddr("10.50.0.100")
	cfg.Limits = Limits{}
	log := slog.New(slog.NewTextHandler(&w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx := context.Background()
	// Refused by the Admitter.
	h := NewHandler(cfg, ModeFull, nil, nil, NewStaticAdmitter(nil, true), log)
	for i := range 10000 {
		h.Handle(ctx, discoverReq(clientKinds[6], macN(i)))
	}
	if h.Stats().Refused != 10000 {
		t.Fatalf("refused %d", h.Stats().Refused)
	}
	refusals := w.lines
	// NAKs for a taken address, and "no free address", from one pool.
	h = NewHandler(cfg, ModeFull, nil, nil, nil, log)
	dora(h, "02:00:00:00:00:01")
	for i := range 10000 {
		h.Handle(ctx, requestReq(clientKinds[6], macN(i), netip.MustParseAddr("10.50.0.100"), netip.Addr{}))
		h.Handle(ctx, discoverReq(clientKinds[6], macN(i)))
	}
	if h.Stats().Naks != 10000 {
		t.Fatalf("NAKs %d", h.Stats().Naks)
	}
	// The same client again and again.
	for range 1000 {
		h.Handle(ctx, requestReq(clientKinds[6], "02:00:00:00:00:07", netip.MustParseAddr("10.50.0.100"), netip.Addr{}))
	}
	t.Logf("%d lines for 10,000 refusals; %d in all for 31,000 hostile packets", refusals, w.lines)
	// Per message a minute: one line for each of the first DefaultKeys
	// clients, 5 for all the others together, 5 for the repeating one.
	perMsg := ratelog.DefaultKeys + 10
	if refusals > perMsg || w.lines > 3*perMsg {
		t.Fatalf("%d lines logged (%d for refusals): not bounded per client", w.lines, refusals)
	}
	if refusals >= 10000 {
		t.Fatal("every refusal logged")
	}
}

// tableProber answers probes from a table the test changes.
type tableProber struct {
	mu     sync.Mutex
	inUse  map[netip.Addr]bool
	all    bool // every address answers
	probes int
}

func (p *tableProber) InUse(_ context.Context, ip netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.probes++
	return p.all || p.inUse[ip]
}

func (p *tableProber) set(all bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.all = all
}

// TestReclaimSilentStrangers: when strangers hold their share, a new
// client gets an address a stranger holds but no host answers for; an
// address whose host answers is kept; a known machine's never goes.
func TestReclaimSilentStrangers(t *testing.T) {
	cfg := testConfig()
	cfg.Subnet.RangeEnd = netip.MustParseAddr("10.50.0.109") // 10 addresses
	cfg.Limits = Limits{StrangerShare: 80}
	adm := NewStaticAdmitter(nil, false)
	p := &tableProber{inUse: map[netip.Addr]bool{}}
	h := NewHandler(cfg, ModeFull, nil, p, adm, nil)
	now := t0
	h.now = func() time.Time { return now }
	for i := range 8 {
		if !dora(h, macN(i)).IsValid() {
			t.Fatalf("stranger %d got nothing", i)
		}
	}
	known := mustMAC("52:54:00:00:00:42")
	adm.Reserve(Reservation{MAC: known})
	knownIP := dora(h, known.String())
	if !knownIP.IsValid() {
		t.Fatal("known machine got nothing")
	}
	// Every stranger's host answers: nothing is reclaimed.
	p.set(true)
	if ip := dora(h, macN(100)); ip.IsValid() {
		t.Fatalf("a stranger got %v past the share while every address answers", ip)
	}
	if h.Stats().Reclaimed != 0 {
		t.Fatal("reclaimed an address that answers")
	}
	// The hosts fall silent (made-up MACs): each new client takes one.
	p.set(false)
	now = now.Add(reclaimEvery)
	ctx := context.Background()
	o := h.Handle(ctx, discoverReq(clientKinds[6], macN(101)))
	if o == nil || len(o.Save) != 1 || o.Save[0].State != StateReleased || o.Save[0].IP == knownIP {
		t.Fatalf("offer after reclaiming: %s, save %+v", summary(o), o)
	}
	for i := range 20 {
		now = now.Add(reclaimEvery)
		if !dora(h, macN(200+i)).IsValid() {
			t.Fatalf("new stranger %d got nothing although silent addresses are held", i)
		}
	}
	if got := h.Stats().Reclaimed; got < 20 {
		t.Fatalf("reclaimed %d, want >= 20", got)
	}
	var stillKnown bool
	for _, l := range h.Leases() {
		if l.IP == knownIP && l.MAC == known.String() && l.State == StateBound {
			stillKnown = true
		}
	}
	if !stillKnown {
		t.Fatal("the known machine's address was reclaimed")
	}
	// Probes for reclaiming are rate-limited: a burst of strangers at one
	// instant probes at most reclaimBurst addresses for reclaiming.
	p.mu.Lock()
	p.probes = 0
	p.mu.Unlock()
	for i := range 200 {
		h.Handle(ctx, discoverReq(clientKinds[6], macN(1000+i)))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.probes > 2*reclaimBurst+10 {
		t.Fatalf("%d probes for 200 DISCOVERs at one instant", p.probes)
	}
}

// TestSourceLimit: unicast requests from one address (a host that has one)
// share a bucket, whatever MAC they claim; broadcasts from 0.0.0.0 do not.
func TestSourceLimit(t *testing.T) {
	cfg := testConfig()
	cfg.Limits = Limits{SourcePerSecond: 1, SourceBurst: 4}
	h, _ := clockHandler(t, cfg, nil)
	ctx := context.Background()
	acked := 0
	for i := range 20 {
		r := requestReq(clientKinds[6], macN(i), netip.AddrFrom4([4]byte{10, 50, 0, byte(100 + i)}), netip.Addr{})
		r.Peer = netip.MustParseAddrPort("10.50.0.9:68")
		if a := h.Handle(ctx, r); a != nil && a.Msg.MessageType() == dhcpv4.MessageTypeAck {
			acked++
		}
	}
	if acked != 4 {
		t.Fatalf("one sender's made-up MACs got %d addresses, want 4", acked)
	}
	for i := range 10 {
		r := discoverReq(clientKinds[6], macN(100+i))
		r.Peer = netip.MustParseAddrPort("0.0.0.0:68")
		if h.Handle(ctx, r) == nil {
			t.Fatalf("broadcast DISCOVER %d limited by a source bucket", i)
		}
	}
}

// TestRenewalLoopCostsStoreNothing: a client renewing in a loop gets its
// ACKs, but the store is written only when the stored lease has less than
// half a lease time left.
func TestRenewalLoopCostsStoreNothing(t *testing.T) {
	cfg := testConfig()
	h, now := clockHandler(t, cfg, nil)
	ctx := context.Background()
	ip := dora(h, "02:00:00:00:00:01")
	writes := 0
	for i := range 1000 {
		*now = now.Add(time.Millisecond)
		a := h.Handle(ctx, requestReq(clientKinds[6], "02:00:00:00:00:01", ip, netip.MustParseAddr("10.50.0.1")))
		if a == nil || a.Msg.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("renewal %d: %s", i, summary(a))
		}
		writes += len(a.Save)
	}
	if writes != 0 {
		t.Fatalf("1000 renewals within a second wrote the store %d times", writes)
	}
	*now = now.Add(cfg.LeaseTime / 2)
	a := h.Handle(ctx, requestReq(clientKinds[6], "02:00:00:00:00:01", ip, netip.MustParseAddr("10.50.0.1")))
	if a == nil || len(a.Save) != 1 || !a.Save[0].Expires.Equal(now.Add(cfg.LeaseTime)) {
		t.Fatalf("renewal at half the lease time not stored: %+v", a)
	}
}

// TestDeclineCycleBounded: a host that takes addresses for made-up MACs
// and declines each (so that it stays out of the pool for the decline
// hold) is bounded by the strangers' share, and a declined address no
// host answers for is reclaimed.
func TestDeclineCycleBounded(t *testing.T) {
	cfg := testConfig()
	cfg.Subnet.RangeEnd = netip.MustParseAddr("10.50.0.109") // 10 addresses
	cfg.Limits = Limits{StrangerShare: 80}
	p := &tableProber{inUse: map[netip.Addr]bool{}}
	h := NewHandler(cfg, ModeFull, nil, p, nil, nil)
	now := t0
	h.now = func() time.Time { return now }
	ctx := context.Background()
	got := 0
	for i := range 100 {
		ip := dora(h, macN(i))
		if !ip.IsValid() {
			continue
		}
		got++
		p.mu.Lock()
		p.inUse[ip] = true // while it answers, it is not reclaimed
		p.mu.Unlock()
		dec := makePacket(clientKinds[6], dhcpv4.MessageTypeDecline, mustMAC(macN(i)),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice())))
		h.Handle(ctx, Request{Msg: dec, Port: 67})
	}
	if got != 8 {
		t.Fatalf("the decline cycle took %d addresses, want the share of 8", got)
	}
	// Declined addresses nobody answers for come back.
	p.mu.Lock()
	clear(p.inUse)
	p.mu.Unlock()
	now = now.Add(reclaimEvery)
	if !dora(h, macN(500)).IsValid() {
		t.Fatal("no address although the declined ones are silent")
	}
	if h.Stats().Reclaimed == 0 {
		t.Fatal("no declined address reclaimed")
	}
}
