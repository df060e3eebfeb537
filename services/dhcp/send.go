package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrSendQueueFull is returned when a reply is dropped because its socket
// cannot take it now (EAGAIN): replies are never waited for.
var ErrSendQueueFull = errors.New("send queue full; reply dropped")

// LinkSender sends unicast replies to on-link clients as Ethernet frames
// addressed to the client's hardware address (chaddr), the way RFC 2131
// 4.1 allows for a client that cannot answer ARP yet. It never resolves
// the address with ARP, so a reply to an address with no host behind it
// (an INFORM or a renewal with a made-up ciaddr) leaves at once instead of
// waiting seconds in the kernel's neighbour queue, charged to the socket
// every other reply goes out on. It holds one packet socket that receives
// nothing (protocol 0), opened by NewLinkSender in the calling thread's
// network namespace.
type LinkSender struct {
	ifi    *net.Interface
	onLink []netip.Prefix

	// mu guards fd against Close while a Send is in flight (a closed fd
	// number may be reused by another socket).
	mu     sync.RWMutex
	fd     int
	closed bool
}

// NewLinkSender opens the packet socket on iface (root or CAP_NET_RAW).
func NewLinkSender(iface string) (*LinkSender, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("link-layer replies on %s: %w", iface, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("link-layer replies on %s: not an Ethernet interface", iface)
	}
	var onLink []netip.Prefix
	if addrs, err := ifi.Addrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				onLink = append(onLink, p.Masked())
			}
		}
	}
	// Protocol 0: the socket sends only; no packet is copied to it.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("link-layer replies on %s: %w", iface, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("link-layer replies on %s: bind: %w", iface, err)
	}
	return &LinkSender{fd: fd, ifi: ifi, onLink: onLink}, nil
}

// Close closes the socket; Send fails afterwards. It may be called more
// than once.
func (l *LinkSender) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return unix.Close(l.fd)
}

// OnLink reports whether ip is on the sender's segment.
func (l *LinkSender) OnLink(ip netip.Addr) bool {
	for _, p := range l.onLink {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Send sends payload in one UDP datagram from src to dst, in a frame
// addressed to mac. It does not wait: a full queue is ErrSendQueueFull.
func (l *LinkSender) Send(src, dst netip.AddrPort, mac net.HardwareAddr, payload []byte) error {
	if len(mac) != 6 || !src.Addr().Is4() || !dst.Addr().Is4() {
		return errors.New("link-layer reply: need IPv4 addresses and an Ethernet address")
	}
	pkt := udp4Packet(src, dst, payload)
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: l.ifi.Index, Halen: 6}
	copy(to.Addr[:], mac)
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return net.ErrClosed
	}
	err := unix.Sendto(l.fd, pkt, unix.MSG_DONTWAIT, to)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS) {
		return ErrSendQueueFull
	}
	return err
}

// udp4Packet builds an IPv4 header, a UDP header and the payload, with
// both checksums.
func udp4Packet(src, dst netip.AddrPort, payload []byte) []byte {
	const ipLen, udpLen = 20, 8
	b := make([]byte, ipLen+udpLen+len(payload))
	s, d := src.Addr().As4(), dst.Addr().As4()
	b[0] = 0x45 // version 4, 5 words
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8] = 64 // TTL
	b[9] = unix.IPPROTO_UDP
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:], checksum(b[:ipLen], 0))
	u := b[ipLen:]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(udpLen+len(payload)))
	copy(u[udpLen:], payload)
	// Pseudo-header: source, destination, protocol, UDP length.
	var sum uint32
	for i := 0; i < 4; i += 2 {
		sum += uint32(s[i])<<8 | uint32(s[i+1])
		sum += uint32(d[i])<<8 | uint32(d[i+1])
	}
	sum += unix.IPPROTO_UDP + uint32(len(u))
	c := checksum(u, sum)
	if c == 0 {
		c = 0xffff // 0 means "no checksum" in UDP over IPv4
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return b
}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// sendNoWait writes b to to on c without waiting for room in the socket's
// send buffer: a reply that cannot go now is dropped (ErrSendQueueFull),
// never queued behind, so one unreachable destination cannot hold up the
// workers that send every other reply.
func sendNoWait(c net.PacketConn, b []byte, to netip.AddrPort) error {
	uc, ok := c.(*net.UDPConn)
	if !ok {
		_, err := c.WriteTo(b, net.UDPAddrFromAddrPort(to))
		return err
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	sa := &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, unix.MSG_DONTWAIT, sa)
		return true // never wait for the socket to become writable
	}); err != nil {
		return err
	}
	if errors.Is(serr, syscall.EAGAIN) || errors.Is(serr, syscall.ENOBUFS) {
		return ErrSendQueueFull
	}
	return serr
}
