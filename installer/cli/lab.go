package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/engine"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/lab"
	"airlock.dev/airlock/installer/state"
)

func newLabCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "A virtual rack of QEMU machines on this computer, to rehearse an install",
		Long: `airlock lab builds a virtual rack in a private network namespace: a bridge as
the provisioning network, QEMU machines (BIOS, UEFI or both) that network-boot
from an airlock running inside the namespace, and a simulated top-of-rack
switch per rack that speaks LLDP. Nothing touches the host's interfaces.`,
	}
	cmd.AddCommand(newLabUpCommand(g), newLabStatusCommand(g), newLabDownCommand(g), newLabRestartCommand(g), newLabRunCommand(g))
	return cmd
}

func newLabUpCommand(g *globals) *cobra.Command {
	o := engine.LabOptions{Nodes: 4, Racks: 2, Firmware: lab.Mixed, Accel: "auto"}
	var install bool
	var osImage string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Bring up the virtual rack and its airlock; returns while it runs",
		Example: `  airlock lab up --nodes 4 --firmware mixed --racks 2 \
    --kernel /boot/vmlinuz-6.1.0-41-cloud-amd64 --modules /lib/modules/6.1.0-41-cloud-amd64
  airlock inventory
  airlock lab down

  airlock lab up --nodes 2 --bundle site.bundle --bundle-key site.pub    # rehearse with the bundle you will carry in`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the airlock executable: %w", err)
			}
			o.Self, o.StateDir, o.Log = self, g.stateDir, g.log
			if o.Agent == "" {
				o.Agent = filepath.Join(filepath.Dir(self), "airlock-agent")
			}
			o.Args = []string{"--log-format", g.logFormat, "--log-level", g.logLevel}
			if install {
				o.RunArgs = []string{"--install", "--expect", strconv.Itoa(o.Nodes)}
				if osImage != "" {
					if o.OSImage, err = filepath.Abs(osImage); err != nil {
						return err
					}
				}
			} else if osImage != "" {
				return &usageError{errors.New("--os-image goes with --install")}
			} else if o.Kubernetes != "" {
				return &usageError{errors.New("--kubernetes goes with --install")}
			}
			s, err := engine.LabUp(cmd.Context(), o)
			if err != nil {
				return fmt.Errorf("lab up: %w", err)
			}
			fmt.Fprintf(g.streams.Out, "lab up: %d machines in %d racks on %s (namespace %s)\n", len(s.VMs), len(s.Switches), s.Subnet, s.Namespace)
			if sv, err := engine.LabServing(g.stateDir); err == nil && sv.Registry != "" {
				fmt.Fprintf(g.streams.Out, "the bundle's registry: %s, inside the namespace (ip netns exec %s crane catalog --insecure %s)\n", sv.Registry, s.Namespace, sv.Registry)
			}
			fmt.Fprintf(g.streams.Out, "watch them appear: airlock inventory --state %s\nserial consoles and logs: %s\nremove it all:     airlock lab down --state %s\n", g.stateDir, s.Dir, g.stateDir)
			if install {
				fmt.Fprintf(g.streams.Out, "the lab's airlock installs them: airlock status --state %s\n", g.stateDir)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Nodes, "nodes", o.Nodes, "virtual machines")
	f.IntVar(&o.Racks, "racks", o.Racks, "racks (each with its own top-of-rack switch)")
	f.StringVar(&o.Firmware, "firmware", o.Firmware, "bios, uefi or mixed")
	f.StringVar(&o.Accel, "accel", o.Accel, "auto (KVM only if a test guest really boots under it), tcg or kvm")
	f.IntVar(&o.CPUs, "cpus", 0, "virtual CPUs of each machine (default 1)")
	f.IntVar(&o.MemoryMB, "memory", 0, "memory of each machine in MiB (default 512)")
	f.IntVar(&o.ControlPlaneCPUs, "control-plane-cpus", 0, "virtual CPUs of the first machine, the lab's control plane (default: --cpus); Kubernetes needs 2")
	f.IntVar(&o.ControlPlaneMemoryMB, "control-plane-memory", 0, "memory in MiB of the first machine, the lab's control plane (default: --memory); Kubernetes needs ~3072")
	f.StringVar(&o.Kubernetes, "kubernetes", "", "with --install: form a cluster with kubeadm at this version (v1.35.4), which the --bundle must carry")
	f.StringVar(&o.Kernel, "kernel", "", "discovery kernel, e.g. /boot/vmlinuz-RELEASE (or --bundle)")
	f.StringVar(&o.ModulesDir, "modules", "", "the kernel's module tree, /lib/modules/RELEASE (or --bundle)")
	f.StringVar(&o.Bundle, "bundle", "", "rehearse with this bundle: the discovery image from its "+engine.KernelPackage+", and its registry served in the lab")
	f.StringVar(&o.BundleKey, "bundle-key", "", "public key the --bundle must be signed with (the builder's site.pub)")
	f.BoolVar(&o.BundleTrustOnFirstUse, "bundle-trust-on-first-use", false, "instead of --bundle-key: trust the key of the first bundle opened in this state directory, and refuse any other later")
	f.StringVar(&o.Agent, "agent", "", "airlock-agent binary (default: next to this airlock)")
	f.BoolVar(&install, "install", false, "the lab's airlock runs the install pipeline (airlock install) on the machines, not only the services")
	f.StringVar(&osImage, "os-image", "", "with --install: the OS image directory to install (as e2e/osimage/build.sh makes it), built into a signed bundle of the lab's own (key and bundle in --state)")
	f.StringVar(&o.CacheDir, "cache", defaultCacheDir(), "where the lab's bundle build keeps the OS image's blob between runs (env AIRLOCK_CACHE)")
	_ = cmd.RegisterFlagCompletionFunc("firmware", fixedCompletion(lab.BIOS, lab.UEFI, lab.Mixed))
	return cmd
}

