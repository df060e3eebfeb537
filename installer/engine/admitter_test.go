package engine

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/dhcp"
)

// The DHCP server's view follows the inventory as it changes: a machine
// that registers is known, its recorded static address is reserved for it
// at the next packet, a denied machine is a stranger again; the answer
// file's MACs are known before they are ever seen.
func TestAdmitterFollowsTheInventory(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	inv := inventory.New(st, nil, slog.New(slog.DiscardHandler))
	a := config.Defaults()
	a.Network.Subnet = netip.MustParsePrefix("10.78.0.0/24")
	a.Machines = []config.Rule{{Name: "cp", Match: config.Match{MACs: []config.MAC{"52:54:00:00:0b:09"}}, Role: config.RoleControlPlane, Hostname: "cp-1"}}
	adm := newMachineAdmitter(&a, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- adm.follow(ctx, inv) }()
	mac := func(s string) net.HardwareAddr { hw, _ := net.ParseMAC(s); return hw }
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("not within 10 s: %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if !adm.Admit(mac("52:54:00:00:0b:09")).Known {
		t.Error("a MAC the answer file names is not known")
	}
	if adm.Admit(mac("52:54:00:00:0b:01")).Known {
		t.Fatal("a stranger is known")
	}
	id := report(t, inv, "SN-B1", "52:54:00:00:0b:01", testDisks...)
	eventually("the registered machine known", func() bool { return adm.Admit(mac("52:54:00:00:0b:01")).Known })
	if _, err := inv.Transition(id, inventory.StateAdmitted, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Assign(id, inventory.Assignment{Rule: "cp", Role: "control-plane", Hostname: "cp-1", Index: 1, Address: "10.78.0.50/24"}); err != nil {
		t.Fatal(err)
	}
	eventually("its static address reserved", func() bool {
		got := adm.Admit(mac("52:54:00:00:0b:01"))
		owner, ok := adm.ReservedFor(netip.MustParseAddr("10.78.0.50"))
		return got.IP == netip.MustParseAddr("10.78.0.50") && got.Hostname == "cp-1" && ok && owner.String() == "52:54:00:00:0b:01"
	})
	other := report(t, inv, "SN-B2", "52:54:00:00:0b:02", testDisks...)
	if _, err := inv.Transition(other, inventory.StateDenied, "test"); err != nil {
		t.Fatal(err)
	}
	eventually("the denied machine a stranger", func() bool {
		return !adm.Admit(mac("52:54:00:00:0b:02")).Known
	})
	var _ dhcp.Admitter = adm
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
