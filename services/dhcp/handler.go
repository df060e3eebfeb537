package dhcp

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"airlock.dev/airlock/services/internal/ratelog"
)

// Prober tells whether an address is already in use on the network (it
// answers ARP or ICMP echo). It is the handler's only I/O, behind an
// interface so that tests can answer from a table.
type Prober interface {
	InUse(ctx context.Context, ip netip.Addr) bool
}

// ProxyPort is the PXE boot server (BINL) port used beside proxyDHCP.
const ProxyPort = 4011

// Request is a received packet with where it came from.
type Request struct {
	Msg *dhcpv4.DHCPv4
	// Port is the local port it arrived on: 67, or ProxyPort.
	Port int
	Peer netip.AddrPort
}

// Response is the handler's answer.
type Response struct {
	Msg *dhcpv4.DHCPv4
	// Dest is where to send it; broadcast is 255.255.255.255:68.
	Dest netip.AddrPort
	// Save lists leases to persist before Msg is sent.
	Save []Lease
}

// Handler decides the reply to each request. Apart from the Prober it does
// no I/O; it keeps the lease table in memory.
type Handler struct {
	cfg   Config
	mode  Mode // full or proxy, never auto
	probe Prober
	log   *slog.Logger
	// rl bounds the lines logged per packet: any host can send packets.
	rl  *ratelog.Limiter
	now func() time.Time

	adm Admitter

	offers, acks, naks, refused, reclaimed atomic.Uint64

	mu     sync.Mutex
	byIP   map[netip.Addr]*Lease
	byMAC  map[string]*Lease
	cursor map[netip.Prefix]netip.Addr
	// newBucket and sourceBuckets limit new addresses for strangers;
	// reclaimBucket limits the probes for reclaiming.
	newBucket     bucket
	sourceBuckets map[string]*bucket
	reclaimBucket bucket
	// repairs are loaded records NewHandler changed (see takeRepairs).
	repairs []Lease
}

// NewHandler returns a handler for cfg in mode (ModeFull or ModeProxy) with
// the leases loaded from the store. probe may be nil (no probing); adm nil
// means a StaticAdmitter of cfg.Reservations that refuses nobody.
func NewHandler(cfg Config, mode Mode, leases []Lease, probe Prober, adm Admitter, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Boot.TFTPServer == (netip.Addr{}) {
		cfg.Boot.TFTPServer = cfg.ServerIP
	}
	if adm == nil {
		adm = NewStaticAdmitter(cfg.Reservations, false)
	}
	h := &Handler{
		cfg: cfg, mode: mode, probe: probe, log: log, rl: ratelog.Default(log), now: time.Now, adm: adm,
		byIP:          map[netip.Addr]*Lease{},
		byMAC:         map[string]*Lease{},
		cursor:        map[netip.Prefix]netip.Addr{},
		sourceBuckets: map[string]*bucket{},
	}
	var extra []*Lease
	for _, l := range leases {
		l := l
		if !l.IP.IsValid() {
			continue
		}
		l.stored = l.Expires
		h.byIP[l.IP] = &l
		if l.MAC != "" && (l.State == StateBound || l.State == StateReleased) {
			old := h.byMAC[l.MAC]
			switch {
			case old == nil:
				h.byMAC[l.MAC] = &l
			case outranks(&l, old):
				h.byMAC[l.MAC] = &l
				extra = append(extra, old)
			default:
				extra = append(extra, &l)
			}
		}
	}
	// A store written before a MAC was held to one lease may hold two
	// for it: the one kept is the MAC's, the others are freed, and Run
	// stores that before it serves.
	now := h.now()
	for _, l := range extra {
		free := &Lease{IP: l.IP, State: StateReleased, Expires: now}
		h.byIP[l.IP] = free
		h.repairs = append(h.repairs, *free)
		log.Warn("dhcp: a MAC held a second lease in the store; freeing it", "mac", l.MAC, "ip", l.IP, "state", l.State, "kept", h.byMAC[l.MAC].IP)
	}
	return h
}

// outranks reports whether lease a of a MAC is kept over its lease b: a
// bound lease over a released one, then the later expiry.
func outranks(a, b *Lease) bool {
	if (a.State == StateBound) != (b.State == StateBound) {
		return a.State == StateBound
	}
	return b.Expires.Before(a.Expires)
}

