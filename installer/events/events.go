// Package events is the engine's only link to people: the typed events it
// emits while it serves and installs (services ready, pipeline steps
// started, progressing, done or failed, machines changing state), the Sink
// that receives them, and the Decider it asks when a decision belongs to a
// person (admitting a machine). The command line and the wizard are two
// implementations of both. It imports nothing of the engine, so tui/ may
// depend on it.
package events

import (
	"context"
	"sync"
	"time"
)

// Kind says what an event reports.
type Kind string

// Event kinds.
const (
	// ServiceReady: the boot and registry services serve; Message says where.
	ServiceReady Kind = "service-ready"
	// StepStarted, StepDone, StepFailed: a pipeline step ran (Step, Phase,
	// Machine; Error for a failure).
	StepStarted Kind = "step-started"
	StepDone    Kind = "step-done"
	StepFailed  Kind = "step-failed"
	// StepSkipped: the journal shows the step done by an earlier run.
	StepSkipped Kind = "step-skipped"
	// StepBlocked: a step the step depends on failed (Message names it).
	StepBlocked Kind = "step-blocked"
	// StepProgress: a running step moved (Progress).
	StepProgress Kind = "step-progress"
	// MachineState: a machine moved from From to State.
	MachineState Kind = "machine-state"
	// Notice: something a person should read that is not an error.
	Notice Kind = "notice"
	// InstallDone: the pipeline ended; Error is set when anything failed.
	InstallDone Kind = "install-done"
)

// Event is one thing that happened. Strings in it may come from machines'
// reports: escape them before showing them on a terminal.
type Event struct {
	Time     time.Time `json:"time"`
	Kind     Kind      `json:"kind"`
	Phase    string    `json:"phase,omitempty"`
	Step     string    `json:"step,omitempty"`
	Machine  string    `json:"machine,omitempty"`
	From     string    `json:"from,omitempty"`
	State    string    `json:"state,omitempty"`
	Message  string    `json:"message,omitempty"`
	Error    string    `json:"error,omitempty"`
	Progress *Progress `json:"progress,omitempty"`
}

// Progress is how far a running step is.
type Progress struct {
	Done  int64  `json:"done"`
	Total int64  `json:"total,omitempty"` // 0: unknown
	Unit  string `json:"unit,omitempty"`  // "bytes", "machines", ...
	// Rate is Done's rate of change per second, if known.
	Rate float64 `json:"rate,omitempty"`
}

// Sink receives events. Emit must return quickly and must not call back
// into the engine.
type Sink interface {
	Emit(Event)
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(Event)

// Emit implements Sink.
func (f SinkFunc) Emit(e Event) { f(e) }

// Discard is a Sink that drops every event.
type Discard struct{}

// Emit implements Sink.
func (Discard) Emit(Event) {}

// Bus fans events out to sinks added at any time. It stamps events that
// have no time. The zero Bus is ready to use.
type Bus struct {
	mu    sync.Mutex
	sinks map[int]Sink
	next  int
	now   func() time.Time
}

// Add registers a sink and returns the function that removes it.
func (b *Bus) Add(s Sink) (remove func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sinks == nil {
		b.sinks = map[int]Sink{}
	}
	id := b.next
	b.next++
	b.sinks[id] = s
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.sinks, id)
	}
}

// Emit implements Sink: every registered sink gets the event, in the order
// events are emitted.
func (b *Bus) Emit(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e.Time.IsZero() {
		if b.now != nil {
			e.Time = b.now()
		} else {
			e.Time = time.Now()
		}
	}
	e.Time = e.Time.UTC()
	for i := 0; i < b.next; i++ {
		if s, ok := b.sinks[i]; ok {
			s.Emit(e)
		}
	}
}

// Verdict is a person's answer about a machine.
type Verdict string

// Verdicts.
const (
	Approve Verdict = "approve"
	Deny    Verdict = "deny"
	// Defer leaves the machine waiting: the decision comes later, from
	// `airlock approve|deny` over the control socket or from the wizard.
	Defer Verdict = "defer"
)

// Candidate is a discovered machine awaiting a decision, as a person sees
// it. Its strings come from the machine's own report.
type Candidate struct {
	MachineID string `json:"machineID"`
	Serial    string `json:"serial,omitempty"`
	BootMAC   string `json:"bootMAC,omitempty"`
	Rack      string `json:"rack,omitempty"`
	Summary   string `json:"summary,omitempty"`
	// Rule, Role and Hostname are what the machine would become.
	Rule     string `json:"rule,omitempty"`
	Role     string `json:"role,omitempty"`
	Hostname string `json:"hostname,omitempty"`
}

// Decider answers the questions the engine leaves to a person. The engine
// never prompts: the wizard asks in a dialog, the unattended command line
// defers to `airlock approve|deny`.
type Decider interface {
	// Admit is asked once for each machine that the admission policy
	// `approve` leaves to a person.
	Admit(ctx context.Context, c Candidate) (Verdict, error)
}

// DeferAll is the Decider of unattended runs: every question waits for
// `airlock approve|deny`.
type DeferAll struct{}

// Admit implements Decider.
func (DeferAll) Admit(context.Context, Candidate) (Verdict, error) { return Defer, nil }
