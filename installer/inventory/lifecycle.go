package inventory

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/state"
)

// Machine lifecycle states, in the order a machine goes through them.
// StateDiscovered is declared with Machine.
const (
	// StateAwaitingApproval: the admission policy leaves the machine to an
	// operator (`airlock approve|deny`, or the wizard).
	StateAwaitingApproval = "awaiting-approval"
	StateAdmitted         = "admitted"
	StateDenied           = "denied"
	// StateAssigned: role, hostname, address and install disk are recorded
	// and never recomputed.
	StateAssigned   = "assigned"
	StateInstalling = "installing"
	StateInstalled  = "installed"
	StateBooted     = "booted"
	StateJoined     = "joined"
	StateReady      = "ready"
	// StateFailed: a step of the machine's install failed; Failure says
	// which and why. A rerun of the install takes it up again.
	StateFailed = "failed"
)

// next lists the states each state may move to. Any state but denied may
// move to failed; failed goes back to where the install resumes.
var next = map[string][]string{
	StateDiscovered:       {StateAwaitingApproval, StateAdmitted, StateDenied},
	StateAwaitingApproval: {StateAdmitted, StateDenied},
	StateDenied:           {StateAdmitted},
	StateAdmitted:         {StateAssigned, StateDenied},
	StateAssigned:         {StateInstalling},
	StateInstalling:       {StateInstalled},
	StateInstalled:        {StateBooted, StateInstalling},
	StateBooted:           {StateJoined, StateInstalling},
	StateJoined:           {StateReady},
	StateReady:            {},
	StateFailed:           {StateAdmitted, StateAssigned, StateInstalling, StateInstalled, StateBooted, StateJoined},
}

// ErrTransition is returned for a state change the lifecycle does not allow.
var ErrTransition = errors.New("state change not allowed")

// Transition is one state change of a machine, kept as its history.
type Transition struct {
	From   string    `json:"from"`
	To     string    `json:"to"`
	Time   time.Time `json:"time"`
	Reason string    `json:"reason,omitempty"`
}

// maxHistory bounds a machine's kept history; the oldest entries go.
const maxHistory = 200

// Assignment is what an admitted machine becomes. It is recorded once and
// never recomputed, so a hostname or address does not shift when another
// machine appears or LLDP moves one.
type Assignment struct {
	Rule     string `json:"rule"`
	Role     string `json:"role"`
	Hostname string `json:"hostname"`
	// Index is the machine's 1-based position among the rule's machines
	// ({index} in the hostname template).
	Index   int    `json:"index"`
	Address string `json:"address,omitempty"` // static address/prefix, if the rule has one
	// Disk is the install disk, pinned by its identity.
	Disk *DiskPin  `json:"disk,omitempty"`
	At   time.Time `json:"at"`
}

// DiskPin names a disk by what identifies it, not by its kernel name,
// which can change between boots.
type DiskPin struct {
	Name      string `json:"name"` // the kernel name when it was chosen, for people
	WWN       string `json:"wwn,omitempty"`
	Serial    string `json:"serial,omitempty"`
	SizeBytes uint64 `json:"sizeBytes"`
}

// lifecycle is a machine's install state, kept apart from what its agent
// reports so that no report can change it.
type lifecycle struct {
	State      string       `json:"state"`
	History    []Transition `json:"history,omitempty"`
	Assignment *Assignment  `json:"assignment,omitempty"`
	// Failure is the last failure: the step and its error.
	Failure string `json:"failure,omitempty"`
	// LocalBoots counts the local-boot answers the installed machine got
	// since its installed system last phoned home.
	LocalBoots int `json:"localBoots,omitempty"`
	// LastLocalBoot is when the last counted one was answered.
	LastLocalBoot time.Time `json:"lastLocalBoot,omitzero"`
}

// BootLoopAfter is how many local-boot answers without a phone-home in
// between make a boot loop: the machine keeps coming back to the network
// instead of coming up from its disk.
const BootLoopAfter = 3