// takeRepairs returns, once, the records NewHandler changed in the loaded
// leases (a MAC's second lease freed), for the server to store.
func (h *Handler) takeRepairs() []Lease {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.repairs
	h.repairs = nil
	return r
}

// Stats counts the replies sent, the requests refused (by the Admitter or
// by Config.Limits) and the strangers' addresses reclaimed.
type Stats struct{ Offers, Acks, Naks, Refused, Reclaimed uint64 }

// Stats returns the reply counters.
func (h *Handler) Stats() Stats {
	return Stats{Offers: h.offers.Load(), Acks: h.acks.Load(), Naks: h.naks.Load(), Refused: h.refused.Load(), Reclaimed: h.reclaimed.Load()}
}

// Mode returns the mode the handler serves (full or proxy).
func (h *Handler) Mode() Mode { return h.mode }

// Leases returns a copy of the lease table.
func (h *Handler) Leases() []Lease {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Lease, 0, len(h.byIP))
	for _, l := range h.byIP {
		out = append(out, *l)
	}
	return out
}

var (
	broadcastDest = netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), dhcpv4.ClientPort)
	zeroIP        = net.IPv4zero.To4()
)

// Handle returns the reply to req, or nil when there is nothing to send.
func (h *Handler) Handle(ctx context.Context, req Request) *Response {
	m := req.Msg
	if m == nil || m.OpCode != dhcpv4.OpcodeBootRequest || len(m.ClientHWAddr) != 6 {
		return nil
	}
	client := Classify(m)
	typ := m.MessageType()
	var adm Admission
	if typ != dhcpv4.MessageTypeDecline && typ != dhcpv4.MessageTypeRelease {
		adm = h.adm.Admit(m.ClientHWAddr)
		if adm.Refuse {
			h.refuse(ctx, m, "not admitted")
			return nil
		}
	}
	if h.mode == ModeProxy {
		return h.handleProxy(req, client)
	}
	if req.Port == ProxyPort {
		return nil
	}
	switch typ {
	case dhcpv4.MessageTypeDiscover:
		return h.discover(ctx, req, client, adm)
	case dhcpv4.MessageTypeRequest:
		return h.request(ctx, req, client, adm)
	case dhcpv4.MessageTypeDecline:
		h.decline(m)
		return h.saveOnly(m)
	case dhcpv4.MessageTypeRelease:
		h.release(m)
		return h.saveOnly(m)
	case dhcpv4.MessageTypeInform:
		return h.inform(req, client)
	}
	return nil
}

// subnetOf picks the subnet a request belongs to: the relayed subnet
// holding giaddr, else the local one.
func (h *Handler) subnetOf(m *dhcpv4.DHCPv4) *Subnet {
	if gi, ok := addr4(m.GatewayIPAddr); ok {
		for i := range h.cfg.Relayed {
			if h.cfg.Relayed[i].Prefix.Contains(gi) {
				return &h.cfg.Relayed[i]
			}
		}
		if h.cfg.Subnet.Prefix.IsValid() && h.cfg.Subnet.Prefix.Contains(gi) {
			return &h.cfg.Subnet
		}
		return nil
	}
	if h.cfg.Subnet.Prefix.IsValid() {
		return &h.cfg.Subnet
	}
	return nil
}

func addr4(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok || a.IsUnspecified() {
		return netip.Addr{}, false
	}
	return a, true
}

// refuse counts and logs (rate-limited) a request given nothing.
func (h *Handler) refuse(ctx context.Context, m *dhcpv4.DHCPv4, why string) {
	h.refused.Add(1)
	mac := m.ClientHWAddr.String()
	h.rl.Log(ctx, slog.LevelInfo, "dhcp: request refused", mac, "mac", mac, "type", m.MessageType().String(), "reason", why)
}

