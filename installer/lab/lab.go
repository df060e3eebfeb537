// Package lab is airlock's virtual rack: one network namespace holding a
// bridge (the provisioning network), a tap per virtual machine, QEMU VMs
// (BIOS with SeaBIOS or UEFI with OVMF, network-booting through Debian's
// iPXE ROMs) with sparse disks and distinct SMBIOS identities, and a
// simulated top-of-rack switch per rack that sends real LLDP frames into
// each VM's tap.
//
// Everything the lab makes is recorded in its state directory before it is
// made, so Down removes all of it (processes by PID, the namespace with its
// links, files) even after the process that ran Up crashed. The lab never
// creates an interface in the caller's namespace.
//
// airlock's services for the lab run inside the lab's namespace, bound to
// the bridge address (State.ServerAddr); see NOTES.md for the wiring.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"airlock.dev/airlock/installer/lab/netns"
)

// Firmware kinds.
const (
	BIOS  = "bios"
	UEFI  = "uefi"
	Mixed = "mixed"
)

// Options describe the lab to bring up.
type Options struct {
	// StateDir is airlock's state directory; the lab keeps everything under
	// StateDir/lab.
	StateDir string
	Nodes    int
	// Firmware is BIOS, UEFI or Mixed (alternating, BIOS first).
	Firmware string
	Racks    int
	// Subnet of the provisioning network; the bridge takes the first
	// address (airlock's), VMs get theirs from airlock's DHCP.
	Subnet netip.Prefix
	// CPUs (default 1) and MemoryMB (default 512) of every VM, and DiskGB
	// per VM (sparse, default 16).
	CPUs     int
	MemoryMB int
	DiskGB   int
	// Sizes, when longer than a VM's index, gives that VM (in plan order:
	// node-a-01 first) its own CPUs and memory; zero fields take the
	// defaults above. A Kubernetes control plane needs 2 CPUs and ~3 GiB.
	Sizes []Size
	// Accel is "tcg" (default) or "kvm"; use ProbeKVM before choosing kvm:
	// nested KVM often hangs guests.
	Accel string
	// Direct, when set, boots the VMs straight into a kernel and initrd
	// instead of from the network (no DHCP/TFTP/iPXE needed).
	Direct *DirectBoot
	// Detach starts the VMs in their own session without a parent-death
	// signal, so they outlive the caller (Down still finds them by PID).
	// Leave false when the caller lives as long as the lab: then a crash of
	// the caller takes the VMs with it.
	Detach bool
	// Paths to the tools and firmware; Defaults fills them.
	QEMU, OVMFCode, OVMFVars string
	Log                      *slog.Logger
}

// Size is the processors and memory of one VM.
type Size struct {
	CPUs     int `json:"cpus"`
	MemoryMB int `json:"memoryMB"`
}

// DirectBoot boots a kernel and initrd without firmware network boot.
type DirectBoot struct {
	Kernel, Initrd string
	// Append returns the kernel command line for one VM.
	Append func(vm VM) string
}

