package dhcp

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/insomniacslk/dhcp/iana"
	"golang.org/x/sys/unix"

	"airlock.dev/airlock/services/internal/ratelog"
)

// ErrForeignServer is returned by Run in full mode when another DHCP server
// answers on the segment and AllowForeignServer is not set.
var ErrForeignServer = errors.New("another DHCP server answers on this segment")

// Sockets are the server's sockets, opened by Listen (in the right network
// namespace) and passed to New. Run closes them when it returns.
type Sockets struct {
	// Server receives client requests on port 67 and sends replies.
	Server net.PacketConn
	// Client is bound to port 68: it probes for other servers at start and
	// keeps watching for their offers.
	Client net.PacketConn
	// Proxy is port 4011 (PXE boot server) for proxy mode; may be nil.
	Proxy net.PacketConn
	// Prober probes addresses before they are offered; may be nil.
	Prober Prober
	// Link sends unicast replies to on-link clients without ARP; may be
	// nil (such replies then go out on the socket they came in on).
	Link *LinkSender
}

// Close closes every socket.
func (s *Sockets) Close() error {
	var errs []error
	for _, c := range []net.PacketConn{s.Server, s.Client, s.Proxy} {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	if c, ok := s.Prober.(io.Closer); ok {
		errs = append(errs, c.Close())
	}
	if s.Link != nil {
		errs = append(errs, s.Link.Close())
	}
	return errors.Join(errs...)
}

// Listen opens the sockets on the named interface: 67 and 68 bound to the
// interface, 4011 when withProxyPort, and an ICMP prober. It refuses an
// empty interface name: airlock never serves DHCP on an interface it was
// not told to use.
func Listen(iface string, withProxyPort bool) (*Sockets, error) {
	if iface == "" {
		return nil, errors.New("listen for DHCP: no interface named")
	}
	var s Sockets
	var err error
	if s.Server, err = server4.NewIPv4UDPConn(iface, &net.UDPAddr{Port: dhcpv4.ServerPort}); err != nil {
		return nil, fmt.Errorf("listen for DHCP on %s:67: %w", iface, err)
	}
	if s.Client, err = server4.NewIPv4UDPConn(iface, &net.UDPAddr{Port: dhcpv4.ClientPort}); err != nil {
		return nil, errors.Join(fmt.Errorf("listen for DHCP offers on %s:68: %w", iface, err), s.Close())
	}
	if withProxyPort {
		if s.Proxy, err = server4.NewIPv4UDPConn(iface, &net.UDPAddr{Port: ProxyPort}); err != nil {
			return nil, errors.Join(fmt.Errorf("listen for PXE on %s:%d: %w", iface, ProxyPort, err), s.Close())
		}
	}
	// A burst of thousands of clients (a rack powering on) must queue in
	// the kernel, not be dropped: a 4 MiB receive buffer, forced past
	// rmem_max when we may (root).
	for _, c := range []net.PacketConn{s.Server, s.Proxy} {
		if uc, ok := c.(*net.UDPConn); ok {
			setRecvBuffer(uc, 4<<20)
		}
	}
	icmpP, err := NewICMPProber()
	if err != nil {
		return nil, errors.Join(err, s.Close())
	}
	probes := ProbeSet{ICMP: icmpP}
	// ARP as well on the segment itself: hosts that drop ICMP answer it.
	if arpP, err := NewARPProber(iface); err == nil {
		probes.ARP = arpP
	}
	s.Prober = probes
	// Unicast replies to on-link clients as frames to chaddr: they never
	// wait for ARP (see LinkSender). Without it they go out on port 67.
	if l, err := NewLinkSender(iface); err == nil {
		s.Link = l
	}
	return &s, nil
}

// Server runs the DHCP service on its sockets.
type Server struct {
	cfg   Config
	socks *Sockets
	store LeaseStore
	log   *slog.Logger
	// Workers bounds the packets handled at once.
	Workers int
	// Admitter is asked about each client by MAC (reservations, whether
	// it may get anything at all); set it before Run. Nil means a
	// StaticAdmitter of the configuration's Reservations that refuses
	// nobody.
	Admitter Admitter

	ready    chan struct{}
	probeMAC net.HardwareAddr
	handler  atomic.Pointer[Handler]
	dropped  atomic.Uint64
	unsent   atomic.Uint64
	rl       *ratelog.Limiter
}

// New checks cfg and returns a server; it serves nothing until Run.
func New(cfg Config, socks *Sockets, store LeaseStore, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dhcp configuration: %w", err)
	}
	if socks == nil || socks.Server == nil || socks.Client == nil {
		return nil, errors.New("dhcp: server and client sockets are required")
	}
	if store == nil {
		store = NewMemStore()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, socks: socks, store: store, log: log, Workers: 128, ready: make(chan struct{}), rl: ratelog.Default(log)}, nil
}