func (h *Handler) discover(ctx context.Context, req Request, client Client, adm Admission) *Response {
	m := req.Msg
	sub := h.subnetOf(m)
	if sub == nil {
		h.rl.Log(ctx, slog.LevelDebug, "dhcp: no subnet for request", m.GatewayIPAddr.String(), "mac", m.ClientHWAddr.String(), "giaddr", m.GatewayIPAddr.String())
		return nil
	}
	requested, _ := addr4(m.RequestedIPAddress())
	ip, save, ok := h.allocate(ctx, req, sub, requested, adm)
	if !ok {
		return nil
	}
	return h.respond(req, client, dhcpv4.MessageTypeOffer, ip, sub, save, hostnameFor(adm, ip))
}

// hostnameFor is the hostname sent with ip: the reservation's.
func hostnameFor(adm Admission, ip netip.Addr) string {
	if adm.IP.IsValid() && adm.IP == ip {
		return adm.Hostname
	}
	return ""
}

// LeaseOf returns the address bound to mac by a lease that still runs
// (not merely offered), so that a service can check a client speaks from
// the address it was given.
func (h *Handler) LeaseOf(mac string) (netip.Addr, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.byMAC[strings.ToLower(mac)]
	if l == nil || l.State != StateBound || !l.active(h.now()) || h.byIP[l.IP] != l {
		return netip.Addr{}, false
	}
	return l.IP, true
}

// holdsLocked reports whether mac holds an active lease or offer in sub:
// giving it that address again is not a new address.
func (h *Handler) holdsLocked(mac string, sub *Subnet, now time.Time) bool {
	l := h.byMAC[mac]
	return l != nil && l.MAC == mac && sub.Prefix.Contains(l.IP) && l.active(now) && h.byIP[l.IP] == l
}

// maxProbeTries bounds how many candidates one DISCOVER may probe.
const maxProbeTries = 8

// allocate picks an address for the client, holds it as offered, and
// probes it unless it is known to be the client's own. A stranger's new
// address is subject to Config.Limits. When strangers hold their share or
// the pool is full, one stranger's address that no host answers for is
// reclaimed (see reclaim); save then holds its record.
func (h *Handler) allocate(ctx context.Context, req Request, sub *Subnet, requested netip.Addr, adm Admission) (ip netip.Addr, save []Lease, ok bool) {
	m := req.Msg
	mac := m.ClientHWAddr.String()
	stranger := !adm.Known && !adm.IP.IsValid()
	admitted, reclaimed := false, false
	for range maxProbeTries {
		now := h.now()
		h.mu.Lock()
		if l := h.byMAC[mac]; l != nil && l.probing {
			// A retransmission while this client's address is being
			// probed: the first request will answer.
			h.mu.Unlock()
			return netip.Addr{}, nil, false
		}
		if stranger && !admitted && !h.holdsLocked(mac, sub, now) {
			ok, why := h.admitNewLocked(req, sub, now)
			if !ok {
				h.mu.Unlock()
				if why == whyShareFull && !reclaimed {
					reclaimed = true
					if l, ok := h.reclaim(ctx, sub); ok {
						save = append(save, l)
						continue
					}
				}
				h.refuse(ctx, m, why)
				return netip.Addr{}, save, false
			}
			admitted = true
		}
		ip, known, ok := h.pickLocked(mac, sub, requested, adm, now)
		var held *Lease
		if ok {
			held = &Lease{IP: ip, MAC: mac, State: StateOffered, Expires: now.Add(h.cfg.OfferHold)}
			held.probing = !known && h.probe != nil && h.cfg.ProbeTimeout > 0
			h.holdLocked(held)
		}
		h.mu.Unlock()
		if !ok {
			if !reclaimed {
				reclaimed = true
				if l, ok := h.reclaim(ctx, sub); ok {
					save = append(save, l)
					continue
				}
			}
			h.rl.Log(ctx, slog.LevelWarn, "dhcp: no free address", sub.Prefix.String(), "subnet", sub.Prefix, "mac", mac)
			return netip.Addr{}, save, false
		}
		if !held.probing {
			return ip, save, true
		}
		pctx, cancel := context.WithTimeout(ctx, h.cfg.ProbeTimeout)
		inUse := h.probe.InUse(pctx, ip)
		cancel()
		if !inUse {
			h.mu.Lock()
			held.probing = false
			h.mu.Unlock()
			return ip, save, true
		}
		h.rl.Log(ctx, slog.LevelWarn, "dhcp: address answers on the network, skipping it", ip.String(), "ip", ip, "hold", h.cfg.ConflictHold)
		h.mu.Lock()
		held.probing = false
		h.dropOfferLocked(held)
		h.byIP[ip] = &Lease{IP: ip, State: StateConflict, Expires: h.now().Add(h.cfg.ConflictHold)}
		h.mu.Unlock()
		requested = netip.Addr{}
	}
	return netip.Addr{}, save, false
}

