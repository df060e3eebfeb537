package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/kube"
	"airlock.dev/airlock/installer/pipeline"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/installer/termtext"
)

// Status is what `airlock status` reports.
type Status struct {
	// AirlockRunning says whether an airlock runs on the state directory.
	// When none does, a step that started and has not ended was
	// interrupted (airlock stopped or crashed in it), and shows so: it
	// runs again when the install is resumed.
	AirlockRunning bool            `json:"airlockRunning"`
	Phases         []PhaseStatus   `json:"phases"`
	Machines       []MachineStatus `json:"machines"`
	// Cluster is the Kubernetes cluster, once airlock gave machines their
	// nodes' seeds.
	Cluster *ClusterStatus `json:"cluster,omitempty"`
}

// ClusterStatus is the Kubernetes cluster as `airlock status` shows it.
type ClusterStatus struct {
	// PodNetwork is "minimal" while nodes have airlock's per-node bridge
	// (until the platform's CNI).
	PodNetwork string `json:"podNetwork"`
	APIServer  string `json:"apiServer,omitempty"`
	// FirstControlPlane is the machine that runs kubeadm init.
	FirstControlPlane string `json:"firstControlPlane,omitempty"`
}

// PhaseStatus is one phase of the pipeline and how far it is.
type PhaseStatus struct {
	Name   string `json:"name"`
	Status string `json:"status"`
}

// MachineStatus is one machine's place in the install.
type MachineStatus struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	Hostname   string `json:"hostname,omitempty"`
	Role       string `json:"role,omitempty"`
	Serial     string `json:"serial,omitempty"`
	Rack       string `json:"rack,omitempty"`
	Step       string `json:"step,omitempty"`       // the machine's latest step
	StepStatus string `json:"stepStatus,omitempty"` // and how it stands (interrupted: started, and no airlock runs)
	Failure    string `json:"failure,omitempty"`
	// Flags are what the operator should look at (a boot loop, cabling
	// against the rack plan, refused identity claims).
	Flags []string `json:"flags,omitempty"`
	// Kubernetes is the machine as a node of the cluster: waiting (for
	// its Node), kubeadm done, joined, ready, or failed with kubeadm's
	// phase or the step; PodSubnet its share of the pod network.
	Kubernetes string                 `json:"kubernetes,omitempty"`
	PodSubnet  string                 `json:"podSubnet,omitempty"`
	Assignment *inventory.Assignment  `json:"assignment,omitempty"`
	History    []inventory.Transition `json:"history,omitempty"`
}

// StatusInterrupted is the status of a phase or step that started and
// has not ended while no airlock runs.
const StatusInterrupted = "interrupted"

func makeStatus(machines []inventory.Machine, journal []state.Entry, cluster kube.ClusterStatus, live bool) Status {
	st := Status{AirlockRunning: live}
	if cluster.PodNetwork != "" {
		st.Cluster = &ClusterStatus{PodNetwork: cluster.PodNetwork, APIServer: cluster.APIServer, FirstControlPlane: cluster.FirstCP}
	}
	phases := pipeline.PhaseStatus(journal)
	for _, p := range pipeline.Phases() {
		s := phases[p.Name]
		if !live && s == "running" {
			s = StatusInterrupted
		}
		st.Phases = append(st.Phases, PhaseStatus{Name: p.Name, Status: s})
	}
	latest := map[string]state.Entry{} // machine -> its latest journal entry
	for _, e := range journal {
		if _, id, ok := strings.Cut(e.Step, "/"); ok {
			latest[id] = e
		}
	}
	for _, m := range machines {
		ms := MachineStatus{ID: m.ID, State: m.State, Serial: m.Serial, Rack: m.Rack, Failure: m.Failure, Flags: m.Flags, Assignment: m.Assignment, History: m.History}
		if m.Assignment != nil {
			ms.Hostname, ms.Role = m.Assignment.Hostname, m.Assignment.Role
		}
		if p, ok := cluster.PodSubnets[m.ID]; ok {
			ms.PodSubnet = p.String()
			ms.Kubernetes = kubeState(m.State, cluster.Reports[m.ID])
		}
		if e, ok := latest[m.ID]; ok {
			ms.Step, ms.StepStatus = e.Step, e.Status
			if !live && e.Status == state.StatusStarted {
				ms.StepStatus = StatusInterrupted
			}
		}
		st.Machines = append(st.Machines, ms)
	}
	if st.Machines == nil {
		st.Machines = []MachineStatus{}
	}
	return st
}

// kubeState is a node's Kubernetes state from its lifecycle state and
// what it reported.
func kubeState(lifecycle string, rep kube.NodeReport) string {
	switch {
	case lifecycle == inventory.StateReady || lifecycle == inventory.StateJoined:
		return lifecycle
	case rep.Result == kube.ReportFailed && rep.Phase != "":
		return "failed: kubeadm phase " + rep.Phase
	case rep.Result == kube.ReportFailed:
		return "failed: step " + rep.Step
	case rep.Result == kube.ReportOK:
		return "kubeadm done"
	}
	return "waiting"
}

