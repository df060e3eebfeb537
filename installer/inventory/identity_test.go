package inventory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"airlock.dev/airlock/installer/agent"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// site is the agent API handler over the real inventory over a bbolt
// store, served on a loopback listener.
type site struct {
	t   *testing.T
	inv *Store
	// clock is the inventory's time; advance it with tick.
	mu    sync.Mutex
	clock time.Time
	st    *state.BoltStore
	url   *url.URL
	logs  *syncBuffer
}

func newSite(t *testing.T) *site {
	t.Helper()
	st, err := state.Open(memDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	inv := New(st, nil, log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: agentapi.NewHandler(inv, log), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	u, _ := url.Parse("http://" + ln.Addr().String())
	s := &site{t: t, inv: inv, st: st, url: u, logs: logs, clock: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)}
	inv.now = func() time.Time {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.clock
	}
	return s
}

func (s *site) tick(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clock = s.clock.Add(d)
}

// client is the real agent's client for a token, sending from the
// loopback address from (127.0.0.1 when empty).
func (s *site) client(tok agentapi.Token, from string) *agent.Client {
	tr := &http.Transport{}
	if from != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		tr.DialContext = d.DialContext
	}
	s.t.Cleanup(tr.CloseIdleConnections)
	return agent.NewClient(s.url, tok, &http.Client{Transport: tr, Timeout: 10 * time.Second})
}

func (s *site) issue(mac string) agentapi.Token {
	s.t.Helper()
	tok, err := s.inv.IssueBoot(mac)
	if err != nil {
		s.t.Fatal(err)
	}
	return tok
}

