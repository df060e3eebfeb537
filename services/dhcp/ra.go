package dhcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// Debian's iPXE (2019) waits ~13 s for an IPv6 router advertisement before
// it boots, on a network without IPv6 routers. Its autoconfiguration ends
// at the first router advertisement that answers its solicitation; one
// with the M and O flags clear ends it at once, with no DHCPv6. So on a
// segment airlock owns (full mode), airlock answers router solicitations
// with an advertisement that carries router lifetime 0 (not a default
// router), no prefixes and no flags: it configures nothing on any host.

const (
	icmpRouterSolicitation  = 133
	icmpRouterAdvertisement = 134
)

// raMessage is the advertisement: cur hop limit 0 (unspecified), flags 0,
// router lifetime 0, reachable and retrans timers 0, no options.
func raMessage() []byte {
	b := make([]byte, 16)
	b[0] = icmpRouterAdvertisement
	// b[1] code 0; b[2:4] checksum, filled by the kernel for ICMPv6.
	// b[4] cur hop limit 0, b[5] flags 0, b[6:8] router lifetime 0,
	// b[8:12] reachable time 0, b[12:16] retrans timer 0.
	return b
}

// RASocket is the ICMPv6 socket that answers router solicitations, with
// the index of its interface (looked up where the socket was opened).
type RASocket struct {
	conn    *icmp.PacketConn
	ifindex int
}

// Close closes the socket.
func (r *RASocket) Close() error { return r.conn.Close() }

// ListenRA opens the ICMPv6 socket that answers router solicitations on
// iface (in the calling thread's network namespace).
func ListenRA(iface string) (*RASocket, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("router advertisements on %s: %w", iface, err)
	}
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return nil, fmt.Errorf("router advertisements on %s: %w", iface, err)
	}
	p := c.IPv6PacketConn()
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterSolicitation)
	errs := []error{
		p.SetICMPFilter(&f),
		p.JoinGroup(ifi, &net.IPAddr{IP: net.ParseIP("ff02::2")}),
		p.SetMulticastInterface(ifi),
		p.SetMulticastHopLimit(255), // RFC 4861: hop limit 255 or it is ignored
		p.SetHopLimit(255),
		p.SetControlMessage(ipv6.FlagInterface|ipv6.FlagHopLimit, true),
	}
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, fmt.Errorf("router advertisements on %s: %w", iface, err)
	}
	return &RASocket{conn: c, ifindex: ifi.Index}, nil
}

// raResponder answers router solicitations until the socket is closed.
func raResponder(ctx context.Context, r *RASocket, log *slog.Logger) {
	p := r.conn.IPv6PacketConn()
	ifindex := r.ifindex
	all := &net.IPAddr{IP: net.ParseIP("ff02::1")}
	msg := raMessage()
	// One unsolicited advertisement at start, then answers only.
	_, _ = p.WriteTo(msg, &ipv6.ControlMessage{HopLimit: 255, IfIndex: ifindex}, all)
	buf := make([]byte, 1500)
	var last time.Time
	for ctx.Err() == nil {
		n, cm, _, err := p.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if n < 8 || buf[0] != icmpRouterSolicitation || buf[1] != 0 || cm == nil || cm.IfIndex != ifindex || cm.HopLimit != 255 {
			continue
		}
		// Many machines power on at once: one advertisement to all nodes
		// answers every solicitation in the same 50 ms.
		if time.Since(last) < 50*time.Millisecond {
			continue
		}
		last = time.Now()
		if _, err := p.WriteTo(msg, &ipv6.ControlMessage{HopLimit: 255, IfIndex: ifindex}, all); err != nil {
			log.Debug("dhcp: router advertisement", "err", err)
		}
	}
}

// parseRA reads a router advertisement's lifetime and flags (for tests).
func parseRA(b []byte) (lifetime uint16, flags byte, ok bool) {
	if len(b) < 16 || b[0] != icmpRouterAdvertisement {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(b[6:8]), b[5], true
}