// Defaults fills unset options.
func (o *Options) Defaults() {
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Racks == 0 {
		o.Racks = 1
	}
	if o.Firmware == "" {
		o.Firmware = BIOS
	}
	if !o.Subnet.IsValid() {
		o.Subnet = netip.MustParsePrefix("10.77.0.0/24")
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 512
	}
	if o.CPUs == 0 {
		o.CPUs = 1
	}
	if o.DiskGB == 0 {
		o.DiskGB = 16
	}
	if o.Accel == "" {
		o.Accel = "tcg"
	}
	if o.QEMU == "" {
		o.QEMU = "qemu-system-x86_64"
	}
	if o.OVMFCode == "" {
		o.OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	}
	if o.OVMFVars == "" {
		o.OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Validate returns every problem with the options.
func (o *Options) Validate() error {
	var errs []error
	if o.StateDir == "" {
		errs = append(errs, errors.New("stateDir: required"))
	}
	if o.Nodes < 1 || o.Nodes > 64 {
		errs = append(errs, fmt.Errorf("nodes: %d is not between 1 and 64", o.Nodes))
	}
	if o.Racks < 1 || o.Racks > 26 || o.Racks > o.Nodes {
		errs = append(errs, fmt.Errorf("racks: %d is not between 1 and min(26, nodes)", o.Racks))
	}
	switch o.Firmware {
	case BIOS, UEFI, Mixed:
	default:
		errs = append(errs, fmt.Errorf("firmware: %q is not bios, uefi or mixed", o.Firmware))
	}
	if !o.Subnet.Addr().Is4() || o.Subnet.Bits() > 26 || o.Subnet.Bits() < 8 {
		errs = append(errs, fmt.Errorf("subnet: %s is not an IPv4 prefix between /8 and /26", o.Subnet))
	}
	for i, sz := range append([]Size{{o.CPUs, o.MemoryMB}}, o.Sizes...) {
		field := "cpus/memoryMB"
		if i > 0 {
			field = fmt.Sprintf("sizes[%d]", i-1)
		}
		if sz.CPUs < 0 || sz.CPUs > 64 {
			errs = append(errs, fmt.Errorf("%s: %d CPUs is not between 1 and 64", field, sz.CPUs))
		}
		if sz.MemoryMB != 0 && (sz.MemoryMB < 128 || sz.MemoryMB > 1<<20) {
			errs = append(errs, fmt.Errorf("%s: %d MiB of memory is not between 128 and 1048576", field, sz.MemoryMB))
		}
	}
	if len(o.Sizes) > o.Nodes {
		errs = append(errs, fmt.Errorf("sizes: %d given for %d nodes", len(o.Sizes), o.Nodes))
	}
	switch o.Accel {
	case "tcg", "kvm":
	default:
		errs = append(errs, fmt.Errorf("accel: %q is not tcg or kvm", o.Accel))
	}
	if o.Direct != nil && (o.Direct.Kernel == "" || o.Direct.Initrd == "" || o.Direct.Append == nil) {
		errs = append(errs, errors.New("direct: kernel, initrd and append are required"))
	}
	return errors.Join(errs...)
}

// VM is one virtual machine of the lab.
type VM struct {
	Name     string `json:"name"` // node-a-01
	Rack     string `json:"rack"` // rack-a
	Slot     int    `json:"slot"` // 1-based position in the rack (switch port)
	Firmware string `json:"firmware"`
	Serial   string `json:"serial"`
	UUID     string `json:"uuid"`
	MAC      string `json:"mac"`
	Tap      string `json:"tap"`
	Disk     string `json:"disk"`
	DiskSize int64  `json:"diskSize"`
	CPUs     int    `json:"cpus"`
	MemoryMB int    `json:"memoryMB"`
	// SerialLog is the VM's serial console (firmware, iPXE, Linux, agent).
	SerialLog string `json:"serialLog"`
	// Vars is the UEFI variable store copy (UEFI only).
	Vars    string    `json:"vars,omitempty"`
	PID     int       `json:"pid,omitempty"`
	Started time.Time `json:"started"`
	// Running is filled by Status.
	Running bool `json:"running"`
}

// Switch is one simulated top-of-rack switch.
type Switch struct {
	Rack       string `json:"rack"`
	SystemName string `json:"systemName"` // rack-a-tor
	ChassisID  string `json:"chassisID"`  // a MAC address
}

// State is what the lab made, as recorded in StateDir/lab/lab.json.
type State struct {
	Dir       string `json:"dir"`
	Namespace string `json:"namespace"`
	Bridge    string `json:"bridge"`
	// ServerAddr is airlock's address on the bridge, e.g. 10.77.0.1/24.
	ServerAddr string `json:"serverAddr"`
	// Uplink is the namespace's way out, as a site's provisioning network
	// has one: a veth whose peer lies in the namespace Outside, which
	// routes nothing further. The lab's default IPv4 route goes through it
	// (and the namespace forwards), so whatever in the lab tries to reach
	// an address off the provisioning network (a VM through its gateway,
	// a process in the namespace) is sent there and counted (UplinkPackets);
	// nothing reaches the host or beyond. IPv6 has no route out (the
	// lab's router advertisements announce no default router) and is off
	// on the uplink, so it sends nothing of its own.
	Uplink string `json:"uplink,omitempty"`
	// Router is the namespace's second address on the bridge (the
	// subnet's last host address), the gateway a site's network would
	// have: a lab's answer file offers it to the machines, so that their
	// packets for anywhere else reach the uplink.
	Router   string    `json:"router,omitempty"`
	Outside  string    `json:"outside,omitempty"`
	Subnet   string    `json:"subnet"`
	Accel    string    `json:"accel"`
	VMs      []VM      `json:"vms"`
	Switches []Switch  `json:"switches"`
	Created  time.Time `json:"created"`
}

// StateFile returns where the lab records itself for stateDir.
func StateFile(stateDir string) string { return filepath.Join(stateDir, "lab", "lab.json") }

func (s *State) save() error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.Dir, "lab.json.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("record lab state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.Dir, "lab.json")); err != nil {
		return fmt.Errorf("record lab state: %w", err)
	}
	return nil
}

