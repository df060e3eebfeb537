package dhcp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"airlock.dev/airlock/installer/lab/netns"
)

// TestUDP4Packet: the frames LinkSender sends carry a valid IPv4 header
// and UDP checksum (a receiver drops either if wrong; the netns INFORM test
// shows a real kernel accepting them).
func TestUDP4Packet(t *testing.T) {
	src := netip.MustParseAddrPort("10.70.0.1:67")
	dst := netip.MustParseAddrPort("10.70.0.50:68")
	for _, payload := range [][]byte{[]byte("odd length!"), bytes.Repeat([]byte{0xff}, 300), {}} {
		b := udp4Packet(src, dst, payload)
		h, err := ipv4.ParseHeader(b)
		if err != nil {
			t.Fatal(err)
		}
		if h.Version != 4 || h.Len != 20 || h.TotalLen != len(b) || h.Protocol != 17 || h.TTL != 64 ||
			!h.Src.Equal(src.Addr().AsSlice()) || !h.Dst.Equal(dst.Addr().AsSlice()) {
			t.Fatalf("header %+v", h)
		}
		if c := checksum(b[:20], 0); c != 0 {
			t.Fatalf("IP header does not sum to 0xffff: %#x", c)
		}
		u := b[20:]
		s, d := src.Addr().As4(), dst.Addr().As4()
		var sum uint32
		for i := 0; i < 4; i += 2 {
			sum += (uint32(s[i])<<8 | uint32(s[i+1])) + (uint32(d[i])<<8 | uint32(d[i+1]))
		}
		sum += 17 + uint32(len(u))
		if c := checksum(u, sum); c != 0 {
			t.Fatalf("UDP checksum wrong (residue %#x)", c)
		}
		if !bytes.Equal(u[8:], payload) || int(u[0])<<8|int(u[1]) != 67 || int(u[2])<<8|int(u[3]) != 68 {
			t.Fatalf("UDP header %x", u[:8])
		}
	}
}

// TestNetnsSendNoWaitDrops: replies that go out on a UDP socket (relays,
// routed clients, or every unicast when there is no LinkSender) to an
// address nobody answers ARP for sit in the neighbour queue charged to the
// socket. Once it is full, sendNoWait says so at once instead of waiting
// for the seconds ARP takes to fail.
func TestNetnsSendNoWaitDrops(t *testing.T) {
	a := netns.NewTest(t, "alsa")
	b := netns.NewTest(t, "alsb")
	netns.MustVeth(t, a, "eth0", b, "eth0")
	a.MustAddr(t, "eth0", "10.72.0.1/24")
	var conn *net.UDPConn
	if err := a.Do(func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 72, 0, 1), Port: 67})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte{1}, 548)
	start := time.Now()
	full := 0
	for i := range 2000 {
		err := sendNoWait(conn, payload, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 72, 0, byte(100 + i%50)}), 68))
		switch {
		case errors.Is(err, ErrSendQueueFull):
			full++
		case err != nil:
			t.Fatalf("send %d: %v", i, err)
		}
	}
	took := time.Since(start)
	t.Logf("2000 sends to 50 silent addresses: %d dropped, %v", full, took.Round(time.Millisecond))
	if full == 0 {
		t.Fatal("no send reported a full queue: the test did not fill the socket")
	}
	if took > time.Second {
		t.Fatalf("sends took %v: they waited", took)
	}
}
