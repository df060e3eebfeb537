package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"golang.org/x/sys/unix"

	"airlock.dev/airlock/installer/bootimage"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/lab"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/state"
)

// Files the lab keeps in its directory (StateDir/lab).
const (
	labAnswers   = "answers.yaml" // the answer file the lab's airlock serves
	labBootDir   = "boot"         // discovery kernel and boot image
	labLog       = "airlock.log"  // the background airlock's log
	labReady     = "ready"        // written once the services serve
	labOwnsStore = "owns-store"   // the lab created the state store, so down removes it
	labRunArgs   = "run.json"     // how lab up started the lab's airlock, for lab restart
)

// Names of the discovery kernel and boot image in a boot files directory.
const (
	bootKernel = "vmlinuz"
	bootInitrd = "initramfs.img"
)

// LabOptions describe a virtual rack to bring up.
type LabOptions struct {
	StateDir string
	Nodes    int
	Racks    int
	Firmware string // bios, uefi or mixed
	Accel    string // auto (probe KVM, else TCG), tcg or kvm
	// CPUs and MemoryMB of every machine (0: the lab's defaults, 1 and
	// 512); ControlPlaneCPUs and ControlPlaneMemoryMB of the first, which
	// the lab's answer file makes the control plane (0: as the others).
	CPUs, MemoryMB                         int
	ControlPlaneCPUs, ControlPlaneMemoryMB int
	// Kubernetes, when set (v1.35.4), gives the lab's answer file a
	// cluster: kubeadm at that version, which the bundle must carry.
	Kubernetes string
	// Kernel and ModulesDir are the discovery kernel and its module tree
	// (Debian's linux-image-cloud-amd64 here).
	Kernel, ModulesDir string
	// Bundle, instead of Kernel and ModulesDir, is a bundle to rehearse
	// with: the discovery image comes from its kernel package, as serve
	// makes it, and the lab's airlock serves its registry.
	Bundle string
	// BundleKey (a public key file) or BundleTrustOnFirstUse says which
	// key the bundle must be signed with, as bundle.publicKey and
	// bundle.trustOnFirstUse do in an answer file; one is required.
	BundleKey             string
	BundleTrustOnFirstUse bool
	// OSImage, instead of Bundle, is a node OS image directory (as
	// e2e/osimage/build.sh makes it) for the lab to install: lab up builds
	// it into a signed bundle of its own (LabOSBundle), which the lab's
	// airlock serves and installs from as a site's airlock does.
	OSImage string
	// CacheDir keeps what the lab's bundle build may reuse (the image's
	// blob, under the source's SHA-256).
	CacheDir string
	// Agent is the static airlock-agent binary that becomes /init.
	Agent string
	// Self is the airlock executable to run in the lab's namespace.
	Self string
	// Args are global flags passed on to it (log format and level).
	Args []string
	// RunArgs are flags of its `lab run` (--install, --expect).
	RunArgs []string
	Log     *slog.Logger
}

// ErrLabUp means a lab is already recorded in the state directory.
var ErrLabUp = errors.New("a lab is already up in this state directory: `airlock lab status` shows it, `airlock lab down` removes it")

