package agentapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrUnknownBoot is returned by a Backend for a boot ID it never issued or
// has revoked.
var ErrUnknownBoot = errors.New("unknown or revoked boot")

// ErrReplay is returned by a Backend when a report repeats an old one: a
// heartbeat whose Seq is not above the boot's LastSeq, or a registration
// of a boot already bound to another identity. Backends check this
// atomically with the update; the handler checks it early too.
var ErrReplay = errors.New("replayed agent report")

// ErrWrongMAC is returned by a Backend for a registration whose boot MAC
// is not the MAC the boot's token was issued to: a token fetched by one
// machine cannot register another.
var ErrWrongMAC = errors.New("agent token was issued to another MAC")

// ErrWrongPeer is returned for a report of a boot from another address
// than the one the boot registered from.
var ErrWrongPeer = errors.New("agent token used from another address")

// ErrIdentityConflict is returned by a Backend for a report that claims an
// identity (system UUID, serial or a MAC) held by a different machine, or
// whose identifiers disagree with each other. The backend records such a
// report for the operator; it never merges it into a machine.
var ErrIdentityConflict = errors.New("identity held by another machine")

// ErrTooMany is returned by a Backend that will not store more (machines,
// say) for agents it does not know yet. The agent may try again later.
var ErrTooMany = errors.New("too many machines")

type peerKey struct{}

// WithPeer returns ctx carrying the address a report came from; the
// handler sets it for the backend.
func WithPeer(ctx context.Context, addr netip.Addr) context.Context {
	return context.WithValue(ctx, peerKey{}, addr)
}

// PeerOf returns the address set by WithPeer, or the zero Addr.
func PeerOf(ctx context.Context) netip.Addr {
	a, _ := ctx.Value(peerKey{}).(netip.Addr)
	return a
}

// Boot is what the backend knows about one issued token.
type Boot struct {
	// SecretHash is the SHA-256 of the token's secret.
	SecretHash [32]byte
	// Identity is the machine identity the boot was bound to by its first
	// registration; empty until then. A registration with the same token
	// from another identity is a replay.
	Identity string
	// LastSeq is the highest heartbeat sequence number accepted.
	LastSeq uint64
	// MAC is the MAC address the token was issued to (the machine that
	// fetched the boot script), lower case; empty if the backend does not
	// bind tokens to MACs. A registration must name it as its boot MAC.
	MAC string
	// Peer is the address the boot registered from; once set, the boot's
	// reports are accepted from it only.
	Peer netip.Addr
}

// Backend is what the agent handler needs from airlock's engine. The
// engine implements it over its state store; MemBackend is the in-memory
// twin for tests.
type Backend interface {
	// Boot returns the issued token for bootID, or ErrUnknownBoot.
	Boot(ctx context.Context, bootID string) (Boot, error)
	// Register binds the boot to identity and records the machine. It is
	// called only with a validated registration; PeerOf(ctx) is the
	// address it came from. It refuses a boot MAC other than the token's
	// with ErrWrongMAC and an identity held by another machine with
	// ErrIdentityConflict.
	Register(ctx context.Context, bootID, identity string, reg *Registration) (RegisterReply, error)
	// UpdateInventory records a new inventory for a registered boot.
	UpdateInventory(ctx context.Context, bootID string, inv *Inventory) (InventoryReply, error)
	// Heartbeat records a heartbeat (and its Seq as the boot's LastSeq) and
	// returns orders.
	Heartbeat(ctx context.Context, bootID string, hb *Heartbeat) (HeartbeatReply, error)
}

// Identity is the key a registration binds its boot to: the system UUID,
// serial and boot MAC. A machine keeps it across reboots.
func Identity(reg *Registration) string {
	return strings.ToLower(reg.Inventory.System.UUID) + "|" + reg.Inventory.System.Serial + "|" + strings.ToLower(reg.BootMAC)
}

// MachineRecord is what MemBackend keeps per machine.
type MachineRecord struct {
	MachineID    string
	BootID       string
	Registration Registration
	Inventory    Inventory
	Registered   time.Time
	LastSeen     time.Time
	LastState    string
	Heartbeats   int
}

// MemBackend is an in-memory Backend for tests and the lab.
type MemBackend struct {
	mu       sync.Mutex
	now      func() time.Time
	boots    map[string]*Boot
	machines map[string]*MachineRecord // by machine ID
	byBoot   map[string]string         // boot ID -> machine ID
	interval int
	notify   chan struct{}
	orders   map[string][]Order // by machine ID
	seq      int                // the last order number given
}