// pickLocked chooses an address; known means it needs no probe (reserved
// for the client, or the client's own previous lease).
func (h *Handler) pickLocked(mac string, sub *Subnet, requested netip.Addr, adm Admission, now time.Time) (ip netip.Addr, known, ok bool) {
	if adm.IP.IsValid() && sub.Prefix.Contains(adm.IP) {
		return adm.IP, true, true
	}
	if l := h.byMAC[mac]; l != nil && sub.Prefix.Contains(l.IP) && h.freeLocked(l.IP, mac, sub, now) {
		return l.IP, true, true
	}
	if requested.IsValid() && inRange(sub, requested) && h.freeLocked(requested, mac, sub, now) {
		return requested, false, true
	}
	start := h.cursor[sub.Prefix]
	if !start.IsValid() || !inRange(sub, start) {
		start = sub.RangeStart
	}
	ip = start
	for range rangeSize(sub) {
		if h.freeLocked(ip, mac, sub, now) {
			next := ip.Next()
			if !inRange(sub, next) {
				next = sub.RangeStart
			}
			h.cursor[sub.Prefix] = next
			return ip, false, true
		}
		ip = ip.Next()
		if !inRange(sub, ip) {
			ip = sub.RangeStart
		}
	}
	return netip.Addr{}, false, false
}

func inRange(sub *Subnet, ip netip.Addr) bool {
	return !ip.Less(sub.RangeStart) && !sub.RangeEnd.Less(ip)
}

func rangeSize(sub *Subnet) int {
	a, b := sub.RangeStart.As4(), sub.RangeEnd.As4()
	s := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	e := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	if e < s {
		return 0
	}
	return int(e-s) + 1
}

// freeLocked reports whether ip may be given to mac.
func (h *Handler) freeLocked(ip netip.Addr, mac string, sub *Subnet, now time.Time) bool {
	if owner, ok := h.adm.ReservedFor(ip); ok && owner.String() != mac {
		return false
	}
	if ip == h.cfg.ServerIP || ip == sub.Router || ip == sub.Prefix.Masked().Addr() || ip == lastAddr(sub.Prefix) {
		return false
	}
	if l := h.byIP[ip]; l != nil && l.active(now) && l.MAC != mac {
		return false
	}
	return true
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	bits := p.Bits()
	for i := range 4 {
		for b := range 8 {
			if i*8+b >= bits {
				a[i] |= 0x80 >> b
			}
		}
	}
	return netip.AddrFrom4(a)
}

// holdLocked records l as the lease of its address and of its MAC, dropping
// the MAC's previous offer elsewhere.
func (h *Handler) holdLocked(l *Lease) {
	if old := h.byMAC[l.MAC]; old != nil && old.IP != l.IP {
		switch {
		case old.State == StateOffered:
			if h.byIP[old.IP] == old {
				delete(h.byIP, old.IP)
			}
			l.replaces = old.replaces
		case h.byIP[old.IP] == old:
			// The MAC holds another address (a reservation now applies,
			// or that one is no longer free for it): the ACK frees it.
			l.replaces = old
		}
	}
	if cur := h.byIP[l.IP]; cur != nil && cur.MAC == l.MAC && cur.State == StateBound && l.State == StateOffered {
		// Re-offering a client its bound address must not shorten the lease.
		if cur.MAC != "" {
			h.byMAC[cur.MAC] = cur
		}
		return
	}
	h.byIP[l.IP] = l
	if l.MAC != "" {
		h.byMAC[l.MAC] = l
	}
}

