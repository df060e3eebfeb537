// Package inventory keeps the machines airlock has discovered, in the
// state store: one record per physical machine that keeps its identity
// across reboots (system UUID and serial, plus its MAC addresses), its
// hardware as the agent last reported it, the rack it stands in (from the
// switch its NICs see over LLDP, the SMBIOS chassis location, or the
// answer file's rack plan) and anything that disagrees with the plan.
//
// Store implements agentapi.Backend, so the agent API handler records
// reports straight into the inventory; per-boot tokens are kept here too.
package inventory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// Machine states.
const (
	StateDiscovered = "discovered"
)

// Machine is one physical machine.
type Machine struct {
	ID         string             `json:"id"`
	State      string             `json:"state"`
	Rack       string             `json:"rack,omitempty"`
	RackSource string             `json:"rackSource,omitempty"` // lldp, chassis or plan
	Switch     string             `json:"switch,omitempty"`     // LLDP system name seen on the boot NIC
	SwitchPort string             `json:"switchPort,omitempty"`
	Flags      []string           `json:"flags,omitempty"`
	Serial     string             `json:"serial,omitempty"`
	UUID       string             `json:"uuid,omitempty"`
	BootMAC    string             `json:"bootMAC"`
	MACs       []string           `json:"macs"`
	Firmware   string             `json:"firmware,omitempty"`
	Arch       string             `json:"arch,omitempty"`
	Summary    Summary            `json:"summary"`
	Hardware   agentapi.Inventory `json:"hardware"`
	FirstSeen  time.Time          `json:"firstSeen"`
	LastSeen   time.Time          `json:"lastSeen"`
	Boots      int                `json:"boots"`
	AgentState string             `json:"agentState,omitempty"`
	// Orders wait for the machine's agent's next heartbeat.
	Orders []agentapi.Order `json:"orders,omitempty"`
	// History, Assignment and Failure are the machine's install lifecycle
	// (kept apart from its reports; see Transition and Assign).
	History    []Transition `json:"history,omitempty"`
	Assignment *Assignment  `json:"assignment,omitempty"`
	Failure    string       `json:"failure,omitempty"`
	// LocalBoots counts local-boot answers since the installed system
	// last phoned home (BootLoopAfter of them flag a boot loop).
	LocalBoots int `json:"localBoots,omitempty"`
	// BootID is the boot whose agent speaks for the machine; the
	// registration of a later boot retires its token.
	BootID string `json:"bootID,omitempty"`
	// AgentReleased is set once the current boot's agent was handed a
	// reboot or power-off order: the next boot may register at once.
	AgentReleased bool `json:"agentReleased,omitempty"`
	// Conflicts are the latest reports refused for claiming this
	// machine's identity (at most maxMachineConflicts); ConflictCount
	// counts them all.
	Conflicts     []Conflict `json:"conflicts,omitempty"`
	ConflictCount int        `json:"conflictCount,omitempty"`
	// Results are the latest answers of the machine's agent to its orders
	// (at most maxResults, newest last).
	Results []agentapi.OrderResult `json:"results,omitempty"`
}

// Conflict is a report airlock refused because it claimed an identity
// held by another machine, its identifiers pointed at different machines,
// or it claimed a machine whose agent was still running. It is kept for
// the operator; nothing of it reaches a machine record.
type Conflict struct {
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"`
	// Machines are those whose identity the report claimed.
	Machines []string   `json:"machines,omitempty"`
	Boot     string     `json:"boot"`
	Peer     netip.Addr `json:"peer,omitzero"`
	BootMAC  string     `json:"bootMAC,omitempty"`
	UUID     string     `json:"uuid,omitempty"`
	Serial   string     `json:"serial,omitempty"`
	MACs     []string   `json:"macs,omitempty"`
	// Repeats counts the times the same agent sent the same report again
	// after this one (it retries when refused).
	Repeats int `json:"repeats,omitempty"`
}

// Summary is the hardware in one line's worth of numbers.
type Summary struct {
	CPUs        int    `json:"cpus"`
	MemoryBytes uint64 `json:"memoryBytes"`
	Disks       int    `json:"disks"`
	DiskBytes   uint64 `json:"diskBytes"`
	NICs        int    `json:"nics"`
	GPUs        int    `json:"gpus"`
	GPUModel    string `json:"gpuModel,omitempty"`
}

// bootRecord is what is kept per issued token.
type bootRecord struct {
	SecretHash string    `json:"secretHash"` // hex SHA-256 of the secret
	MAC        string    `json:"mac,omitempty"`
	Identity   string    `json:"identity,omitempty"`
	MachineID  string    `json:"machineID,omitempty"`
	LastSeq    uint64    `json:"lastSeq"`
	Issued     time.Time `json:"issued"`
	// Peer is the address the boot registered from; its later reports
	// must come from there.
	Peer netip.Addr `json:"peer,omitzero"`
	// Pending is the token's key in the pending index while no agent has
	// registered with it.
	Pending string `json:"pending,omitempty"`
}

const (
	machinesBucket = "machines"      // machine ID -> Machine
	indexBucket    = "machine-index" // uuid:/serial:/mac: key -> machine ID
	bootsBucket    = "boots"         // boot ID -> bootRecord
	// bootsPendingBucket indexes the tokens no agent has registered with
	// yet by issue time (pendingKey -> boot ID): the oldest sorts first.
	bootsPendingBucket = "boots-pending"
	// bootsByMACBucket names each MAC's pending token (MAC -> boot ID).
	bootsByMACBucket = "boots-by-mac"
	// conflictsBucket holds the latest maxConflicts refused reports,
	// keyed by a sequence number (hex, so the oldest sorts first).
	conflictsBucket = "identity-conflicts"
	// metaBucket holds counters (machines, pending tokens) and the key of
	// the latest conflict.
	metaBucket = "inventory-meta"
)

