package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/plan"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/installer/termtext"
)

func newPlanCommand(g *globals) *cobra.Command {
	var file, output *string
	cmd := &cobra.Command{
		Use:   "plan -f FILE",
		Short: "Show what an install would do, touching nothing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			a, err := loadAnswers(g.streams.Err, *file)
			if err != nil {
				return err
			}
			machines, journal, err := readProgress(cmd.Context(), g.stateDir)
			if err != nil {
				return fmt.Errorf("plan: %w", err)
			}
			p := plan.Make(a, machines, journal)
			return render(g.streams.Out, *output, p, func(w io.Writer) error { return printPlan(w, p) })
		},
	}
	file = answersFlag(cmd)
	output = outputFlag(cmd)
	return cmd
}

// readProgress gets the inventory and the journal from the running airlock,
// or from the store when none runs; both are empty when nothing ran yet.
func readProgress(ctx context.Context, stateDir string) ([]inventory.Machine, []state.Entry, error) {
	machines, journal, _, err := readProgressLive(ctx, stateDir)
	return machines, journal, err
}

// readProgressLive is readProgress that also tells whether an airlock
// runs on the state directory (live) or the store was read.
// An airlock that dies while it answers (control.ErrLost) is asked once
// more: dead, it refuses, and the store is read.
func readProgressLive(ctx context.Context, stateDir string) (_ []inventory.Machine, _ []state.Entry, live bool, _ error) {
	machines, journal, live, err := readProgressOnce(ctx, stateDir)
	if errors.Is(err, control.ErrLost) {
		machines, journal, live, err = readProgressOnce(ctx, stateDir)
	}
	return machines, journal, live, err
}

func readProgressOnce(ctx context.Context, stateDir string) (_ []inventory.Machine, _ []state.Entry, live bool, _ error) {
	c := control.NewClient(stateDir)
	machines, err := c.Machines(ctx)
	if err == nil {
		journal, err := c.Journal(ctx)
		if errors.Is(err, control.ErrNotRunning) {
			// It died between the two requests.
			err = fmt.Errorf("%w: %w", control.ErrLost, err)
		}
		return machines, journal, true, err
	}
	if !errors.Is(err, control.ErrNotRunning) {
		return nil, nil, false, err
	}
	st, err := state.OpenReadOnly(stateDir)
	if errors.Is(err, state.ErrNoState) {
		return nil, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, err
	}
	defer st.Close()
	if machines, err = inventory.List(st); err != nil {
		return nil, nil, false, err
	}
	journal, err := state.NewJournal(st).Entries()
	return machines, journal, false, err
}

// printPlan writes the plan as text. Names, hostnames, serials and reasons
// come from the answer file or from agents' reports: every text cell is
// escaped, so none can act on the terminal or forge a row with a newline.
func printPlan(out io.Writer, p plan.Plan) error {
	e := termtext.Escape
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Site %s\n\nServices\n", e(p.Site))
	for _, s := range p.Services {
		fmt.Fprintf(w, "  %s\t%s\n", e(s.Name), e(s.Detail))
	}
	fmt.Fprintf(w, "\nBundle\t%s\nAdmission\t%s\n", e(p.Bundle), e(p.Admission))
	if len(p.Racks) > 0 {
		fmt.Fprintln(w, "\nRacks")
		for _, r := range p.Racks {
			fmt.Fprintf(w, "  %s\tToR %s\t%d expected machines\n", e(r.Name), e(r.ToR), r.Expected)
		}
	}
	fmt.Fprintln(w, "\nMachine rules (first match wins)")
	for _, r := range p.Rules {
		expects := ""
		if len(r.Expected) > 0 {
			expects = "expects " + strings.Join(r.Expected, ", ")
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\n", e(r.Name), e(r.Role), e(r.Hostname), e(r.Match), e(r.Admitted), e(expects))
	}
	fmt.Fprintln(w, "\nDiscovered machines")
	if len(p.Machines) == 0 {
		fmt.Fprintln(w, "  none yet: they appear as they network-boot")
	}
	for _, m := range p.Machines {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", e(m.MachineID), e(dash(m.Rack)), e(dash(m.Serial)), e(dash(m.Rule)), e(dash(m.Hostname)), e(m.Admission), e(m.Reason))
	}
	c := p.Cluster
	fmt.Fprintf(w, "\nCluster %s\n  distribution\t%s\n  control planes\t%s\n  endpoint\t%s\n  pods\t%s\n  services\t%s\n",
		e(c.Name), e(c.Distribution), e(c.ControlPlanes), e(c.Endpoint), e(c.PodCIDR), e(c.ServiceCIDR))
	fmt.Fprintln(w, "\nPlatform (in order)")
	for _, comp := range p.Platform {
		verb := "install"
		if !comp.Install {
			verb = "skip"
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\n", e(comp.Name), verb, e(comp.Reason))
	}
	fmt.Fprintln(w, "\nPhases")
	for i, ph := range p.Phases {
		fmt.Fprintf(w, "  %d. %s\t%s\t%s\n", i+1, e(ph.Name), e(ph.Status), e(ph.Does))
	}
	return w.Flush()
}