func statusOf(err error) int {
	var se *agent.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// A token is bound to the MAC that fetched the boot script, and a boot to
// the address it registered from.
func TestTokenBoundToMACAndAddress(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	x := registration(t, "LAB-X", "", "52:54:00:10:00:01")
	y := registration(t, "LAB-Y", "", "52:54:00:10:00:02")
	tok := s.issue(x.BootMAC)
	c := s.client(tok, "")
	if _, err := c.Register(ctx, y); statusOf(err) != http.StatusForbidden {
		t.Fatalf("a token issued to %s registered %s: %v", x.BootMAC, y.BootMAC, err)
	}
	if !strings.Contains(s.logs.String(), "issued to another MAC") {
		t.Errorf("the refusal is not logged:\n%s", s.logs)
	}
	if ms, _ := List(s.st); len(ms) != 0 {
		t.Fatalf("the refused registration left machines: %+v", ms)
	}
	// The backend refuses it too, whoever calls it.
	if _, err := s.inv.Register(ctx, tok.BootID, agentapi.Identity(y), y); !errors.Is(err, agentapi.ErrWrongMAC) {
		t.Fatalf("inventory.Register with another MAC: %v", err)
	}
	// The MAC it was issued to registers, from 127.0.0.1.
	if _, err := c.Register(ctx, x); err != nil {
		t.Fatalf("register with the token's MAC: %v", err)
	}
	// The same token from another address is refused, even for the
	// machine it belongs to.
	thief := s.client(tok, "127.0.0.2")
	if _, err := thief.Heartbeat(ctx, &agentapi.Heartbeat{Seq: 1, State: "waiting"}); statusOf(err) != http.StatusForbidden {
		t.Fatalf("heartbeat from another address: %v", err)
	}
	if _, err := thief.Register(ctx, x); statusOf(err) != http.StatusForbidden {
		t.Fatalf("registration from another address: %v", err)
	}
	if _, err := c.Heartbeat(ctx, &agentapi.Heartbeat{Seq: 1, State: "waiting"}); err != nil {
		t.Fatalf("heartbeat from the registered address: %v", err)
	}
}

// Two agents: machine A registers and waits for orders; a second agent
// claims A's identity in every way a report can, and is refused and
// flagged each time, while A's record, its order and its token stay A's.
func TestImpostorRefusedAndFlagged(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	const (
		uuidA = "9b2f3c1e-0000-4000-8000-0000000000a1"
		uuidC = "9b2f3c1e-0000-4000-8000-0000000000c1"
		macA  = "52:54:00:20:00:0a"
		macC  = "52:54:00:20:00:0c"
		macJ  = "52:54:00:20:00:1f"
	)
	regA := registration(t, "SN-A", uuidA, macA)
	a := s.client(s.issue(macA), "")
	replyA, err := a.Register(ctx, regA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Heartbeat(ctx, &agentapi.Heartbeat{Seq: 1, State: "waiting"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.client(s.issue(macC), "").Register(ctx, registration(t, "SN-C", uuidC, macC)); err != nil {
		t.Fatal(err)
	}
	// A machine whose firmware has placeholders: known by its MAC only.
	junk := registration(t, "To be filled by O.E.M.", "03000200-0400-0500-0006-000700080009", macJ)
	if _, err := s.client(s.issue(macJ), "").Register(ctx, junk); err != nil {
		t.Fatal(err)
	}
	if err := s.inv.Rediscover(replyA.MachineID); err != nil {
		t.Fatal(err)
	}
	before, err := List(s.st)
	if err != nil || len(before) != 3 {
		t.Fatalf("machines before the attack: %d, %v", len(before), err)
	}

	withNIC := func(reg *agentapi.Registration, mac string) *agentapi.Registration {
		reg.Inventory.NICs = append(reg.Inventory.NICs, agentapi.NIC{Name: "ens9", MAC: mac})
		return reg
	}
	attacks := []struct {
		name string
		reg  *agentapi.Registration
		flag []string // machines that must be flagged
	}{
		{"A's serial, new UUID", registration(t, "SN-A", "9b2f3c1e-0000-4000-8000-0000000000b1", "52:54:00:20:00:b1"), []string{"A"}},
		{"A's UUID, new serial", registration(t, "SN-B", uuidA, "52:54:00:20:00:b2"), []string{"A"}},
		{"A's MAC beside its own", withNIC(registration(t, "SN-B3", "9b2f3c1e-0000-4000-8000-0000000000b3", "52:54:00:20:00:b3"), macA), []string{"A"}},
		{"A's MAC as boot MAC, another UUID", registration(t, "SN-A", "9b2f3c1e-0000-4000-8000-0000000000b4", macA), []string{"A"}},
		{"A's MAC with no UUID or serial", registration(t, "", "", macA), []string{"A"}},
		{"A's UUID and serial with C's MAC", registration(t, "SN-A", uuidA, macC), []string{"A", "C"}},
		{"placeholder machine's MAC and a new one", withNIC(registration(t, "", "", macJ), "52:54:00:20:00:b8"), []string{"J"}},
	}
	idOf := map[string]string{"A": replyA.MachineID}
	for _, m := range before {
		switch m.BootMAC {
		case macC:
			idOf["C"] = m.ID
		case macJ:
			idOf["J"] = m.ID
		}
	}
	counts := map[string]int{}
	// While A's agent runs, even a report identical to A's is refused.
	clone := s.client(s.issue(macA), "127.0.0.2")
	if _, err := clone.Register(ctx, registration(t, "SN-A", uuidA, macA)); statusOf(err) != http.StatusForbidden {
		t.Fatalf("a clone of A while A's agent runs: %v, want 403", err)
	}
	counts[replyA.MachineID]++
	// Every other claim is refused for what it claims, also when the
	// machines' agents have been silent for a while.
	s.tick(time.Hour)
	for _, tc := range attacks {
		t.Run(tc.name, func(t *testing.T) {
			b := s.client(s.issue(tc.reg.BootMAC), "127.0.0.2")
			_, err := b.Register(ctx, tc.reg)
			if statusOf(err) != http.StatusForbidden {
				t.Fatalf("impostor registration: %v, want 403", err)
			}
			for _, name := range tc.flag {
				counts[idOf[name]]++
			}
		})
	}
	after, err := List(s.st)
	if err != nil || len(after) != 3 {
		t.Fatalf("machines after the attack: %d, %v", len(after), err)
	}
	for i, m := range after {
		was := before[i]
		if m.ID != was.ID || m.Serial != was.Serial || m.UUID != was.UUID || m.BootMAC != was.BootMAC ||
			m.BootID != was.BootID || !slices.Equal(m.MACs, was.MACs) || m.Boots != was.Boots || len(m.Orders) != len(was.Orders) {
			t.Errorf("machine %s changed by refused reports:\nwas %+v\nnow %+v", m.ID, was, m)
		}
		if m.ConflictCount != counts[m.ID] {
			t.Errorf("machine %s: %d conflicts recorded, want %d", m.ID, m.ConflictCount, counts[m.ID])
		}
		flagged := slices.ContainsFunc(m.Flags, func(f string) bool { return strings.HasPrefix(f, "identity: ") })
		if flagged != (counts[m.ID] > 0) {
			t.Errorf("machine %s flags %q, %d conflicts", m.ID, m.Flags, counts[m.ID])
		}
		if len(m.Conflicts) > maxMachineConflicts {
			t.Errorf("machine %s keeps %d conflicts", m.ID, len(m.Conflicts))
		}
	}
	conflicts, err := s.inv.Conflicts()
	if err != nil || len(conflicts) != len(attacks)+1 {
		t.Fatalf("%d conflicts kept, want %d: %v", len(conflicts), len(attacks)+1, err)
	}
	if c := conflicts[0]; c.Peer.String() != "127.0.0.2" || c.Serial != "SN-A" || c.Reason == "" {
		t.Errorf("first conflict = %+v", c)
	}
	if n := strings.Count(s.logs.String(), "identity conflict"); n < len(attacks)+1 {
		t.Errorf("%d refusals logged, want %d", n, len(attacks))
	}

	// A's agent keeps working and gets the order queued for it.
	hb, err := a.Heartbeat(ctx, &agentapi.Heartbeat{Seq: 2, State: "waiting"})
	if err != nil || len(hb.Orders) != 1 || hb.Orders[0].Kind != agentapi.OrderReboot {
		t.Fatalf("A's heartbeat after the attack: %+v, %v", hb, err)
	}
	// A's own agent may not change A's identity by an inventory update.
	changed := registration(t, "SN-Z", uuidA, macA).Inventory
	if _, err := a.UpdateInventory(ctx, &changed); statusOf(err) != http.StatusForbidden {
		t.Fatalf("inventory update with another serial: %v", err)
	}
	// A reboots as ordered: its next boot registers at once, and retires
	// the earlier boot's token.
	a2 := s.client(s.issue(macA), "")
	if r, err := a2.Register(ctx, regA); err != nil || r.MachineID != replyA.MachineID {
		t.Fatalf("A's next boot: %+v, %v", r, err)
	}
	if _, err := a.Heartbeat(ctx, &agentapi.Heartbeat{Seq: 3, State: "waiting"}); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("the superseded boot's token: %v", err)
	}
}

// Refused reports are bounded: the store keeps the latest maxConflicts,
// a machine the latest maxMachineConflicts and a count.
func TestConflictRecordsAreBounded(t *testing.T) {
	s, st := newStore(t, nil)
	clock := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	_, id := register(t, s, registration(t, "SN-A", "", "52:54:00:30:00:01"))
	clock = clock.Add(time.Hour) // A's agent is silent: only what is claimed counts
	ctx := context.Background()
	const n = maxConflicts + 50
	for i := range n {
		mac := fmt.Sprintf("52:54:00:31:%02x:%02x", i>>8, i&0xff)
		reg := registration(t, "SN-A", "", mac)
		tok, err := s.IssueBoot(mac)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Register(ctx, tok.BootID, agentapi.Identity(reg), reg); !errors.Is(err, agentapi.ErrIdentityConflict) {
			t.Fatalf("impostor %d: %v", i, err)
		}
	}
	conflicts, err := s.Conflicts()
	if err != nil || len(conflicts) != maxConflicts {
		t.Fatalf("%d conflicts kept, want %d: %v", len(conflicts), maxConflicts, err)
	}
	if last := conflicts[len(conflicts)-1]; last.BootMAC != fmt.Sprintf("52:54:00:31:%02x:%02x", (n-1)>>8, (n-1)&0xff) {
		t.Errorf("the newest conflict is not kept: %+v", last)
	}
	machines, err := List(st)
	if err != nil || len(machines) != 1 || machines[0].ID != id {
		t.Fatalf("machines = %+v, %v", machines, err)
	}
	if m := machines[0]; m.ConflictCount != n || len(m.Conflicts) != maxMachineConflicts {
		t.Errorf("machine keeps %d conflicts, count %d", len(m.Conflicts), m.ConflictCount)
	}
}

// A refused agent retries (it backs off and tries again forever): its
// retries are counted on one record, not stored one by one.
func TestRetriedConflictIsOneRecord(t *testing.T) {
	s, st := newStore(t, nil)
	_, id := register(t, s, registration(t, "SN-A", "", "52:54:00:50:00:01"))
	imp := registration(t, "SN-A", "", "52:54:00:50:00:02")
	tok, err := s.IssueBoot(imp.BootMAC)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := s.Register(context.Background(), tok.BootID, agentapi.Identity(imp), imp); !errors.Is(err, agentapi.ErrIdentityConflict) {
			t.Fatalf("impostor: %v", err)
		}
	}
	conflicts, err := s.Conflicts()
	if err != nil || len(conflicts) != 1 || conflicts[0].Repeats != 9 {
		t.Fatalf("conflicts = %+v, %v; want one with 9 repeats", conflicts, err)
	}
	ms, err := List(st)
	if err != nil || len(ms) != 1 || ms[0].ID != id || ms[0].ConflictCount != 1 || len(ms[0].Conflicts) != 1 || ms[0].Conflicts[0].Repeats != 9 {
		t.Fatalf("machine = %+v, %v", ms, err)
	}
	// Another impostor is a record of its own.
	imp2 := registration(t, "SN-A", "", "52:54:00:50:00:03")
	tok2, _ := s.IssueBoot(imp2.BootMAC)
	if _, err := s.Register(context.Background(), tok2.BootID, agentapi.Identity(imp2), imp2); !errors.Is(err, agentapi.ErrIdentityConflict) {
		t.Fatalf("second impostor: %v", err)
	}
	if conflicts, _ := s.Conflicts(); len(conflicts) != 2 {
		t.Fatalf("%d conflicts, want 2", len(conflicts))
	}
}

// With CheckLeases, a registration must come from the address leased to
// its token's MAC; a MAC without a lease (a static address, proxyDHCP)
// registers from anywhere.
func TestRegistrationFromTheLeasedAddress(t *testing.T) {
	s := newSite(t)
	s.inv.CheckLeases(func(mac string) (netip.Addr, bool) {
		if mac == "52:54:00:60:00:01" {
			return netip.MustParseAddr("127.0.0.2"), true
		}
		return netip.Addr{}, false
	})
	ctx := context.Background()
	leased := registration(t, "SN-L", "", "52:54:00:60:00:01")
	tok := s.issue(leased.BootMAC)
	if _, err := s.client(tok, "127.0.0.3").Register(ctx, leased); statusOf(err) != http.StatusForbidden {
		t.Fatalf("registration from another address than the lease: %v", err)
	}
	if !strings.Contains(s.logs.String(), "holds the lease of 52:54:00:60:00:01") {
		t.Errorf("the refusal does not say why:\n%s", s.logs)
	}
	if _, err := s.client(tok, "127.0.0.2").Register(ctx, leased); err != nil {
		t.Fatalf("registration from the leased address: %v", err)
	}
	static := registration(t, "SN-S", "", "52:54:00:60:00:02")
	if _, err := s.client(s.issue(static.BootMAC), "127.0.0.3").Register(ctx, static); err != nil {
		t.Fatalf("registration of a MAC without a lease: %v", err)
	}
}

// A machine known by its MACs only keeps its identity when a NIC is
// missing from one report and back in the next, and a token left unused
// past unboundTTL no longer registers even before it is swept.
func TestMACOnlyMachineAndExpiredToken(t *testing.T) {
	s, st := newStore(t, nil)
	clock := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	two := registration(t, "", "", "52:54:00:70:00:01")
	two.Inventory.NICs = append(two.Inventory.NICs, agentapi.NIC{Name: "ens4", MAC: "52:54:00:70:00:02"})
	one := registration(t, "", "", "52:54:00:70:00:01")
	_, id := register(t, s, two)
	for i, reg := range []*agentapi.Registration{one, two} {
		clock = clock.Add(time.Hour)
		if _, again := register(t, s, reg); again != id {
			t.Fatalf("boot %d: machine %s, want %s", i+2, again, id)
		}
	}
	if ms, _ := List(st); len(ms) != 1 || ms[0].ConflictCount != 0 || ms[0].Boots != 3 {
		t.Fatalf("machines = %+v", ms)
	}
	tok, err := s.IssueBoot(two.BootMAC)
	if err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(unboundTTL + time.Second)
	if _, err := s.Register(context.Background(), tok.BootID, agentapi.Identity(two), two); !errors.Is(err, agentapi.ErrUnknownBoot) {
		t.Fatalf("an expired token: %v", err)
	}
}

// Boot tokens expire (a clock the test moves, a real bbolt store): one
// never used an hour after its script fetch, even to look it up; a bound
// one an hour after its agent last reported, while one whose agent keeps
// reporting lives on.
func TestBootTokensExpire(t *testing.T) {
	s, _ := newStore(t, nil)
	clock := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	ctx := context.Background()
	unused, err := s.IssueBoot("52:54:00:71:00:01")
	if err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(unboundTTL - time.Second)
	if _, err := s.Boot(ctx, unused.BootID); err != nil {
		t.Fatalf("an unused token within its hour: %v", err)
	}
	clock = clock.Add(2 * time.Second)
	if _, err := s.Boot(ctx, unused.BootID); !errors.Is(err, agentapi.ErrUnknownBoot) {
		t.Fatalf("an unused token past its hour: %v", err)
	}

	reg := registration(t, "SN-71", "", "52:54:00:71:00:02")
	tok, _ := register(t, s, reg)
	for i := range 3 { // an agent that keeps reporting, for three hours
		clock = clock.Add(silentTTL - time.Minute)
		if _, err := s.Boot(ctx, tok.BootID); err != nil {
			t.Fatalf("heartbeat %d: token of a reporting agent: %v", i, err)
		}
		if _, err := s.Heartbeat(ctx, tok.BootID, &agentapi.Heartbeat{Seq: uint64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	clock = clock.Add(silentTTL + time.Second)
	if _, err := s.Boot(ctx, tok.BootID); !errors.Is(err, agentapi.ErrUnknownBoot) {
		t.Fatalf("the token of an agent silent past silentTTL: %v", err)
	}
}