// readCluster is the cluster's status from the running airlock, or from
// the store when none runs (empty when there is no store yet).
func readCluster(ctx context.Context, stateDir string) (kube.ClusterStatus, error) {
	c, err := control.NewClient(stateDir).Cluster(ctx)
	if !errors.Is(err, control.ErrNotRunning) {
		return c, err
	}
	st, err := state.OpenReadOnly(stateDir)
	if errors.Is(err, state.ErrNoState) {
		return kube.ClusterStatus{}, nil
	}
	if err != nil {
		return kube.ClusterStatus{}, err
	}
	defer st.Close()
	return kube.LoadClusterStatus(st)
}

func newStatusCommand(g *globals) *cobra.Command {
	var output *string
	var history bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "The install pipeline and every machine's state, step, history and failure",
		Long: `Show how the install stands: each phase of the pipeline, and for every
machine its lifecycle state, its latest step, what failed and (with
--history, or in -o json|yaml) every state change with its time. Asks the
running airlock, or reads the state store when none runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			machines, journal, live, err := readProgressLive(cmd.Context(), g.stateDir)
			if err != nil {
				return err
			}
			cluster, err := readCluster(cmd.Context(), g.stateDir)
			if err != nil {
				return err
			}
			st := makeStatus(machines, journal, cluster, live)
			return render(g.streams.Out, *output, st, func(w io.Writer) error { return printStatus(w, st, history) })
		},
	}
	output = outputFlag(cmd)
	cmd.Flags().BoolVar(&history, "history", false, "list every machine's state changes")
	return cmd
}

func printStatus(out io.Writer, st Status, history bool) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if !st.AirlockRunning {
		fmt.Fprintln(w, "no airlock runs on this state directory: read from the store; an interrupted step runs again when the install resumes")
	}
	fmt.Fprintln(w, "PHASES")
	for _, p := range st.Phases {
		fmt.Fprintf(w, "  %s\t%s\n", p.Name, p.Status)
	}
	if c := st.Cluster; c != nil {
		fmt.Fprintf(w, "\nCLUSTER\n  pod network\t%s\n  API server\t%s\n  first control plane\t%s\n", c.PodNetwork, dash(termtext.Escape(c.APIServer)), dash(c.FirstControlPlane))
	}
	fmt.Fprintln(w, "\nMACHINE\tSTATE\tHOSTNAME\tROLE\tSERIAL\tRACK\tKUBERNETES\tSTEP")
	for _, m := range st.Machines {
		step := "-"
		if m.Step != "" {
			step = m.Step + " " + m.StepStatus
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.State, dash(m.Hostname), dash(m.Role), dash(termtext.Escape(m.Serial)), dash(termtext.Escape(m.Rack)),
			dash(termtext.Escape(m.Kubernetes)), step)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, m := range st.Machines {
		if m.Failure != "" {
			fmt.Fprintf(out, "%s failed: %s\n", m.ID, termtext.Escape(m.Failure))
		}
		for _, f := range m.Flags {
			fmt.Fprintf(out, "%s flagged: %s\n", m.ID, termtext.Escape(f))
		}
		if history {
			for _, h := range m.History {
				fmt.Fprintf(out, "  %s %s  %s -> %s  %s\n", m.ID, h.Time.Local().Format(time.DateTime), h.From, h.To, termtext.Escape(h.Reason))
			}
		}
	}
	if len(st.Machines) == 0 {
		_, err := fmt.Fprintln(out, "no machines discovered yet")
		return err
	}
	return nil
}

func newDecideCommand(g *globals, approve bool) *cobra.Command {
	verb, done := "deny", "denied"
	if approve {
		verb, done = "approve", "approved"
	}
	var all bool
	cmd := &cobra.Command{
		Use:   verb + " MACHINE... | --all",
		Short: strings.ToUpper(verb[:1]) + verb[1:] + " machines awaiting approval (admission policy approve)",
		Long: `Record an operator's decision about machines that the admission policy
"approve" leaves to a person. With the running airlock (install, serve, lab)
the decision goes over its control socket and an install waiting for it goes
on at once; with none, it is written to the state store. --all takes every
machine awaiting approval.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return &usageError{errors.New("name the machines or give --all, not both")}
			}
			c := control.NewClient(g.stateDir)
			if all {
				machines, _, err := readProgress(cmd.Context(), g.stateDir)
				if err != nil {
					return err
				}
				for _, m := range machines {
					if m.State == inventory.StateAwaitingApproval {
						args = append(args, m.ID)
					}
				}
				if len(args) == 0 {
					fmt.Fprintln(g.streams.Out, "no machine awaits approval")
					return nil
				}
			}
			var inv *inventory.Store // set when no airlock runs: decide in the store
			var errs []error
			for _, id := range args {
				var err error
				if inv == nil {
					err = c.Decide(cmd.Context(), id, approve)
					if errors.Is(err, control.ErrNotRunning) {
						st, oerr := state.Open(g.stateDir)
						if oerr != nil {
							return oerr
						}
						defer st.Close()
						inv = inventory.New(st, nil, g.log)
					}
				}
				if inv != nil {
					err = control.Decide(inv, id, approve)
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("%s %q: %w", verb, id, err))
					continue
				}
				fmt.Fprintf(g.streams.Out, "%s %s\n", id, done)
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every machine awaiting approval")
	return cmd
}
