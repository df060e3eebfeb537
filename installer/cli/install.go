package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/installer/engine"
	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/termtext"
)

func newInstallCommand(g *globals) *cobra.Command {
	var (
		file       *string
		output     string
		opts       engine.InstallOptions
		in         engineInputs
		bootFiles  string
		bundlePath string
		osImage    string
	)
	cmd := &cobra.Command{
		Use:   "install -f FILE",
		Short: "Run the install pipeline unattended, with the boot services",
		Long: `Serve the provisioning network and run the install pipeline in the
foreground: discover the machines the answer file expects, admit them by its
admission policy (approve: waits for airlock approve|deny), and record what
each admitted machine becomes. Every step is journaled in --state: run
again, install resumes where it stopped. One line per event (-o json: one
JSON object per line). Exit status 0 when every admitted machine reached
its target state, 1 when any failed, 2 on bad usage or input.

When the bundle has OS images (bundle.yaml osImages:), each machine's agent
then wipes the pinned disk, writes its rule's osImage (or the bundle's only
one) and the machine's cloud-init seed, and reboots into it; the install
ends when every installed system has phoned home (booted). A disk that holds
partitions or filesystems is refused unless the rule's installDisk.allowWipe
says otherwise. --os-image DIR installs an image from a directory instead of
the bundle's. Without any OS image the pipeline ends at "assigned".

When the bundle also carries Kubernetes (bundle.yaml kubernetes:), the seeds
make the machines a cluster: each downloads kubelet, kubeadm and kubectl
from airlock (sha256 checked), the first control plane runs kubeadm init
with airlock's CAs, the others join, and each reports how kubeadm went.
The install then waits for every Node to be Ready (states joined, ready),
and ends by writing an admin kubeconfig to STATE/kubeconfig and printing
its path.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return &usageError{fmt.Errorf("--output %q: use text or json", output)}
			}
			a, err := loadAnswers(g.streams.Err, *file)
			if err != nil {
				return &exitError{code: 2}
			}
			if bootFiles != "" {
				if _, err := os.Stat(bootFiles); err != nil {
					return &usageError{fmt.Errorf("--boot-files: %w", err)}
				}
				in.files, in.image = os.DirFS(bootFiles), engine.LabDiscoveryImage()
			}
			if bundlePath != "" {
				a.Bundle.Path = bundlePath
			}
			if in.osImage, err = osImageFrom(osImage); err != nil {
				return &usageError{err}
			}
			e, closeAll, err := buildEngine(g, a, in)
			if err != nil {
				return err
			}
			defer closeAll()
			e.Events().Add(newEventPrinter(g.streams.Out, output))
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			served := make(chan error, 1)
			go func() { served <- e.Run(ctx, nil) }()
			res, err := e.Install(ctx, opts)
			cancel()
			err = errors.Join(err, <-served)
			if errors.Is(err, engine.ErrNothingExpected) {
				return &usageError{err}
			}
			if err != nil {
				return err
			}
			machines, lerr := e.Inventory().List()
			if lerr != nil {
				return lerr
			}
			failed := len(res.Failed())
			reached := 0
			for _, m := range machines {
				if m.State == e.Target() {
					reached++
				}
			}
			fmt.Fprintf(g.streams.Err, "airlock: install: %d machines %s, %d failed; `airlock status --state %s` shows each\n", reached, e.Target(), failed, g.stateDir)
			if e.Target() == inventory.StateReady && reached > 0 {
				path, err := writeInstallKubeconfig(e, g.stateDir)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.streams.Err, "airlock: install: admin kubeconfig (valid for %v; `airlock kubeconfig` mints another): %s\n", installKubeconfigTTL, path)
			}
			if failed > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	file = answersFlag(cmd)
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "text", "event output: text or json (one object per line)")
	f.IntVar(&opts.Expect, "expect", 0, "machines to wait for when the admission policy does not name them (approve, any)")
	f.DurationVar(&opts.DiscoverTimeout, "discover-timeout", 30*time.Minute, "how long discovery waits for the expected machines")
	f.StringVar(&bootFiles, "boot-files", "", "directory with the discovery kernel (vmlinuz) and boot image (initramfs.img), instead of the bundle's")
	f.StringVar(&bundlePath, "bundle", "", "bundle to serve (overrides bundle.path)")
	f.IntVar(&in.httpPort, "http-port", 8080, "HTTP boot port")
	f.IntVar(&in.apiPort, "api-port", 8443, "agent API port (TLS, with airlock's CA from the state directory)")
	f.StringVar(&osImage, "os-image", "", "directory with the OS image to install instead of the bundle's (disk.raw.zst, disk.raw.size, disk.raw.sha256, as e2e/osimage/build.sh makes it); without it and without OS images in the bundle the install ends once machines are assigned")
	return cmd
}

// installKubeconfigTTL is the life of the kubeconfig install writes.
const installKubeconfigTTL = 24 * time.Hour

// InstallKubeconfigFile is the kubeconfig install writes in the state
// directory once the cluster has a Ready node.
const InstallKubeconfigFile = "kubeconfig"

// writeInstallKubeconfig writes fresh admin credentials for the cluster to
// STATE/kubeconfig (0600), as `airlock kubeconfig --file` does, and
// returns its path.
func writeInstallKubeconfig(e *engine.Engine, stateDir string) (string, error) {
	kc, err := e.AdminKubeconfig(installKubeconfigTTL)
	if err != nil {
		return "", fmt.Errorf("write the cluster's kubeconfig: %w", err)
	}
	path, err := filepath.Abs(filepath.Join(stateDir, InstallKubeconfigFile))
	if err != nil {
		return "", err
	}
	if err := writePrivate(path, kc); err != nil {
		return "", err
	}
	return path, nil
}

// usageError ends a command with exit status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// eventPrinter is the command line's event sink: one line per event.
type eventPrinter struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
	last map[string]time.Time // step -> last progress line printed
}

func newEventPrinter(w io.Writer, format string) *eventPrinter {
	return &eventPrinter{w: w, json: format == "json", last: map[string]time.Time{}}
}

// Emit implements events.Sink. Progress lines are printed at most once a
// second per step in text form.
func (p *eventPrinter) Emit(e events.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		raw, err := json.Marshal(e)
		if err == nil {
			p.w.Write(append(raw, '\n'))
		}
		return
	}
	if e.Kind == events.StepProgress {
		if e.Time.Sub(p.last[e.Step]) < time.Second {
			return
		}
		p.last[e.Step] = e.Time
	}
	p.w.Write([]byte(eventLine(e) + "\n"))
}

// eventLine is an event in one line of text; strings that come from
// machines are quoted.
func eventLine(e events.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-13s", e.Time.Local().Format("15:04:05"), e.Kind)
	if e.Step != "" {
		fmt.Fprintf(&b, " %s", e.Step)
	} else if e.Phase != "" {
		fmt.Fprintf(&b, " %s", e.Phase)
	}
	if e.Kind == events.MachineState {
		fmt.Fprintf(&b, " %s %s -> %s", e.Machine, e.From, e.State)
	} else if e.Machine != "" && e.Step == "" {
		fmt.Fprintf(&b, " %s", e.Machine)
	}
	if pr := e.Progress; pr != nil {
		if pr.Total > 0 {
			fmt.Fprintf(&b, " %d/%d %s", pr.Done, pr.Total, pr.Unit)
		} else {
			fmt.Fprintf(&b, " %d %s", pr.Done, pr.Unit)
		}
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", termtext.Escape(e.Message))
	}
	if e.Error != "" {
		fmt.Fprintf(&b, ": %s", termtext.Escape(e.Error))
	}
	return b.String()
}