func (h *Handler) request(ctx context.Context, req Request, client Client, adm Admission) *Response {
	m := req.Msg
	mac := m.ClientHWAddr.String()
	if sid, ok := addr4(m.ServerIdentifier()); ok && sid != h.cfg.ServerIP {
		// The client chose another server's offer: free ours.
		h.mu.Lock()
		if l := h.byMAC[mac]; l != nil && l.State == StateOffered {
			h.dropOfferLocked(l)
			if h.byIP[l.IP] == l {
				delete(h.byIP, l.IP)
			}
		}
		h.mu.Unlock()
		return nil
	}
	ip, ok := addr4(m.RequestedIPAddress())
	if !ok {
		ip, ok = addr4(m.ClientIPAddr)
	}
	if !ok {
		return nil
	}
	sub := h.subnetOf(m)
	if sub == nil {
		return nil
	}
	if !sub.Prefix.Contains(ip) {
		return h.nak(req, "requested address is not on this network")
	}
	now := h.now()
	h.mu.Lock()
	reserved := adm.IP.IsValid()
	switch {
	case reserved && sub.Prefix.Contains(adm.IP) && adm.IP != ip:
		h.mu.Unlock()
		return h.nak(req, "this machine has a reserved address")
	case !h.freeLocked(ip, mac, sub, now):
		h.mu.Unlock()
		return h.nak(req, "address is in use")
	case !inRange(sub, ip) && !(reserved && adm.IP == ip):
		h.mu.Unlock()
		return h.nak(req, "address is outside the pool")
	}
	if !adm.Known && !reserved {
		// A stranger asking for an address it does not hold (no offer
		// of ours, or one long expired): a new address, limited. No
		// NAK: a flood of such requests gets no replies at all.
		if cur := h.byIP[ip]; cur == nil || cur.MAC != mac || !cur.active(now) {
			if ok, why := h.admitNewLocked(req, sub, now); !ok {
				h.mu.Unlock()
				h.refuse(ctx, m, why)
				return nil
			}
		}
	}
	l := &Lease{IP: ip, MAC: mac, State: StateBound, Expires: now.Add(h.cfg.LeaseTime)}
	if reserved && adm.IP == ip {
		l.Hostname = adm.Hostname
	}
	l.stored = l.Expires
	save := []Lease{*l}
	if cur := h.byIP[ip]; cur != nil && cur.MAC == mac && cur.State == StateBound && cur.Hostname == l.Hostname &&
		cur.stored.Sub(now) >= h.cfg.LeaseTime/2 {
		// A renewal while the stored lease still runs for at least half a
		// lease time (the client renews at half its lease): not written
		// again, so a client renewing in a loop costs the store nothing.
		// After a crash the lease is known until the stored expiry, by
		// which time the client has renewed.
		l.stored = cur.stored
		save = nil
	}
	// The MAC holds one address: an offer elsewhere is dropped, and a
	// lease elsewhere (the discovery lease of a machine whose reservation
	// now applies) is freed in the same store batch as this one, so that
	// neither the table nor the store ever shows the MAC with two.
	for _, old := range h.othersLocked(mac, ip) {
		if old.State == StateOffered {
			delete(h.byIP, old.IP)
			continue
		}
		free := &Lease{IP: old.IP, State: StateReleased, Expires: now}
		h.byIP[old.IP] = free
		save = append(save, *free)
		h.rl.Log(ctx, slog.LevelInfo, "dhcp: client moved to another address; freeing its previous lease", mac, "mac", mac, "ip", ip, "freed", old.IP)
	}
	h.byIP[ip] = l
	h.byMAC[mac] = l
	h.mu.Unlock()
	return h.respond(req, client, dhcpv4.MessageTypeAck, ip, sub, save, l.Hostname)
}

// othersLocked returns what mac holds at addresses other than ip: its
// entry in byMAC and the lease that entry, an offer, would replace.
func (h *Handler) othersLocked(mac string, ip netip.Addr) []*Lease {
	var out []*Lease
	for l := h.byMAC[mac]; l != nil; l = l.replaces {
		if l.IP != ip && l.MAC == mac && h.byIP[l.IP] == l {
			out = append(out, l)
		}
		if l.State != StateOffered {
			break
		}
	}
	return out
}

