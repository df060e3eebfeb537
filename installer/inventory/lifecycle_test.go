package inventory

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

func TestLifecycle(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := New(st, nil, slog.New(slog.DiscardHandler))
	var got []events.Event
	s.SetEvents(events.SinkFunc(func(e events.Event) { got = append(got, e) }))
	reg := registration(t, "SN-1", "", "52:54:00:00:00:01")
	tok, id := register(t, s, reg)

	if _, err := s.Transition(id, StateInstalling, "skip ahead"); !errors.Is(err, ErrTransition) {
		t.Fatalf("discovered -> installing: %v, want ErrTransition", err)
	}
	if _, err := s.Assign(id, Assignment{Rule: "cp", Role: "control-plane", Hostname: "cp-1", Index: 1}); !errors.Is(err, ErrTransition) {
		t.Fatalf("assigning a machine not admitted: %v", err)
	}
	if _, err := s.Transition("m-nope", StateAdmitted, ""); !errors.Is(err, ErrNoMachine) {
		t.Fatalf("unknown machine: %v", err)
	}
	for _, to := range []string{StateAwaitingApproval, StateAdmitted} {
		if _, err := s.Transition(id, to, "test"); err != nil {
			t.Fatal(err)
		}
	}
	as, err := s.Assign(id, Assignment{Rule: "cp", Role: "control-plane", Hostname: "cp-1", Index: 1, Disk: &DiskPin{Name: "vda", Serial: "D1", SizeBytes: 1 << 30}})
	if err != nil || as.At.IsZero() {
		t.Fatalf("assign: %+v %v", as, err)
	}
	// A second assignment never replaces the first.
	kept, err := s.Assign(id, Assignment{Rule: "other", Hostname: "w-9"})
	if !errors.Is(err, ErrAssigned) || kept.Hostname != "cp-1" {
		t.Fatalf("reassign: %+v %v", kept, err)
	}
	if _, err := s.Transition(id, StateInstalling, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Transition(id, StateFailed, "provision/"+id+": digest mismatch"); err != nil {
		t.Fatal(err)
	}
	// A report from the machine's agent does not touch its lifecycle.
	if _, err := s.UpdateInventory(context.Background(), tok.BootID, &reg.Inventory); err != nil {
		t.Fatal(err)
	}
	st.Close()

	st, err = state.OpenReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ms, err := List(st)
	if err != nil || len(ms) != 1 {
		t.Fatalf("list: %v %v", ms, err)
	}
	m := ms[0]
	if m.State != StateFailed || m.Failure != "provision/"+id+": digest mismatch" || m.Assignment == nil || m.Assignment.Disk.Serial != "D1" {
		t.Fatalf("after reopen: state %s failure %q assignment %+v", m.State, m.Failure, m.Assignment)
	}
	var states []string
	for _, h := range m.History {
		states = append(states, h.To)
		if h.Time.IsZero() {
			t.Errorf("transition without a time: %+v", h)
		}
	}
	want := []string{StateAwaitingApproval, StateAdmitted, StateAssigned, StateInstalling, StateFailed}
	if !slices.Equal(states, want) {
		t.Fatalf("history %v, want %v", states, want)
	}
	var evStates []string
	for _, e := range got {
		if e.Kind == events.MachineState && e.Machine == id {
			evStates = append(evStates, e.State)
		}
	}
	if !slices.Equal(evStates, want) {
		t.Fatalf("events %v, want %v", evStates, want)
	}
}

// Local-boot answers minutes apart are boots of their own; those within
// the window of the last counted one are the same firmware pass (UEFI
// tries every network entry before the disk's). The third boot flags a
// boot loop; a phone-home starts the count afresh; the count survives a
// restart of airlock (it is in the store).
func TestLocalBootsOfOneFirmwarePass(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := New(st, nil, slog.New(slog.DiscardHandler))
	clock := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	_, id := register(t, s, registration(t, "SN-1", "", "52:54:00:00:00:01"))
	count := func(after time.Duration, want int) {
		t.Helper()
		clock = clock.Add(after)
		n, err := s.LocalBoot(id)
		if err != nil || n != want {
			t.Fatalf("after %v: count %d (%v), want %d", after, n, err, want)
		}
		m, err := s.Get(id)
		if err != nil || m.LocalBoots != want || (BootLoop(want) != "") != slices.ContainsFunc(m.Flags, func(f string) bool { return f == BootLoop(want) }) {
			t.Fatalf("after %v: machine %d local boots, flags %q (%v)", after, m.LocalBoots, m.Flags, err)
		}
	}
	count(0, 1)
	count(150*time.Second, 1) // HTTP boot after iPXE, same pass
	count(2*time.Minute, 1)   // 4.5 minutes after the counted one
	count(time.Minute, 2)     // 5.5 minutes: a boot of its own
	// The installed system phones home: the machine becomes booted
	// (through the states an install passes on the way).
	for _, to := range []string{StateAdmitted, StateAssigned, StateInstalling, StateInstalled, StateBooted} {
		if _, err := s.Transition(id, to, "test"); err != nil {
			t.Fatal(err)
		}
	}
	count(time.Second, 1) // afresh, window or not
	count(10*time.Minute, 2)
	count(10*time.Minute, 3)
	st.Close()

	st, err = state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s = New(st, nil, slog.New(slog.DiscardHandler))
	s.now = func() time.Time { return clock }
	count(10*time.Minute, 4)
	if _, err := s.LocalBoot("m-none"); !errors.Is(err, ErrNoMachine) {
		t.Fatalf("unknown machine: %v", err)
	}
}

// OrderWith and TransitionWith keep the caller's own write and theirs in
// one transaction: both are kept, or neither.
func TestOrderAndTransitionWithTheCallersWrite(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := New(st, nil, slog.New(slog.DiscardHandler))
	_, id := register(t, s, registration(t, "SN-1", "", "52:54:00:00:00:01"))
	boom := errors.New("boom")
	reboot := agentapi.Order{Kind: agentapi.OrderReboot}
	if _, err := s.OrderWith(id, reboot, func(state.Tx, agentapi.Order) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("OrderWith whose write fails: %v", err)
	}
	if m, _ := s.Get(id); len(m.Orders) != 0 {
		t.Fatalf("the order was queued without the caller's write: %+v", m.Orders)
	}
	o, err := s.OrderWith(id, reboot, func(tx state.Tx, o agentapi.Order) error { return tx.Put("caller", id, []byte(o.ID)) })
	if err != nil {
		t.Fatal(err)
	}
	var kept string
	st.View(func(tx state.Tx) error { kept = string(tx.Get("caller", id)); return nil })
	if m, _ := s.Get(id); len(m.Orders) != 1 || m.Orders[0].ID != o.ID || kept != o.ID {
		t.Fatalf("queued %+v, the caller kept %q", m.Orders, kept)
	}
	if _, err := s.TransitionWith(id, StateAdmitted, "test", func(state.Tx) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("TransitionWith whose write fails: %v", err)
	}
	if m, _ := s.Get(id); m.State != StateDiscovered {
		t.Fatalf("the change was made without the caller's write: %s", m.State)
	}
	// A change the lifecycle refuses keeps nothing of the caller's.
	if _, err := s.TransitionWith(id, StateBooted, "test", func(tx state.Tx) error { return tx.Put("caller", "spent", []byte("1")) }); !errors.Is(err, ErrTransition) {
		t.Fatalf("discovered -> booted: %v", err)
	}
	st.View(func(tx state.Tx) error { kept = string(tx.Get("caller", "spent")); return nil })
	if kept != "" {
		t.Fatal("the caller's write was kept with a refused change")
	}
	if _, err := s.TransitionWith(id, StateAdmitted, "test", func(tx state.Tx) error { return tx.Put("caller", "spent", []byte("1")) }); err != nil {
		t.Fatal(err)
	}
	st.View(func(tx state.Tx) error { kept = string(tx.Get("caller", "spent")); return nil })
	if m, _ := s.Get(id); m.State != StateAdmitted || kept != "1" {
		t.Fatalf("state %s, caller's write %q", m.State, kept)
	}
}
