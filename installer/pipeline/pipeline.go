// Package pipeline is the install's sequence: the phases every install
// goes through (the one list that `airlock plan` shows and the engine
// runs), and a Runner that executes steps in the journal. A step has an
// ID such as provision/m-3fa2, a phase, an optional machine, the steps it
// depends on and an idempotent run function. The runner records each
// start, end and failure durably before it goes on, skips what an earlier
// run finished, runs ready steps in parallel (bounded per phase), and when
// a step fails stops only the steps that depend on it.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/state"
)

// Phase is one stage of the install pipeline.
type Phase struct {
	Name string `json:"name"`
	Does string `json:"does"`
	// Parallel is how many of its steps may run at once.
	Parallel int `json:"-"`
}

// Phase names.
const (
	PhaseBundle    = "bundle"
	PhaseServe     = "serve"
	PhaseDiscover  = "discover"
	PhaseAdmit     = "admit"
	PhaseAssign    = "assign"
	PhaseProvision = "provision"
	PhaseBoot      = "boot"
	PhaseBootstrap = "bootstrap"
	PhaseJoin      = "join"
	PhasePlatform  = "platform"
	PhaseVerify    = "verify"
	PhaseReport    = "report"
	PhaseHandover  = "handover"
)

// Phases is the install pipeline, in order.
func Phases() []Phase {
	return []Phase{
		{PhaseBundle, "open and verify the signed bundle", 1},
		{PhaseServe, "serve DHCP, TFTP, HTTP boot, the agent API and the registry", 1},
		{PhaseDiscover, "network-boot machines into the discovery image and take their inventory", 8},
		{PhaseAdmit, "admit machines by the admission policy", 8},
		{PhaseAssign, "record each admitted machine's role, hostname, address and install disk", 8},
		{PhaseProvision, "wipe the pinned disk, write and verify the OS image, seed cloud-init", 8},
		{PhaseBoot, "boot each machine from its own disk and wait for it to phone home", 8},
		{PhaseBootstrap, "initialise the first control plane", 1},
		{PhaseJoin, "join the other control planes and the workers", 4},
		{PhasePlatform, "install the platform components along their dependency graph", 4},
		{PhaseVerify, "check that nodes and components are ready", 4},
		{PhaseReport, "write the as-built report", 1},
		{PhaseHandover, "hand the cluster its own registry and credentials", 1},
	}
}

// PhaseIndex returns the position of the named phase, or -1.
func PhaseIndex(name string) int {
	return slices.IndexFunc(Phases(), func(p Phase) bool { return p.Name == name })
}

// Step is one unit of work.
type Step struct {
	// ID names the step in the journal: PHASE or PHASE/MACHINE, or any
	// name the journal accepts.
	ID      string
	Phase   string
	Machine string
	// After lists the IDs of the steps that must be done first.
	After []string
	// Run does the work. It must be idempotent: after a crash it runs again
	// and must find what it did and finish it.
	Run func(ctx context.Context, r Reporter) error
}

// Reporter lets a running step tell how far it is.
type Reporter interface {
	Progress(p events.Progress)
}

// Outcome is how a step ended in one run.
type Outcome string

// Outcomes.
const (
	Done    Outcome = "done"
	Skipped Outcome = "skipped" // done by an earlier run
	Failed  Outcome = "failed"
	Blocked Outcome = "blocked" // a step it depends on failed
)

// Result is how every step of a run ended.
type Result struct {
	Outcomes map[string]Outcome
	// Errors holds each failed step's error, and for a blocked step the
	// failure that blocked it.
	Errors map[string]error
}

