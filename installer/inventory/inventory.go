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
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"airlock.dev/airlock/installer/config"
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
}

const (
	machinesBucket = "machines"      // machine ID -> Machine
	indexBucket    = "machine-index" // uuid:/serial:/mac: key -> machine ID
	bootsBucket    = "boots"         // boot ID -> bootRecord
)

// unboundTTL is how long a boot token waits for its agent. Every script
// fetch issues one; a discovery boot registers within minutes, so one
// still unused after this is from a boot that never got that far.
const unboundTTL = time.Hour

// Store is the inventory over a state store.
type Store struct {
	store state.Store
	racks []config.Rack
	log   *slog.Logger
	now   func() time.Time
	// heartbeat is how often agents are asked to report.
	heartbeat int

	mu     sync.Mutex
	notify chan struct{}
}

// New returns the inventory kept in s; racks is the answer file's rack
// plan (may be empty).
func New(s state.Store, racks []config.Rack, log *slog.Logger) *Store {
	return &Store{store: s, racks: racks, log: log, now: time.Now, heartbeat: 10, notify: make(chan struct{})}
}

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
// line.
func (s *Store) IssueBoot(mac string) (agentapi.Token, error) {
	t, err := agentapi.NewToken(nil)
	if err != nil {
		return agentapi.Token{}, err
	}
	hash := t.SecretHash()
	now := s.now().UTC()
	rec := bootRecord{SecretHash: hex.EncodeToString(hash[:]), MAC: strings.ToLower(mac), Issued: now}
	err = s.store.Update(func(tx state.Tx) error {
		// Tokens no agent came back with expire here, so that they do not
		// pile up with every script fetch.
		err := deleteBoots(tx, "", func(r bootRecord) bool { return r.Identity == "" && now.Sub(r.Issued) > unboundTTL })
		if err != nil {
			return err
		}
		return putJSON(tx, bootsBucket, t.BootID, rec)
	})
	if err != nil {
		return agentapi.Token{}, fmt.Errorf("issue boot token: %w", err)
	}
	return t, nil
}

// Boot implements agentapi.Backend.
func (s *Store) Boot(_ context.Context, bootID string) (agentapi.Boot, error) {
	var rec bootRecord
	var found bool
	err := s.store.View(func(tx state.Tx) (err error) {
		found, err = getJSON(tx, bootsBucket, bootID, &rec)
		return err
	})
	if err != nil {
		return agentapi.Boot{}, err
	}
	if !found {
		return agentapi.Boot{}, agentapi.ErrUnknownBoot
	}
	var b agentapi.Boot
	raw, err := hex.DecodeString(rec.SecretHash)
	if err != nil || len(raw) != len(b.SecretHash) {
		return agentapi.Boot{}, fmt.Errorf("boot %s: corrupt secret hash in state", bootID)
	}
	copy(b.SecretHash[:], raw)
	b.Identity, b.LastSeq = rec.Identity, rec.LastSeq
	return b, nil
}

// Register implements agentapi.Backend: it finds the machine the report
// comes from (or adds it) and binds the boot to it.
func (s *Store) Register(_ context.Context, bootID, identity string, reg *agentapi.Registration) (agentapi.RegisterReply, error) {
	var m Machine
	var isNew bool
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
		keys := identityKeys(reg)
		id, err := lookup(tx, keys)
		if err != nil {
			return err
		}
		now := s.now().UTC()
		if id == "" {
			isNew = true
			m = Machine{ID: newID(keys), State: StateDiscovered, FirstSeen: now}
		} else if _, err := getJSON(tx, machinesBucket, id, &m); err != nil {
			return err
		}
		if rec.MachineID == "" {
			m.Boots++ // a re-registration within the same boot is not a new boot
			// A new boot supersedes the machine's earlier ones: their
			// agents are gone, and their tokens go with them.
			id := m.ID
			if err := deleteBoots(tx, bootID, func(r bootRecord) bool { return r.MachineID == id }); err != nil {
				return err
			}
		}
		s.apply(&m, reg, now)
		m.AgentState = "registered"
		for _, k := range keys {
			if err := tx.Put(indexBucket, k, []byte(m.ID)); err != nil {
				return err
			}
		}
		rec.Identity, rec.MachineID = identity, m.ID
		if err := putJSON(tx, bootsBucket, bootID, rec); err != nil {
			return err
		}
		return putJSON(tx, machinesBucket, m.ID, m)
	})
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

