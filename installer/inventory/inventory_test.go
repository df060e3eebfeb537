package inventory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// registration loads the agent report captured on this kind of machine
// (the agent's own fixture) and gives it a serial, UUID and boot MAC.
func registration(t *testing.T, serial, uuid, mac string) *agentapi.Registration {
	t.Helper()
	raw, err := os.ReadFile("../../services/agentapi/testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	var reg agentapi.Registration
	if err := json.Unmarshal(raw, &reg); err != nil {
		t.Fatal(err)
	}
	reg.BootMAC = mac
	reg.Inventory.System.Serial = serial
	reg.Inventory.System.UUID = uuid
	reg.Inventory.NICs = []agentapi.NIC{{Name: "ens3", MAC: mac, Link: true}}
	if err := reg.Validate(); err != nil {
		t.Fatalf("fixture does not validate: %v", err)
	}
	return &reg
}

func newStore(t *testing.T, racks []config.Rack) (*Store, state.Store) {
	t.Helper()
	st, err := state.Open(memDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return New(st, racks, slog.New(slog.NewTextHandler(io.Discard, nil))), st
}

func register(t *testing.T, s *Store, reg *agentapi.Registration) (agentapi.Token, string) {
	t.Helper()
	tok, err := s.IssueBoot(reg.BootMAC)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := s.Register(context.Background(), tok.BootID, agentapi.Identity(reg), reg)
	if err != nil {
		t.Fatal(err)
	}
	return tok, reply.MachineID
}

func TestRebootedMachineKeepsItsIdentity(t *testing.T) {
	s, st := newStore(t, nil)
	clock := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	reg := registration(t, "LAB-0001", "9b2f3c1e-0000-4000-8000-000000000001", "52:54:00:aa:00:01")
	_, first := register(t, s, reg)
	other := registration(t, "LAB-0002", "9b2f3c1e-0000-4000-8000-000000000002", "52:54:00:aa:00:02")
	_, second := register(t, s, other)
	if first == second {
		t.Fatalf("two machines got one ID %s", first)
	}
	// The same machine boots again once its agent is silent (it was reset):
	// a new token, the same record.
	clock = clock.Add(time.Minute)
	_, again := register(t, s, reg)
	if again != first {
		t.Fatalf("rebooted machine got ID %s, want %s", again, first)
	}
	// Even when it boots from another NIC with a new MAC, the UUID holds.
	moved := registration(t, "LAB-0001", "9B2F3C1E-0000-4000-8000-000000000001", "52:54:00:aa:00:99")
	clock = clock.Add(time.Minute)
	if _, id := register(t, s, moved); id != first {
		t.Fatalf("machine booting from another NIC got ID %s, want %s", id, first)
	}
	machines, err := List(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(machines) != 2 {
		t.Fatalf("%d machines, want 2", len(machines))
	}
	m := machines[0]
	if m.ID != first {
		m = machines[1]
	}
	if m.Boots != 3 || m.Serial != "LAB-0001" || m.BootMAC != "52:54:00:aa:00:99" {
		t.Errorf("machine = %+v", m)
	}
}

func TestJunkIdentitiesFallBackToMACs(t *testing.T) {
	s, _ := newStore(t, nil)
	a := registration(t, "To be filled by O.E.M.", "03000200-0400-0500-0006-000700080009", "52:54:00:bb:00:01")
	b := registration(t, "To be filled by O.E.M.", "03000200-0400-0500-0006-000700080009", "52:54:00:bb:00:02")
	_, ida := register(t, s, a)
	_, idb := register(t, s, b)
	if ida == idb {
		t.Fatal("machines with the same placeholder serial and UUID were merged into one")
	}
}

func TestRacksFromLLDPAndCablingFlags(t *testing.T) {
	plan := []config.Rack{
		{Name: "rack-a", ToR: "rack-a-tor", Ports: []config.RackPort{{Port: "Eth1/1", Serial: "SN-1"}, {Port: "Eth1/2", Serial: "SN-2"}}},
		{Name: "rack-b", ToR: "sw-17"},
	}
	s, st := newStore(t, plan)
	withLLDP := func(reg *agentapi.Registration, sys, port string) *agentapi.Registration {
		reg.Inventory.NICs[0].LLDP = &agentapi.LLDPNeighbor{ChassisID: "02:00:00:00:00:0a", PortID: port, SystemName: sys}
		return reg
	}
	register(t, s, withLLDP(registration(t, "SN-1", "", "52:54:00:cc:00:01"), "rack-a-tor", "Eth1/1")) // as planned
	register(t, s, withLLDP(registration(t, "SN-2", "", "52:54:00:cc:00:02"), "rack-a-tor", "Eth1/5")) // wrong port
	register(t, s, withLLDP(registration(t, "SN-3", "", "52:54:00:cc:00:03"), "sw-17", "Eth1/9"))      // ToR from plan
	register(t, s, withLLDP(registration(t, "SN-4", "", "52:54:00:cc:00:04"), "rack-c-tor", "Eth1/1")) // rack from switch name
	register(t, s, withLLDP(registration(t, "SN-5", "", "52:54:00:cc:00:05"), "rack-a-tor", "Eth1/2")) // squatter on SN-2's port
	chassis := registration(t, "SN-6", "", "52:54:00:cc:00:06")
	chassis.Inventory.System.ChassisLocation = "Row 4 / Rack 12"
	register(t, s, chassis)
	machines, err := List(st)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Machine{}
	for _, m := range machines {
		got[m.Serial] = m
	}
	for serial, want := range map[string]struct{ rack, source string }{
		"SN-1": {"rack-a", "lldp"}, "SN-2": {"rack-a", "lldp"}, "SN-3": {"rack-b", "lldp"},
		"SN-4": {"rack-c", "lldp"}, "SN-5": {"rack-a", "lldp"}, "SN-6": {"row-4-rack-12", "chassis"},
	} {
		if m := got[serial]; m.Rack != want.rack || m.RackSource != want.source {
			t.Errorf("%s: rack %q from %q, want %q from %q", serial, m.Rack, m.RackSource, want.rack, want.source)
		}
	}
	if f := got["SN-1"].Flags; len(f) != 0 {
		t.Errorf("SN-1 is cabled as planned but flagged: %v", f)
	}
	if f := got["SN-2"].Flags; len(f) != 1 || !strings.Contains(f[0], "the rack plan puts this machine on rack-a-tor port Eth1/2 (rack rack-a), but it is seen on rack-a-tor port Eth1/5") {
		t.Errorf("SN-2 flags = %v", f)
	}
	if f := got["SN-5"].Flags; len(f) != 1 || !strings.Contains(f[0], "rack-a-tor port Eth1/2 should hold serial SN-2") {
		t.Errorf("SN-5 flags = %v", f)
	}
	// Machines are listed grouped by rack.
	var racks []string
	for _, m := range machines {
		racks = append(racks, m.Rack)
	}
	if strings.Join(racks, ",") != "rack-a,rack-a,rack-a,rack-b,rack-c,row-4-rack-12" {
		t.Errorf("order by rack = %v", racks)
	}
}

// The agent API handler over the real inventory: a forged token, a token
// replayed by another machine and a replayed heartbeat are all refused.
func TestAgentAPIOverInventory(t *testing.T) {
	s, st := newStore(t, nil)
	srv := httptest.NewServer(http.StripPrefix("", agentapi.NewHandler(s, slog.New(slog.NewTextHandler(io.Discard, nil)))))
	defer srv.Close()
	post := func(path, token string, body any) int {
		raw, _ := json.Marshal(body)
		req, _ := http.NewRequest(http.MethodPost, srv.URL+agentapi.Prefix+path, bytes.NewReader(raw))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	reg := registration(t, "LAB-0100", "", "52:54:00:dd:00:01")
	tok, err := s.IssueBoot(reg.BootMAC)
	if err != nil {
		t.Fatal(err)
	}
	if code := post(agentapi.PathRegister, tok.String(), reg); code != http.StatusOK {
		t.Fatalf("register: %d", code)
	}
	forged := agentapi.Token{BootID: tok.BootID, Secret: strings.Repeat("A", 43)}
	if code := post(agentapi.PathRegister, forged.String(), reg); code != http.StatusUnauthorized && code != http.StatusForbidden {
		t.Errorf("forged token: %d", code)
	}
	intruder := registration(t, "EVIL-1", "", "52:54:00:dd:00:66")
	if code := post(agentapi.PathRegister, tok.String(), intruder); code == http.StatusOK {
		t.Error("a token bound to one machine registered another")
	}
	hb := agentapi.Heartbeat{Seq: 1, State: "waiting"}
	if code := post(agentapi.PathHeartbeat, tok.String(), hb); code != http.StatusOK {
		t.Fatalf("heartbeat: %d", code)
	}
	if code := post(agentapi.PathHeartbeat, tok.String(), hb); code == http.StatusOK {
		t.Error("a replayed heartbeat was accepted")
	}
	machines, err := List(st)
	if err != nil || len(machines) != 1 || machines[0].Serial != "LAB-0100" || machines[0].AgentState != "waiting" {
		t.Fatalf("inventory = %+v, %v", machines, err)
	}
	if _, err := s.Boot(context.Background(), "0123456789abcdef"); !errors.Is(err, agentapi.ErrUnknownBoot) {
		t.Errorf("unknown boot: %v", err)
	}
}

// Asking twice queues one reboot; until the machine's next boot registers
// (TestRebootOrderLastsUntilTheNextBoot) every heartbeat carries that same
// order, so a lost reply does not lose it.
func TestRediscoverQueuesOneOrder(t *testing.T) {
	s, _ := newStore(t, nil)
	reg := registration(t, "LAB-0200", "", "52:54:00:ee:00:01")
	tok, id := register(t, s, reg)
	if err := s.Rediscover("m-nosuch"); !errors.Is(err, ErrNoMachine) {
		t.Errorf("rediscover of an unknown machine: %v", err)
	}
	if err := s.Rediscover(id); err != nil {
		t.Fatal(err)
	}
	if err := s.Rediscover(id); err != nil { // asking twice queues one reboot
		t.Fatal(err)
	}
	reply, err := s.Heartbeat(context.Background(), tok.BootID, &agentapi.Heartbeat{Seq: 1, State: "waiting"})
	if err != nil || len(reply.Orders) != 1 || reply.Orders[0].Kind != agentapi.OrderReboot {
		t.Fatalf("first heartbeat after the order: %+v, %v", reply, err)
	}
	first := reply.Orders[0]
	reply, err = s.Heartbeat(context.Background(), tok.BootID, &agentapi.Heartbeat{Seq: 2, State: "waiting"})
	if err != nil || len(reply.Orders) != 1 || reply.Orders[0] != first {
		t.Fatalf("the second heartbeat: %+v, %v; want the same order %+v again", reply, err, first)
	}
}

// Boot tokens do not pile up: a MAC has one token waiting for its agent,
// an unused one expires after unboundTTL, and a machine's new boot retires
// the token of its earlier boot.
func TestBootTokensDoNotAccumulate(t *testing.T) {
	s, st := newStore(t, nil)
	clock := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	count := func() int {
		n := 0
		st.View(func(tx state.Tx) error {
			return tx.ForEach(bootsBucket, func(string, []byte) error { n++; return nil })
		})
		return n
	}
	reg := registration(t, "LAB-0001", "9b2f3c1e-0000-4000-8000-000000000001", "52:54:00:aa:00:01")
	// A machine that fetched its script three times without booting the
	// agent, then booted for real: one token at a time.
	var fetched []agentapi.Token
	for range 3 {
		tok, err := s.IssueBoot(reg.BootMAC)
		if err != nil {
			t.Fatal(err)
		}
		fetched = append(fetched, tok)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d tokens after three fetches from one MAC, want 1", n)
	}
	ctx := context.Background()
	if _, err := s.Boot(ctx, fetched[0].BootID); !errors.Is(err, agentapi.ErrUnknownBoot) {
		t.Errorf("a replaced token: %v, want it gone", err)
	}
	// Another machine's token waits beside it, and expires unused.
	if _, err := s.IssueBoot("52:54:00:aa:00:02"); err != nil {
		t.Fatal(err)
	}
	first, _ := register(t, s, reg)
	if n := count(); n != 2 {
		t.Fatalf("%d tokens, want 2 within the hour", n)
	}
	clock = clock.Add(unboundTTL + time.Minute)
	second, _ := register(t, s, reg) // reboots: a new token, bound
	if n := count(); n != 1 {
		t.Fatalf("%d tokens after an hour and a reboot, want only the current boot's", n)
	}
	if _, err := s.Boot(ctx, first.BootID); !errors.Is(err, agentapi.ErrUnknownBoot) {
		t.Errorf("the earlier boot's token: %v, want it retired", err)
	}
	if _, err := s.Boot(ctx, second.BootID); err != nil {
		t.Errorf("the current boot's token: %v", err)
	}
	// The current boot's agent registering again keeps its token.
	if _, err := s.Register(ctx, second.BootID, agentapi.Identity(reg), reg); err != nil || count() != 1 {
		t.Errorf("re-registration: %v, %d tokens", err, count())
	}
	// A bound token is not replaced by the next fetch of its MAC (the
	// machine's agent runs until it registers from its next boot).
	if _, err := s.IssueBoot(reg.BootMAC); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Boot(ctx, second.BootID); err != nil {
		t.Errorf("the running agent's token after a fetch from its MAC: %v", err)
	}
}
