package engine

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/inventory"
)

// An installed machine that keeps coming back to the network instead of
// phoning home from its disk: each script fetch over HTTP is a local-boot
// answer, counted; the third flags the machine (inventory flag) and fails
// its boot step naming the boot loop. A phone-home would have reset the
// count: after one, the machine is booted and unflagged.
func TestBootLoopIsFlagged(t *testing.T) {
	dir := t.TempDir()
	e, peer := testEngineNS(t, dir, `machines:
  - {name: cp, match: {serials: [SN-1]}, role: control-plane, hostname: cp-1, installDisk: {policy: largest}}
admission: {policy: any}
`, nil)
	inv := e.Inventory()
	// Every fetch a boot of its own (they come milliseconds apart here;
	// TestLocalBootsOfOneFirmwarePass covers the window).
	inv.SetSameBootWindow(0)
	mac := "52:54:00:00:0d:01"
	id := report(t, inv, "SN-1", mac, testDisks...)
	if _, err := inv.Transition(id, inventory.StateAdmitted, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Assign(id, inventory.Assignment{Rule: "cp", Role: "control-plane", Hostname: "cp-1", Index: 1}); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{inventory.StateInstalling, inventory.StateInstalled} {
		if _, err := inv.Transition(id, to, "test"); err != nil {
			t.Fatal(err)
		}
	}
	peer.MustAddr(t, "eth0", "10.78.0.2/24")
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := peer.Do(func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.boot(ctx, id, nil) }()
	for i := 1; i <= inventory.BootLoopAfter; i++ {
		select {
		case err := <-done:
			t.Fatalf("the boot step ended after %d local boots: %v", i-1, err)
		default:
		}
		if script := get(t, hc, "http://10.78.0.1:18080/ipxe/boot.ipxe?mac="+mac); !strings.Contains(script, "local boot") {
			t.Fatalf("visit %d: not a local boot:\n%s", i, script)
		}
		m, err := inv.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if m.LocalBoots != i {
			t.Fatalf("after %d visits the count is %d", i, m.LocalBoots)
		}
		if flagged := strings.Contains(strings.Join(m.Flags, "\n"), "boot loop"); flagged != (i >= inventory.BootLoopAfter) {
			t.Fatalf("after %d visits flags %q", i, m.Flags)
		}
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "boot loop") || !strings.Contains(err.Error(), id) {
			t.Fatalf("boot step: %v, want a failure naming the boot loop of %s", err, id)
		}
	case <-ctx.Done():
		t.Fatal("the boot step did not fail on the boot loop")
	}

	// Had the installed system phoned home, the count starts again.
	if _, err := inv.Transition(id, inventory.StateBooted, "the installed system phoned home"); err != nil {
		t.Fatal(err)
	}
	if m, _ := inv.Get(id); m.LocalBoots != 0 || len(m.Flags) != 0 {
		t.Fatalf("after a phone-home: %d local boots, flags %q", m.LocalBoots, m.Flags)
	}
}
