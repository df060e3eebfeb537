package pipeline

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/state"
)

// recorder collects events.
type recorder struct {
	mu  sync.Mutex
	evs []events.Event
}

func (r *recorder) Emit(e events.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, e)
}

func (r *recorder) kinds(step string) []events.Kind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []events.Kind
	for _, e := range r.evs {
		if e.Step == step {
			out = append(out, e.Kind)
		}
	}
	return out
}

func newRunner(st state.Store) (*Runner, *recorder) {
	rec := &recorder{}
	return &Runner{Journal: state.NewJournal(st), Events: rec}, rec
}

func ok(context.Context, Reporter) error { return nil }

func TestRunOrderAndSkipOnSecondRun(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var mu sync.Mutex
	var order []string
	step := func(id, phase string, after ...string) Step {
		return Step{ID: id, Phase: phase, After: after, Run: func(context.Context, Reporter) error {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, id)
			return nil
		}}
	}
	steps := []Step{
		step("boot/m-1", PhaseBoot, "provision/m-1"),
		step("provision/m-1", PhaseProvision, "assign/m-1"),
		step("assign/m-1", PhaseAssign),
	}
	r, rec := newRunner(st)
	res, err := r.Run(context.Background(), steps)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"assign/m-1", "provision/m-1", "boot/m-1"}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	for _, s := range steps {
		if res.Outcomes[s.ID] != Done {
			t.Errorf("%s: %s, want done", s.ID, res.Outcomes[s.ID])
		}
		if got := rec.kinds(s.ID); !slices.Equal(got, []events.Kind{events.StepStarted, events.StepDone}) {
			t.Errorf("%s events %v", s.ID, got)
		}
	}
	// Again: the journal says every step is done, so nothing runs.
	order = nil
	res, err = r.Run(context.Background(), steps)
	if err != nil {
		t.Fatal(err)
	}
	if len(order) != 0 {
		t.Fatalf("second run ran %v", order)
	}
	for _, s := range steps {
		if res.Outcomes[s.ID] != Skipped {
			t.Errorf("%s: %s on the second run, want skipped", s.ID, res.Outcomes[s.ID])
		}
	}
}

func TestFailureStopsOnlyDependants(t *testing.T) {
	r, rec := newRunner(state.NewMem())
	boom := errors.New("digest mismatch")
	var ranBoot2, provisioned atomic.Bool
	steps := []Step{
		{ID: "provision/m-1", Phase: PhaseProvision, Run: func(context.Context, Reporter) error { return boom }},
		{ID: "provision/m-2", Phase: PhaseProvision, Run: ok},
		{ID: "boot/m-1", Phase: PhaseBoot, After: []string{"provision/m-1"}, Run: func(context.Context, Reporter) error {
			if !provisioned.Load() {
				t.Error("boot/m-1 ran although its provisioning failed")
			}
			return nil
		}},
		{ID: "boot/m-2", Phase: PhaseBoot, After: []string{"provision/m-2"}, Run: func(context.Context, Reporter) error {
			ranBoot2.Store(true)
			return nil
		}},
		{ID: "bootstrap", Phase: PhaseBootstrap, After: []string{"boot/m-1", "boot/m-2"}, Run: ok},
	}
	res, err := r.Run(context.Background(), steps)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Outcome{"provision/m-1": Failed, "provision/m-2": Done, "boot/m-1": Blocked, "boot/m-2": Done, "bootstrap": Blocked}
	for id, o := range want {
		if res.Outcomes[id] != o {
			t.Errorf("%s: %s, want %s", id, res.Outcomes[id], o)
		}
	}
	if !ranBoot2.Load() {
		t.Error("boot/m-2 did not run")
	}
	if !errors.Is(res.Errors["bootstrap"], boom) || !strings.Contains(res.Errors["bootstrap"].Error(), "boot/m-1") {
		t.Errorf("bootstrap's error %v does not name the failure", res.Errors["bootstrap"])
	}
	if got := res.Failed(); !slices.Equal(got, []string{"provision/m-1"}) {
		t.Errorf("Failed() = %v", got)
	}
	if err := res.Err(); err == nil || !strings.Contains(err.Error(), "provision/m-1: digest mismatch") {
		t.Errorf("Err() = %v", err)
	}
	if got := rec.kinds("bootstrap"); !slices.Equal(got, []events.Kind{events.StepBlocked}) {
		t.Errorf("bootstrap events %v", got)
	}
	// A failed step runs again on the next run; what was done is skipped.
	r2 := &Runner{Journal: r.Journal}
	var reran atomic.Bool
	steps[0].Run = func(context.Context, Reporter) error { reran.Store(true); provisioned.Store(true); return nil }
	res, err = r2.Run(context.Background(), steps)
	if err != nil {
		t.Fatal(err)
	}
	if !reran.Load() || res.Outcomes["provision/m-1"] != Done || res.Outcomes["provision/m-2"] != Skipped || res.Outcomes["bootstrap"] != Done {
		t.Errorf("resume: %v (reran %v)", res.Outcomes, reran.Load())
	}
}

