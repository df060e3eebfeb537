package dhcp

import (
	"bytes"
	"net/netip"
	"testing"

	"golang.org/x/net/ipv4"
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