// dropOfferLocked forgets offer as its MAC's entry: the lease the offer
// would have replaced is the MAC's again.
func (h *Handler) dropOfferLocked(offer *Lease) {
	if h.byMAC[offer.MAC] != offer {
		return
	}
	if r := offer.replaces; r != nil && h.byIP[r.IP] == r {
		h.byMAC[offer.MAC] = r
		return
	}
	delete(h.byMAC, offer.MAC)
}

func (h *Handler) decline(m *dhcpv4.DHCPv4) {
	ip, ok := addr4(m.RequestedIPAddress())
	if !ok {
		return
	}
	mac := m.ClientHWAddr.String()
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.byIP[ip]
	if l == nil || l.MAC != mac {
		return
	}
	h.rl.Log(context.Background(), slog.LevelWarn, "dhcp: client declined address (in use on the network)", mac, "ip", ip, "mac", mac)
	delete(h.byMAC, mac)
	h.byIP[ip] = &Lease{IP: ip, State: StateDeclined, Expires: h.now().Add(h.cfg.DeclineHold), declinedBy: mac}
}

func (h *Handler) release(m *dhcpv4.DHCPv4) {
	ip, ok := addr4(m.ClientIPAddr)
	if !ok {
		return
	}
	mac := m.ClientHWAddr.String()
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.byIP[ip]
	if l == nil || l.MAC != mac || l.State != StateBound {
		return
	}
	// Keep the MAC on the record so the client gets the same address back.
	nl := &Lease{IP: ip, MAC: mac, Hostname: l.Hostname, State: StateReleased, Expires: h.now()}
	h.byIP[ip] = nl
	h.byMAC[mac] = nl
}

// saveOnly returns a response with no message, carrying the lease record of
// the address a DECLINE or RELEASE named, to persist it.
func (h *Handler) saveOnly(m *dhcpv4.DHCPv4) *Response {
	ip, ok := addr4(m.RequestedIPAddress())
	if m.MessageType() == dhcpv4.MessageTypeRelease {
		ip, ok = addr4(m.ClientIPAddr)
	}
	if !ok {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.byIP[ip]
	if l == nil || (l.State != StateDeclined && l.State != StateReleased) {
		return nil
	}
	return &Response{Save: []Lease{*l}}
}

func (h *Handler) inform(req Request, client Client) *Response {
	sub := h.subnetOf(req.Msg)
	if sub == nil {
		return nil
	}
	return h.respond(req, client, dhcpv4.MessageTypeAck, netip.Addr{}, sub, nil, "")
}

func (h *Handler) handleProxy(req Request, client Client) *Response {
	if !client.Netboot() {
		return nil // proxyDHCP only answers network-boot clients
	}
	m := req.Msg
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		if req.Port == ProxyPort {
			return nil
		}
		return h.respond(req, client, dhcpv4.MessageTypeOffer, netip.Addr{}, nil, nil, "")
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
		sid, hasSID := addr4(m.ServerIdentifier())
		if req.Port != ProxyPort && (!hasSID || sid != h.cfg.ServerIP) {
			return nil // addressed to the real DHCP server
		}
		return h.respond(req, client, dhcpv4.MessageTypeAck, netip.Addr{}, nil, nil, "")
	}
	return nil
}

func (h *Handler) nak(req Request, why string) *Response {
	h.naks.Add(1)
	mac := req.Msg.ClientHWAddr.String()
	h.rl.Log(context.Background(), slog.LevelInfo, "dhcp: NAK", mac, "mac", mac, "reason", why)
	reply, err := dhcpv4.NewReplyFromRequest(req.Msg,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(h.cfg.ServerIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptMessage(why)),
	)
	if err != nil {
		return nil
	}
	dest := broadcastDest
	if gi, ok := addr4(req.Msg.GatewayIPAddr); ok {
		dest = netip.AddrPortFrom(gi, dhcpv4.ServerPort)
		reply.SetBroadcast()
	}
	return &Response{Msg: reply, Dest: dest}
}