// NewMemBackend returns an empty MemBackend telling agents to heartbeat
// every heartbeatSeconds.
func NewMemBackend(heartbeatSeconds int) *MemBackend {
	return &MemBackend{
		now:      time.Now,
		boots:    map[string]*Boot{},
		machines: map[string]*MachineRecord{},
		byBoot:   map[string]string{},
		interval: heartbeatSeconds,
		notify:   make(chan struct{}),
		orders:   map[string][]Order{},
	}
}

// Issue records a token so that agents may present it.
func (m *MemBackend) Issue(t Token) {
	m.IssueFor(t, "")
}

// IssueFor records a token issued to one MAC: only a registration naming
// that boot MAC may use it. An empty mac binds it to none.
func (m *MemBackend) IssueFor(t Token, mac string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.boots[t.BootID] = &Boot{SecretHash: t.SecretHash(), MAC: strings.ToLower(mac)}
}

// Revoke forgets a boot; its token is refused from now on.
func (m *MemBackend) Revoke(bootID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.boots, bootID)
}

// Machines returns a snapshot of every registered machine.
func (m *MemBackend) Machines() []MachineRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]MachineRecord, 0, len(m.machines))
	for _, r := range m.machines {
		out = append(out, *r)
	}
	return out
}

// Changed returns a channel closed at the next change of any machine.
func (m *MemBackend) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.notify
}

func (m *MemBackend) changed() {
	close(m.notify)
	m.notify = make(chan struct{})
}

// Order queues an order for a machine; its next heartbeat carries it.
func (m *MemBackend) Order(machineID string, o Order) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if o.ID == "" {
		m.seq++
		o.ID = fmt.Sprintf("o-%d", m.seq) // as the inventory numbers them
	}
	m.orders[machineID] = append(m.orders[machineID], o)
}

// Boot implements Backend.
func (m *MemBackend) Boot(_ context.Context, bootID string) (Boot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boots[bootID]
	if !ok {
		return Boot{}, ErrUnknownBoot
	}
	return *b, nil
}

// Register implements Backend.
func (m *MemBackend) Register(ctx context.Context, bootID, identity string, reg *Registration) (RegisterReply, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boots[bootID]
	if !ok {
		return RegisterReply{}, ErrUnknownBoot
	}
	if b.Identity != "" && b.Identity != identity {
		return RegisterReply{}, ErrReplay
	}
	if b.MAC != "" && !strings.EqualFold(b.MAC, reg.BootMAC) {
		return RegisterReply{}, ErrWrongMAC
	}
	b.Identity = identity
	if !b.Peer.IsValid() {
		b.Peer = PeerOf(ctx)
	}
	sum := sha256.Sum256([]byte(identity))
	id := "m-" + hex.EncodeToString(sum[:6])
	now := m.now()
	r, ok := m.machines[id]
	if !ok {
		r = &MachineRecord{MachineID: id, Registered: now}
		m.machines[id] = r
	}
	r.BootID = bootID
	r.Registration = *reg
	r.Inventory = reg.Inventory
	r.LastSeen = now
	r.LastState = "registered"
	m.byBoot[bootID] = id
	m.changed()
	return RegisterReply{MachineID: id, HeartbeatSeconds: m.interval}, nil
}

// UpdateInventory implements Backend.
func (m *MemBackend) UpdateInventory(_ context.Context, bootID string, inv *Inventory) (InventoryReply, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.machines[m.byBoot[bootID]]
	if !ok {
		return InventoryReply{}, ErrUnknownBoot
	}
	r.Inventory = *inv
	r.LastSeen = m.now()
	m.changed()
	return InventoryReply{MachineID: r.MachineID}, nil
}

// Heartbeat implements Backend.
func (m *MemBackend) Heartbeat(_ context.Context, bootID string, hb *Heartbeat) (HeartbeatReply, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boots[bootID]
	r, ok2 := m.machines[m.byBoot[bootID]]
	if !ok || !ok2 {
		return HeartbeatReply{}, ErrUnknownBoot
	}
	if hb.Seq <= b.LastSeq {
		return HeartbeatReply{}, ErrReplay
	}
	b.LastSeq = hb.Seq
	r.LastSeen = m.now()
	r.LastState = hb.State
	r.Heartbeats++
	// As the inventory does: an order goes out until its final result
	// comes back; one that ends the agent, once.
	for _, res := range hb.Results {
		if res.Final() {
			m.orders[r.MachineID] = slices.DeleteFunc(m.orders[r.MachineID], func(o Order) bool { return o.ID == res.ID })
		}
	}
	orders := slices.Clone(m.orders[r.MachineID])
	m.orders[r.MachineID] = slices.DeleteFunc(m.orders[r.MachineID], Order.Ends)
	m.changed()
	return HeartbeatReply{HeartbeatSeconds: m.interval, Orders: orders}, nil
}
