package dhcp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// ICMPProber is a Prober that sends one ICMP echo request and waits for the
// reply. It holds one raw socket, opened by NewICMPProber in the network
// namespace of the calling thread, shared by all probes. On-link, the
// kernel's ARP resolution happens on the way, so a host that answers
// neither ARP nor echo counts as free.
type ICMPProber struct {
	conn *icmp.PacketConn
	id   int

	mu      sync.Mutex
	seq     uint16
	waiting map[uint16]waiter
	closed  chan struct{}
}

type waiter struct {
	ip netip.Addr
	ch chan struct{}
}

// NewICMPProber opens the raw ICMP socket (root or CAP_NET_RAW) and starts
// its reader. Close releases it.
func NewICMPProber() (*ICMPProber, error) {
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("open ICMP socket for address probes: %w", err)
	}
	p := &ICMPProber{conn: c, id: os.Getpid() & 0xffff, waiting: map[uint16]waiter{}, closed: make(chan struct{})}
	go p.read()
	return p, nil
}

// Close stops the prober.
func (p *ICMPProber) Close() error {
	select {
	case <-p.closed:
		return nil
	default:
	}
	close(p.closed)
	return p.conn.Close()
}

func (p *ICMPProber) read() {
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			select {
			case <-p.closed:
				return
			default:
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		msg, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || msg.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		echo, ok := msg.Body.(*icmp.Echo)
		if !ok || echo.ID != p.id {
			continue
		}
		src, ok := from.(*net.IPAddr)
		if !ok {
			continue
		}
		a, _ := netip.AddrFromSlice(src.IP.To4())
		p.mu.Lock()
		w, ok := p.waiting[uint16(echo.Seq)]
		if ok && w.ip == a {
			delete(p.waiting, uint16(echo.Seq))
			close(w.ch)
		}
		p.mu.Unlock()
	}
}

// InUse implements Prober: true if ip answers an echo before ctx ends.
func (p *ICMPProber) InUse(ctx context.Context, ip netip.Addr) bool {
	ch := make(chan struct{})
	p.mu.Lock()
	p.seq++
	seq := p.seq
	p.waiting[seq] = waiter{ip: ip, ch: ch}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.waiting, seq)
		p.mu.Unlock()
	}()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: int(seq), Data: []byte("airlock-probe")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return false
	}
	// Two tries: the first may be spent on ARP resolution.
	deadline, _ := ctx.Deadline()
	for try := range 2 {
		if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: ip.AsSlice()}); err != nil {
			return false
		}
		wait := time.Until(deadline) / time.Duration(2-try)
		if deadline.IsZero() {
			wait = 250 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ch:
			t.Stop()
			return true
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
	return false
}
