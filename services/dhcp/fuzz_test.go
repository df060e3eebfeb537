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
// ENVIRONMENT.md), relayed variants, and truncations.
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
		h := NewHandler(cfg, mode, nil, fakeProber{}, nil, nil)
		for range 2 { // twice: the second sees the state the first left
			r := h.Handle(context.Background(), Request{Msg: m, Port: port, Peer: netip.MustParseAddrPort("10.50.0.9:68")})
			if r != nil && r.Msg != nil {
				if _, err := dhcpv4.FromBytes(r.Msg.ToBytes()); err != nil {
					t.Fatalf("reply does not parse: %v", err)
				}
			}
		}
	})
}
