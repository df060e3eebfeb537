package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/lab/testkit"
	"airlock.dev/airlock/services/agentapi"
	"airlock.dev/airlock/services/agentapi/lldp"
)

// TestAgentInNamespaces runs the agent's network path for real: a "switch"
// namespace holding busybox udhcpd, an LLDP sender and airlock's agent
// handler over HTTP, and a "node" namespace where the agent gets its
// address with nclient4, hears LLDP on a raw socket and registers.
func TestAgentInNamespaces(t *testing.T) {
	busybox := netns.RequireTool(t, "busybox", "busybox-static")
	sw := netns.NewTest(t, "al")
	node := netns.NewTest(t, "al")
	netns.MustVeth(t, sw, "swp7", node, "eth0")
	sw.MustAddr(t, "swp7", "10.99.0.1/24")

	dir := t.TempDir()
	conf := fmt.Sprintf("interface swp7\nstart 10.99.0.100\nend 10.99.0.150\noption subnet 255.255.255.0\noption router 10.99.0.1\nlease_file %s\npidfile %s\n",
		filepath.Join(dir, "leases"), filepath.Join(dir, "pid"))
	if err := os.WriteFile(filepath.Join(dir, "udhcpd.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "leases"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	udhcpd := sw.Command(ctx, busybox, "udhcpd", "-f", filepath.Join(dir, "udhcpd.conf"))
	udhcpdLog := &testkit.Buffer{}
	udhcpd.Stdout, udhcpd.Stderr = udhcpdLog, udhcpdLog
	if err := udhcpd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = udhcpd.Process.Kill(); _ = udhcpd.Wait() })

	// airlock's side: the agent handler on a real socket in the switch namespace.
	logs := &testkit.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	backend := agentapi.NewMemBackend(1)
	tok, _ := agentapi.NewToken(nil)
	backend.Issue(tok)
	var ln net.Listener
	if err := sw.Do(func() (err error) { ln, err = net.Listen("tcp", "10.99.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(agentapi.Prefix, agentapi.NewHandler(backend, log))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	// The top-of-rack switch stays silent until the node has registered
	// (as a real one, sending every 30 s, often does), then sends every
	// 200 ms: the agent must report the neighbour in a late inventory
	// update.
	frame, err := lldp.Encode(lldp.Frame{Source: net.HardwareAddr{2, 0, 0, 0, 0xa, 1}, ChassisID: "02:00:00:00:0a:01",
		PortID: "Eth1/7", SystemName: "rack-a-tor", PortDescription: "Ethernet1/7"})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ctx.Err() == nil && len(backend.Machines()) == 0 {
			time.Sleep(50 * time.Millisecond)
		}
		for ctx.Err() == nil {
			_ = sw.Do(func() error { return lldp.Send("swp7", frame) })
			time.Sleep(200 * time.Millisecond)
		}
	}()

	// The node: DHCP inside its namespace.
	var lease Lease
	start := time.Now()
	if err := node.Do(func() (err error) {
		lease, err = DHCP(ctx, log, []string{"eth0"}, 20*time.Second)
		return err
	}); err != nil {
		t.Fatalf("DHCP: %v\nudhcpd: %s", err, udhcpdLog)
	}
	t.Logf("DHCP lease %s in %s", lease.Addr.String(), time.Since(start).Round(time.Millisecond))
	if !strings.HasPrefix(lease.Addr.String(), "10.99.0.1") || !lease.Router.Equal(net.IPv4(10, 99, 0, 1)) {
		t.Fatalf("lease = %+v", lease)
	}
	out, err := exec.Command("ip", "-n", node.Name, "-4", "addr", "show", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), lease.Addr.String()) {
		t.Fatalf("address not configured: %v\n%s", err, out)
	}

	// Registration over HTTP from the node namespace; inventory from the
	// host fixture with the node's NIC name and MAC.
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = node.Do(func() error { c, err = dialer.DialContext(ctx, network, addr); return err })
			return c, err
		},
	}}
	base, _ := url.Parse("http://" + ln.Addr().String())
	root := overlayNIC(t, lease.MAC)
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, Options{
			Root: root, Client: NewClient(base, tok, hc), BootMAC: lease.MAC, LLDPWait: 300 * time.Millisecond, LLDPLate: 10 * time.Second, Log: log,
			ListenLLDP: func(ctx context.Context, ifname string, d time.Duration) (f lldp.Frame, err error) {
				err = node.Do(func() error { f, err = lldp.Listen(ctx, ifname, d); return err })
				return f, err
			},
		})
	}()
	// Wait for registration and two heartbeats.
	deadline := time.After(20 * time.Second)
	for {
		ms := backend.Machines()
		if len(ms) == 1 && ms[0].Heartbeats >= 2 && ms[0].Inventory.NICs[0].LLDP != nil {
			m := ms[0]
			if m.Registration.Inventory.NICs[0].LLDP != nil {
				t.Fatal("LLDP neighbour registered before the switch spoke")
			}
			n := m.Inventory.NICs[0]
			if n.LLDP == nil || n.LLDP.SystemName != "rack-a-tor" || n.LLDP.PortID != "Eth1/7" {
				t.Fatalf("LLDP neighbour = %+v", n.LLDP)
			}
			if m.Registration.BootMAC != lease.MAC.String() {
				t.Fatalf("boot MAC %s, want %s", m.Registration.BootMAC, lease.MAC)
			}
			break
		}
		select {
		case <-deadline:
			t.Fatalf("no registration with heartbeats; machines %+v\nlogs:\n%s", ms, logs)
		case <-backend.Changed():
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Logf("registered and heartbeating %s after start", time.Since(start).Round(time.Millisecond))
	stopRun()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v after cancel", err)
	}
}

// overlayNIC is the host fixture with its NIC renamed to the test node's.
func overlayNIC(t *testing.T, mac net.HardwareAddr) overlay {
	t.Helper()
	dir := t.TempDir()
	nic := filepath.Join(dir, "sys/class/net/eth0")
	if err := os.MkdirAll(filepath.Join(nic, "device"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"address": mac.String(), "type": "1", "carrier": "1", "speed": "10000"} {
		if err := os.WriteFile(filepath.Join(nic, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../drivers/veth", filepath.Join(nic, "device/driver")); err != nil {
		t.Fatal(err)
	}
	return overlay{os.DirFS(dir), os.DirFS("testdata/host")}
}
