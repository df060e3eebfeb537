package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
	"airlock.dev/airlock/services/dhcp"
	"airlock.dev/airlock/services/httpboot"
)

func TestLeasesSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	expires := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	batch := []dhcp.Lease{
		{IP: netip.MustParseAddr("10.40.0.100"), MAC: "52:54:00:00:00:01", State: dhcp.StateBound, Expires: expires},
		{IP: netip.MustParseAddr("10.40.0.101"), MAC: "52:54:00:00:00:02", State: dhcp.StateOffered, Expires: expires},
	}
	if err := (Leases{st}).Save(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	// The same address again replaces its lease.
	batch[1].State = dhcp.StateBound
	if err := (Leases{st}).Save(context.Background(), batch[1:]); err != nil {
		t.Fatal(err)
	}
	if err := (Leases{st}).Save(context.Background(), []dhcp.Lease{{MAC: "x"}}); err == nil {
		t.Error("a lease without an address was saved")
	}
	st.Close()
	st, err = state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := (Leases{st}).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].State != dhcp.StateBound || got[0].MAC != "52:54:00:00:00:01" || !got[0].Expires.Equal(expires) {
		t.Fatalf("leases after restart = %+v", got)
	}
}

var tokenRE = regexp.MustCompile(`airlock\.token=(\S+)`)

// A machine's whole discovery conversation through the real HTTP boot
// service: it fetches its iPXE script, which carries a fresh per-boot
// token, and its agent registers with that token on the agent API mounted
// beside the scripts; the machine lands in the inventory. A token from the
// script of one boot does not survive being presented by another machine.
func TestDiscoveryConversation(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	inv := inventory.New(st, nil, log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	cfg := httpboot.Defaults()
	cfg.BaseURL = base
	files := fstest.MapFS{"agent/vmlinuz": {Data: []byte("kernel")}, "agent/initramfs.cpio.zst": {Data: []byte("initrd")}}
	decider := &BootDecider{Inventory: inv, Image: DiscoveryImage{Kernel: "agent/vmlinuz", Initrd: "agent/initramfs.cpio.zst", Cmdline: "console=ttyS0"}, API: "https://10.0.0.1:8443"}
	srv, err := httpboot.New(cfg, ln, decider, nil, files, log)
	if err != nil {
		t.Fatal(err)
	}
	srv.Mount(agentapi.Prefix, agentapi.NewHandler(inv, log))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	fetchToken := func(mac string) string {
		resp, err := http.Get(base + "/ipxe/boot.ipxe?mac=" + mac)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		script, _ := io.ReadAll(resp.Body)
		m := tokenRE.FindSubmatch(script)
		if m == nil || !strings.Contains(string(script), " airlock.api=https://10.0.0.1:8443 ") {
			t.Fatalf("script has no token or no airlock.api:\n%s", script)
		}
		return string(m[1])
	}
	raw, err := os.ReadFile("../../services/agentapi/testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	register := func(token, mac, serial string) int {
		var reg agentapi.Registration
		if err := json.Unmarshal(raw, &reg); err != nil {
			t.Fatal(err)
		}
		reg.BootMAC, reg.Inventory.System.Serial = mac, serial
		reg.Inventory.NICs = []agentapi.NIC{{Name: "ens3", MAC: mac, Link: true}}
		body, _ := json.Marshal(reg)
		req, _ := http.NewRequest(http.MethodPost, base+agentapi.Prefix+agentapi.PathRegister, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	first := fetchToken("52:54:00:00:00:01")
	second := fetchToken("52:54:00:00:00:01")
	if second == first {
		t.Fatal("two boots got the same token")
	}
	// A MAC has one token waiting for its agent: the later fetch's.
	if code := register(first, "52:54:00:00:00:01", "LAB-1"); code != http.StatusUnauthorized {
		t.Fatalf("register with a replaced token: %d, want 401", code)
	}
	// A token fetched for one MAC registers no other.
	if code := register(fetchToken("52:54:00:00:00:02"), "52:54:00:00:00:09", "EVIL"); code != http.StatusForbidden {
		t.Fatalf("register with another MAC's token: %d, want 403", code)
	}
	if code := register(second, "52:54:00:00:00:01", "LAB-1"); code != http.StatusOK {
		t.Fatalf("register with the script's token: %d", code)
	}
	if code := register(second, "52:54:00:00:00:09", "EVIL"); code == http.StatusOK {
		t.Fatal("another machine reused the token")
	}
	machines, err := inv.List()
	if err != nil || len(machines) != 1 || machines[0].Serial != "LAB-1" {
		t.Fatalf("inventory = %+v, %v", machines, err)
	}
	resp, err := http.Get(base + "/files/agent/vmlinuz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "kernel" {
		t.Errorf("kernel = %q", body)
	}
}
