package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/installer/plan"
	"airlock.dev/airlock/installer/state"
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
			var journal *state.Journal
			store, err := state.OpenReadOnly(g.stateDir)
			switch {
			case err == nil:
				defer store.Close()
				journal = state.NewJournal(store)
			case errors.Is(err, state.ErrNoState):
				// Nothing has run yet: every phase is pending.
			default:
				return fmt.Errorf("plan: %w", err)
			}
			p, err := plan.Make(a, journal)
			if err != nil {
				return err
			}
			return render(g.streams.Out, *output, p, func(w io.Writer) error { return printPlan(w, p) })
		},
	}
	file = answersFlag(cmd)
	output = outputFlag(cmd)
	return cmd
}

func printPlan(out io.Writer, p plan.Plan) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Site %s\n\nServices\n", p.Site)
	for _, s := range p.Services {
		fmt.Fprintf(w, "  %s\t%s\n", s.Name, s.Detail)
	}
	fmt.Fprintf(w, "\nBundle\t%s\nAdmission\t%s\n", p.Bundle, p.Admission)
	if len(p.Racks) > 0 {
		fmt.Fprintln(w, "\nRacks")
		for _, r := range p.Racks {
			fmt.Fprintf(w, "  %s\tToR %s\t%d expected machines\n", r.Name, r.ToR, r.Expected)
		}
	}
	fmt.Fprintln(w, "\nMachine rules (first match wins)")
	for _, r := range p.Rules {
		expects := ""
		if len(r.Expected) > 0 {
			expects = "expects " + strings.Join(r.Expected, ", ")
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Role, r.Hostname, r.Match, r.Admitted, expects)
	}
	c := p.Cluster
	fmt.Fprintf(w, "\nCluster %s\n  distribution\t%s\n  control planes\t%s\n  endpoint\t%s\n  pods\t%s\n  services\t%s\n",
		c.Name, c.Distribution, c.ControlPlanes, c.Endpoint, c.PodCIDR, c.ServiceCIDR)
	fmt.Fprintln(w, "\nPlatform (in order)")
	for _, comp := range p.Platform {
		verb := "install"
		if !comp.Install {
			verb = "skip"
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\n", comp.Name, verb, comp.Reason)
	}
	fmt.Fprintln(w, "\nPhases")
	for i, ph := range p.Phases {
		fmt.Fprintf(w, "  %d. %s\t%s\t%s\n", i+1, ph.Name, ph.Status, ph.Does)
	}
	return w.Flush()
}