// Ready is closed once the server has picked its mode and is serving.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Mode is the mode being served (valid after Ready).
func (s *Server) Mode() Mode {
	if h := s.handler.Load(); h != nil {
		return h.mode
	}
	return ""
}

// Handler returns the live handler (valid after Ready).
func (s *Server) Handler() *Handler { return s.handler.Load() }

type packet struct {
	data []byte
	peer netip.AddrPort
	conn net.PacketConn
	port int
}

// Run serves until ctx is cancelled (returns nil) or startup fails.
func (s *Server) Run(ctx context.Context) error {
	defer s.socks.Close()
	mode := s.cfg.Mode
	if mode == ModeFull || mode == ModeAuto {
		foreign, err := s.probeForeign(ctx)
		if err != nil {
			return err
		}
		switch {
		case mode == ModeAuto && foreign.IsValid():
			s.log.Info("dhcp: another DHCP server answers; serving as proxyDHCP", "server", foreign)
			mode = ModeProxy
		case mode == ModeAuto:
			s.log.Info("dhcp: no other DHCP server answered; serving addresses", "interface", s.cfg.Interface)
			mode = ModeFull
		case foreign.IsValid() && !s.cfg.AllowForeignServer:
			return fmt.Errorf("dhcp on %s: %w (%s); use proxy mode, or stop that server, or override explicitly if you are sure",
				s.cfg.Interface, ErrForeignServer, foreign)
		case foreign.IsValid():
			s.log.Error("dhcp: SERVING ADDRESSES BESIDE ANOTHER DHCP SERVER (override given): clients may get conflicting addresses",
				"server", foreign, "interface", s.cfg.Interface)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if mode == ModeProxy && s.socks.Proxy == nil {
		s.log.Warn("dhcp: proxy mode without port 4011; clients that ask the boot server there get no answer")
	}
	leases, err := s.store.Load(ctx)
	if err != nil {
		return fmt.Errorf("dhcp: %w", err)
	}
	h := NewHandler(s.cfg, mode, leases, s.socks.Prober, s.Admitter, s.log)
	if fix := h.takeRepairs(); len(fix) > 0 {
		if err := s.store.Save(ctx, fix); err != nil {
			return fmt.Errorf("dhcp: %w", err)
		}
	}
	s.handler.Store(h)

	bctx, bcancel := context.WithCancel(context.WithoutCancel(ctx))
	b := newBatcher(s.store)
	var bwg sync.WaitGroup
	bwg.Go(func() { b.run(bctx) })
	bwg.Go(func() { s.rl.Run(bctx) })
	bwg.Go(func() { h.rl.Run(bctx) })

	packets := make(chan packet, 4096)
	var wg sync.WaitGroup
	workers := max(s.Workers, 1)
	for range workers {
		wg.Go(func() {
			for p := range packets {
				s.serve(ctx, h, b, p)
			}
		})
	}
	var rwg sync.WaitGroup
	rwg.Go(func() { s.readLoop(s.socks.Server, dhcpv4.ServerPort, packets) })
	if s.socks.Proxy != nil && mode == ModeProxy {
		rwg.Go(func() { s.readLoop(s.socks.Proxy, ProxyPort, packets) })
	}
	rwg.Go(func() { s.watchForeign(mode) })
	s.log.Info("dhcp: serving", "interface", s.cfg.Interface, "mode", mode, "server", s.cfg.ServerIP)
	close(s.ready)

	<-ctx.Done()
	s.socks.Close()
	rwg.Wait()
	close(packets)
	wg.Wait()
	bcancel()
	bwg.Wait()
	return nil
}

func (s *Server) readLoop(c net.PacketConn, port int, out chan<- packet) {
	for {
		buf := make([]byte, 1500)
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("dhcp: read", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		select {
		case out <- packet{data: buf[:n], peer: ua.AddrPort(), conn: c, port: port}:
		default:
			s.dropped.Add(1) // overloaded: the client will retransmit
		}
	}
}

func (s *Server) serve(ctx context.Context, h *Handler, b *batcher, p packet) {
	m, err := dhcpv4.FromBytes(p.data)
	if err != nil {
		s.rl.Log(ctx, slog.LevelDebug, "dhcp: bad packet", p.peer.Addr().String(), "from", p.peer, "err", err)
		return
	}
	if bytes.Equal(m.ClientHWAddr, s.probeMAC) {
		return // our own probe for other servers, queued before we served
	}
	resp := h.Handle(ctx, Request{Msg: m, Port: p.port, Peer: p.peer})
	if resp == nil {
		return
	}
	if len(resp.Save) > 0 {
		if err := b.save(ctx, resp.Save); err != nil {
			s.rl.Log(ctx, slog.LevelError, "dhcp: store lease; not acknowledging", "", "err", err)
			return
		}
	}
	if resp.Msg == nil {
		return
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("dhcp: reply", "type", resp.Msg.MessageType(), "mac", m.ClientHWAddr.String(), "yiaddr", resp.Msg.YourIPAddr, "to", resp.Dest, "req", m.MessageType())
	}
	if err := s.send(p, m, resp); err != nil {
		s.unsent.Add(1)
		s.rl.Log(ctx, slog.LevelWarn, "dhcp: reply not sent", resp.Dest.Addr().String(), "to", resp.Dest, "err", err)
	}
}

// send sends a reply without ever waiting: a reply that cannot go now is
// dropped (the client retransmits), so one unreachable destination cannot
// stop the replies to everyone else. Unicast replies to on-link clients go
// as frames to the client's hardware address (no ARP, see LinkSender);
// broadcasts, replies to relays and to routed clients go out on the socket
// the request came in on.
func (s *Server) send(p packet, m *dhcpv4.DHCPv4, resp *Response) error {
	b := resp.Msg.ToBytes()
	if s.direct(m, resp.Dest) {
		return s.socks.Link.Send(netip.AddrPortFrom(s.cfg.ServerIP, uint16(p.port)), resp.Dest, m.ClientHWAddr, b)
	}
	return sendNoWait(p.conn, b, resp.Dest)
}

// direct reports whether a reply to dest goes to the client's own
// hardware address: unicast, not through a relay, on the segment.
func (s *Server) direct(m *dhcpv4.DHCPv4, dest netip.AddrPort) bool {
	if s.socks.Link == nil || dest == broadcastDest || !dest.Addr().Is4() {
		return false
	}
	if _, relayed := addr4(m.GatewayIPAddr); relayed {
		return false
	}
	return m.HWType == iana.HWTypeEthernet && len(m.ClientHWAddr) == 6 && s.socks.Link.OnLink(dest.Addr())
}

// Unsent counts replies dropped because they could not be sent at once.
func (s *Server) Unsent() uint64 { return s.unsent.Load() }

// probeForeign sends a DISCOVER as a client and returns the first other
// server that offers within ForeignProbe.
func (s *Server) probeForeign(ctx context.Context) (netip.Addr, error) {
	if s.cfg.ForeignProbe <= 0 {
		return netip.Addr{}, nil
	}
	mac := make(net.HardwareAddr, 6)
	_, _ = rand.Read(mac)
	mac[0] = (mac[0] | 0x02) &^ 0x01 // locally administered, unicast
	s.probeMAC = mac
	disc, err := dhcpv4.NewDiscovery(mac,
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("airlock-probe")))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("build probe: %w", err)
	}
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ServerPort}
	deadline := time.Now().Add(s.cfg.ForeignProbe)
	buf := make([]byte, 1500)
	nextSend := time.Now()
	start := nextSend
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if !time.Now().Before(nextSend) {
			if _, err := s.socks.Client.WriteTo(disc.ToBytes(), bcast); err != nil {
				return netip.Addr{}, fmt.Errorf("probe for other DHCP servers on %s: %w", s.cfg.Interface, err)
			}
			nextSend = time.Now().Add(time.Second)
		}
		_ = s.socks.Client.SetReadDeadline(minTime(deadline, nextSend))
		n, _, err := s.socks.Client.ReadFrom(buf)
		if err != nil {
			continue
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply || m.TransactionID != disc.TransactionID {
			continue
		}
		if sid, ok := addr4(m.ServerIdentifier()); ok && sid != s.cfg.ServerIP {
			s.log.Info("dhcp: another DHCP server offered", "server", sid, "after", time.Since(start).Round(time.Millisecond))
			return sid, nil
		}
	}
	_ = s.socks.Client.SetReadDeadline(time.Time{})
	return netip.Addr{}, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// watchForeign logs other servers' offers seen while serving.
func (s *Server) watchForeign(mode Mode) {
	_ = s.socks.Client.SetReadDeadline(time.Time{})
	seen := map[netip.Addr]time.Time{}
	buf := make([]byte, 1500)
	for {
		n, _, err := s.socks.Client.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		t := m.MessageType()
		if t != dhcpv4.MessageTypeOffer && t != dhcpv4.MessageTypeAck {
			continue
		}
		sid, ok := addr4(m.ServerIdentifier())
		if !ok || sid == s.cfg.ServerIP {
			continue
		}
		if last, ok := seen[sid]; ok && time.Since(last) < 10*time.Minute {
			continue
		}
		seen[sid] = time.Now()
		if mode == ModeFull {
			s.log.Warn("dhcp: another DHCP server is answering on this segment", "server", sid, "interface", s.cfg.Interface)
		} else {
			s.log.Info("dhcp: DHCP server seen on the segment", "server", sid)
		}
	}
}

// Dropped counts packets dropped because every worker was busy.
func (s *Server) Dropped() uint64 { return s.dropped.Load() }

func setRecvBuffer(c *net.UDPConn, n int) {
	if rc, err := c.SyscallConn(); err == nil {
		var serr error
		_ = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
		})
		if serr == nil {
			return
		}
	}
	_ = c.SetReadBuffer(n)
}