// respond builds an OFFER or ACK. yiaddr and sub are unset for proxy and
// INFORM replies; hostname is sent with yiaddr when set.
func (h *Handler) respond(req Request, client Client, typ dhcpv4.MessageType, yiaddr netip.Addr, sub *Subnet, save []Lease, hostname string) *Response {
	m := req.Msg
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(h.cfg.ServerIP.AsSlice())),
	}
	if yiaddr.IsValid() {
		mods = append(mods, dhcpv4.WithYourIP(yiaddr.AsSlice()))
	}
	if ci, ok := addr4(m.ClientIPAddr); ok && typ == dhcpv4.MessageTypeAck {
		mods = append(mods, dhcpv4.WithClientIP(ci.AsSlice()))
	}
	if sub != nil {
		mods = append(mods, dhcpv4.WithNetmask(net.CIDRMask(sub.Prefix.Bits(), 32)))
		if sub.Router.IsValid() {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(sub.Router.AsSlice())))
		}
		if len(sub.DNS) > 0 {
			var dns []net.IP
			for _, d := range sub.DNS {
				dns = append(dns, d.AsSlice())
			}
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(dns...)))
		}
		if sub.DomainName != "" {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDomainName(sub.DomainName)))
		}
		if yiaddr.IsValid() {
			lt := h.cfg.LeaseTime
			mods = append(mods,
				dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(lt)),
				dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(lt/2)),
				dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(lt*7/8)),
			)
			if hostname != "" {
				mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(hostname)))
			}
		}
	}
	if client.Netboot() {
		if bc, ok := h.cfg.Boot.choose(client, m); ok {
			mods = append(mods, h.bootMods(m, bc)...)
		} else if h.mode == ModeProxy {
			return nil // nothing to offer this firmware
		} else {
			mac := m.ClientHWAddr.String()
			h.rl.Log(context.Background(), slog.LevelInfo, "dhcp: no first stage for this firmware", mac, "mac", mac, "arch", client.Arch, "vendor", client.Vendor)
		}
	}
	reply, err := dhcpv4.NewReplyFromRequest(m, mods...)
	if err != nil {
		return nil
	}
	if typ == dhcpv4.MessageTypeOffer {
		h.offers.Add(1)
	} else {
		h.acks.Add(1)
	}
	return &Response{Msg: reply, Dest: destination(req, reply), Save: save}
}

func (h *Handler) bootMods(m *dhcpv4.DHCPv4, bc bootChoice) []dhcpv4.Modifier {
	var mods []dhcpv4.Modifier
	if len(bc.file) <= 127 {
		mods = append(mods, func(d *dhcpv4.DHCPv4) { d.BootFileName = bc.file })
	}
	mods = append(mods, dhcpv4.WithOption(dhcpv4.OptBootFileName(bc.file)))
	if bc.tftp {
		mods = append(mods,
			dhcpv4.WithServerIP(h.cfg.Boot.TFTPServer.AsSlice()),
			dhcpv4.WithOption(dhcpv4.OptTFTPServerName(h.cfg.Boot.TFTPServer.String())),
		)
	}
	if bc.vendor != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(bc.vendor)))
	}
	if bc.ipxeNoWait {
		// iPXE encapsulated option 175.176 (no-pxedhcp) = 1: do not wait
		// ~3 s for proxyDHCP offers.
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.GenericOptionCode(175), []byte{176, 1, 1}))
	}
	if h.mode == ModeProxy {
		// PXE vendor options: discovery control 8 = boot the file named
		// here, skip boot server discovery.
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{6, 1, 8, 255}))
		if g := m.GetOneOption(dhcpv4.OptionClientMachineIdentifier); len(g) > 0 {
			mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, g))
		}
		mods = append(mods, func(d *dhcpv4.DHCPv4) { d.YourIPAddr = zeroIP })
	}
	return mods
}

// destination picks where a reply goes (RFC 2131 4.1). Without a raw socket
// a client with no address yet is reached by broadcast.
func destination(req Request, reply *dhcpv4.DHCPv4) netip.AddrPort {
	m := req.Msg
	if req.Port == ProxyPort && req.Peer.IsValid() {
		return req.Peer
	}
	if gi, ok := addr4(m.GatewayIPAddr); ok {
		return netip.AddrPortFrom(gi, dhcpv4.ServerPort)
	}
	if ci, ok := addr4(m.ClientIPAddr); ok && reply.MessageType() != dhcpv4.MessageTypeNak {
		return netip.AddrPortFrom(ci, dhcpv4.ClientPort)
	}
	return broadcastDest
}