// DefaultSameBootWindow: local-boot answers within this time of the last
// counted one are the same firmware pass, not another boot. UEFI firmware
// tries every network entry of its boot list before the disk's (OVMF:
// iPXE, PXE over IPv4 and IPv6, HTTP boot), and each one that reaches
// airlock fetches a script again; under emulation they came 2.5 minutes
// apart. A machine that really loops is still counted once per window.
const DefaultSameBootWindow = 5 * time.Minute

// BootLoop says what a machine's boot-loop flag says, or "" when it is in
// none.
func BootLoop(localBoots int) string {
	if localBoots < BootLoopAfter {
		return ""
	}
	return fmt.Sprintf("boot loop: sent to its local disk %d times without the installed system phoning home in between: it does not come up from its disk (look at its console)", localBoots)
}

// LocalBoot counts a local-boot answer to machine id (unless it falls in
// the same firmware pass as the last counted one) and returns the count
// since its installed system last phoned home.
func (s *Store) LocalBoot(id string) (int, error) {
	var n int
	now := s.now().UTC()
	err := s.store.Update(func(tx state.Tx) error {
		if tx.Get(machinesBucket, id) == nil {
			return fmt.Errorf("%w: %q", ErrNoMachine, id)
		}
		lc, err := getLifecycle(tx, id)
		if err != nil {
			return err
		}
		n = lc.LocalBoots
		if lc.LocalBoots > 0 && now.Sub(lc.LastLocalBoot) < s.sameBoot {
			return nil
		}
		lc.LocalBoots++
		lc.LastLocalBoot = now
		n = lc.LocalBoots
		return putJSON(tx, lifecycleBucket, id, lc)
	})
	if err != nil {
		return 0, err
	}
	if n >= BootLoopAfter {
		s.log.Warn("machine flagged", "machine", id, "flag", BootLoop(n))
	}
	s.changed()
	return n, nil
}

const lifecycleBucket = "lifecycle" // machine ID -> lifecycle

// LifecycleBucket and OrdersBucket are the buckets a state change and a
// new order write, for tools that watch the store's writes
// (state.WithCommitHook).
const (
	LifecycleBucket = lifecycleBucket
	OrdersBucket    = ordersBucket
)

// SetEvents makes the inventory announce every state change to sink.
func (s *Store) SetEvents(sink events.Sink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = sink
}

func (s *Store) emit(e events.Event) {
	s.mu.Lock()
	sink := s.events
	s.mu.Unlock()
	if sink != nil {
		sink.Emit(e)
	}
}

func getLifecycle(tx state.Tx, id string) (lifecycle, error) {
	lc := lifecycle{State: StateDiscovered}
	_, err := getJSON(tx, lifecycleBucket, id, &lc)
	return lc, err
}

// Transition moves machine id to state to, with the reason kept in its
// history. A failure's reason is also kept as the machine's Failure. It
// returns the state the machine was in; moving to the state it is in
// already is no change and no error.
func (s *Store) Transition(id, to, reason string) (from string, err error) {
	return s.TransitionWith(id, to, reason, nil)
}

