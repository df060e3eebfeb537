package dhcp

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"airlock.dev/airlock/installer/lab/netns"
)

// These tests put an attacker written in Go (raw DHCP packets from a UDP
// socket inside its own namespace) beside a legitimate client (busybox
// udhcpc) on one segment, and check that the legitimate client is served
// during and after each attack and that the server's memory stays bounded.

// attacker is a host on the segment that sends packets built by next, at
// about rate packets per second, until stop is called.
type attacker struct {
	sent   atomic.Uint64
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// With dst nil the attacker has no address: it broadcasts from 0.0.0.0:68
// on eth0 as a client without a lease does, so that its packets carry no
// source to tell apart.
func startAttack(t *testing.T, ns *netns.NS, dst *net.UDPAddr, rate int, next func(i int) *dhcpv4.DHCPv4) *attacker {
	t.Helper()
	var conn net.PacketConn
	if err := ns.Do(func() error {
		var err error
		if dst == nil {
			conn, err = server4.NewIPv4UDPConn("eth0", &net.UDPAddr{Port: dhcpv4.ClientPort})
			return err
		}
		conn, err = net.ListenPacket("udp4", "0.0.0.0:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if dst == nil {
		dst = &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ServerPort}
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &attacker{cancel: cancel}
	const tick = 10 * time.Millisecond
	perTick := max(rate/int(time.Second/tick), 1)
	a.wg.Go(func() {
		defer conn.Close()
		tk := time.NewTicker(tick)
		defer tk.Stop()
		i := 0
		for {
			for range perTick {
				if _, err := conn.WriteTo(next(i).ToBytes(), dst); err == nil {
					a.sent.Add(1)
				}
				i++
			}
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	})
	t.Cleanup(a.stop)
	return a
}

func (a *attacker) stop() {
	a.cancel()
	a.wg.Wait()
}

func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	_, _ = rand.Read(mac)
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// pxeArgs make udhcpc ask as BIOS PXE firmware does.
var pxeArgs = []string{"-V", "PXEClient:Arch:00000:UNDI:002001", "-O", "bootfile"}

// timedUdhcpc runs udhcpc and returns its lease and how long it took.
func timedUdhcpc(t *testing.T, ns *netns.NS, args ...string) (map[string]string, time.Duration) {
	t.Helper()
	start := time.Now()
	env := udhcpc(t, ns, args...)
	return env, time.Since(start)
}

// TestNetnsInformFloodUnreachable: a host floods INFORMs whose ciaddr has no
// host behind it. Each reply is unicast to ciaddr; the kernel queues it
// while ARP fails (about 3 s), charged to the sending socket. Before the
// replies went out on a path of their own, they filled the shared socket's
// send buffer and every worker blocked in the send: nobody got an address
// for tens of seconds.
func TestNetnsInformFloodUnreachable(t *testing.T) {
	l := newLAN(t)
	srvNS := l.host("", "10.70.0.1/24")
	cfg := netnsConfig(ModeFull)
	cfg.ForeignProbe = 0
	srv, err := startServer(t, srvNS, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.logw.mu.Lock()
	srv.logw.on = false // thousands of lines otherwise
	srv.logw.mu.Unlock()
	before := heapInuse()
	// A client that holds a lease and will renew it during the flood:
	// its REQUEST is unicast from its address, and so is the ACK.
	renewer := startUdhcpcDaemon(t, l.host("52:54:00:dd:00:04", ""))
	renewer.waitEvent(t, "bound", 10*time.Second)

	bad := l.host("", "10.70.0.9/24")
	mac := randomMAC()
	a := startAttack(t, bad, &net.UDPAddr{IP: net.IPv4(10, 70, 0, 1), Port: 67}, 3000, func(i int) *dhcpv4.DHCPv4 {
		// ciaddr 10.70.0.160-.249: on the segment, nobody there.
		m, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeInform), dhcpv4.WithHwAddr(mac),
			dhcpv4.WithClientIP(net.IPv4(10, 70, 0, byte(160+i%90))))
		m.OpCode = dhcpv4.OpcodeBootRequest
		return m
	})
	// Let the flood fill whatever it can fill.
	deadline := time.Now().Add(10 * time.Second)
	for a.sent.Load() < 3000 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	good := l.host("52:54:00:dd:00:01", "")
	env, took := timedUdhcpc(t, good, pxeArgs...)
	t.Logf("during the flood (%d INFORMs sent): PXE client got %s and %s in %v", a.sent.Load(), env["ip"], env["boot_file"], took.Round(time.Millisecond))
	if env["boot_file"] != "undionly.kpxe" {
		t.Errorf("PXE client during the flood got boot file %q", env["boot_file"])
	}
	if took > 4*time.Second {
		t.Errorf("during the flood the client waited %v for a lease", took)
	}
	// The renewal: SIGUSR1 makes udhcpc renew at once, by unicast.
	if err := renewer.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	renewer.waitEvent(t, "renew", 3*time.Second)
	if out := renewer.output(); !strings.Contains(out, "sending renew to server 10.70.0.1") {
		t.Errorf("udhcpc did not renew by unicast:\n%s", out)
	}
	// A host with an address asks for its options (INFORM) during the
	// flood: the ACK comes, unicast, as a frame to its MAC.
	informer := l.host("52:54:00:dd:00:03", "10.70.0.50/24")
	var conn *net.UDPConn
	if err := informer.Do(func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: dhcpv4.ClientPort})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	inf := makePacket(clientKinds[6], dhcpv4.MessageTypeInform, mustMAC("52:54:00:dd:00:03"), dhcpv4.WithClientIP(net.IPv4(10, 70, 0, 50)))
	inf.TransactionID = dhcpv4.TransactionID{9, 9, 9, 9}
	acks := exchange(t, conn, inf, &net.UDPAddr{IP: net.IPv4(10, 70, 0, 1), Port: 67}, 2*time.Second)
	if len(acks) != 1 || acks[0].MessageType() != dhcpv4.MessageTypeAck || acks[0].DomainName() != "rack.lab" {
		t.Errorf("INFORM from 10.70.0.50 during the flood: %d replies, want one ACK with the domain", len(acks))
	}
	a.stop()
	env2, took2 := timedUdhcpc(t, l.host("52:54:00:dd:00:02", ""))
	t.Logf("after the flood: client got %s in %v", env2["ip"], took2.Round(time.Millisecond))
	if took2 > 4*time.Second {
		t.Errorf("after the flood the client waited %v for a lease", took2)
	}
	after := heapInuse()
	t.Logf("heap in use %d KiB -> %d KiB; sent %d INFORMs", before>>10, after>>10, a.sent.Load())
	if after > before+32<<20 {
		t.Errorf("heap grew by %d MiB during the flood", (after-before)>>20)
	}
}

// TestNetnsStrangerFlood: a host makes up MACs and sends DISCOVERs and
// REQUESTs for every pool address (the quickest way to drain a pool:
// before the limits each REQUEST for a free address was ACKed and bound
// for the lease time). A machine admitted while the server runs (known to
// the Admitter, no fixed address) gets an address during and after the
// flood, and so does an unknown machine after it (a silent stranger's
// address is reclaimed); strangers never hold more than their share; the
// lease table and the heap stay bounded.
func TestNetnsStrangerFlood(t *testing.T) {
	l := newLAN(t)
	srvNS := l.host("", "10.70.0.1/24")
	cfg := netnsConfig(ModeFull)
	cfg.ForeignProbe = 0
	adm := NewStaticAdmitter(nil, false)
	store := NewMemStore()
	srv := startServerWith(t, srvNS, cfg, store, func(s *Server) { s.Admitter = adm })
	srv.logw.mu.Lock()
	srv.logw.on = false
	srv.logw.mu.Unlock()
	before := heapInuse()

	bad := l.host("", "")
	a := startAttack(t, bad, nil, 2000, func(i int) *dhcpv4.DHCPv4 {
		typ := dhcpv4.MessageTypeDiscover
		mods := []dhcpv4.Modifier{dhcpv4.WithMessageType(typ), dhcpv4.WithHwAddr(randomMAC())}
		if i%5 != 0 { // mostly REQUESTs: they bind for the lease time
			mods[0] = dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest)
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 70, 0, byte(100+i%51)))))
		}
		m, _ := dhcpv4.New(mods...)
		m.OpCode = dhcpv4.OpcodeBootRequest
		return m
	})
	deadline := time.Now().Add(10 * time.Second)
	for a.sent.Load() < 4000 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	// Admitted at run time, no restart.
	adm.Reserve(Reservation{MAC: mustMAC("52:54:00:ee:00:01")})
	adm.Reserve(Reservation{MAC: mustMAC("52:54:00:ee:00:02")})
	env, took := timedUdhcpc(t, l.host("52:54:00:ee:00:01", ""), pxeArgs...)
	t.Logf("during the flood (%d packets sent): known PXE client got %s and %s in %v", a.sent.Load(), env["ip"], env["boot_file"], took.Round(time.Millisecond))
	if env["boot_file"] != "undionly.kpxe" {
		t.Errorf("PXE client during the flood got boot file %q", env["boot_file"])
	}
	a.stop()
	env2, took2 := timedUdhcpc(t, l.host("52:54:00:ee:00:02", ""))
	t.Logf("after the flood: known machine got %s in %v", env2["ip"], took2.Round(time.Millisecond))
	// A machine nobody knows yet (discovery) gets an address too: the
	// strangers' share is full, but no host answers for the flood's
	// addresses, so one is reclaimed.
	h := srv.Handler()
	heldBefore := 0
	for _, le := range h.Leases() {
		if le.active(time.Now()) && le.State == StateBound && !adm.Admit(parseMAC(le.MAC)).Known {
			heldBefore++
		}
	}
	// Offers the flood holds expire within OfferHold: udhcpc may need
	// that long, so it gets more tries than the others.
	env3, took3 := timedUdhcpc(t, l.host("52:54:00:ee:00:03", ""), append([]string{"-t", "30"}, pxeArgs...)...)
	t.Logf("after the flood (strangers' bound leases: %d): unknown PXE client got %s in %v", heldBefore, env3["ip"], took3.Round(time.Millisecond))
	if took3 > cfg.OfferHold+3*time.Second {
		t.Errorf("the unknown client waited %v (offers hold %v)", took3, cfg.OfferHold)
	}

	strangers, total := 0, 0
	for _, le := range h.Leases() {
		if !le.active(time.Now()) || le.MAC == "" {
			continue
		}
		total++
		if !adm.Admit(parseMAC(le.MAC)).Known {
			strangers++
		}
	}
	share := rangeSize(&cfg.Subnet) * cfg.Limits.StrangerShare / 100
	st := h.Stats()
	t.Logf("leases held: %d (%d by strangers, share %d of %d); offers %d, acks %d, refused %d, reclaimed %d",
		total, strangers, share, rangeSize(&cfg.Subnet), st.Offers, st.Acks, st.Refused, st.Reclaimed)
	if strangers > share {
		t.Errorf("strangers hold %d addresses, more than their share %d", strangers, share)
	}
	if st.Refused == 0 {
		t.Error("nothing was refused: the flood did not reach the limits")
	}
	// The store: one record per address at most, written once per
	// address given (ACK) or reclaimed, not per packet.
	stored, _ := store.Load(context.Background())
	t.Logf("store: %d records, %d writes for %d packets", len(stored), store.Batches(), a.sent.Load())
	if len(stored) > rangeSize(&cfg.Subnet) {
		t.Errorf("the store holds %d records for a pool of %d", len(stored), rangeSize(&cfg.Subnet))
	}
	if w := uint64(store.Batches()); w > st.Acks+st.Reclaimed {
		t.Errorf("%d store writes for %d ACKs and %d reclaimed addresses", w, st.Acks, st.Reclaimed)
	}
	after := heapInuse()
	t.Logf("heap in use %d KiB -> %d KiB", before>>10, after>>10)
	if after > before+32<<20 {
		t.Errorf("heap grew by %d MiB during the flood", (after-before)>>20)
	}
}

