package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/termtext"
)

func newInventoryCommand(g *globals) *cobra.Command {
	var output *string
	cmd := &cobra.Command{
		Use:   "inventory",
		Short: "List discovered machines, grouped by rack",
		Long: `List the machines airlock has discovered: state, rack, hardware summary, switch
port and when each was last seen. Asks the running airlock over its control
socket, or reads the state store when none runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			machines, err := readInventory(cmd, g.stateDir)
			if err != nil {
				return err
			}
			if machines == nil {
				machines = []inventory.Machine{}
			}
			return render(g.streams.Out, *output, machines, func(w io.Writer) error { return printInventory(w, machines) })
		},
	}
	output = outputFlag(cmd)
	cmd.AddCommand(&cobra.Command{
		Use:   "rediscover MACHINE",
		Short: "Reboot a machine into discovery so its hardware is taken again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := control.NewClient(g.stateDir).Rediscover(cmd.Context(), args[0])
			if errors.Is(err, control.ErrNotRunning) {
				return fmt.Errorf("rediscover needs the running airlock (serve, install or lab up) on --state %s", g.stateDir)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(g.streams.Out, "%s reboots into discovery at its next heartbeat\n", termtext.Escape(args[0]))
			return nil
		},
	})
	return cmd
}

func readInventory(cmd *cobra.Command, stateDir string) ([]inventory.Machine, error) {
	machines, _, err := readProgress(cmd.Context(), stateDir)
	return machines, err
}

// printInventory writes the inventory table. Everything in a machine
// record came from its agent's report, so every text cell is escaped: a
// serial or switch name cannot act on the terminal nor, with a newline or
// tab, forge a row or a column.
func printInventory(out io.Writer, machines []inventory.Machine) error {
	e := termtext.Escape
	if len(machines) == 0 {
		_, err := fmt.Fprintln(out, "no machines discovered yet")
		return err
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "RACK\tMACHINE\tSTATE\tSERIAL\tBOOT MAC\tFIRMWARE\tCPUS\tMEMORY\tDISKS\tGPUS\tSWITCH PORT\tLAST SEEN\tFLAGS")
	now := time.Now()
	for _, m := range machines {
		port := "-"
		if m.Switch != "" {
			port = e(m.Switch) + " " + e(m.SwitchPort)
		}
		gpus := fmt.Sprint(m.Summary.GPUs)
		if m.Summary.GPUModel != "" {
			gpus += " " + e(m.Summary.GPUModel)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d (%s)\t%s\t%s\t%s ago\t%s\n",
			e(dash(m.Rack)), e(m.ID), e(m.State), e(dash(m.Serial)), e(m.BootMAC), e(dash(m.Firmware)), m.Summary.CPUs,
			bundle.HumanSize(int64(m.Summary.MemoryBytes)), m.Summary.Disks, bundle.HumanSize(int64(m.Summary.DiskBytes)), gpus, port,
			now.Sub(m.LastSeen).Round(time.Second), e(strings.Join(m.Flags, "; ")))
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
