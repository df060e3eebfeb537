package dhcp

import (
	"net"
	"net/netip"
	"sync"
)

// Admission is what the backend says about one client, found by its MAC.
type Admission struct {
	// Known marks a machine the backend knows (admitted, or reserved): it
	// is exempt from the limits on strangers (Config.Limits).
	Known bool
	// Refuse: the client gets no reply at all (no offer, no ACK, no
	// INFORM answer, no proxy offer). Under an allowlist policy, unknown
	// MACs need not get a lease.
	Refuse bool
	// IP, when valid, is the machine's reserved address, and Hostname
	// (optional) the name sent with it.
	IP       netip.Addr
	Hostname string
}

// Admitter is the handler's backend for client identity. The handler asks
// it for every packet, so a reservation or an admission made while the
// server runs applies to the next packet, without a restart. Both methods
// are called with the handler's lock held, ReservedFor once per candidate
// address: they must be quick (a map lookup) and must not call the handler.
type Admitter interface {
	// Admit says what the client with this hardware address may get.
	Admit(mac net.HardwareAddr) Admission
	// ReservedFor returns the MAC an address is reserved for, if any: the
	// pool never gives that address to another client.
	ReservedFor(ip netip.Addr) (net.HardwareAddr, bool)
}

// StaticAdmitter is the Admitter built from a list of reservations (the
// answer file's fixed addresses): reserved MACs are known, every other MAC
// is a stranger, refused when RefuseStrangers is set. Reservations may be
// added and removed while the server runs. It is safe for concurrent use.
type StaticAdmitter struct {
	mu    sync.RWMutex
	byMAC map[string]Reservation
	byIP  map[netip.Addr]net.HardwareAddr
	// refuse: strangers get nothing.
	refuse bool
}

// NewStaticAdmitter returns an admitter holding rs. With refuseStrangers,
// MACs without a reservation get no reply.
func NewStaticAdmitter(rs []Reservation, refuseStrangers bool) *StaticAdmitter {
	a := &StaticAdmitter{byMAC: map[string]Reservation{}, byIP: map[netip.Addr]net.HardwareAddr{}, refuse: refuseStrangers}
	for _, r := range rs {
		a.Reserve(r)
	}
	return a
}

// Reserve adds or replaces the reservation of r.MAC.
func (a *StaticAdmitter) Reserve(r Reservation) {
	a.mu.Lock()
	defer a.mu.Unlock()
	mac := r.MAC.String()
	if old, ok := a.byMAC[mac]; ok {
		delete(a.byIP, old.IP)
	}
	a.byMAC[mac] = r
	if r.IP.IsValid() {
		a.byIP[r.IP] = r.MAC
	}
}

// Unreserve removes the reservation of mac.
func (a *StaticAdmitter) Unreserve(mac net.HardwareAddr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.byMAC[mac.String()]; ok {
		delete(a.byIP, old.IP)
		delete(a.byMAC, mac.String())
	}
}

// Admit implements Admitter.
func (a *StaticAdmitter) Admit(mac net.HardwareAddr) Admission {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if r, ok := a.byMAC[mac.String()]; ok {
		return Admission{Known: true, IP: r.IP, Hostname: r.Hostname}
	}
	return Admission{Refuse: a.refuse}
}

// ReservedFor implements Admitter.
func (a *StaticAdmitter) ReservedFor(ip netip.Addr) (net.HardwareAddr, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	mac, ok := a.byIP[ip]
	return mac, ok
}