// Bounds on what agents can make airlock store.
const (
	// maxMachines bounds the machine records: a laptop serves a few racks
	// (past that airlock moves into the cluster it built), and a record
	// holds a report of up to 1 MiB (the agent API's body limit), so
	// agents with tokens can make the store hold at most ~1 GiB of them.
	maxMachines = 1024
	// maxPending bounds the boot tokens waiting for their agent.
	maxPending = 4096
	// maxConflicts bounds the refused reports kept (the oldest go first).
	maxConflicts = 256
	// maxMachineConflicts bounds the refused reports kept on a machine.
	maxMachineConflicts = 4
	// maxConflictMachines bounds how many machines one refused report
	// flags.
	maxConflictMachines = 8
)

// unboundTTL is how long a boot token waits for its agent. Every script
// fetch issues one; a discovery boot registers within minutes, so one
// still unused after this is from a boot that never got that far.
const unboundTTL = time.Hour

// silentTTL is how long a bound boot token outlives its agent's last
// report: an agent reports every few seconds, so one silent this long has
// gone (the machine booted its disk, or was switched off) and its token
// is refused from then on. A machine whose agent really was cut off that
// long registers again after a reboot.
const silentTTL = time.Hour

// Store is the inventory over a state store.
type Store struct {
	store state.Store
	racks []config.Rack
	log   *slog.Logger
	now   func() time.Time
	// heartbeat is how often agents are asked to report.
	heartbeat int
	// sameBoot is how close local-boot answers count as one firmware
	// pass (see SetSameBootWindow).
	sameBoot time.Duration
	// maxMachines bounds the machine records (maxMachines; tests lower it).
	maxMachines uint64
	// leaseOf, when set, names the address airlock's DHCP server leased
	// to a MAC (see CheckLeases).
	leaseOf LeaseLookup

	mu     sync.Mutex
	notify chan struct{}
	events events.Sink
}

// New returns the inventory kept in s; racks is the answer file's rack
// plan (may be empty).
func New(s state.Store, racks []config.Rack, log *slog.Logger) *Store {
	return &Store{store: s, racks: racks, log: log, now: time.Now, heartbeat: 10, sameBoot: DefaultSameBootWindow, maxMachines: maxMachines, notify: make(chan struct{})}
}

// LeaseLookup returns the address airlock's DHCP server has leased to a
// MAC (lower case, colon-separated); ok is false when it has none (the
// machine has a static address, or another server hands out addresses).
type LeaseLookup func(mac string) (addr netip.Addr, ok bool)

// CheckLeases makes a registration come from the address leased to its
// token's MAC, whenever airlock's DHCP server leased that MAC one: a host
// that fetched a token with another machine's MAC must also hold that
// machine's address. Call it before the agent API serves.
func (s *Store) CheckLeases(lookup LeaseLookup) { s.leaseOf = lookup }

// SetSameBootWindow sets how long after a counted local-boot answer
// further ones count as the same firmware pass (default
// DefaultSameBootWindow; 0 counts every answer).
func (s *Store) SetSameBootWindow(d time.Duration) { s.sameBoot = max(d, 0) }

// SetHeartbeat sets how often agents are asked to report, in seconds
// (default 10; the lab and tests ask for less).
func (s *Store) SetHeartbeat(seconds int) { s.heartbeat = max(seconds, 1) }

// Changed returns a channel that is closed at the next change.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notify
}

func (s *Store) changed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.notify)
	s.notify = make(chan struct{})
}

// IssueBoot records a fresh token for one boot of the machine with the
// given boot MAC; the token goes on the discovery image's kernel command
// line. Anyone can fetch a boot script, so what this stores is bounded and
// its cost does not grow with it: a MAC has at most one token waiting for
// its agent (a new fetch replaces it), at most maxPending tokens wait at
// all (the oldest goes first), and tokens unused after unboundTTL expire a
// few at each call. Every step is a key lookup or the first key of an
// index ordered by issue time.
func (s *Store) IssueBoot(mac string) (agentapi.Token, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return agentapi.Token{}, fmt.Errorf("issue boot token: %q is not a MAC address", mac)
	}
	mac = hw.String()
	t, err := agentapi.NewToken(nil)
	if err != nil {
		return agentapi.Token{}, err
	}
	hash := t.SecretHash()
	now := s.now().UTC()
	rec := bootRecord{SecretHash: hex.EncodeToString(hash[:]), MAC: mac, Issued: now, Pending: pendingKey(now, t.BootID)}
	var dropped int
	err = s.store.Update(func(tx state.Tx) error {
		count, err := pendingCount(tx)
		if err != nil {
			return err
		}
		n := int(min(count, maxPending*2))
		// The MAC's earlier token, if its agent never came, is replaced.
		if old := tx.Get(bootsByMACBucket, mac); old != nil {
			gone, err := dropPending(tx, string(old))
			if err != nil {
				return err
			}
			n -= gone
		}
		// Expired tokens go, and past the cap the oldest: a bounded number
		// per call, which outpaces the one added.
		for range 4 {
			key, id, ok, err := oldestPending(tx)
			if err != nil {
				return err
			}
			if !ok || (n < maxPending && now.Sub(pendingTime(key)) <= unboundTTL) {
				break
			}
			if _, err := dropPending(tx, id); err != nil {
				return err
			}
			if tx.Get(bootsPendingBucket, key) != nil { // an index entry without its record
				if err := tx.Delete(bootsPendingBucket, key); err != nil {
					return err
				}
			}
			n--
			dropped++
		}
		if err := putJSON(tx, bootsBucket, t.BootID, rec); err != nil {
			return err
		}
		if err := tx.Put(bootsPendingBucket, rec.Pending, []byte(t.BootID)); err != nil {
			return err
		}
		if err := tx.Put(bootsByMACBucket, mac, []byte(t.BootID)); err != nil {
			return err
		}
		return setCounter(tx, "pending", uint64(max(n+1, 0)))
	})
	if err != nil {
		return agentapi.Token{}, fmt.Errorf("issue boot token: %w", err)
	}
	if dropped > 0 {
		s.log.Debug("unused boot tokens dropped", "count", dropped)
	}
	return t, nil
}

