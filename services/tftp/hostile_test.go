package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
)

// hog is a host that starts transfers and never acknowledges a block: each
// of its sockets sends a read request, reads the first reply, and then
// stays silent; it starts a new one whenever a transfer is refused or
// given up, so that it always asks for more slots than it may hold.
type hog struct {
	started, refused atomic.Int64
	cancel           context.CancelFunc
	wg               sync.WaitGroup
}

func startHog(t *testing.T, ns *netns.NS, server *net.UDPAddr, sockets int) *hog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h := &hog{cancel: cancel}
	rrq := []byte("\x00\x01big.efi\x00octet\x00blksize\x001468\x00")
	for range sockets {
		var conn net.PacketConn
		if err := ns.Do(func() error {
			var err error
			conn, err = net.ListenPacket("udp4", "0.0.0.0:0")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		h.wg.Go(func() {
			defer conn.Close()
			buf := make([]byte, 2048)
			for ctx.Err() == nil {
				if _, err := conn.WriteTo(rrq, server); err != nil {
					return
				}
				// Read replies without answering: the first one tells
				// whether we hold a slot; the retransmissions that follow
				// show the server still trying; an ERROR or silence means
				// the slot is gone, so ask again.
				first := true
				for ctx.Err() == nil {
					_ = conn.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
					n, _, err := conn.ReadFrom(buf)
					if err != nil {
						break
					}
					op := binary.BigEndian.Uint16(buf[:2])
					if op == 5 { // ERROR
						if first {
							h.refused.Add(1)
						}
						break
					}
					if first && n > 0 {
						h.started.Add(1)
					}
					first = false
				}
			}
		})
	}
	t.Cleanup(h.stop)
	return h
}

func (h *hog) stop() {
	h.cancel()
	h.wg.Wait()
}

// TestNetnsSlotHog: one host holds as many unacknowledged transfers as it
// can. It gets MaxPerClient of them; another client fetches its file with
// tftp-hpa meanwhile and after; the stalled transfers are reclaimed within
// about (Retries+1) x Timeout of the hog falling silent; goroutines and
// transfers stay bounded.
func TestNetnsSlotHog(t *testing.T) {
	netns.RequireTool(t, "tftp", "tftp-hpa")
	srvNS := netns.NewTest(t, "alts")
	if err := srvNS.AddBridge("br0"); err != nil {
		t.Fatal(err)
	}
	srvNS.MustAddr(t, "br0", "10.71.0.1/24")
	host := func(port, cidr string) *netns.NS {
		n := netns.NewTest(t, "altc")
		netns.MustVeth(t, srvNS, port, n, "eth0")
		if err := srvNS.SetMaster(port, "br0"); err != nil {
			t.Fatal(err)
		}
		n.MustAddr(t, "eth0", cidr)
		return n
	}
	good := host("p1", "10.71.0.2/24")
	bad := host("p2", "10.71.0.3/24")

	big := randomBytes(t, 4<<20)
	kpxe := randomBytes(t, 200*1024+5)
	cfg := Defaults()
	cfg.MaxTransfers = 8 // small, so that a hog without a per-client limit takes them all
	srv := serveInNS(t, srvNS, "10.71.0.1:69", fstest.MapFS{"big.efi": {Data: big}, "undionly.kpxe": {Data: kpxe}}, cfg)
	goroutines := runtime.NumGoroutine()

	h := startHog(t, bad, &net.UDPAddr{IP: net.IPv4(10, 71, 0, 1), Port: 69}, 24)
	deadline := time.Now().Add(10 * time.Second)
	for h.refused.Load() < 20 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if a := srv.Active(); a > cfg.MaxPerClient {
		t.Errorf("the hog holds %d transfers, want <= %d", a, cfg.MaxPerClient)
	}
	if h.started.Load() == 0 || h.refused.Load() == 0 {
		t.Fatalf("the hog started %d transfers, %d refused: it did not reach the limit", h.started.Load(), h.refused.Load())
	}
	fetch := func(what string) {
		t.Helper()
		local := filepath.Join(t.TempDir(), "undionly.kpxe")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		out, err := good.Command(ctx, "tftp", "-m", "binary", "10.71.0.1", "-c", "get", "undionly.kpxe", local).CombinedOutput()
		got, _ := os.ReadFile(local)
		if err != nil || !bytes.Equal(got, kpxe) {
			t.Fatalf("%s: tftp get: %v %s (%d bytes of %d)", what, err, out, len(got), len(kpxe))
		}
		t.Logf("%s: fetched %d bytes in %v", what, len(got), time.Since(start).Round(time.Millisecond))
	}
	fetch("during the hog")
	t.Logf("hog: %d transfers started, %d refused; %d goroutines (were %d)", h.started.Load(), h.refused.Load(), runtime.NumGoroutine(), goroutines)
	if g := runtime.NumGoroutine(); g > goroutines+24+3*cfg.MaxTransfers+16 {
		t.Errorf("%d goroutines during the hog (were %d)", g, goroutines)
	}

	h.stop()
	silent := time.Now()
	reclaim := time.Duration(cfg.Retries+1)*cfg.Timeout + 2*time.Second
	for srv.Active() > 0 && time.Since(silent) < 30*time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(silent)
	t.Logf("stalled transfers reclaimed %v after the hog fell silent", took.Round(time.Millisecond))
	if srv.Active() > 0 || took > reclaim {
		t.Errorf("%d transfers still held %v after the hog fell silent (want 0 within %v)", srv.Active(), took, reclaim)
	}
	fetch("after the hog")
}
