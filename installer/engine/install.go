package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"airlock.dev/airlock/installer/assign"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/pipeline"
)

// InstallOptions tune an install.
type InstallOptions struct {
	// Expect is how many machines discovery waits for when the admission
	// policy does not name them (approve, any). With allowlist, discovery
	// waits for every machine the rules name by MAC or serial.
	Expect int
	// DiscoverTimeout bounds the wait for the expected machines
	// (default 30 minutes).
	DiscoverTimeout time.Duration
}

// Target is the state every admitted machine reaches in an install: a
// Ready node of the cluster when the engine has an OS image to write and
// the bundle carries Kubernetes, booted from its own disk with an OS image
// alone, else assigned.
func (e *Engine) Target() string {
	if len(e.images) > 0 && e.kube != nil {
		return inventory.StateReady
	}
	if len(e.images) > 0 {
		return inventory.StateBooted
	}
	return inventory.StateAssigned
}

// ErrNothingExpected means the install does not know which machines to
// wait for.
var ErrNothingExpected = errors.New("the install does not know how many machines to wait for: name them in the rules (admission allowlist) or give --expect N")

// Install runs the install pipeline over the engine's answers: it waits for
// the services, discovers the expected machines, admits them by the
// admission policy (asking the Decider where the policy leaves it to a
// person), records each admitted machine's assignment and, given an OS
// image, has each machine's agent write it to the pinned disk with the
// machine's seed and reboot into it, until the installed system phones
// home. Every step is
// journaled; run again, it skips what is done and takes up what failed or
// was interrupted. Run must be serving (or about to) for the services step
// to finish. Step failures are in the Result; the error is about the run
// itself.
func (e *Engine) Install(ctx context.Context, o InstallOptions) (pipeline.Result, error) {
	if o.DiscoverTimeout == 0 {
		o.DiscoverTimeout = 30 * time.Minute
	}
	a := e.answers
	expect := expected(a, o.Expect)
	if expect.count == 0 && len(expect.identities) == 0 {
		return pipeline.Result{}, ErrNothingExpected
	}
	run := &pipeline.Runner{Journal: e.journal, Events: e.bus, Log: e.log}
	total := pipeline.Result{Outcomes: map[string]pipeline.Outcome{}, Errors: map[string]error{}}
	merge := func(r pipeline.Result) {
		for k, v := range r.Outcomes {
			total.Outcomes[k] = v
		}
		for k, v := range r.Errors {
			total.Errors[k] = v
		}
	}
	// Round one: the services serve and the expected machines are there.
	var first []pipeline.Step
	var afterBundle []string
	if id := e.bundleID; id != nil {
		// The bundle was opened and verified before the engine was built;
		// the step records which one, signed by which key.
		first = append(first, pipeline.Step{ID: pipeline.PhaseBundle, Phase: pipeline.PhaseBundle, Run: func(context.Context, pipeline.Reporter) error {
			e.log.Info("bundle verified", "bundle", id.Name, "key", id.KeyID, "authenticity", id.Authenticity)
			return nil
		}})
		afterBundle = []string{pipeline.PhaseBundle}
	}
	res, err := run.Run(ctx, append(first, []pipeline.Step{
		{ID: pipeline.PhaseServe, Phase: pipeline.PhaseServe, After: afterBundle, Run: func(ctx context.Context, _ pipeline.Reporter) error {
			select {
			case <-e.ready:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}},
		{ID: pipeline.PhaseDiscover, Phase: pipeline.PhaseDiscover, After: []string{pipeline.PhaseServe}, Run: func(ctx context.Context, r pipeline.Reporter) error {
			return e.discover(ctx, expect, o.DiscoverTimeout, r)
		}},
	}...))
	merge(res)
	if err != nil || len(res.Failed()) > 0 {
		return total, err
	}
	// Round two: admission, machine by machine.
	machines, err := e.inv.List()
	if err != nil {
		return total, err
	}
	var steps []pipeline.Step
	for _, m := range machines {
		steps = append(steps, e.machineStep(pipeline.PhaseAdmit, m.ID, nil, e.admit))
	}
	res, err = run.Run(ctx, steps)
	merge(res)
	if err != nil {
		return total, err
	}
	// Round three: what each admitted machine becomes.
	if machines, err = e.inv.List(); err != nil {
		return total, err
	}
	if steps, err = e.installSteps(machines); err != nil {
		return total, err
	}
	res, err = run.Run(ctx, steps)
	merge(res)
	return total, err
}

// installSteps are the steps of round three for the admitted machines:
// assign, and with an OS image provision and boot, and with Kubernetes
// too bootstrap (the first control plane) or join.
func (e *Engine) installSteps(machines []inventory.Machine) ([]pipeline.Step, error) {
	var steps []pipeline.Step
	var err error
	// With Kubernetes, every seed names the first control plane and the
	// pod subnets of all machines: provisioning waits for every
	// assignment. bootstrap/FIRST-CP waits for that machine's boot, and
	// join/M for M's boot and the bootstrap.
	cluster := len(e.images) > 0 && e.kube != nil
	var firstCP string
	var assignIDs []string
	if cluster {
		if firstCP, err = e.firstControlPlane(); err != nil {
			return nil, err
		}
		for _, m := range machines {
			if admitted(m.State) {
				assignIDs = append(assignIDs, pipeline.PhaseAssign+"/"+m.ID)
			}
		}
	}
	bootstrapID := pipeline.PhaseBootstrap + "/" + firstCP
	for _, m := range machines {
		if !admitted(m.State) {
			continue
		}
		assignID := pipeline.PhaseAssign + "/" + m.ID
		steps = append(steps, e.machineStep(pipeline.PhaseAssign, m.ID, nil, e.assign))
		if len(e.images) > 0 {
			provisionID := pipeline.PhaseProvision + "/" + m.ID
			after := []string{assignID}
			if cluster {
				after = assignIDs
			}
			bootID := pipeline.PhaseBoot + "/" + m.ID
			steps = append(steps,
				e.machineStep(pipeline.PhaseProvision, m.ID, after, e.provision),
				e.machineStep(pipeline.PhaseBoot, m.ID, []string{provisionID}, e.boot))
			switch {
			case !cluster:
			case m.ID == firstCP:
				steps = append(steps, e.machineStep(pipeline.PhaseBootstrap, m.ID, []string{bootID}, e.waitNode))
			default:
				steps = append(steps, e.machineStep(pipeline.PhaseJoin, m.ID, []string{bootID, bootstrapID}, e.waitNode))
			}
		}
	}
	return steps, nil
}

// admitted reports whether a machine in state s was admitted (and not
// denied since).
func admitted(s string) bool {
	switch s {
	case inventory.StateDiscovered, inventory.StateAwaitingApproval, inventory.StateDenied:
		return false
	}
	return true
}

// machineStep is the step PHASE/MACHINE; a failure also marks the machine
// failed, naming the step.
func (e *Engine) machineStep(phase, id string, after []string, fn func(ctx context.Context, id string, r pipeline.Reporter) error) pipeline.Step {
	stepID := phase + "/" + id
	return pipeline.Step{ID: stepID, Phase: phase, Machine: id, After: after, Run: func(ctx context.Context, r pipeline.Reporter) error {
		err := fn(ctx, id, r)
		if err != nil && ctx.Err() == nil {
			if _, terr := e.inv.Transition(id, inventory.StateFailed, stepID+": "+err.Error()); terr != nil {
				err = errors.Join(err, terr)
			}
		}
		return err
	}}
}

// expectation is what discovery waits for.
type expectation struct {
	identities []string // "mac:..." and "serial:..." the rules name (allowlist)
	count      int      // or a number of machines (approve, any)
}

func expected(a *config.Answers, n int) expectation {
	if a.Admission.Policy != config.AdmitAllowlist && a.Admission.Policy != "" {
		return expectation{count: n}
	}
	var ids []string
	for _, r := range a.Machines {
		for _, mac := range r.Match.MACs {
			ids = append(ids, "mac:"+strings.ToLower(string(mac)))
		}
		for _, sn := range r.Match.Serials {
			ids = append(ids, "serial:"+sn)
		}
	}
	slices.Sort(ids)
	return expectation{identities: slices.Compact(ids), count: n}
}

// missing returns the expected identities no machine has yet, and how many
// machines are there.
func (x expectation) missing(ms []inventory.Machine) []string {
	have := map[string]bool{}
	for _, m := range ms {
		if m.Serial != "" {
			have["serial:"+m.Serial] = true
		}
		have["mac:"+m.BootMAC] = true
		for _, mac := range m.MACs {
			have["mac:"+mac] = true
		}
	}
	var out []string
	for _, id := range x.identities {
		if !have[id] {
			out = append(out, id)
		}
	}
	return out
}

// discover waits until the expected machines have reported.
func (e *Engine) discover(ctx context.Context, x expectation, timeout time.Duration, r pipeline.Reporter) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	want := int64(max(x.count, len(x.identities)))
	for {
		changed := e.inv.Changed()
		ms, err := e.inv.List()
		if err != nil {
			return err
		}
		miss := x.missing(ms)
		found := int64(len(x.identities) - len(miss))
		if len(x.identities) == 0 {
			found = int64(min(len(ms), x.count))
		}
		r.Progress(events.Progress{Done: found, Total: want, Unit: "machines"})
		if len(miss) == 0 && len(ms) >= x.count {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			if len(miss) > 0 {
				return fmt.Errorf("after %v, no machine has reported with %s", timeout, strings.Join(miss, ", "))
			}
			return fmt.Errorf("after %v, %d of %d machines have reported", timeout, len(ms), x.count)
		}
	}
}