// Load reads the recorded state of the lab in stateDir; os.ErrNotExist if
// there is none.
func Load(stateDir string) (*State, error) {
	data, err := os.ReadFile(StateFile(stateDir))
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("read lab state %s: %w", StateFile(stateDir), err)
	}
	return &s, nil
}

// ErrExists is returned by Up when a lab is already recorded.
var ErrExists = errors.New("a lab already exists in this state directory (run `airlock lab down` first)")

func rackName(i int) string { return "rack-" + string(rune('a'+i)) }

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// plan lays the VMs out in racks: contiguous blocks, the first racks one
// larger when Nodes does not divide evenly.
func plan(o Options, dir string, labID byte) ([]VM, []Switch) {
	var vms []VM
	var sws []Switch
	per, extra := o.Nodes/o.Racks, o.Nodes%o.Racks
	n := 0
	for r := range o.Racks {
		rack := rackName(r)
		sws = append(sws, Switch{Rack: rack, SystemName: rack + "-tor", ChassisID: fmt.Sprintf("02:a1:%02x:00:%02x:01", labID, r)})
		count := per
		if r < extra {
			count++
		}
		for s := 1; s <= count; s++ {
			fw := o.Firmware
			if fw == Mixed {
				fw = []string{BIOS, UEFI}[n%2]
			}
			letter := strings.ToUpper(rack[len(rack)-1:])
			name := fmt.Sprintf("node-%s-%02d", rack[len(rack)-1:], s)
			vm := VM{
				Name: name, Rack: rack, Slot: s, Firmware: fw,
				Serial:    fmt.Sprintf("LAB-%s-%02d", letter, s),
				UUID:      newUUID(),
				MAC:       fmt.Sprintf("52:54:%02x:a1:%02x:%02x", labID, r, s),
				Tap:       fmt.Sprintf("tap%d", n),
				Disk:      filepath.Join(dir, name+".disk"),
				DiskSize:  int64(o.DiskGB) << 30,
				CPUs:      o.CPUs,
				MemoryMB:  o.MemoryMB,
				SerialLog: filepath.Join(dir, name+".serial.log"),
			}
			if n < len(o.Sizes) {
				if c := o.Sizes[n].CPUs; c > 0 {
					vm.CPUs = c
				}
				if m := o.Sizes[n].MemoryMB; m > 0 {
					vm.MemoryMB = m
				}
			}
			if fw == UEFI {
				vm.Vars = filepath.Join(dir, name+".vars.fd")
			}
			vms = append(vms, vm)
			n++
		}
	}
	return vms, sws
}

// Up builds the lab (Prepare) and starts its VMs (Start). Callers that must
// have services listening on the bridge before the VMs boot call Prepare,
// start them inside State.Namespace, then Start.
func Up(ctx context.Context, o Options) (*State, error) {
	s, err := Prepare(ctx, o)
	if err != nil {
		return nil, err
	}
	if err := Start(ctx, o, s); err != nil {
		return nil, errors.Join(err, Down(o.StateDir))
	}
	return s, nil
}