// Steps of one phase run in parallel up to the phase's bound, never more.
func TestParallelWithinBound(t *testing.T) {
	r, _ := newRunner(state.NewMem())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	limit := Phases()[PhaseIndex(PhaseProvision)].Parallel
	var now, peak atomic.Int32
	all := make(chan struct{})
	var started atomic.Int32
	var steps []Step
	for i := range limit * 2 {
		steps = append(steps, Step{ID: "provision/m-" + string(rune('a'+i)), Phase: PhaseProvision, Run: func(ctx context.Context, _ Reporter) error {
			n := now.Add(1)
			defer now.Add(-1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			// The first `limit` steps wait until all of them run at once:
			// that only happens if the runner runs them in parallel.
			if started.Add(1) == int32(limit) {
				close(all)
			}
			select {
			case <-all:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
	}
	res, err := r.Run(ctx, steps)
	if err != nil {
		t.Fatal(err)
	}
	if f := res.Failed(); len(f) > 0 {
		t.Fatalf("steps failed (not run in parallel?): %v", res.Err())
	}
	if p := peak.Load(); p != int32(limit) {
		t.Fatalf("peak concurrency %d, want exactly the bound %d", p, limit)
	}
	// bootstrap's bound is 1: two steps never overlap.
	now.Store(0)
	peak.Store(0)
	one := func(context.Context, Reporter) error {
		n := now.Add(1)
		defer now.Add(-1)
		if n > 1 {
			return errors.New("overlap")
		}
		time.Sleep(10 * time.Millisecond) // widens the window an overlap would need
		return nil
	}
	res, err = r.Run(ctx, []Step{{ID: "bootstrap/a", Phase: PhaseBootstrap, Run: one}, {ID: "bootstrap/b", Phase: PhaseBootstrap, Run: one}})
	if err != nil || len(res.Failed()) > 0 {
		t.Fatalf("bound 1: %v %v", err, res.Err())
	}
}

// A step that started but never finished (the process died) runs again.
func TestInterruptedStepRunsAgain(t *testing.T) {
	st := state.NewMem()
	j := state.NewJournal(st)
	if _, err := j.Record("provision/m-1", state.StatusStarted, "", nil); err != nil {
		t.Fatal(err)
	}
	r, _ := newRunner(st)
	var ran bool
	res, err := r.Run(context.Background(), []Step{{ID: "provision/m-1", Phase: PhaseProvision, Run: func(context.Context, Reporter) error { ran = true; return nil }}})
	if err != nil || !ran || res.Outcomes["provision/m-1"] != Done {
		t.Fatalf("ran %v, outcome %v, err %v", ran, res.Outcomes, err)
	}
	last, _, _ := j.Last("provision/m-1")
	if last.Status != state.StatusDone {
		t.Fatalf("journal says %s", last.Status)
	}
}

func TestCancelStopsStarting(t *testing.T) {
	r, _ := newRunner(state.NewMem())
	ctx, cancel := context.WithCancel(context.Background())
	steps := []Step{
		{ID: "admit", Phase: PhaseAdmit, Run: func(context.Context, Reporter) error { cancel(); return nil }},
		{ID: "assign", Phase: PhaseAssign, After: []string{"admit"}, Run: func(context.Context, Reporter) error {
			t.Error("a step started after the context was cancelled")
			return nil
		}},
	}
	_, err := r.Run(ctx, steps)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want cancelled", err)
	}
}

func TestProgressEvents(t *testing.T) {
	r, rec := newRunner(state.NewMem())
	_, err := r.Run(context.Background(), []Step{{ID: "provision/m-1", Phase: PhaseProvision, Machine: "m-1", Run: func(_ context.Context, rp Reporter) error {
		rp.Progress(events.Progress{Done: 512, Total: 1024, Unit: "bytes"})
		return nil
	}}})
	if err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var found bool
	for _, e := range rec.evs {
		if e.Kind == events.StepProgress && e.Progress != nil && e.Progress.Done == 512 && e.Machine == "m-1" && e.Phase == PhaseProvision {
			found = true
		}
	}
	if !found {
		t.Fatalf("no progress event in %+v", rec.evs)
	}
}

func TestBadPipelines(t *testing.T) {
	cases := map[string][]Step{
		"duplicate":     {{ID: "a", Phase: PhaseAdmit, Run: ok}, {ID: "a", Phase: PhaseAdmit, Run: ok}},
		"unknown phase": {{ID: "a", Phase: "dance", Run: ok}},
		"unknown dep":   {{ID: "a", Phase: PhaseAdmit, After: []string{"b"}, Run: ok}},
		"cycle":         {{ID: "a", Phase: PhaseAdmit, After: []string{"c"}, Run: ok}, {ID: "b", Phase: PhaseAdmit, After: []string{"a"}, Run: ok}, {ID: "c", Phase: PhaseAdmit, After: []string{"b"}, Run: ok}},
		"no run":        {{ID: "a", Phase: PhaseAdmit}},
	}
	for name, steps := range cases {
		t.Run(name, func(t *testing.T) {
			r, _ := newRunner(state.NewMem())
			if _, err := r.Run(context.Background(), steps); !errors.Is(err, ErrBadPipeline) {
				t.Fatalf("err %v, want ErrBadPipeline", err)
			}
		})
	}
}