// LabUp builds the discovery boot image, makes the virtual rack, starts an
// airlock inside the rack's namespace (in the background, serving the
// rack and playing its switches) and, once it serves, powers on the VMs.
// It returns while the lab keeps running; LabDown removes it all.
func LabUp(ctx context.Context, o LabOptions) (_ *lab.State, err error) {
	if _, err := lab.Load(o.StateDir); err == nil {
		return nil, ErrLabUp
	}
	if err := checkLabInputs(o); err != nil {
		return nil, err
	}
	var bundleBoot string // the discovery image's directory, from the bundle
	if o.Bundle != "" {
		abs, err := filepath.Abs(o.Bundle)
		if err != nil {
			return nil, err
		}
		o.Bundle = abs
		if o.BundleKey != "" {
			if o.BundleKey, err = filepath.Abs(o.BundleKey); err != nil {
				return nil, err
			}
		}
		if bundleBoot, err = labBundleBoot(o); err != nil {
			return nil, fmt.Errorf("--bundle: %w", err)
		}
		o.Kernel = filepath.Join(bundleBoot, bootKernel)
	}
	bun := o.labBundle()
	if o.OSImage != "" {
		img, err := ReadOSImageDir(o.OSImage)
		if err != nil {
			return nil, err
		}
		if bun, err = LabOSBundle(ctx, img, o.StateDir, o.CacheDir, o.Log); err != nil {
			return nil, err
		}
	}
	if o.Accel == "" || o.Accel == "auto" {
		// /dev/kvm existing is not enough (nested KVM hangs guests here):
		// use KVM only when a guest really boots under it.
		o.Accel = "tcg"
		if _, err := os.Stat("/dev/kvm"); err == nil && lab.ProbeKVM(ctx, "qemu-system-x86_64", o.Kernel) {
			o.Accel = "kvm"
		}
		o.Log.Info("lab acceleration", "accel", o.Accel)
	}
	_, statErr := os.Stat(filepath.Join(o.StateDir, state.FileName))
	storeExisted := statErr == nil
	lo := lab.Options{StateDir: o.StateDir, Nodes: o.Nodes, Racks: o.Racks, Firmware: o.Firmware, Accel: o.Accel,
		CPUs: o.CPUs, MemoryMB: o.MemoryMB, Detach: true, Log: o.Log}
	if o.ControlPlaneCPUs > 0 || o.ControlPlaneMemoryMB > 0 {
		lo.Sizes = []lab.Size{{CPUs: o.ControlPlaneCPUs, MemoryMB: o.ControlPlaneMemoryMB}}
	}
	s, err := lab.Prepare(ctx, lo)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, LabDown(o.StateDir))
		}
	}()
	if !storeExisted {
		if err := os.WriteFile(filepath.Join(s.Dir, labOwnsStore), nil, 0o600); err != nil {
			return nil, err
		}
	}
	if err := buildLabBoot(s.Dir, bundleBoot, o); err != nil {
		return nil, err
	}
	answers, err := labAnswerFile(s, bun, o.OSImage != "", o.Kubernetes)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(s.Dir, labAnswers), answers, 0o600); err != nil {
		return nil, err
	}
	run, err := json.Marshal(labRun{Args: o.Args, RunArgs: o.RunArgs})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(s.Dir, labRunArgs), run, 0o600); err != nil {
		return nil, err
	}
	if err := startLabAirlock(ctx, s, o); err != nil {
		return nil, err
	}
	if err := lab.Start(ctx, lo, s); err != nil {
		return nil, err
	}
	return s, nil
}

// labRun is how lab up started the lab's airlock (LabOptions.Args and
// RunArgs), kept so that lab restart starts it the same way.
type labRun struct {
	Args    []string `json:"args"`
	RunArgs []string `json:"runArgs"`
}

// ErrLabAirlockRuns means lab restart found the lab's airlock running.
var ErrLabAirlockRuns = errors.New("the lab's airlock is running: nothing to restart (airlock lab down removes the lab)")