// Prepare records the lab and makes its namespace, bridge (with airlock's
// address), taps, disks and UEFI variable stores, but starts no VM. On
// error, what was made is removed again.
func Prepare(ctx context.Context, o Options) (_ *State, err error) {
	o.Defaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("lab options: %w", err)
	}
	if _, err := exec.LookPath(o.QEMU); err != nil {
		return nil, fmt.Errorf("%s not found: apt-get install qemu-system-x86 ipxe-qemu ovmf", o.QEMU)
	}
	if o.Firmware != BIOS {
		for _, f := range []string{o.OVMFCode, o.OVMFVars} {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("UEFI firmware %s not found: apt-get install ovmf", f)
			}
		}
	}
	dir := filepath.Join(o.StateDir, "lab")
	if _, err := os.Stat(StateFile(o.StateDir)); err == nil {
		return nil, ErrExists
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create lab directory: %w", err)
	}
	var idb [1]byte
	_, _ = rand.Read(idb[:])
	s := &State{
		Dir: dir, Namespace: netns.UniqueName("allab"), Bridge: "br0",
		Uplink: "uplink0", Outside: netns.UniqueName("alout"),
		Subnet: o.Subnet.Masked().String(), Accel: o.Accel, Created: time.Now().UTC(),
	}
	server := o.Subnet.Masked().Addr().Next()
	s.ServerAddr = netip.PrefixFrom(server, o.Subnet.Bits()).String()
	s.Router = lastHost(o.Subnet).String()
	s.VMs, s.Switches = plan(o, dir, idb[0]&0xfe)
	// Record before making anything, so Down can clean up after a crash.
	if err := s.save(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, Down(o.StateDir))
		}
	}()
	ns, err := netns.Add(s.Namespace)
	if err != nil {
		return nil, fmt.Errorf("create lab namespace: %w", err)
	}
	if err := ns.AddBridge(s.Bridge); err != nil {
		return nil, err
	}
	if err := ns.AddAddr(s.Bridge, s.ServerAddr); err != nil {
		return nil, err
	}
	if err := ns.AddAddr(s.Bridge, netip.PrefixFrom(netip.MustParseAddr(s.Router), o.Subnet.Bits()).String()); err != nil {
		return nil, err
	}
	out, err := netns.Add(s.Outside)
	if err != nil {
		return nil, fmt.Errorf("create the lab's outside namespace: %w", err)
	}
	if err := netns.AddQuietVeth(ns, s.Uplink, out, "wan0"); err != nil {
		return nil, fmt.Errorf("lab uplink: %w", err)
	}
	if err := errors.Join(ns.AddRoute("default", "dev", s.Uplink), ns.Sysctl("net.ipv4.ip_forward", "1")); err != nil {
		return nil, fmt.Errorf("lab uplink: %w", err)
	}
	// A serial-port file for SeaBIOS: fw_cfg etc/sercon-port = 0x3f8.
	if err := os.WriteFile(filepath.Join(dir, "sercon-port"), []byte{0xf8, 0x03}, 0o600); err != nil {
		return nil, fmt.Errorf("write SeaBIOS serial port file: %w", err)
	}
	for i := range s.VMs {
		vm := &s.VMs[i]
		if err := ns.AddTap(vm.Tap, s.Bridge); err != nil {
			return nil, err
		}
		if err := makeDisk(vm.Disk, vm.DiskSize); err != nil {
			return nil, err
		}
		if vm.Vars != "" {
			if err := copyFile(o.OVMFVars, vm.Vars); err != nil {
				return nil, fmt.Errorf("copy UEFI variables for %s: %w (apt-get install ovmf)", vm.Name, err)
			}
		}
	}
	return s, nil
}

// Start starts the QEMU process of every VM of a prepared lab and records
// their PIDs.
func Start(ctx context.Context, o Options, s *State) error {
	o.Defaults()
	ns, err := netns.Open(s.Namespace)
	if err != nil {
		return fmt.Errorf("open lab namespace: %w", err)
	}
	sercon := filepath.Join(s.Dir, "sercon-port")
	type exit struct {
		vm  string
		err error
	}
	exits := make(chan exit, len(s.VMs))
	for i := range s.VMs {
		vm := &s.VMs[i]
		cmd := ns.Command(context.WithoutCancel(ctx), o.QEMU, qemuArgs(o, s, vm, sercon)...)
		if o.Detach {
			cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
		}
		logf, err := os.OpenFile(filepath.Join(s.Dir, vm.Name+".qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("open QEMU log: %w", err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			return fmt.Errorf("start VM %s: %w", vm.Name, err)
		}
		logf.Close()
		vm.PID = cmd.Process.Pid
		vm.Started = time.Now().UTC()
		// Reap it when it exits; Down kills it by PID.
		go func() { exits <- exit{vm.Name, cmd.Wait()} }()
		if err := s.save(); err != nil {
			return err
		}
		o.Log.Info("lab VM started", "vm", vm.Name, "rack", vm.Rack, "firmware", vm.Firmware, "mac", vm.MAC, "serial", vm.Serial, "pid", vm.PID)
	}
	// QEMU refuses bad settings (a busy tap, missing firmware) at once: give
	// it a moment and report the first VM that quit, with its complaint.
	select {
	case e := <-exits:
		log, _ := os.ReadFile(filepath.Join(s.Dir, e.vm+".qemu.log"))
		return fmt.Errorf("VM %s quit right after starting (%v): %s", e.vm, e.err, strings.TrimSpace(string(log)))
	case <-time.After(500 * time.Millisecond):
	}
	return nil
}

func qemuArgs(o Options, s *State, vm *VM, sercon string) []string {
	args := []string{
		"-name", vm.Name + ",debug-threads=off",
		"-accel", o.Accel, "-machine", "q35", "-m", strconv.Itoa(vm.memoryMB(o)), "-smp", strconv.Itoa(vm.cpus(o)),
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-serial", "file:" + vm.SerialLog,
		"-uuid", vm.UUID,
		"-smbios", "type=1,manufacturer=airlock-lab,product=virtual-node,serial=" + vm.Serial + ",uuid=" + vm.UUID,
		"-smbios", fmt.Sprintf("type=2,manufacturer=airlock-lab,location=%s U%d", vm.Rack, vm.Slot),
		"-smbios", "type=3,manufacturer=airlock-lab,asset=" + vm.Name,
		"-netdev", "tap,id=n0,ifname=" + vm.Tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + vm.MAC + ",bootindex=1",
		"-device", "virtio-rng-pci",
		"-drive", "file=" + vm.Disk + ",if=none,id=d0,format=raw,cache=unsafe",
		"-device", "virtio-blk-pci,drive=d0,bootindex=2,serial=" + vm.Serial + "-D0",
		// A machine that boots nothing (its network boot found no airlock,
		// say while the lab's airlock restarts) tries again in 10 s, as
		// racks do, instead of stopping for good (SeaBIOS).
		"-boot", "reboot-timeout=10000",
		// Marks the process as this lab's: Down checks it before killing a
		// recorded PID.
		"-fw_cfg", "name=opt/airlock/lab,string=" + s.Dir,
	}
	if vm.Firmware == UEFI {
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+o.OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vm.Vars)
	} else {
		args = append(args, "-fw_cfg", "name=etc/sercon-port,file="+sercon)
	}
	if o.Direct != nil {
		args = append(args, "-kernel", o.Direct.Kernel, "-initrd", o.Direct.Initrd, "-append", o.Direct.Append(*vm))
	}
	return args
}