// admit applies the admission policy to one machine. A machine the policy
// does not admit stays discovered (the step is done: it decided); one it
// leaves to a person waits for the Decider or `airlock approve|deny`.
func (e *Engine) admit(ctx context.Context, id string, _ pipeline.Reporter) error {
	for {
		changed := e.inv.Changed()
		m, as, err := e.assignment(id)
		if err != nil {
			return err
		}
		switch {
		case admitted(m.State) || m.State == inventory.StateDenied:
			return nil
		case as.Admission == assign.Admitted:
			_, err := e.inv.Transition(id, inventory.StateAdmitted, fmt.Sprintf("admission %s: rule %q", policyName(e.answers), as.Rule))
			return err
		case as.Admission != assign.AwaitsApproval:
			e.bus.Emit(events.Event{Kind: events.Notice, Phase: pipeline.PhaseAdmit, Machine: id, Message: "not admitted: " + as.Reason})
			return nil
		}
		if m.State == inventory.StateDiscovered {
			if _, err := e.inv.Transition(id, inventory.StateAwaitingApproval, as.Reason); err != nil {
				return err
			}
			v, err := e.decider.Admit(ctx, events.Candidate{MachineID: id, Serial: m.Serial, BootMAC: m.BootMAC, Rack: m.Rack,
				Summary: summaryText(m.Summary), Rule: as.Rule, Role: as.Role, Hostname: as.Hostname})
			if err != nil {
				return fmt.Errorf("ask about machine %s: %w", id, err)
			}
			switch v {
			case events.Approve:
				_, err := e.inv.Transition(id, inventory.StateAdmitted, "approved")
				return err
			case events.Deny:
				_, err := e.inv.Transition(id, inventory.StateDenied, "denied")
				return err
			}
			e.bus.Emit(events.Event{Kind: events.Notice, Phase: pipeline.PhaseAdmit, Machine: id,
				Message: fmt.Sprintf("waiting for an operator: airlock approve %s (or deny)", id)})
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// assign records what an admitted machine becomes, once.
func (e *Engine) assign(_ context.Context, id string, _ pipeline.Reporter) error {
	m, as, err := e.assignment(id)
	if err != nil {
		return err
	}
	if m.Assignment != nil {
		return nil // recorded by an earlier run
	}
	if as.Admission != assign.Admitted {
		return fmt.Errorf("machine %s cannot be assigned: %s", id, as.Reason)
	}
	rule := e.answers.Machines[slices.IndexFunc(e.answers.Machines, func(r config.Rule) bool { return r.Name == as.Rule })]
	disk, err := assign.Disk(rule.InstallDisk, m.Hardware.Disks)
	if err != nil {
		return fmt.Errorf("rule %q: %w", rule.Name, err)
	}
	_, err = e.inv.Assign(id, inventory.Assignment{Rule: as.Rule, Role: as.Role, Hostname: as.Hostname, Index: as.Index, Address: as.Address, Disk: &disk})
	if errors.Is(err, inventory.ErrAssigned) {
		return nil
	}
	return err
}

// assignment is machine id and what the rules make of it beside every
// other machine.
func (e *Engine) assignment(id string) (inventory.Machine, assign.Assignment, error) {
	ms, err := e.inv.List()
	if err != nil {
		return inventory.Machine{}, assign.Assignment{}, err
	}
	i := slices.IndexFunc(ms, func(m inventory.Machine) bool { return m.ID == id })
	if i < 0 {
		return inventory.Machine{}, assign.Assignment{}, fmt.Errorf("%w: %q", inventory.ErrNoMachine, id)
	}
	for _, as := range assign.Assign(e.answers, ms) {
		if as.MachineID == id {
			return ms[i], as, nil
		}
	}
	return ms[i], assign.Assignment{}, fmt.Errorf("machine %s has no assignment (a bug)", id)
}

func policyName(a *config.Answers) string {
	if a.Admission.Policy == "" {
		return config.AdmitAllowlist
	}
	return a.Admission.Policy
}

func summaryText(s inventory.Summary) string {
	t := fmt.Sprintf("%d CPUs, %d GiB, %d disks", s.CPUs, s.MemoryBytes>>30, s.Disks)
	if s.GPUs > 0 {
		t += fmt.Sprintf(", %d GPUs (%s)", s.GPUs, s.GPUModel)
	}
	return t
}