// labStatus is what lab status prints with -o json|yaml.
type labStatus struct {
	Namespace string `json:"namespace"`
	Subnet    string `json:"subnet"`
	Serving   bool   `json:"serving"`
	Registry  string `json:"registry,omitempty"` // the bundle's, inside the namespace
	// Uplink is the namespace's way out and UplinkPackets what it has
	// sent: zero while nothing in the lab tried to leave it.
	Uplink        string      `json:"uplink,omitempty"`
	UplinkPackets *uint64     `json:"uplinkPackets,omitempty"`
	VMs           []labVMInfo `json:"vms"`
}

type labVMInfo struct {
	lab.VM
	Discovered string `json:"discovered,omitempty"` // machine ID once the agent reported
	Rack       string `json:"discoveredRack,omitempty"`
}

func newLabStatusCommand(g *globals) *cobra.Command {
	var output *string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the virtual rack: machines, whether they run, whether airlock discovered them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			s, err := lab.Status(g.stateDir)
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("no lab in %s: airlock lab up makes one", g.stateDir)
			}
			if err != nil {
				return err
			}
			st := labStatus{Namespace: s.Namespace, Subnet: s.Subnet, Uplink: s.Uplink}
			if s.Uplink != "" {
				n, err := s.UplinkPackets()
				if err != nil {
					return err
				}
				st.UplinkPackets = &n
			}
			machines, err := control.NewClient(g.stateDir).Machines(cmd.Context())
			st.Serving = err == nil
			if sv, err := engine.LabServing(g.stateDir); err == nil {
				st.Registry = sv.Registry
			}
			bySerial := map[string]inventory.Machine{}
			for _, m := range machines {
				bySerial[m.Serial] = m
			}
			for _, vm := range s.VMs {
				info := labVMInfo{VM: vm}
				if m, ok := bySerial[vm.Serial]; ok {
					info.Discovered, info.Rack = m.ID, m.Rack
				}
				st.VMs = append(st.VMs, info)
			}
			return render(g.streams.Out, *output, st, func(w io.Writer) error {
				fmt.Fprintf(w, "lab %s on %s; airlock serving: %v; registry: %s\n", st.Namespace, st.Subnet, st.Serving, dash(st.Registry))
				if st.UplinkPackets != nil {
					fmt.Fprintf(w, "packets out of the lab through its uplink %s: %d\n", st.Uplink, *st.UplinkPackets)
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VM\tRACK\tPORT\tFIRMWARE\tCPUS\tMEMORY\tSERIAL\tMAC\tRUNNING\tDISCOVERED")
				for _, vm := range st.VMs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\t%v\t%s\n", vm.Name, vm.VM.Rack, vm.Port(), vm.Firmware, vm.CPUs, vm.MemoryMB, vm.Serial, vm.MAC, vm.Running, dash(vm.Discovered))
				}
				return tw.Flush()
			})
		},
	}
	output = outputFlag(cmd)
	return cmd
}

func newLabDownCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove the virtual rack: machines, its airlock, namespace and files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := engine.LabDown(g.stateDir); err != nil {
				return fmt.Errorf("lab down: %w", err)
			}
			fmt.Fprintln(g.streams.Out, "lab down: removed")
			return nil
		},
	}
}

func newLabRestartCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "restart",
		Short: "Start the lab's airlock again after it stopped or crashed; the machines keep running",
		Long: `Start the lab's background airlock again, as lab up started it (with
--install it resumes the install from the journal), over the machines that
are still running. Refused while the lab's airlock runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the airlock executable: %w", err)
			}
			s, err := engine.LabRestart(cmd.Context(), g.stateDir, self, g.log)
			if err != nil {
				return fmt.Errorf("lab restart: %w", err)
			}
			fmt.Fprintf(g.streams.Out, "lab restart: the lab's airlock serves %s again (log: %s)\n", s.Namespace, filepath.Join(s.Dir, "airlock.log"))
			return nil
		},
	}
}

func newLabRunCommand(g *globals) *cobra.Command {
	var install bool
	var readyFD int
	var opts engine.InstallOptions
	cmd := &cobra.Command{
		Use:    "run",
		Short:  "The lab's own airlock (started by lab up inside the lab's namespace)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var o *engine.InstallOptions
			if install {
				o = &opts
			}
			return runLabAirlock(cmd.Context(), g, o, readyFD)
		},
	}
	cmd.Flags().BoolVar(&install, "install", false, "run the install pipeline too")
	cmd.Flags().IntVar(&readyFD, "ready-fd", 0, "report on this descriptor that the services serve, and start the install once that report is taken (lab up and lab restart pass it)")
	cmd.Flags().IntVar(&opts.Expect, "expect", 0, "machines to wait for")
	return cmd
}

// defaultCacheDir is where lab up keeps what its builds may reuse:
// AIRLOCK_CACHE, as for e2e/osimage/build.sh, or /var/cache/airlock.
func defaultCacheDir() string {
	if d := os.Getenv("AIRLOCK_CACHE"); d != "" {
		return d
	}
	return "/var/cache/airlock"
}

// testKillAtEnv, for the crash tests only, makes the lab's airlock kill
// itself with SIGKILL right after its Nth durable install transition (a
// journal record, a lifecycle change, an order, a provisioning record:
// engine.TransitionBuckets), counted from its start. 0 only logs each
// transition ("test kill point", n, buckets) and kills nothing. Only
// `lab run` reads it, and only for an answer file of a lab site.
const testKillAtEnv = "AIRLOCK_TEST_KILL_AT"

// testKillStore opens the state store for the lab's airlock with the kill
// point of testKillAtEnv.
func testKillStore(g *globals, a *config.Answers, at string) (state.Store, error) {
	n, err := strconv.Atoi(at)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%s=%q: want a number of transitions (0: count only)", testKillAtEnv, at)
	}
	if !a.Site.Lab {
		return nil, fmt.Errorf("%s is for the lab's crash tests only, and this site is not a lab", testKillAtEnv)
	}
	st, err := state.Open(g.stateDir)
	if err != nil {
		return nil, err
	}
	g.log.Warn("test kill point armed", "env", testKillAtEnv, "at", n)
	return state.WithCommitHook(st, engine.TransitionBuckets(), func(i int, buckets []string) {
		g.log.Warn("test kill point", "n", i, "buckets", strings.Join(buckets, ","))
		if i == n {
			g.log.Warn("test kill: SIGKILL", "n", i)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // nothing more runs
		}
	}), nil
}

// runLabAirlock is the lab's airlock: inside the lab's namespace it serves
// the provisioning network on the bridge, built like every other engine,
// and plays the racks' switches until ctx is cancelled. With install set it
// also runs the install pipeline, its events in the log, and goes on
// serving when the pipeline ends. readyFD, when not 0, is where lab up (or
// restart) waits for its ready report (engine.LabReportReady).
func runLabAirlock(ctx context.Context, g *globals, install *engine.InstallOptions, readyFD int) error {
	if readyFD > 0 {
		// Processes this airlock starts do not hold lab up's socket:
		// its end must close when this airlock dies.
		syscall.CloseOnExec(readyFD)
	}
	f, err := engine.LabInputs(g.stateDir)
	if err != nil {
		return err
	}
	a, err := loadAnswers(g.streams.Err, f.Answers)
	if err != nil {
		return err
	}
	in := engineInputs{files: os.DirFS(f.BootDir), image: engine.LabDiscoveryImage()}
	if at, ok := os.LookupEnv(testKillAtEnv); ok {
		st, err := testKillStore(g, a, at)
		if err != nil {
			return err
		}
		defer st.Close()
		in.store = st
	}
	e, closeAll, err := buildEngine(g, a, in)
	if err != nil {
		return err
	}
	defer closeAll()
	gr, gctx := errgroup.WithContext(ctx)
	// released: lab up (or restart) has taken the ready report, so the
	// install may start. Whatever becomes of this airlock then (a crash
	// test kills it at its first transition), lab up saw it ready.
	released := make(chan struct{})
	serving := make(chan engine.Serving, 1)
	gr.Go(func() error {
		return e.Run(gctx, func(sv engine.Serving) {
			if err := engine.LabMarkReady(f, sv); err != nil {
				g.log.Error("lab: mark ready", "err", err)
			}
			serving <- sv
		})
	})
	gr.Go(func() error {
		select {
		case sv := <-serving:
			if readyFD > 0 {
				if err := engine.LabReportReady(readyFD, sv); err != nil {
					g.log.Error("lab: report ready", "err", err)
				}
			}
			close(released)
		case <-gctx.Done():
		}
		return nil
	})
	gr.Go(func() error { return f.State.RunSwitches(gctx, g.log.With("part", "switches"), time.Second) })
	if install != nil {
		e.Inventory().SetHeartbeat(2) // a rack on one computer: answer orders quickly
		e.Events().Add(newEventPrinter(g.streams.Err, "text"))
		gr.Go(func() error {
			select {
			case <-released:
			case <-gctx.Done():
				return nil
			}
			res, err := e.Install(gctx, *install)
			if err != nil {
				if gctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("lab install: %w", err)
			}
			if err := res.Err(); err != nil {
				g.log.Error("lab install: steps failed; airlock status shows each machine", "err", err)
			} else {
				g.log.Info("lab install: every admitted machine reached its target", "target", e.Target())
			}
			if e.Target() == inventory.StateReady && res.Err() == nil {
				path, err := writeInstallKubeconfig(e, g.stateDir)
				if err != nil {
					return fmt.Errorf("lab install: %w", err)
				}
				g.log.Info("lab install: the cluster's admin kubeconfig", "path", path, "valid", installKubeconfigTTL)
			}
			return nil
		})
	}
	return gr.Wait()
}