// lastHost returns the last host address of an IPv4 prefix (the one
// before its broadcast address).
func lastHost(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 2
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// cpus and memoryMB are the VM's size (labs recorded before VMs had one
// take the options').
func (vm *VM) cpus(o Options) int {
	if vm.CPUs > 0 {
		return vm.CPUs
	}
	return o.CPUs
}

func (vm *VM) memoryMB(o Options) int {
	if vm.MemoryMB > 0 {
		return vm.MemoryMB
	}
	return o.MemoryMB
}

// UplinkPackets returns how many packets have gone out of the lab's
// namespace through its uplink since the lab was made (see
// State.Uplink): zero when nothing in the lab tried to reach anything off
// the provisioning network.
func (s *State) UplinkPackets() (uint64, error) {
	if s.Uplink == "" {
		return 0, errors.New("this lab was made without an uplink")
	}
	ns, err := netns.Open(s.Namespace)
	if err != nil {
		return 0, err
	}
	return ns.TxPackets(s.Uplink)
}

func makeDisk(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create disk: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil { // sparse
		return fmt.Errorf("size disk %s: %w", path, err)
	}
	return nil
}

// copyFile copies src to a new file dst (mode 0600), replacing dst.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// LinkOrCopy puts src at dst, replacing dst: a hard link when both are on
// one file system, else a copy. For files nobody writes to once made, such
// as a kernel or a boot image.
func LinkOrCopy(src, dst string) error {
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if os.Link(src, dst) == nil {
		return nil
	}
	return copyFile(src, dst)
}

// ours reports whether pid is a QEMU process of the lab in dir (PIDs are
// reused; never kill a stranger).
func ours(pid int, dir string) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return strings.Contains(string(data), "opt/airlock/lab,string="+dir+"\x00")
}

// Status returns the recorded lab with each VM's Running flag set.
func Status(stateDir string) (*State, error) {
	s, err := Load(stateDir)
	if err != nil {
		return nil, err
	}
	for i := range s.VMs {
		s.VMs[i].Running = s.VMs[i].PID > 0 && ours(s.VMs[i].PID, s.Dir)
	}
	return s, nil
}

// Down removes everything the lab in stateDir made: VM processes (by
// recorded PID, after checking they are the lab's), the namespace with its
// bridge and taps, and the lab directory. It is safe to run twice and after
// a crash; with no lab recorded it does nothing.
func Down(stateDir string) error {
	s, err := Load(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, vm := range s.VMs {
		if vm.PID > 0 && ours(vm.PID, s.Dir) {
			if err := unix.Kill(vm.PID, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("stop VM %s (pid %d): %w", vm.Name, vm.PID, err))
			}
		}
	}
	for _, vm := range s.VMs {
		for i := 0; i < 50 && vm.PID > 0 && ours(vm.PID, s.Dir); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, name := range []string{s.Namespace, s.Outside} {
		if name == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(netns.RunDir, name)); err == nil {
			ns, err := netns.Open(name)
			if err == nil {
				err = ns.Delete()
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("remove lab namespace %s: %w", name, err))
			}
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove lab directory: %w", err))
		}
	}
	return errors.Join(errs...)
}
