package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ARPProber probes on-link addresses with ARP requests (RFC 5227 probes:
// sender address 0.0.0.0, so no host caches anything). A host that drops
// ICMP still answers ARP. It holds one packet socket bound to the
// interface, opened by NewARPProber in the calling thread's namespace.
type ARPProber struct {
	ifi    *net.Interface
	onLink []netip.Prefix

	// fdMu guards fd against Close while a send or read uses it (a
	// closed fd number may be reused by another socket).
	fdMu     sync.RWMutex
	fd       int
	fdClosed bool

	mu      sync.Mutex
	waiting map[netip.Addr][]chan struct{}
	closed  chan struct{}
}

const ethPARP = 0x0806

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// NewARPProber opens the packet socket on iface (root or CAP_NET_RAW). It
// probes addresses inside the IPv4 prefixes configured on iface.
func NewARPProber(iface string) (*ARPProber, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("ARP probes on %s: %w", iface, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("ARP probes on %s: not an Ethernet interface", iface)
	}
	var onLink []netip.Prefix
	if addrs, err := ifi.Addrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				onLink = append(onLink, p.Masked())
			}
		}
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(ethPARP)))
	if err != nil {
		return nil, fmt.Errorf("ARP probes on %s: %w", iface, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(ethPARP), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ARP probes on %s: bind: %w", iface, err)
	}
	// Reads wake up every 200 ms so that Close is noticed.
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	p := &ARPProber{fd: fd, ifi: ifi, onLink: onLink, waiting: map[netip.Addr][]chan struct{}{}, closed: make(chan struct{})}
	go p.read()
	return p, nil
}

// Close stops the prober.
func (p *ARPProber) Close() error {
	select {
	case <-p.closed:
		return nil
	default:
	}
	close(p.closed)
	p.fdMu.Lock()
	defer p.fdMu.Unlock()
	p.fdClosed = true
	return unix.Close(p.fd)
}

// use runs fn with the socket unless it is closed.
func (p *ARPProber) use(fn func(fd int) error) error {
	p.fdMu.RLock()
	defer p.fdMu.RUnlock()
	if p.fdClosed {
		return net.ErrClosed
	}
	return fn(p.fd)
}

// OnLink reports whether ip is on the prober's segment.
func (p *ARPProber) OnLink(ip netip.Addr) bool {
	for _, pfx := range p.onLink {
		if pfx.Contains(ip) {
			return true
		}
	}
	return false
}

func (p *ARPProber) read() {
	buf := make([]byte, 128)
	for {
		select {
		case <-p.closed:
			return
		default:
		}
		var n int
		err := p.use(func(fd int) error {
			var err error
			n, _, err = unix.Recvfrom(fd, buf, 0) // wakes every 200 ms (SO_RCVTIMEO)
			return err
		})
		if err != nil || n < 28 {
			continue
		}
		// ARP over Ethernet/IPv4: any packet whose sender protocol
		// address is an address we probe shows that address in use
		// (a reply, or that host's own probe or announcement).
		if binary.BigEndian.Uint16(buf[0:2]) != 1 || binary.BigEndian.Uint16(buf[2:4]) != 0x0800 || buf[4] != 6 || buf[5] != 4 {
			continue
		}
		if bytes.Equal(buf[8:14], p.ifi.HardwareAddr) {
			continue // our own request
		}
		spa := netip.AddrFrom4([4]byte(buf[14:18]))
		p.mu.Lock()
		for _, ch := range p.waiting[spa] {
			close(ch)
		}
		delete(p.waiting, spa)
		p.mu.Unlock()
	}
}

// InUse implements Prober: it sends ARP probes for ip until one is
// answered or ctx ends.
func (p *ARPProber) InUse(ctx context.Context, ip netip.Addr) bool {
	if !ip.Is4() {
		return false
	}
	ch := make(chan struct{})
	p.mu.Lock()
	p.waiting[ip] = append(p.waiting[ip], ch)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		list := p.waiting[ip]
		for i, c := range list {
			if c == ch {
				p.waiting[ip] = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(p.waiting[ip]) == 0 {
			delete(p.waiting, ip)
		}
		p.mu.Unlock()
	}()
	req := make([]byte, 28)
	binary.BigEndian.PutUint16(req[0:2], 1)      // Ethernet
	binary.BigEndian.PutUint16(req[2:4], 0x0800) // IPv4
	req[4], req[5] = 6, 4
	binary.BigEndian.PutUint16(req[6:8], 1) // request
	copy(req[8:14], p.ifi.HardwareAddr)
	// sender IP 0.0.0.0 (probe), target MAC zero
	t4 := ip.As4()
	copy(req[24:28], t4[:])
	to := &unix.SockaddrLinklayer{Protocol: htons(ethPARP), Ifindex: p.ifi.Index, Halen: 6}
	copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := p.use(func(fd int) error { return unix.Sendto(fd, req, 0, to) }); err != nil {
			return false
		}
		select {
		case <-ch:
			return true
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// ProbeSet probes on-link addresses with ARP and ICMP at once (in use if
// either answers) and other addresses (relayed subnets) with ICMP.
type ProbeSet struct {
	ARP  *ARPProber
	ICMP *ICMPProber
}

// InUse implements Prober.
func (s ProbeSet) InUse(ctx context.Context, ip netip.Addr) bool {
	if s.ARP == nil || !s.ARP.OnLink(ip) {
		return s.ICMP != nil && s.ICMP.InUse(ctx, ip)
	}
	if s.ICMP == nil {
		return s.ARP.InUse(ctx, ip)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := make(chan bool, 2)
	go func() { res <- s.ARP.InUse(ctx, ip) }()
	go func() { res <- s.ICMP.InUse(ctx, ip) }()
	if <-res {
		return true
	}
	return <-res
}

// Close closes both probers.
func (s ProbeSet) Close() error {
	if s.ARP != nil {
		s.ARP.Close()
	}
	if s.ICMP != nil {
		s.ICMP.Close()
	}
	return nil
}
