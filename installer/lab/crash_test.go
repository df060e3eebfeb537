package lab

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/lab/testkit"
)

func TestPlanAndValidate(t *testing.T) {
	o := Options{StateDir: "/x", Nodes: 5, Racks: 2, Firmware: Mixed}
	o.Defaults()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	vms, sws := plan(o, "/x/lab", 0x10)
	if len(vms) != 5 || len(sws) != 2 || sws[1].SystemName != "rack-b-tor" {
		t.Fatalf("plan: %+v %+v", vms, sws)
	}
	racks := map[string]int{}
	serials, macs, uuids := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, vm := range vms {
		racks[vm.Rack]++
		serials[vm.Serial], macs[vm.MAC], uuids[vm.UUID] = true, true, true
		if want := []string{BIOS, UEFI}[i%2]; vm.Firmware != want {
			t.Errorf("%s firmware %s, want %s", vm.Name, vm.Firmware, want)
		}
		if (vm.Vars != "") != (vm.Firmware == UEFI) {
			t.Errorf("%s vars %q", vm.Name, vm.Vars)
		}
	}
	if racks["rack-a"] != 3 || racks["rack-b"] != 2 || len(serials) != 5 || len(macs) != 5 || len(uuids) != 5 {
		t.Fatalf("racks %v serials %v macs %v", racks, serials, macs)
	}
	if vms[3].Serial != "LAB-B-01" || vms[3].Port() != "Eth1/1" || vms[2].Port() != "Eth1/3" {
		t.Fatalf("names: %+v", vms[3])
	}
	bad := Options{Nodes: 0, Racks: 3, Firmware: "coreboot", Subnet: netip.MustParsePrefix("10.0.0.0/30"), Accel: "hvf"}
	err := bad.Validate()
	for _, want := range []string{"stateDir", "nodes", "racks", "firmware", "subnet", "accel"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want a problem with %s", err, want)
		}
	}
}

const crashChildEnv = "AIRLOCK_LAB_CRASH_CHILD"

// TestMain runs this test binary as TestDownAfterCrash's child when
// crashChildEnv names a state directory (so that the child's role never
// shows as a test of its own), and runs the tests otherwise.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		os.Exit(crashChild(dir))
	}
	os.Exit(m.Run())
}

// crashChild brings up a lab whose VMs idle (no boot device), prints its
// namespace and exits without Down, as a crashed airlock would.
func crashChild(dir string) int {
	s, err := Up(context.Background(), Options{StateDir: dir, Nodes: 2, Firmware: BIOS, Detach: true, DiskGB: 1})
	if err != nil {
		os.Stderr.WriteString(err.Error())
		return 3
	}
	os.Stdout.WriteString(s.Namespace)
	return 0 // no Down: a crash
}

// TestDownAfterCrash runs Up in a child process that dies without Down
// (as a crashed airlock would), then checks that Down, from the recorded
// state alone, removes the namespace, the VM processes and the files.
func TestDownAfterCrash(t *testing.T) {
	netns.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	state := t.TempDir()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), crashChildEnv+"="+state)
	out, err := cmd.Output() // an *exec.ExitError carries the child's stderr
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		t.Fatalf("child: %v: %s", err, ee.Stderr)
	} else if err != nil {
		t.Fatalf("child: %v", err)
	}
	s, err := Status(state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Down(state) })
	if string(out) != s.Namespace {
		t.Fatalf("child made namespace %q, state says %q", out, s.Namespace)
	}
	running := 0
	for _, vm := range s.VMs {
		if vm.Running {
			running++
		}
	}
	if running != 2 {
		t.Fatalf("%d detached VMs running after the crash, want 2: %+v", running, s.VMs)
	}
	if _, err := os.Stat(filepath.Join(netns.RunDir, s.Namespace)); err != nil {
		t.Fatalf("namespace gone before Down: %v", err)
	}
	start := time.Now()
	if err := Down(state); err != nil {
		t.Fatal(err)
	}
	t.Logf("Down took %s", time.Since(start).Round(time.Millisecond))
	assertGone(t, s)
	if err := Down(state); err != nil {
		t.Fatalf("second Down: %v", err)
	}
	if _, err := Status(state); !os.IsNotExist(err) && !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("Status after Down: %v", err)
	}
}

// TestStartReportsQEMUErrors: a VM whose QEMU refuses to start makes Start
// fail with QEMU's own message, and Up removes what it made.
func TestStartReportsQEMUErrors(t *testing.T) {
	netns.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	state := t.TempDir()
	_, err := Up(context.Background(), Options{StateDir: state, Nodes: 1, MemoryMB: 1 << 20, DiskGB: 1})
	if err == nil || !strings.Contains(err.Error(), "quit right after starting") {
		t.Fatalf("Up with 1 TiB of memory (more than this machine can reserve): %v", err)
	}
	t.Logf("error: %v", err)
	if _, err := os.Stat(StateFile(state)); err == nil {
		t.Fatal("Up left the lab recorded after failing")
	}
}

// TestKVMProbe checks the probe's judgement, which the lab's choice of
// accelerator rests on, where the answer is known: under TCG (which always
// runs guests, only slowly) Debian's kernel reaches its no-root panic and
// the probe must see it; a file that is not a kernel must never pass. What
// ProbeKVM says of this machine's KVM is only logged: nested KVM works on
// some hosts and hangs on others, so no answer is right everywhere.
func TestKVMProbe(t *testing.T) {
	qemu := netns.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	kernel, _ := testkit.CloudKernel(t)
	ctx := context.Background()

	start := time.Now()
	if !bootsToPanic(ctx, qemu, kernel, "tcg", 2*time.Minute) {
		t.Fatalf("under TCG %s did not reach its no-root panic within 2 minutes (or the probe missed it)", kernel)
	}
	t.Logf("TCG boot to panic: %s", time.Since(start).Round(time.Millisecond))

	bogus := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(bogus, bytes.Repeat([]byte("not a kernel "), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	if bootsToPanic(ctx, qemu, bogus, "tcg", 30*time.Second) {
		t.Fatal("the probe passed a file that is not a kernel")
	}

	start = time.Now()
	ok := ProbeKVM(ctx, qemu, kernel)
	t.Logf("KVM usable here: %v (probe took %s)", ok, time.Since(start).Round(time.Millisecond))
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil && ok {
		t.Fatalf("ProbeKVM passed without a usable /dev/kvm (%v)", err)
	} else if err == nil {
		f.Close()
	}
}