// Failed returns the IDs of the failed steps, sorted.
func (r Result) Failed() []string {
	var out []string
	for id, o := range r.Outcomes {
		if o == Failed {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Err joins every failure, naming its step; nil when nothing failed.
func (r Result) Err() error {
	var errs []error
	for _, id := range r.Failed() {
		errs = append(errs, fmt.Errorf("%s: %w", id, r.Errors[id]))
	}
	return errors.Join(errs...)
}

// Runner executes steps in the journal.
type Runner struct {
	Journal *state.Journal
	Events  events.Sink
	Log     *slog.Logger
}

// ErrBadPipeline means the steps given do not form a pipeline: a duplicate
// ID, an unknown phase, a dependency on a step that is not there, or a
// cycle.
var ErrBadPipeline = errors.New("invalid pipeline")

// Run executes steps until each is done, skipped, failed or blocked, or ctx
// ends. A step starts once all it depends on are done (or skipped); steps
// of the same phase run at most Phase.Parallel at once. The returned error
// is only about the run itself (the journal, a cancelled ctx, an invalid
// pipeline); step failures are in the Result.
func (r *Runner) Run(ctx context.Context, steps []Step) (Result, error) {
	res := Result{Outcomes: map[string]Outcome{}, Errors: map[string]error{}}
	if err := check(steps); err != nil {
		return res, err
	}
	limits := map[string]int{}
	for _, p := range Phases() {
		limits[p.Name] = max(p.Parallel, 1)
	}
	type done struct {
		id      string
		outcome Outcome
		err     error
		fatal   error
	}
	byID := map[string]*Step{}
	for i := range steps {
		byID[steps[i].ID] = &steps[i]
	}
	pending := slices.Clone(steps)
	// Steps run in phase order, then in the order given.
	slices.SortStableFunc(pending, func(a, b Step) int { return PhaseIndex(a.Phase) - PhaseIndex(b.Phase) })
	running := map[string]int{} // phase -> steps running
	results := make(chan done)
	var wg sync.WaitGroup
	inFlight := 0
	var fatal error
	for len(pending) > 0 || inFlight > 0 {
		// Block the dependants of failures, start what is ready.
		progress := true
		for progress && fatal == nil && ctx.Err() == nil {
			progress = false
			for i := 0; i < len(pending); i++ {
				s := pending[i]
				ready, blockedBy := true, ""
				for _, dep := range s.After {
					switch res.Outcomes[dep] {
					case Done, Skipped:
					case Failed, Blocked:
						blockedBy = dep
					default:
						ready = false
					}
					if blockedBy != "" {
						break
					}
				}
				if blockedBy != "" {
					cause := res.Errors[blockedBy]
					res.Outcomes[s.ID], res.Errors[s.ID] = Blocked, fmt.Errorf("depends on %s, which failed: %w", blockedBy, cause)
					r.emit(events.Event{Kind: events.StepBlocked, Phase: s.Phase, Step: s.ID, Machine: s.Machine, Message: "depends on " + blockedBy, Error: cause.Error()})
					pending = slices.Delete(pending, i, i+1)
					i--
					progress = true
					continue
				}
				if !ready || running[s.Phase] >= limits[s.Phase] {
					continue
				}
				pending = slices.Delete(pending, i, i+1)
				i--
				progress = true
				running[s.Phase]++
				inFlight++
				wg.Add(1)
				go func(s *Step) {
					defer wg.Done()
					outcome, err, jerr := r.runOne(ctx, s)
					results <- done{id: s.ID, outcome: outcome, err: err, fatal: jerr}
				}(byID[s.ID])
			}
		}
		if inFlight == 0 {
			if len(pending) > 0 && fatal == nil && ctx.Err() == nil {
				// Unreachable: check refuses cycles and unknown dependencies.
				fatal = fmt.Errorf("%w: %d steps can never start", ErrBadPipeline, len(pending))
			}
			break
		}
		d := <-results
		inFlight--
		running[byID[d.id].Phase]--
		res.Outcomes[d.id] = d.outcome
		if d.err != nil {
			res.Errors[d.id] = d.err
		}
		if d.fatal != nil && fatal == nil {
			fatal = d.fatal
		}
	}
	wg.Wait()
	if fatal != nil {
		return res, fatal
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("install interrupted: %w", err)
	}
	return res, nil
}

// runOne runs one step in the journal. jerr is an error of the journal
// itself, which ends the whole run.
func (r *Runner) runOne(ctx context.Context, s *Step) (outcome Outcome, stepErr, jerr error) {
	base := events.Event{Phase: s.Phase, Step: s.ID, Machine: s.Machine}
	last, found, err := r.Journal.Last(s.ID)
	if err != nil {
		return Failed, err, err
	}
	if found && last.Status == state.StatusDone {
		e := base
		e.Kind = events.StepSkipped
		r.emit(e)
		return Skipped, nil, nil
	}
	if _, err := r.Journal.Record(s.ID, state.StatusStarted, s.Machine, nil); err != nil {
		return Failed, err, err
	}
	e := base
	e.Kind = events.StepStarted
	r.emit(e)
	runErr := s.Run(ctx, reporter{r: r, base: base})
	if runErr != nil {
		if _, err := r.Journal.Record(s.ID, state.StatusFailed, s.Machine, runErr); err != nil {
			return Failed, runErr, err
		}
		e := base
		e.Kind, e.Error = events.StepFailed, runErr.Error()
		r.emit(e)
		if r.Log != nil {
			r.Log.Warn("step failed", "step", s.ID, "err", runErr)
		}
		return Failed, runErr, nil
	}
	if _, err := r.Journal.Record(s.ID, state.StatusDone, s.Machine, nil); err != nil {
		return Failed, err, err
	}
	e = base
	e.Kind = events.StepDone
	r.emit(e)
	return Done, nil, nil
}

func (r *Runner) emit(e events.Event) {
	if r.Events != nil {
		r.Events.Emit(e)
	}
}

type reporter struct {
	r    *Runner
	base events.Event
}

func (p reporter) Progress(pr events.Progress) {
	e := p.base
	e.Kind, e.Progress = events.StepProgress, &pr
	p.r.emit(e)
}

// check refuses duplicate IDs, unknown phases, unknown dependencies and
// cycles.
func check(steps []Step) error {
	ids := map[string]int{}
	for i, s := range steps {
		if _, dup := ids[s.ID]; dup {
			return fmt.Errorf("%w: step %q appears twice", ErrBadPipeline, s.ID)
		}
		if PhaseIndex(s.Phase) < 0 {
			return fmt.Errorf("%w: step %q has unknown phase %q", ErrBadPipeline, s.ID, s.Phase)
		}
		if s.Run == nil {
			return fmt.Errorf("%w: step %q has nothing to run", ErrBadPipeline, s.ID)
		}
		ids[s.ID] = i
	}
	for _, s := range steps {
		for _, d := range s.After {
			if _, ok := ids[d]; !ok {
				return fmt.Errorf("%w: step %q depends on %q, which is not in the pipeline", ErrBadPipeline, s.ID, d)
			}
		}
	}
	// Depth-first search for a cycle.
	const (
		unseen = iota
		open
		closed
	)
	mark := make([]int, len(steps))
	var path []string
	var visit func(i int) error
	visit = func(i int) error {
		switch mark[i] {
		case open:
			return fmt.Errorf("%w: dependency cycle %s -> %s", ErrBadPipeline, strings.Join(path, " -> "), steps[i].ID)
		case closed:
			return nil
		}
		mark[i] = open
		path = append(path, steps[i].ID)
		for _, d := range steps[i].After {
			if err := visit(ids[d]); err != nil {
				return err
			}
		}
		path = path[:len(path)-1]
		mark[i] = closed
		return nil
	}
	for i := range steps {
		if err := visit(i); err != nil {
			return err
		}
	}
	return nil
}

// PhaseStatus sums up the journal per phase: "pending" when no step of it
// ran, "failed" when a step's latest record is a failure, "running" when
// one started and has not ended, else "done". Steps are PHASE or
// PHASE/ANYTHING.
func PhaseStatus(journal []state.Entry) map[string]string {
	last := map[string]string{}
	for _, e := range journal {
		last[e.Step] = e.Status
	}
	out := map[string]string{}
	rank := map[string]int{"pending": 0, "done": 1, "running": 2, "failed": 3}
	for step, status := range last {
		phase, _, _ := strings.Cut(step, "/")
		s := "done"
		switch status {
		case state.StatusFailed:
			s = "failed"
		case state.StatusStarted:
			s = "running"
		}
		if rank[s] > rank[out[phase]] {
			out[phase] = s
		}
	}
	for _, p := range Phases() {
		if out[p.Name] == "" {
			out[p.Name] = "pending"
		}
	}
	return out
}
