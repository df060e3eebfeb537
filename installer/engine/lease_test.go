package engine

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/agent"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/services/agentapi"
)

// An agent must report from the address airlock's DHCP server leased to
// its boot MAC: a real udhcpc takes a lease, and a registration with that
// MAC's token from another address on the link is refused; from the
// leased address it is taken.
func TestRegistrationMustComeFromTheLease(t *testing.T) {
	busybox := netns.RequireTool(t, "busybox", "busybox-static")
	e, peer := testEngineNS(t, t.TempDir(), `machines:
  - {name: cp, match: {macs: ["52:54:00:00:0c:01"]}, role: control-plane, hostname: cp-1}
`, nil)
	const mac = "52:54:00:00:0c:01"
	peer.MustIP(t, "link", "set", "eth0", "address", mac)
	select {
	case <-e.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("the engine did not serve within 30 s")
	}
	leased := udhcpc(t, peer, busybox)
	peer.MustAddr(t, "eth0", leased+"/24")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	peer.MustAddr(t, "eth0", "10.78.0.250/24")

	var reg agentapi.Registration
	fixture, err := os.ReadFile("../../services/agentapi/testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(fixture, &reg); err != nil {
		t.Fatal(err)
	}
	reg.BootMAC, reg.Inventory.System.Serial, reg.Inventory.System.UUID = mac, "SN-C1", ""
	reg.Inventory.NICs = []agentapi.NIC{{Name: "eth0", MAC: mac, Link: true}}
	tok, err := e.Inventory().IssueBoot(mac)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := url.Parse("https://10.78.0.1:8443")
	from := func(src string) error {
		// The connection is made inside the namespace (Do holds its
		// thread there); the HTTP client, whose dials run on other
		// threads, is handed that one connection.
		var conn net.Conn
		err := peer.Do(func() (err error) {
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
			conn, err = d.DialContext(ctx, "tcp", base.Host)
			return err
		})
		if err != nil {
			return err
		}
		hc, err := agent.TLSClient(e.CA().CertPEM, 10*time.Second)
		if err != nil {
			return err
		}
		tr := hc.Transport.(agent.HTTPSOnly).Transport
		tr.DialContext = func(context.Context, string, string) (net.Conn, error) { return conn, nil }
		defer tr.CloseIdleConnections()
		c := agent.NewClient(base, tok, hc)
		_, err = c.Register(ctx, &reg)
		return err
	}
	var se *agent.StatusError
	if err := from("10.78.0.250"); !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("registration from an address not leased to %s: %v, want 403", mac, err)
	}
	if err := from(leased); err != nil {
		t.Fatalf("registration from the leased address %s: %v", leased, err)
	}
}

// udhcpc takes a lease with a real busybox udhcpc in peer (a fresh client:
// DISCOVER, then REQUEST) and returns the address it bound.
func udhcpc(t *testing.T, peer *netns.NS, busybox string) string {
	t.Helper()
	leaseFile := filepath.Join(t.TempDir(), "lease")
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > "+leaseFile+"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := peer.Command(ctx, busybox, "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-t", "8", "-T", "1", "-s", script).CombinedOutput(); err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(leaseFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(raw))
}

// A machine discovered with a pool address and then assigned a static one
// (the lab's path: discovery, admission, assignment, the reboot into the
// installer) holds one lease afterwards, in the state store (bbolt) the
// DHCP server writes through: the reserved address. A real udhcpc plays
// the machine; the assignment is recorded in the engine's inventory while
// the engine serves.
func TestAssignedAddressReplacesTheDiscoveryLease(t *testing.T) {
	busybox := netns.RequireTool(t, "busybox", "busybox-static")
	e, peer := testEngineNS(t, t.TempDir(), "", nil)
	const mac = "52:54:00:00:0c:02"
	peer.MustIP(t, "link", "set", "eth0", "address", mac)
	select {
	case <-e.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("the engine did not serve within 30 s")
	}
	if got := udhcpc(t, peer, busybox); got != "10.78.0.100" {
		t.Fatalf("discovery lease %s, want the first pool address 10.78.0.100", got)
	}
	inv := e.Inventory()
	id := report(t, inv, "SN-C2", mac, testDisks...)
	if _, err := inv.Transition(id, inventory.StateAdmitted, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Assign(id, inventory.Assignment{Rule: "cp", Role: "control-plane", Hostname: "cp-1", Index: 1, Address: "10.78.0.50/24"}); err != nil {
		t.Fatal(err)
	}
	hw, _ := net.ParseMAC(mac)
	deadline := time.Now().Add(10 * time.Second)
	for e.admitter.Admit(hw).IP != netip.MustParseAddr("10.78.0.50") {
		if time.Now().After(deadline) {
			t.Fatal("the assigned address was not reserved within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := udhcpc(t, peer, busybox); got != "10.78.0.50" {
		t.Fatalf("after the assignment the machine got %s, want 10.78.0.50", got)
	}
	stored, err := Leases{e.store}.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, le := range stored {
		if le.MAC == mac {
			held = append(held, le.IP.String()+" "+string(le.State))
		}
	}
	if len(held) != 1 || held[0] != "10.78.0.50 bound" {
		t.Errorf("the store: %s holds %v, want only 10.78.0.50 bound", mac, held)
	}
	if ip, ok := e.leaseOf(mac); !ok || ip != netip.MustParseAddr("10.78.0.50") {
		t.Errorf("leaseOf(%s) = %v %v, want 10.78.0.50", mac, ip, ok)
	}
}