// udhcpcDaemon is busybox udhcpc running in the background; its script
// appends "event ip" to a file for every event.
type udhcpcDaemon struct {
	cmd    *exec.Cmd
	events string
	mu     sync.Mutex
	out    bytes.Buffer
}

func (d *udhcpcDaemon) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.Write(p)
}

func (d *udhcpcDaemon) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

func startUdhcpcDaemon(t *testing.T, ns *netns.NS) *udhcpcDaemon {
	t.Helper()
	netns.RequireTool(t, "busybox", "busybox-static")
	dir := t.TempDir()
	d := &udhcpcDaemon{events: filepath.Join(dir, "events")}
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$1 $ip\" >> "+d.events+"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cmd = ns.Command(ctx, "busybox", "udhcpc", "-f", "-i", "eth0", "-t", "8", "-T", "1", "-s", script)
	d.cmd.Stdout, d.cmd.Stderr = d, d
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = d.cmd.Wait()
		if t.Failed() {
			t.Logf("udhcpc output:\n%s", d.output())
		}
	})
	return d
}

// waitEvent waits until the script saw event, or fails the test.
func (d *udhcpcDaemon) waitEvent(t *testing.T, event string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(d.events)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, event+" ") {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(d.events)
	t.Fatalf("udhcpc: no %q event within %v; events:\n%s\noutput:\n%s", event, within, b, d.output())
}
