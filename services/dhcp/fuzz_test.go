package dhcp

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// FuzzHandle feeds raw packets to the parser and to full- and proxy-mode
// handlers: nothing may panic, and any reply must serialise. The seeds are
// the packets each kind of firmware sends (vendor classes from
// ENVIRONMENT.md), relayed variants, truncations, and what hostile hosts
// send (INFORMs naming addresses nobody has, REQUESTs for addresses never
// offered, oversized relay information, non-Ethernet hardware types).
// Selector bits: 1 proxy mode, 2 port 4011, 4 strangers refused, 8 tight
// limits with a silent network (reclaiming), 16 unicast sender.
func FuzzHandle(f *testing.F) {
	mac := mustMAC("52:54:00:12:34:56")
	for _, k := range clientKinds {
		for _, typ := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeDecline, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform} {
			p := makePacket(k, typ, mac,
				dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 50, 0, 120))),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 50, 0, 1))))
			f.Add(p.ToBytes(), uint8(0))
			f.Add(p.ToBytes()[:len(p.ToBytes())/2], uint8(1))
		}
		rai := dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte("eth7")))
		f.Add(makePacket(k, dhcpv4.MessageTypeDiscover, mac, dhcpv4.WithRelay(net.IPv4(10, 60, 0, 1)), dhcpv4.WithOption(rai)).ToBytes(), uint8(2))
	}
	hostile := []*dhcpv4.DHCPv4{
		makePacket(clientKinds[6], dhcpv4.MessageTypeInform, mustMAC("02:12:34:56:78:9a"), dhcpv4.WithClientIP(net.IPv4(10, 50, 0, 231))),
		makePacket(clientKinds[6], dhcpv4.MessageTypeRequest, mustMAC("02:12:34:56:78:9b"), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 50, 0, 150)))),
		makePacket(clientKinds[6], dhcpv4.MessageTypeRequest, mustMAC("02:12:34:56:78:9c"), dhcpv4.WithClientIP(net.IPv4(10, 50, 0, 151))),
		makePacket(clientKinds[0], dhcpv4.MessageTypeDiscover, mac, dhcpv4.WithRelay(net.IPv4(10, 60, 0, 1)),
			dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), make([]byte, 250))))),
	}
	ib := makePacket(clientKinds[6], dhcpv4.MessageTypeInform, mac, dhcpv4.WithClientIP(net.IPv4(10, 50, 0, 232)))
	ib.HWType = 32 // InfiniBand: no Ethernet address to send a frame to
	hostile = append(hostile, ib)
	for _, p := range hostile {
		for _, sel := range []uint8{0, 4, 8, 16, 24} {
			f.Add(p.ToBytes(), sel)
		}
	}
	f.Add([]byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, sel uint8) {
		m, err := dhcpv4.FromBytes(data)
		if err != nil {
			return
		}
		mode := ModeFull
		if sel&1 == 1 {
			mode = ModeProxy
		}
		port := 67
		if sel&2 == 2 {
			port = ProxyPort
		}
		cfg := testConfig()
		var adm Admitter
		if sel&4 == 4 {
			adm = NewStaticAdmitter(cfg.Reservations, true)
		}
		if sel&8 == 8 {
			cfg.Limits = Limits{NewPerSecond: 1, NewBurst: 1, SourcePerSecond: 1, SourceBurst: 1, StrangerShare: 1}
		}
		peer := netip.MustParseAddrPort("0.0.0.0:68")
		if sel&16 == 16 {
			peer = netip.MustParseAddrPort("10.50.0.9:68")
		}
		h := NewHandler(cfg, mode, nil, fakeProber{}, adm, nil)
		for range 2 { // twice: the second sees the state the first left
			r := h.Handle(context.Background(), Request{Msg: m, Port: port, Peer: peer})
			if r != nil && r.Msg != nil {
				if _, err := dhcpv4.FromBytes(r.Msg.ToBytes()); err != nil {
					t.Fatalf("reply does not parse: %v", err)
				}
			}
		}
	})
}