// UpdateInventory implements agentapi.Backend.
func (s *Store) UpdateInventory(_ context.Context, bootID string, inv *agentapi.Inventory) (agentapi.InventoryReply, error) {
	var id string
	err := s.updateBootMachine(bootID, func(rec *bootRecord, m *Machine) error {
		reg := agentapi.Registration{BootMAC: m.BootMAC, Arch: m.Arch, Inventory: *inv}
		s.apply(m, &reg, s.now().UTC())
		id = m.ID
		return nil
	})
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
	err := s.updateBootMachine(bootID, func(rec *bootRecord, m *Machine) error {
		if hb.Seq <= rec.LastSeq {
			return agentapi.ErrReplay
		}
		rec.LastSeq = hb.Seq
		m.LastSeen = s.now().UTC()
		m.AgentState = hb.State
		orders, m.Orders = m.Orders, nil
		return nil
	})
	if err != nil {
		return agentapi.HeartbeatReply{}, err
	}
	for _, o := range orders {
		s.log.Info("order sent", "boot", bootID, "order", o.Kind)
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
			m.Orders = append(m.Orders, agentapi.Order{Kind: agentapi.OrderReboot})
		}
		return putJSON(tx, machinesBucket, id, m)
	})
	if err != nil {
		return err
	}
	s.log.Info("rediscovery ordered", "machine", id)
	return nil
}

func (s *Store) updateBootMachine(bootID string, fn func(*bootRecord, *Machine) error) error {
	return s.store.Update(func(tx state.Tx) error {
		var rec bootRecord
		found, err := getJSON(tx, bootsBucket, bootID, &rec)
		if err != nil {
			return err
		}
		if !found || rec.MachineID == "" {
			return agentapi.ErrUnknownBoot
		}
		var m Machine
		if found, err := getJSON(tx, machinesBucket, rec.MachineID, &m); err != nil || !found {
			return errors.Join(agentapi.ErrUnknownBoot, err)
		}
		if err := fn(&rec, &m); err != nil {
			return err
		}
		if err := putJSON(tx, bootsBucket, bootID, rec); err != nil {
			return err
		}
		return putJSON(tx, machinesBucket, m.ID, m)
	})
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
	m.Flags = s.cablingFlags(m)
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

// identityKeys are the index keys of a report, strongest first.
func identityKeys(reg *agentapi.Registration) []string {
	var keys []string
	if u := usable(strings.ToLower(reg.Inventory.System.UUID), junkUUIDs); u != "" {
		keys = append(keys, "uuid:"+u)
	}
	if sn := usableSerial(reg.Inventory.System.Serial); sn != "" {
		keys = append(keys, "serial:"+sn)
	}
	macs := []string{strings.ToLower(reg.BootMAC)}
	for _, n := range reg.Inventory.NICs {
		macs = append(macs, strings.ToLower(n.MAC))
	}
	slices.Sort(macs)
	for _, mac := range slices.Compact(macs) {
		if mac != "" {
			keys = append(keys, "mac:"+mac)
		}
	}
	return keys
}

// lookup finds the machine any key points to, strongest key first.
func lookup(tx state.Tx, keys []string) (string, error) {
	for _, k := range keys {
		if id := tx.Get(indexBucket, k); id != nil {
			return string(id), nil
		}
	}
	return "", nil
}

func newID(keys []string) string {
	sum := sha256.Sum256([]byte(keys[0]))
	return "m-" + hex.EncodeToString(sum[:5])
}

func summarize(inv agentapi.Inventory) Summary {
	s := Summary{CPUs: inv.CPU.Threads, MemoryBytes: inv.Memory.TotalBytes, NICs: len(inv.NICs)}
	for _, d := range inv.Disks {
		if d.Removable {
			continue
		}
		s.Disks++
		s.DiskBytes += d.SizeBytes
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

// deleteBoots removes the boot records (but keep) that match.
func deleteBoots(tx state.Tx, keep string, match func(bootRecord) bool) error {
	var gone []string
	err := tx.ForEach(bootsBucket, func(k string, v []byte) error {
		var r bootRecord
		if k != keep && json.Unmarshal(v, &r) == nil && match(r) {
			gone = append(gone, k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range gone {
		if err := tx.Delete(bootsBucket, k); err != nil {
			return err
		}
	}
	return nil
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