// TransitionWith is Transition with also run first in the same
// transaction: the change is made only if also succeeds, and what also
// writes is kept only with the change (or with the machine already in
// state to). A caller whose own record causes the change (a phone-home's
// token spent) writes it in also, so that no crash keeps one without the
// other.
func (s *Store) TransitionWith(id, to, reason string, also func(tx state.Tx) error) (from string, err error) {
	now := s.now().UTC()
	var changed bool
	err = s.store.Update(func(tx state.Tx) error {
		if tx.Get(machinesBucket, id) == nil {
			return fmt.Errorf("%w: %q", ErrNoMachine, id)
		}
		if also != nil {
			if err := also(tx); err != nil {
				return err
			}
		}
		lc, err := getLifecycle(tx, id)
		if err != nil {
			return err
		}
		from = lc.State
		if from == to {
			return nil
		}
		if to != StateFailed && !slices.Contains(next[from], to) {
			return fmt.Errorf("%w: machine %s is %s and cannot become %s", ErrTransition, id, from, to)
		}
		if to == StateFailed && from == StateDenied {
			return fmt.Errorf("%w: machine %s is denied", ErrTransition, id)
		}
		lc.State = to
		if to == StateBooted {
			// The installed system phoned home: its local boots are
			// counted afresh (see LocalBoot), in the same transaction.
			lc.LocalBoots, lc.LastLocalBoot = 0, time.Time{}
		}
		if to == StateFailed {
			lc.Failure = reason
		} else {
			lc.Failure = ""
		}
		lc.History = append(lc.History, Transition{From: from, To: to, Time: now, Reason: reason})
		if n := len(lc.History); n > maxHistory {
			lc.History = slices.Delete(lc.History, 0, n-maxHistory)
		}
		changed = true
		return putJSON(tx, lifecycleBucket, id, lc)
	})
	if err != nil {
		return from, err
	}
	if changed {
		s.log.Info("machine state", "machine", id, "from", from, "to", to, "reason", reason)
		s.emit(events.Event{Time: now, Kind: events.MachineState, Machine: id, From: from, State: to, Message: reason})
		s.changed()
	}
	return from, nil
}

// ErrAssigned is returned when a machine already has an assignment.
var ErrAssigned = errors.New("machine is already assigned")

// Assign records what an admitted machine becomes and moves it to
// assigned. A machine keeps its first assignment: assigning it again
// returns ErrAssigned with the recorded one.
func (s *Store) Assign(id string, as Assignment) (Assignment, error) {
	now := s.now().UTC()
	as.At = now
	var kept *Assignment
	err := s.store.Update(func(tx state.Tx) error {
		if tx.Get(machinesBucket, id) == nil {
			return fmt.Errorf("%w: %q", ErrNoMachine, id)
		}
		lc, err := getLifecycle(tx, id)
		if err != nil {
			return err
		}
		if lc.Assignment != nil {
			kept = lc.Assignment
			return nil
		}
		if lc.State != StateAdmitted {
			return fmt.Errorf("%w: machine %s is %s, not admitted", ErrTransition, id, lc.State)
		}
		lc.Assignment = &as
		lc.History = append(lc.History, Transition{From: lc.State, To: StateAssigned, Time: now,
			Reason: fmt.Sprintf("rule %q: %s %s", as.Rule, as.Role, as.Hostname)})
		lc.State = StateAssigned
		return putJSON(tx, lifecycleBucket, id, lc)
	})
	if err != nil {
		return Assignment{}, err
	}
	if kept != nil {
		return *kept, ErrAssigned
	}
	s.log.Info("machine assigned", "machine", id, "rule", as.Rule, "role", as.Role, "hostname", as.Hostname, "address", as.Address)
	s.emit(events.Event{Time: now, Kind: events.MachineState, Machine: id, From: StateAdmitted, State: StateAssigned, Message: as.Hostname})
	s.changed()
	return as, nil
}

// Get returns one machine with its lifecycle.
func (s *Store) Get(id string) (Machine, error) {
	var m Machine
	err := s.store.View(func(tx state.Tx) error {
		found, err := getJSON(tx, machinesBucket, id, &m)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: %q", ErrNoMachine, id)
		}
		return withLifecycle(tx, &m)
	})
	return m, err
}

// withLifecycle fills the machine's State, History, Assignment and
// Failure from its lifecycle record.
func withLifecycle(tx state.Tx, m *Machine) error {
	lc, err := getLifecycle(tx, m.ID)
	if err != nil {
		return err
	}
	m.State, m.History, m.Assignment, m.Failure = lc.State, lc.History, lc.Assignment, lc.Failure
	m.LocalBoots = lc.LocalBoots
	if f := BootLoop(lc.LocalBoots); f != "" {
		m.Flags = append(slices.Clip(m.Flags), f)
	}
	return nil
}