// pendingKey orders the pending index by issue time: 16 hex digits of
// Unix nanoseconds, then the boot ID.
func pendingKey(t time.Time, bootID string) string {
	return fmt.Sprintf("%016x-%s", uint64(max(t.UnixNano(), 0)), bootID)
}

func pendingTime(key string) time.Time {
	n, err := strconv.ParseUint(key[:min(16, len(key))], 16, 64)
	if err != nil {
		return time.Time{} // unreadable: treat as expired
	}
	return time.Unix(0, int64(n)).UTC()
}

var errStop = errors.New("stop")

// oldestPending is the first entry of the pending index.
func oldestPending(tx state.Tx) (key, bootID string, ok bool, err error) {
	err = tx.ForEach(bootsPendingBucket, func(k string, v []byte) error {
		key, bootID, ok = k, string(v), true
		return errStop
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return key, bootID, ok, err
}

// dropPending deletes a token no agent came back with, and its index
// entries; it returns 1 if it was pending, 0 if it was not (bound or
// gone).
func dropPending(tx state.Tx, bootID string) (int, error) {
	var rec bootRecord
	found, err := getJSON(tx, bootsBucket, bootID, &rec)
	if err != nil || !found {
		// Gone, or unreadable (then forgotten: it must not stop issuing).
		return 0, tx.Delete(bootsBucket, bootID)
	}
	if rec.MachineID != "" || rec.Pending == "" {
		return 0, nil // bound: its agent registered
	}
	if err := unpend(tx, bootID, &rec); err != nil {
		return 0, err
	}
	return 1, tx.Delete(bootsBucket, bootID)
}

// unpend takes a boot off the pending indexes (it was bound, or is being
// deleted); the caller writes or deletes its record.
func unpend(tx state.Tx, bootID string, rec *bootRecord) error {
	if rec.Pending == "" {
		return nil
	}
	if err := tx.Delete(bootsPendingBucket, rec.Pending); err != nil {
		return err
	}
	if string(tx.Get(bootsByMACBucket, rec.MAC)) == bootID {
		if err := tx.Delete(bootsByMACBucket, rec.MAC); err != nil {
			return err
		}
	}
	rec.Pending = ""
	n, err := pendingCount(tx)
	if err != nil {
		return err
	}
	return setCounter(tx, "pending", max(n, 1)-1)
}

// pendingCount is the number of tokens waiting for their agent. The first
// time (a store written before the pending index), it indexes the unbound
// tokens there are.
func pendingCount(tx state.Tx) (uint64, error) {
	return counter(tx, "pending", func() (uint64, error) {
		type legacy struct {
			id  string
			rec bootRecord
		}
		var todo []legacy
		err := tx.ForEach(bootsBucket, func(k string, v []byte) error {
			var r bootRecord
			if json.Unmarshal(v, &r) == nil && r.MachineID == "" && r.Pending == "" {
				todo = append(todo, legacy{k, r})
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		for _, l := range todo {
			l.rec.Pending = pendingKey(l.rec.Issued, l.id)
			if err := putJSON(tx, bootsBucket, l.id, l.rec); err != nil {
				return 0, err
			}
			if err := tx.Put(bootsPendingBucket, l.rec.Pending, []byte(l.id)); err != nil {
				return 0, err
			}
		}
		var n uint64
		err = tx.ForEach(bootsPendingBucket, func(string, []byte) error { n++; return nil })
		return n, err
	})
}

// Boot implements agentapi.Backend.
func (s *Store) Boot(_ context.Context, bootID string) (agentapi.Boot, error) {
	var rec bootRecord
	var m Machine
	var found, bound bool
	err := s.store.View(func(tx state.Tx) (err error) {
		if found, err = getJSON(tx, bootsBucket, bootID, &rec); err != nil || !found || rec.MachineID == "" {
			return err
		}
		bound, err = getJSON(tx, machinesBucket, rec.MachineID, &m)
		return err
	})
	if err != nil {
		return agentapi.Boot{}, err
	}
	if !found {
		return agentapi.Boot{}, agentapi.ErrUnknownBoot
	}
	// Tokens expire: unused ones an hour after the script fetch, bound
	// ones an hour after their agent last reported, and a boot that is no
	// longer its machine's at once.
	now := s.now().UTC()
	switch {
	case rec.MachineID == "" && now.Sub(rec.Issued) > unboundTTL:
		return agentapi.Boot{}, fmt.Errorf("%w: the token expired unused", agentapi.ErrUnknownBoot)
	case rec.MachineID != "" && (!bound || m.BootID != bootID):
		return agentapi.Boot{}, fmt.Errorf("%w: the boot is no longer its machine's", agentapi.ErrUnknownBoot)
	case rec.MachineID != "" && now.Sub(m.LastSeen) > silentTTL:
		return agentapi.Boot{}, fmt.Errorf("%w: the token expired, its agent silent since %s", agentapi.ErrUnknownBoot, m.LastSeen.Format(time.RFC3339))
	}
	var b agentapi.Boot
	raw, err := hex.DecodeString(rec.SecretHash)
	if err != nil || len(raw) != len(b.SecretHash) {
		return agentapi.Boot{}, fmt.Errorf("boot %s: corrupt secret hash in state", bootID)
	}
	copy(b.SecretHash[:], raw)
	b.Identity, b.LastSeq, b.MAC, b.Peer = rec.Identity, rec.LastSeq, rec.MAC, rec.Peer
	return b, nil
}

// Register implements agentapi.Backend: it finds the machine the report
// comes from (or adds it) and binds the boot to it. A report that claims
// an identity held by another machine, whose identifiers point at
// different machines, or that would take over a machine whose agent is
// still running, is refused with agentapi.ErrIdentityConflict and
// recorded for the operator (see Conflicts); no machine record, order or
// boot token is changed by it.
func (s *Store) Register(ctx context.Context, bootID, identity string, reg *agentapi.Registration) (agentapi.RegisterReply, error) {
	peer := agentapi.PeerOf(ctx)
	if s.leaseOf != nil && peer.IsValid() {
		if leased, ok := s.leaseOf(strings.ToLower(reg.BootMAC)); ok && leased.Unmap() != peer {
			return agentapi.RegisterReply{}, fmt.Errorf("%w: %s holds the lease of %s, but the registration comes from %s", agentapi.ErrWrongPeer, leased, reg.BootMAC, peer)
		}
	}
	var m Machine
	var isNew bool
	var refused error
	err := s.store.Update(func(tx state.Tx) error {
		var rec bootRecord
		found, err := getJSON(tx, bootsBucket, bootID, &rec)
		if err != nil {
			return err
		}
		if !found {
			return agentapi.ErrUnknownBoot
		}
		if rec.Identity != "" && rec.Identity != identity {
			return agentapi.ErrReplay
		}
		now := s.now().UTC()
		if rec.MachineID == "" && now.Sub(rec.Issued) > unboundTTL {
			return fmt.Errorf("%w: the token expired unused", agentapi.ErrUnknownBoot) // not swept yet
		}
		// The token is bound to the MAC that fetched the boot script.
		if rec.MAC != strings.ToLower(reg.BootMAC) {
			return fmt.Errorf("%w: token of %s, registration from %s", agentapi.ErrWrongMAC, rec.MAC, reg.BootMAC)
		}
		if rec.Peer.IsValid() && peer != rec.Peer {
			return fmt.Errorf("%w: registered from %s, now %s", agentapi.ErrWrongPeer, rec.Peer, peer)
		}
		c := claimOf(reg)
		held, reason, involved, err := resolve(tx, c)
		if err != nil {
			return err
		}
		switch {
		case reason != "":
		case rec.MachineID != "" && (held == nil || held.ID != rec.MachineID):
			// A re-registration within one boot may not move to another machine.
			reason = fmt.Sprintf("the boot is bound to machine %s, but the report now names %s", rec.MachineID, orUnknown(idOf(held)))
			involved = compactIDs(rec.MachineID, idOf(held))
		case held != nil && rec.MachineID == "" && s.agentAlive(tx, held, now):
			reason = fmt.Sprintf("machine %s's agent (boot %s) is still running, last heard %s ago; a second agent claims its identity",
				held.ID, held.BootID, now.Sub(held.LastSeen).Round(time.Second))
			involved = []string{held.ID}
		}
		if reason != "" {
			refused = fmt.Errorf("%w: %s", agentapi.ErrIdentityConflict, reason)
			return s.recordConflict(tx, Conflict{Time: now, Reason: reason, Boot: bootID, Peer: peer, BootMAC: c.bootMAC, UUID: c.uuid, Serial: c.serial, MACs: c.macs}, involved)
		}
		if held == nil {
			if err := s.admitNew(tx); err != nil {
				return err
			}
			isNew = true
			m = Machine{ID: newID(tx, c.keys()), State: StateDiscovered, FirstSeen: now}
		} else {
			m = *held
		}
		if rec.MachineID == "" {
			m.Boots++ // a re-registration within the same boot is not a new boot
			// A new boot supersedes the machine's earlier one: its agent
			// is gone (agentAlive said so), and its token goes with it.
			if m.BootID != "" && m.BootID != bootID {
				if err := tx.Delete(bootsBucket, m.BootID); err != nil {
					return err
				}
			}
			m.BootID, m.AgentReleased = bootID, false
			// Orders that end an agent (reboot, power off) are done once a
			// new boot registers; the others go to the new agent.
			m.Orders = slices.DeleteFunc(m.Orders, agentapi.Order.Ends)
			if err := unpend(tx, bootID, &rec); err != nil {
				return err
			}
		}
		s.apply(&m, reg, now)
		m.AgentState = "registered"
		if err := index(tx, c, m.ID); err != nil {
			return err
		}
		rec.Identity, rec.MachineID = identity, m.ID
		if !rec.Peer.IsValid() {
			rec.Peer = peer
		}
		if err := putJSON(tx, bootsBucket, bootID, rec); err != nil {
			return err
		}
		return putJSON(tx, machinesBucket, m.ID, m)
	})
	if err == nil && refused != nil {
		s.log.Warn("registration refused: identity conflict", "boot", bootID, "err", refused.Error(), "peer", peer,
			"serial", reg.Inventory.System.Serial, "uuid", reg.Inventory.System.UUID, "bootMAC", reg.BootMAC)
		s.changed()
		return agentapi.RegisterReply{}, refused
	}
	if err != nil {
		return agentapi.RegisterReply{}, err
	}
	s.log.Info("machine registered", "machine", m.ID, "new", isNew, "serial", m.Serial, "bootMAC", m.BootMAC, "rack", m.Rack, "boots", m.Boots)
	for _, f := range m.Flags {
		s.log.Warn("machine flagged", "machine", m.ID, "flag", f)
	}
	s.changed()
	return agentapi.RegisterReply{MachineID: m.ID, HeartbeatSeconds: s.heartbeat}, nil
}

// agentAlive reports whether the machine's current boot still has a
// running agent: its token exists, it was not told to reboot or power
// off, and it was heard from within three heartbeats. A machine that was
// reset without an order registers again once its old agent is silent.
func (s *Store) agentAlive(tx state.Tx, m *Machine, now time.Time) bool {
	if m.BootID == "" || m.AgentReleased || tx.Get(bootsBucket, m.BootID) == nil {
		return false
	}
	return now.Sub(m.LastSeen) < 3*time.Duration(s.heartbeat)*time.Second
}

// UpdateInventory implements agentapi.Backend. An update that changes the
// machine's UUID or serial, or adds MACs it cannot prove are its own, is
// refused and recorded like a conflicting registration.
func (s *Store) UpdateInventory(ctx context.Context, bootID string, inv *agentapi.Inventory) (agentapi.InventoryReply, error) {
	var id string
	var refused error
	err := s.store.Update(func(tx state.Tx) error {
		_, m, err := bootMachine(tx, bootID)
		if err != nil {
			return err
		}
		reg := agentapi.Registration{BootMAC: m.BootMAC, Arch: m.Arch, Inventory: *inv}
		c := claimOf(&reg)
		held, reason, involved, err := resolve(tx, c)
		if err != nil {
			return err
		}
		if reason == "" && (held == nil || held.ID != m.ID) {
			reason = fmt.Sprintf("an inventory update of machine %s names %s", m.ID, orUnknown(idOf(held)))
			involved = compactIDs(m.ID, idOf(held))
		}
		if reason != "" {
			refused = fmt.Errorf("%w: %s", agentapi.ErrIdentityConflict, reason)
			conflict := Conflict{Time: s.now().UTC(), Reason: reason, Boot: bootID, Peer: agentapi.PeerOf(ctx), BootMAC: c.bootMAC, UUID: c.uuid, Serial: c.serial, MACs: c.macs}
			return s.recordConflict(tx, conflict, compactIDs(append([]string{m.ID}, involved...)...))
		}
		s.apply(&m, &reg, s.now().UTC())
		id = m.ID
		if err := index(tx, c, m.ID); err != nil {
			return err
		}
		return putJSON(tx, machinesBucket, m.ID, m)
	})
	if err == nil && refused != nil {
		s.log.Warn("inventory update refused: identity conflict", "boot", bootID, "err", refused.Error())
		s.changed()
		return agentapi.InventoryReply{}, refused
	}
	if err != nil {
		return agentapi.InventoryReply{}, err
	}
	s.changed()
	return agentapi.InventoryReply{MachineID: id}, nil
}

// Heartbeat implements agentapi.Backend: it hands the agent the orders
// waiting for its machine.
func (s *Store) Heartbeat(_ context.Context, bootID string, hb *agentapi.Heartbeat) (agentapi.HeartbeatReply, error) {
	var orders []agentapi.Order
	answered := false // an order result came: whoever waits for it is told
	err := s.updateBootMachine(bootID, func(_ state.Tx, rec *bootRecord, m *Machine) error {
		if hb.Seq <= rec.LastSeq {
			return agentapi.ErrReplay
		}
		if m.BootID != "" && m.BootID != bootID {
			return agentapi.ErrUnknownBoot // a superseded boot
		}
		rec.LastSeq = hb.Seq
		m.LastSeen = s.now().UTC()
		m.AgentState = hb.State
		// An order stays until its final result comes back (or, for one
		// that ends the agent, until the next boot registers): a reply
		// lost on the way only means it is sent again.
		for _, r := range hb.Results {
			i := slices.IndexFunc(m.Orders, func(o agentapi.Order) bool { return o.ID == r.ID })
			if i < 0 {
				continue // not this machine's, or answered already
			}
			recordResult(m, r)
			answered = true
			if r.Final() {
				m.Orders = slices.Delete(m.Orders, i, i+1)
			}
		}
		orders = slices.Clone(m.Orders)
		for _, o := range orders {
			if o.Kind == agentapi.OrderReboot || o.Kind == agentapi.OrderPowerOff {
				// The agent goes away: the machine's next boot may register
				// at once, without waiting for this one to fall silent.
				m.AgentReleased = true
			}
		}
		return nil
	})
	if err != nil {
		return agentapi.HeartbeatReply{}, err
	}
	for _, o := range orders {
		s.log.Info("order sent", "boot", bootID, "order", o.Kind)
	}
	if answered {
		s.changed()
	}
	return agentapi.HeartbeatReply{Orders: orders, HeartbeatSeconds: s.heartbeat}, nil
}

// ErrNoMachine is returned for a machine ID the inventory does not hold.
var ErrNoMachine = errors.New("no such machine in the inventory")

// Rediscover orders the machine to reboot into discovery, so that its
// hardware is taken again (after a change, say). The order goes out with
// the reply to its agent's next heartbeat.
func (s *Store) Rediscover(id string) error {
	err := s.store.Update(func(tx state.Tx) error {
		var m Machine
		found, err := getJSON(tx, machinesBucket, id, &m)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: %q", ErrNoMachine, id)
		}
		if !slices.ContainsFunc(m.Orders, func(o agentapi.Order) bool { return o.Kind == agentapi.OrderReboot }) {
			o, err := numbered(tx, agentapi.Order{Kind: agentapi.OrderReboot})
			if err != nil {
				return err
			}
			m.Orders = append(m.Orders, o)
		}
		return putJSON(tx, machinesBucket, id, m)
	})
	if err != nil {
		return err
	}
	s.log.Info("rediscovery ordered", "machine", id)
	return nil
}

func (s *Store) updateBootMachine(bootID string, fn func(state.Tx, *bootRecord, *Machine) error) error {
	return s.store.Update(func(tx state.Tx) error {
		rec, m, err := bootMachine(tx, bootID)
		if err != nil {
			return err
		}
		if err := fn(tx, &rec, &m); err != nil {
			return err
		}
		if err := putJSON(tx, bootsBucket, bootID, rec); err != nil {
			return err
		}
		return putJSON(tx, machinesBucket, m.ID, m)
	})
}

// bootMachine reads a registered boot and its machine.
func bootMachine(tx state.Tx, bootID string) (bootRecord, Machine, error) {
	var rec bootRecord
	var m Machine
	found, err := getJSON(tx, bootsBucket, bootID, &rec)
	if err != nil {
		return rec, m, err
	}
	if !found || rec.MachineID == "" {
		return rec, m, agentapi.ErrUnknownBoot
	}
	if found, err := getJSON(tx, machinesBucket, rec.MachineID, &m); err != nil || !found {
		return rec, m, errors.Join(agentapi.ErrUnknownBoot, err)
	}
	return rec, m, nil
}

// List returns every machine, ordered by rack and then first sighting.
func (s *Store) List() ([]Machine, error) {
	return List(s.store)
}

// List reads the machines from any state store (also one opened read-only).
func List(st state.Store) ([]Machine, error) {
	var out []Machine
	err := st.View(func(tx state.Tx) error {
		return tx.ForEach(machinesBucket, func(id string, raw []byte) error {
			var m Machine
			if err := json.Unmarshal(raw, &m); err != nil {
				return fmt.Errorf("machine %s: %w", id, err)
			}
			if err := withLifecycle(tx, &m); err != nil {
				return err
			}
			out = append(out, m)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read inventory: %w", err)
	}
	slices.SortStableFunc(out, func(a, b Machine) int {
		if c := strings.Compare(a.Rack, b.Rack); c != 0 {
			return c
		}
		if c := a.FirstSeen.Compare(b.FirstSeen); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// apply copies a report into the machine record and works out its rack.
func (s *Store) apply(m *Machine, reg *agentapi.Registration, now time.Time) {
	inv := reg.Inventory
	m.Hardware = inv
	m.Serial, m.UUID = usableSerial(inv.System.Serial), usable(strings.ToLower(inv.System.UUID), junkUUIDs)
	m.BootMAC = strings.ToLower(reg.BootMAC)
	m.Firmware, m.Arch = inv.System.Firmware, reg.Arch
	m.MACs = m.MACs[:0]
	for _, n := range inv.NICs {
		m.MACs = append(m.MACs, strings.ToLower(n.MAC))
	}
	slices.Sort(m.MACs)
	m.MACs = slices.Compact(m.MACs)
	m.Summary = summarize(inv)
	m.LastSeen = now
	m.Switch, m.SwitchPort = "", ""
	for _, n := range inv.NICs {
		if n.LLDP != nil && (strings.EqualFold(n.MAC, reg.BootMAC) || m.Switch == "") {
			m.Switch, m.SwitchPort = n.LLDP.SystemName, n.LLDP.PortID
			if n.LLDP.PortDescription != "" && looksLikeMAC(n.LLDP.PortID) {
				m.SwitchPort = n.LLDP.PortDescription
			}
		}
	}
	m.Rack, m.RackSource = s.rackOf(m)
	m.Flags = s.flagsOf(m)
}

// flagsOf is everything about the machine the operator should look at.
func (s *Store) flagsOf(m *Machine) []string {
	flags := s.cablingFlags(m)
	if m.ConflictCount > 0 && len(m.Conflicts) > 0 {
		c := m.Conflicts[len(m.Conflicts)-1]
		flags = append(flags, fmt.Sprintf("identity: %d report(s) claiming this machine refused, the last at %s from %s (boot MAC %s, serial %q, UUID %q): %s",
			m.ConflictCount, c.Time.Format(time.RFC3339), orUnknown(addrString(c.Peer)), orUnknown(c.BootMAC), c.Serial, c.UUID, c.Reason))
	}
	return flags
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

var macRE = regexp.MustCompile(`^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$`)

func looksLikeMAC(s string) bool { return macRE.MatchString(s) }

// rackOf places the machine: the rack whose ToR the machine's switch is,
// else a rack named after the switch (rack-a-tor -> rack-a), else the
// SMBIOS chassis location, else the rack plan's port list.
func (s *Store) rackOf(m *Machine) (rack, source string) {
	if m.Switch != "" {
		for _, r := range s.racks {
			if r.ToR != "" && r.ToR == m.Switch {
				return r.Name, "lldp"
			}
		}
		return rackNameFromSwitch(m.Switch), "lldp"
	}
	if loc := m.Hardware.System.ChassisLocation; loc != "" {
		return DNSLabel(loc), "chassis"
	}
	if r, _, ok := s.planned(m); ok {
		return r.Name, "plan"
	}
	return "", ""
}

// planned finds where the rack plan expects this machine.
func (s *Store) planned(m *Machine) (config.Rack, config.RackPort, bool) {
	for _, r := range s.racks {
		for _, p := range r.Ports {
			if (p.Serial != "" && p.Serial == m.Serial) || (p.MAC != "" && slices.Contains(m.MACs, string(p.MAC))) {
				return r, p, true
			}
		}
	}
	return config.Rack{}, config.RackPort{}, false
}

// cablingFlags says where the machine disagrees with the rack plan.
func (s *Store) cablingFlags(m *Machine) []string {
	var flags []string
	r, p, ok := s.planned(m)
	if ok && m.Switch != "" {
		wantSwitch := r.ToR
		if (wantSwitch != "" && wantSwitch != m.Switch) || p.Port != m.SwitchPort {
			flags = append(flags, fmt.Sprintf("cabling: the rack plan puts this machine on %s port %s (rack %s), but it is seen on %s port %s",
				orUnknown(wantSwitch), p.Port, r.Name, m.Switch, orUnknown(m.SwitchPort)))
		}
	}
	if !ok && m.Switch != "" {
		for _, r := range s.racks {
			for _, p := range r.Ports {
				if r.ToR == m.Switch && p.Port == m.SwitchPort {
					flags = append(flags, fmt.Sprintf("cabling: %s port %s should hold %s, but this machine (serial %s) is there",
						m.Switch, p.Port, expectedName(p), orUnknown(m.Serial)))
				}
			}
		}
	}
	return flags
}

func expectedName(p config.RackPort) string {
	if p.Serial != "" {
		return "serial " + p.Serial
	}
	return "MAC " + string(p.MAC)
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

var nonNameRE = regexp.MustCompile(`[^a-z0-9-]+`)

// DNSLabel turns free text (a switch name, a chassis location, a serial)
// into a DNS label: lower case, runs of other characters as '-', at most
// 63 characters; it may return "".
func DNSLabel(s string) string {
	s = nonNameRE.ReplaceAllString(strings.ToLower(strings.TrimSpace(s)), "-")
	s = strings.Trim(s, "-")
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-")
	}
	return s
}

func rackNameFromSwitch(name string) string {
	n := DNSLabel(name)
	for _, suffix := range []string{"-tor", "-leaf", "-sw", "-switch"} {
		if trimmed, ok := strings.CutSuffix(n, suffix); ok && trimmed != "" {
			return trimmed
		}
	}
	return n
}

// Values that firmware vendors leave in place of real identities. Serials
// are judged by config.PlaceholderSerial, the list the answer file's
// validation uses too.
var junkUUIDs = []string{"", "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff", "03000200-0400-0500-0006-000700080009"}

// usableSerial returns the serial trimmed, or "" for a placeholder.
func usableSerial(v string) string {
	if config.PlaceholderSerial(v) {
		return ""
	}
	return strings.TrimSpace(v)
}

func usable(v string, junk []string) string {
	if slices.Contains(junk, strings.ToLower(strings.TrimSpace(v))) {
		return ""
	}
	return strings.TrimSpace(v)
}

// claim is the identity a report claims: usable UUID and serial (junk
// placeholders dropped), the boot MAC and every MAC, lower case, sorted.
type claim struct {
	uuid, serial, bootMAC string
	macs                  []string
}

func claimOf(reg *agentapi.Registration) claim {
	c := claim{
		uuid:    usable(strings.ToLower(reg.Inventory.System.UUID), junkUUIDs),
		serial:  usableSerial(reg.Inventory.System.Serial),
		bootMAC: strings.ToLower(reg.BootMAC),
	}
	if c.bootMAC != "" {
		c.macs = append(c.macs, c.bootMAC)
	}
	for _, n := range reg.Inventory.NICs {
		if n.MAC != "" {
			c.macs = append(c.macs, strings.ToLower(n.MAC))
		}
	}
	slices.Sort(c.macs)
	c.macs = slices.Compact(c.macs)
	return c
}

// keys are the index keys of the claim, strongest first.
func (c claim) keys() []string {
	var keys []string
	if c.uuid != "" {
		keys = append(keys, "uuid:"+c.uuid)
	}
	if c.serial != "" {
		keys = append(keys, "serial:"+c.serial)
	}
	for _, mac := range c.macs {
		keys = append(keys, "mac:"+mac)
	}
	return keys
}

// resolve finds the machine a claim belongs to. It returns nil for a new
// machine, or a reason to refuse the claim and the machines it touches:
// identifiers that point at different machines; a UUID or serial that
// differs from the machine's (a placeholder counts as none); MACs new to
// a machine that has no UUID and serial to prove it is the same one (a
// replaced NIC is taken only when both match).
func resolve(tx state.Tx, c claim) (*Machine, string, []string, error) {
	var held []*Machine
	var added []string // MACs the index does not know
	for _, k := range c.keys() {
		raw := tx.Get(indexBucket, k)
		if raw == nil {
			if mac, ok := strings.CutPrefix(k, "mac:"); ok {
				added = append(added, mac)
			}
			continue
		}
		if slices.ContainsFunc(held, func(m *Machine) bool { return m.ID == string(raw) }) {
			continue
		}
		var m Machine
		found, err := getJSON(tx, machinesBucket, string(raw), &m)
		if err != nil {
			return nil, "", nil, err
		}
		if found {
			held = append(held, &m)
		}
	}
	switch len(held) {
	case 0:
		return nil, "", nil, nil
	case 1:
	default:
		ids := make([]string, len(held))
		for i, m := range held {
			ids[i] = m.ID
		}
		return nil, fmt.Sprintf("its identifiers belong to different machines: %s", strings.Join(ids, ", ")), ids, nil
	}
	m := held[0]
	var why []string
	if m.UUID != c.uuid {
		why = append(why, fmt.Sprintf("system UUID %q, but machine %s has %q", c.uuid, m.ID, m.UUID))
	}
	if m.Serial != c.serial {
		why = append(why, fmt.Sprintf("serial %q, but machine %s has %q", c.serial, m.ID, m.Serial))
	}
	if len(added) > 0 && len(why) == 0 && (m.UUID == "" || m.Serial == "") {
		why = append(why, fmt.Sprintf("MACs %s are new to machine %s, which has no UUID and serial to prove it is the same machine", strings.Join(added, ", "), m.ID))
	}
	if len(why) > 0 {
		return m, "it claims machine " + m.ID + "'s identity with " + strings.Join(why, "; "), []string{m.ID}, nil
	}
	return m, "", nil, nil
}

// index points the claim's keys at the machine.
func index(tx state.Tx, c claim, id string) error {
	for _, k := range c.keys() {
		if err := tx.Put(indexBucket, k, []byte(id)); err != nil {
			return err
		}
	}
	return nil
}

func idOf(m *Machine) string {
	if m == nil {
		return ""
	}
	return m.ID
}

// compactIDs drops empty and repeated IDs, keeping the order.
func compactIDs(ids ...string) []string {
	var out []string
	for _, id := range ids {
		if id != "" && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// recordConflict keeps a refused report: in the conflicts bucket (the
// oldest beyond maxConflicts dropped) and on each machine it touched
// (flagged, the latest maxMachineConflicts kept). An agent retrying the
// same refused report is counted in the last record's Repeats instead of
// filling the records.
func (s *Store) recordConflict(tx state.Tx, c Conflict, machines []string) error {
	if len(machines) > maxConflictMachines {
		machines = machines[:maxConflictMachines]
	}
	c.Machines = machines
	if len(c.MACs) > 16 {
		c.MACs = c.MACs[:16]
	}
	key := ""
	if last := tx.Get(metaBucket, "conflict-last"); last != nil {
		var prev Conflict
		if found, err := getJSON(tx, conflictsBucket, string(last), &prev); err == nil && found && prev.sameClaim(c) {
			key, c.Repeats = string(last), prev.Repeats+1
		}
	}
	if key == "" {
		seq, err := tx.NextSequence(conflictsBucket)
		if err != nil {
			return err
		}
		key = seqKey(seq)
		if seq > maxConflicts {
			if err := tx.Delete(conflictsBucket, seqKey(seq-maxConflicts)); err != nil {
				return err
			}
		}
		if err := tx.Put(metaBucket, "conflict-last", []byte(key)); err != nil {
			return err
		}
	}
	if err := putJSON(tx, conflictsBucket, key, c); err != nil {
		return err
	}
	for _, id := range machines {
		var m Machine
		found, err := getJSON(tx, machinesBucket, id, &m)
		if err != nil {
			return err
		}
		if !found {
			continue
		}
		if n := len(m.Conflicts); n > 0 && m.Conflicts[n-1].sameClaim(c) {
			c := c
			c.Repeats = m.Conflicts[n-1].Repeats + 1
			m.Conflicts[n-1] = c
		} else {
			c := c
			c.Repeats = 0
			m.ConflictCount++
			m.Conflicts = append(m.Conflicts, c)
			if n := len(m.Conflicts); n > maxMachineConflicts {
				m.Conflicts = slices.Delete(m.Conflicts, 0, n-maxMachineConflicts)
			}
		}
		m.Flags = s.flagsOf(&m)
		if err := putJSON(tx, machinesBucket, id, m); err != nil {
			return err
		}
	}
	return nil
}

// sameClaim reports whether two refused reports are one agent retrying:
// the same boot claiming the same identity.
func (c Conflict) sameClaim(o Conflict) bool {
	return c.Boot == o.Boot && c.Peer == o.Peer && c.BootMAC == o.BootMAC && c.UUID == o.UUID && c.Serial == o.Serial && slices.Equal(c.MACs, o.MACs)
}

func seqKey(n uint64) string { return fmt.Sprintf("%016x", n) }

// Conflicts returns the refused reports kept, oldest first.
func (s *Store) Conflicts() ([]Conflict, error) { return Conflicts(s.store) }

// Conflicts reads the refused reports from any state store (also one
// opened read-only), oldest first.
func Conflicts(st state.Store) ([]Conflict, error) {
	var out []Conflict
	err := st.View(func(tx state.Tx) error {
		return tx.ForEach(conflictsBucket, func(k string, raw []byte) error {
			var c Conflict
			if err := json.Unmarshal(raw, &c); err != nil {
				return fmt.Errorf("conflict %s: %w", k, err)
			}
			out = append(out, c)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read identity conflicts: %w", err)
	}
	return out, nil
}

// admitNew counts a new machine record, refusing one past maxMachines.
func (s *Store) admitNew(tx state.Tx) error {
	n, err := counter(tx, "machines", func() (uint64, error) {
		var n uint64
		err := tx.ForEach(machinesBucket, func(string, []byte) error { n++; return nil })
		return n, err
	})
	if err != nil {
		return err
	}
	if n >= s.maxMachines {
		return fmt.Errorf("%w: the inventory holds %d machines, its limit", agentapi.ErrTooMany, n)
	}
	return setCounter(tx, "machines", n+1)
}

// counter reads a counter of metaBucket, initialising it with count the
// first time.
func counter(tx state.Tx, name string, count func() (uint64, error)) (uint64, error) {
	raw := tx.Get(metaBucket, name)
	if raw == nil {
		return count()
	}
	n, err := strconv.ParseUint(string(raw), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s/%s: %w", metaBucket, name, err)
	}
	return n, nil
}

func setCounter(tx state.Tx, name string, n uint64) error {
	return tx.Put(metaBucket, name, strconv.AppendUint(nil, n, 10))
}

// newID names a new machine after its strongest identifier, and is never
// the ID of another machine.
func newID(tx state.Tx, keys []string) string {
	for i := 0; ; i++ {
		seed := keys[0]
		if i > 0 {
			seed += "#" + strconv.Itoa(i)
		}
		sum := sha256.Sum256([]byte(seed))
		id := "m-" + hex.EncodeToString(sum[:5])
		if tx.Get(machinesBucket, id) == nil {
			return id
		}
	}
}

// summarize totals the hardware. Totals saturate at math.MaxInt64 (readers
// print sizes as int64) instead of wrapping: a record in the store may
// hold anything, even if the agent API refuses such reports.
func summarize(inv agentapi.Inventory) Summary {
	s := Summary{CPUs: inv.CPU.Threads, MemoryBytes: min(inv.Memory.TotalBytes, math.MaxInt64), NICs: len(inv.NICs)}
	for _, d := range inv.Disks {
		if d.Removable {
			continue
		}
		s.Disks++
		s.DiskBytes = addSat(s.DiskBytes, d.SizeBytes)
	}
	for _, p := range inv.PCI {
		if strings.EqualFold(p.Vendor, "0x10de") && (strings.HasPrefix(p.Class, "0x0300") || strings.HasPrefix(p.Class, "0x0302")) {
			s.GPUs++
			if s.GPUModel == "" {
				s.GPUModel = p.Name
			}
		}
	}
	return s
}

// addSat is a+b, at most math.MaxInt64.
func addSat(a, b uint64) uint64 {
	const top = math.MaxInt64
	if a >= top || b >= top-a {
		return top
	}
	return a + b
}

func getJSON(tx state.Tx, bucket, key string, v any) (bool, error) {
	raw := tx.Get(bucket, key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("%s/%s: %w", bucket, key, err)
	}
	return true, nil
}

func putJSON(tx state.Tx, bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(bucket, key, raw)
}