// LabRestart starts the lab's airlock again, as lab up started it, over
// the machines that still run: after it crashed or was killed, the new one
// opens the same state store, serves the same namespace and resumes the
// install from the journal. self is the airlock executable to run.
func LabRestart(ctx context.Context, stateDir, self string, log *slog.Logger) (*lab.State, error) {
	s, err := lab.Load(stateDir)
	if err != nil {
		return nil, fmt.Errorf("no lab in %s: %w", stateDir, err)
	}
	if _, err := control.NewClient(stateDir).Journal(ctx); err == nil {
		return nil, ErrLabAirlockRuns
	} else if !errors.Is(err, control.ErrNotRunning) {
		return nil, fmt.Errorf("ask the lab's airlock: %w", err)
	}
	raw, err := os.ReadFile(filepath.Join(s.Dir, labRunArgs))
	if err != nil {
		return nil, fmt.Errorf("how the lab's airlock was started: %w", err)
	}
	var run labRun
	if err := json.Unmarshal(raw, &run); err != nil {
		return nil, fmt.Errorf("lab: %s: %w", labRunArgs, err)
	}
	// The dead airlock's mark: the new one writes its own once it serves.
	if err := os.Remove(filepath.Join(s.Dir, labReady)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	o := LabOptions{StateDir: stateDir, Self: self, Args: run.Args, RunArgs: run.RunArgs, Log: log}
	if err := startLabAirlock(ctx, s, o); err != nil {
		return nil, err
	}
	return s, nil
}

func checkLabInputs(o LabOptions) error {
	var errs []error
	if o.Bundle != "" {
		if o.Kernel != "" || o.ModulesDir != "" {
			errs = append(errs, errors.New("--bundle brings its own kernel package: drop --kernel and --modules"))
		} else if _, err := os.Stat(o.Bundle); err != nil {
			errs = append(errs, fmt.Errorf("--bundle: %w", err))
		}
		if o.BundleKey == "" && !o.BundleTrustOnFirstUse {
			errs = append(errs, errors.New("--bundle: name the key it must be signed with (--bundle-key site.pub, the builder's public key) or choose --bundle-trust-on-first-use"))
		}
		if o.OSImage != "" {
			errs = append(errs, errors.New("--os-image: --bundle brings its own OS images (osImages: in its bundle.yaml); --os-image is for a lab without --bundle, which builds a bundle of its own around it"))
		}
	} else {
		if o.Kernel == "" {
			errs = append(errs, errors.New("--kernel: the discovery kernel is required (Debian: /boot/vmlinuz-*-cloud-amd64 from linux-image-cloud-amd64)"))
		} else if _, err := os.Stat(o.Kernel); err != nil {
			errs = append(errs, fmt.Errorf("--kernel: %w", err))
		}
		if o.ModulesDir == "" {
			errs = append(errs, errors.New("--modules: the kernel's module tree is required (Debian: /lib/modules/RELEASE)"))
		} else if _, err := os.Stat(filepath.Join(o.ModulesDir, "modules.dep")); err != nil {
			errs = append(errs, fmt.Errorf("--modules: %s has no modules.dep: %w", o.ModulesDir, err))
		}
	}
	if _, err := os.Stat(o.Agent); err != nil {
		errs = append(errs, fmt.Errorf("--agent: %w (make build writes bin/airlock-agent)", err))
	}
	return errors.Join(errs...)
}

// labBundleBoot assembles the discovery image from the bundle's kernel
// package (kept in the state directory, as serve keeps it) and returns
// its directory.
func labBundleBoot(o LabOptions) (string, error) {
	b, err := OpenBundle(o.labBundle(), o.StateDir)
	if err != nil {
		return "", err
	}
	defer b.Close()
	return discoveryDirFromBundle(b, o.StateDir, func() ([]byte, error) { return os.ReadFile(o.Agent) }, o.Log)
}

// labBundle is the bundle section of the lab's answer file.
func (o LabOptions) labBundle() config.Bundle {
	if o.Bundle == "" {
		return config.Bundle{}
	}
	return config.Bundle{Path: o.Bundle, PublicKey: o.BundleKey, TrustOnFirstUse: o.BundleKey == "" && o.BundleTrustOnFirstUse}
}

// buildLabBoot puts the discovery kernel and boot image into the lab's
// boot directory: linked (or copied) from bundleBoot when the lab
// rehearses a bundle, else the kernel given and a boot image built from its
// modules.
func buildLabBoot(dir, bundleBoot string, o LabOptions) error {
	boot := filepath.Join(dir, labBootDir)
	if err := os.MkdirAll(boot, 0o700); err != nil {
		return err
	}
	if bundleBoot != "" {
		for _, name := range []string{bootKernel, bootInitrd} {
			if err := lab.LinkOrCopy(filepath.Join(bundleBoot, name), filepath.Join(boot, name)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := lab.LinkOrCopy(o.Kernel, filepath.Join(boot, bootKernel)); err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	agent, err := os.ReadFile(o.Agent)
	if err != nil {
		return fmt.Errorf("read agent: %w", err)
	}
	// The lab's airlock serves from the same state directory, so the CA
	// made (or found) here is the one its agent API presents.
	ca, err := LoadCA(o.StateDir)
	if err != nil {
		return err
	}
	var img bytes.Buffer
	rep, err := bootimage.Build(&img, bootimage.Options{Agent: agent, CACert: ca.CertPEM, ModulesDir: o.ModulesDir, Compression: bootimage.Gzip, Log: o.Log})
	if err != nil {
		return fmt.Errorf("build the discovery boot image: %w", err)
	}
	o.Log.Info("discovery boot image built", "kernel", rep.KernelRelease, "modules", len(rep.Modules), "bytes", rep.Bytes)
	return os.WriteFile(filepath.Join(boot, bootInitrd), img.Bytes(), 0o600)
}

var labAnswersTmpl = template.Must(template.New("lab").Parse(`# Written by airlock lab up for the virtual rack in this directory.
apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: lab, lab: true}
network:
  interface: {{.Bridge}}
  mode: full
  subnet: {{.Subnet}}
  address: {{.Address}}
{{- with .Router}}
  # The lab's router (its namespace) is the machines' gateway and name
  # server: its uplink counts whatever tries to leave the lab (nothing
  # answers DNS).
  gateway: {{.}}
  dns: [{{.}}]
{{- end}}
  dynamicRange: {start: {{.Start}}, end: {{.End}}}
  leaseTime: 1h
racks:
{{- range .Racks}}
  - name: {{.Name}}
    tor: {{.ToR}}
    ports:
{{- range .Ports}}
      - {port: {{.Port}}, serial: {{.Serial}}}
{{- end}}
{{- end}}
machines:
{{- range .Nodes}}
  - name: {{.Rule}}
    match: {serials: [{{.Serial}}]}
    role: {{.Role}}
    hostname: {{.Hostname}}
    address: {{.Address}}
{{- with $.OSImage}}
    osImage: {{.}}
{{- end}}
{{- end}}
  - name: workers
    role: worker
    hostname: worker-{rack}-{index}
{{- with .OSImage}}
    osImage: {{.}}
{{- end}}
admission: {policy: any}
cluster:
  name: lab
{{- with .Kubernetes}}
  distribution: {name: kubeadm, version: {{printf "%q" .}}}
{{- end}}
{{- with .Bundle}}{{if .Path}}
bundle:
  path: {{printf "%q" .Path}}
{{- if .PublicKey}}
  publicKey: {{printf "%q" .PublicKey}}
{{- end}}
{{- if .TrustOnFirstUse}}
  trustOnFirstUse: true
{{- end}}
{{- end}}{{end}}
`))

// labAnswerFile is the answer file for the lab's own airlock: full DHCP on
// the bridge, the rack plan exactly as the lab cabled it, and the bundle
// to serve, if any. With labOS, that bundle is the one lab up built around
// its OS image, and every rule names that image. kubernetes, when set,
// is the cluster's Kubernetes version.
func labAnswerFile(s *lab.State, bun config.Bundle, labOS bool, kubernetes string) ([]byte, error) {
	subnet, err := netip.ParsePrefix(s.Subnet)
	if err != nil {
		return nil, err
	}
	server, err := netip.ParsePrefix(s.ServerAddr)
	if err != nil {
		return nil, err
	}
	type port struct{ Port, Serial string }
	type rack struct {
		Name, ToR string
		Ports     []port
	}
	var racks []rack
	for _, sw := range s.Switches {
		r := rack{Name: sw.Rack, ToR: sw.SystemName}
		for _, vm := range s.VMs {
			if vm.Rack == sw.Rack {
				r.Ports = append(r.Ports, port{vm.Port(), vm.Serial})
			}
		}
		racks = append(racks, r)
	}
	base := subnet.Masked().Addr().As4()
	at := func(host byte) netip.Addr { b := base; b[3] += host; return netip.AddrFrom4(b) }
	// Every machine of the rack by its serial: the first the control
	// plane, the others workers numbered within their rack, each with a
	// static address (.10 on) that its installed system takes from the
	// seed. The catch-all rule takes machines added later.
	type node struct{ Rule, Serial, Role, Hostname, Address string }
	var nodes []node
	perRack := map[string]int{}
	for i, vm := range s.VMs {
		n := node{Rule: "cp", Serial: vm.Serial, Role: config.RoleControlPlane, Hostname: "cp-1",
			Address: netip.PrefixFrom(at(byte(10+i)), subnet.Bits()).String()}
		if i > 0 {
			perRack[vm.Rack]++
			n.Rule, n.Role = strings.ToLower(vm.Name), config.RoleWorker
			n.Hostname = fmt.Sprintf("worker-%s-%d", vm.Rack, perRack[vm.Rack])
		}
		nodes = append(nodes, n)
	}
	osImageName := ""
	if labOS {
		osImageName = LabOSImageName
	}
	var out bytes.Buffer
	err = labAnswersTmpl.Execute(&out, map[string]any{
		"Bridge": s.Bridge, "Subnet": subnet.Masked(), "Address": server.Addr(),
		"Start": at(100), "End": at(200), "Racks": racks, "Nodes": nodes, "Bundle": bun, "OSImage": osImageName,
		"Kubernetes": kubernetes, "Router": s.Router,
	})
	if err != nil {
		return nil, err
	}
	a, src, problems := config.Parse(labAnswers, out.Bytes())
	problems = append(problems, a.Validate(src)...)
	if err := problems.Err(); err != nil {
		return nil, fmt.Errorf("the lab's answer file does not validate (a bug): %w", err)
	}
	return out.Bytes(), nil
}

// startLabAirlock starts `airlock lab run` inside the lab's namespace, in
// its own session so that it outlives this process, and waits until it
// reports that its services serve (see startReporting).
func startLabAirlock(ctx context.Context, s *lab.State, o LabOptions) error {
	ns, err := netns.Open(s.Namespace)
	if err != nil {
		return err
	}
	logPath := filepath.Join(s.Dir, labLog)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append(append([]string{"lab", "run", "--state", o.StateDir, "--ready-fd", strconv.Itoa(LabReadyFD)}, o.Args...), o.RunArgs...)
	cmd := ns.Command(context.WithoutCancel(ctx), o.Self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := startReporting(ctx, cmd, 90*time.Second); err != nil {
		return fmt.Errorf("%w; its log:\n%s", err, tail(logPath, 20))
	}
	o.Log.Info("lab airlock serving", "pid", cmd.Process.Pid, "log", logPath)
	return nil
}

// LabReadyFD is the file descriptor on which `airlock lab run` reports
// that it serves (its --ready-fd): one end of a socket pair whose other
// end lab up or lab restart holds.
const LabReadyFD = 3

// What lab up and lab restart tell apart when the lab's airlock they
// started is gone.
var (
	// ErrLabNeverReady: it exited before its services served.
	ErrLabNeverReady = errors.New("the lab's airlock never became ready")
	// ErrLabDiedAfterReady: it reported its services ready, then exited
	// before it took the release to go on (resume the install).
	ErrLabDiedAfterReady = errors.New("the lab's airlock became ready, then died")
)

// labReleased is lab up's answer to the ready report.
const labReleased = "released\n"

// startReporting starts cmd with one end of a socket pair as file
// descriptor LabReadyFD and waits for its ready report (LabReportReady),
// then answers it; cmd resumes its install only after that answer, so a
// crash of it at its first transition comes after lab up (or restart) saw
// it ready, never before. A cmd that exits first fails with
// ErrLabNeverReady, one whose report came but which is gone before the
// answer with ErrLabDiedAfterReady; both give its exit status. cmd must
// not have been started; it is left running on success.
func startReporting(ctx context.Context, cmd *exec.Cmd, timeout time.Duration) error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("start the lab's airlock: socket pair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "lab-ready"), os.NewFile(uintptr(fds[1]), "lab-ready-child")
	defer ours.Close()
	cmd.ExtraFiles = []*os.File{theirs} // the first extra file is descriptor 3, LabReadyFD
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return fmt.Errorf("start the lab's airlock: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	reported := make(chan error, 1) // nil: the report came
	go func() {
		line, err := bufio.NewReader(io.LimitReader(ours, 64<<10)).ReadString('\n')
		if err == nil && !strings.HasPrefix(line, "ready") {
			err = fmt.Errorf("unexpected report %q", line)
		}
		reported <- err
	}()
	// exitOf waits a little for the exit status of a process known to
	// be going (its end of the socket is closed).
	exitOf := func() error {
		select {
		case err := <-exited:
			if err == nil {
				return errors.New("exit status 0")
			}
			return err
		case <-time.After(10 * time.Second):
			return errors.New("still running, its report socket closed")
		}
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	select {
	case err := <-reported:
		if err != nil {
			return fmt.Errorf("%w: it exited (%v) before it served", ErrLabNeverReady, exitOf())
		}
		if _, err := io.WriteString(ours, labReleased); err != nil {
			return fmt.Errorf("%w: it served, then exited (%v) before it resumed: airlock lab restart starts it again", ErrLabDiedAfterReady, exitOf())
		}
		return nil
	case err := <-exited:
		// Its report may have come just before it died.
		if rerr := <-reported; rerr == nil {
			return fmt.Errorf("%w: it served, then exited (%v) before it resumed: airlock lab restart starts it again", ErrLabDiedAfterReady, err)
		}
		return fmt.Errorf("%w: it exited (%v) before it served", ErrLabNeverReady, err)
	case <-deadline.C:
		return fmt.Errorf("%w: it did not serve within %s (it still runs: airlock lab down removes the lab)", ErrLabNeverReady, timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// LabReportReady is the lab airlock's side of startReporting: it reports
// on file descriptor fd that its services serve (sv), and returns once lab
// up (or restart) has answered, or is gone (its end closed: nothing waits
// for the report any more). The lab's airlock starts its install only
// after it returns.
func LabReportReady(fd int, sv Serving) error {
	f := os.NewFile(uintptr(fd), "lab-ready")
	if f == nil {
		return fmt.Errorf("report ready on descriptor %d: not open", fd)
	}
	defer f.Close()
	line, err := json.Marshal(sv)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(append([]byte("ready "), line...), '\n')); err != nil {
		return fmt.Errorf("report ready on descriptor %d: %w", fd, err)
	}
	answer, err := bufio.NewReader(io.LimitReader(f, 64)).ReadString('\n')
	switch {
	case err == nil && answer == labReleased, errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return fmt.Errorf("wait for the release on descriptor %d: %w", fd, err)
	}
	return fmt.Errorf("wait for the release on descriptor %d: unexpected answer %q", fd, answer)
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// LabFiles are what the lab's airlock serves: its state, the answer file
// lab up wrote for it and the directory holding the discovery kernel and
// boot image (DiscoveryImage names them).
type LabFiles struct {
	State   *lab.State
	Answers string
	BootDir string
}

// LabInputs finds the lab in stateDir for the airlock that runs inside it
// (`airlock lab run`, which the CLI builds like every other engine).
func LabInputs(stateDir string) (LabFiles, error) {
	s, err := lab.Load(stateDir)
	if err != nil {
		return LabFiles{}, fmt.Errorf("no lab in %s: %w", stateDir, err)
	}
	return LabFiles{State: s, Answers: filepath.Join(s.Dir, labAnswers), BootDir: filepath.Join(s.Dir, labBootDir)}, nil
}

// LabDiscoveryImage names the discovery kernel and boot image in a lab's
// (or a bundle's) boot directory. The lab's machines are emulated (TCG) on
// a shared host: no_timer_check spares their kernels the IO-APIC timer
// test, which a loaded host fails ("IO-APIC + timer doesn't work!", a
// panic seen in the lab and in TestBootInQEMU).
func LabDiscoveryImage() DiscoveryImage {
	img := discoveryImage
	img.Cmdline += " no_timer_check"
	return img
}

// LabMarkReady records what the lab's airlock serves, which tells lab up
// it may power on the machines.
func LabMarkReady(f LabFiles, sv Serving) error {
	data, err := json.Marshal(sv)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(f.State.Dir, labReady), data, 0o600)
}

// LabServing returns what the lab's airlock serves, as it recorded once it
// started serving.
func LabServing(stateDir string) (Serving, error) {
	var sv Serving
	data, err := os.ReadFile(filepath.Join(filepath.Dir(lab.StateFile(stateDir)), labReady))
	if err != nil {
		return sv, err
	}
	if err := json.Unmarshal(data, &sv); err != nil {
		return sv, fmt.Errorf("lab: %s: %w", labReady, err)
	}
	return sv, nil
}

// LabDown removes the lab: its VMs, its airlock (which lives in the lab's
// namespace and goes with it), the namespace, the lab directory, and the
// state store if the lab created it.
func LabDown(stateDir string) error {
	s, err := lab.Load(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	_, ownsErr := os.Stat(filepath.Join(s.Dir, labOwnsStore))
	if err := lab.Down(stateDir); err != nil {
		return err
	}
	// The lab's airlock died with its namespace; its control socket is stale.
	if _, err := control.NewClient(stateDir).Journal(context.Background()); errors.Is(err, control.ErrNotRunning) {
		if err := os.Remove(filepath.Join(stateDir, control.SocketName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove the lab's control socket: %w", err)
		}
	}
	if ownsErr == nil {
		for _, name := range []string{state.FileName, state.OwnerFile} {
			if err := os.Remove(filepath.Join(stateDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove the lab's state store: %w", err)
			}
		}
	}
	return nil
}
