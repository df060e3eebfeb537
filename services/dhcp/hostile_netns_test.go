package dhcp

import (
	"context"
	"crypto/rand"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

	"airlock.dev/airlock/e2e/netns"
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

func startAttack(t *testing.T, ns *netns.NS, dst *net.UDPAddr, rate int, next func(i int) *dhcpv4.DHCPv4) *attacker {
	t.Helper()
	var conn net.PacketConn
	if err := ns.Do(func() error {
		var err error
		conn, err = net.ListenPacket("udp4", "0.0.0.0:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if uc, ok := conn.(*net.UDPConn); ok {
		rc, _ := uc.SyscallConn()
		_ = rc.Control(func(fd uintptr) { _ = setBroadcast(int(fd)) })
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
	env, took := timedUdhcpc(t, good)
	t.Logf("during the flood (%d INFORMs sent): client got %s in %v", a.sent.Load(), env["ip"], took.Round(time.Millisecond))
	if took > 4*time.Second {
		t.Errorf("during the flood the client waited %v for a lease", took)
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

func setBroadcast(fd int) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
}
