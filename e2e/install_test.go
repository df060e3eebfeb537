//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/testkit"
)

// osImageDir is the node OS image e2e/osimage/build.sh made (make test
// builds it, cached, and passes its directory in AIRLOCK_OS_IMAGE).
func osImageDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("AIRLOCK_OS_IMAGE")
	if dir == "" {
		t.Fatal("AIRLOCK_OS_IMAGE is not set: build the node image with `bash e2e/osimage/build.sh` (it prints its directory) or run make test, which does")
	}
	for _, name := range []string{"disk.raw.zst", "disk.raw.size", "disk.raw.sha256"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("AIRLOCK_OS_IMAGE=%s: %v (rebuild it with bash e2e/osimage/build.sh)", dir, err)
		}
	}
	return dir
}

// Provisioning on the virtual rack: two BIOS machines go from power-on
// through discovery, admission and assignment to their own disks (the OS
// image and their seeds written by the agent), reboot into them, and the
// installed systems take the hostname from the seed and phone home.
// Minutes from power-on to booted are logged per machine. UEFI machines
// are not in it yet: after iPXE's local-boot exit, OVMF's boot list holds
// only its network entries (the installed disk has no boot entry of its
// own), so it stops in its boot manager; the agent must write a boot entry
// for the installed disk behind the network ones (next step).
func TestLabInstallsToDisk(t *testing.T) {
	bin := airlockBin(t)
	image := osImageDir(t)
	kernel, modules := testkit.CloudKernel(t)
	stateDir := t.TempDir()
	if os.Getenv("AIRLOCK_E2E_KEEP") == "1" {
		stateDir, _ = os.MkdirTemp("", "airlock-e2e-install-")
	}
	if _, err := airlock(t, "lab", "up", "--state", stateDir, "--nodes", "2", "--racks", "1", "--firmware", "bios",
		"--install", "--os-image", image, "--kernel", kernel, "--modules", modules,
		"--agent", filepath.Join(filepath.Dir(bin), "airlock-agent")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if keep(t) {
			t.Logf("the lab is still up: airlock status --state %s; serial consoles in %s/lab; airlock lab down --state %s", stateDir, stateDir, stateDir)
			return
		}
		if _, err := airlock(t, "lab", "down", "--state", stateDir); err != nil {
			t.Error(err)
		}
	})
	var lab struct{ VMs []labVM }
	out, err := airlock(t, "lab", "status", "-o", "json", "--state", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	readJSON(t, out, &lab)
	type status struct {
		Machines []struct {
			ID, State, Hostname, Serial, Failure string
			History                              []struct {
				To   string
				Time time.Time
			}
		}
	}
	var st status
	deadline := time.Now().Add(20 * time.Minute)
	for {
		out, err := airlock(t, "status", "-o", "json", "--state", stateDir)
		if err != nil {
			t.Fatal(err)
		}
		st = status{}
		readJSON(t, out, &st)
		booted, failed := 0, 0
		for _, m := range st.Machines {
			switch m.State {
			case "booted":
				booted++
			case "failed":
				failed++
			}
		}
		if booted+failed == len(lab.VMs) && len(st.Machines) == len(lab.VMs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every machine booted from its disk within 20 minutes: %s\nthe lab's log ends:\n%s", out, labLogTail(stateDir))
		}
		time.Sleep(2 * time.Second)
	}
	bySerial := map[string]int{}
	for i, m := range st.Machines {
		bySerial[m.Serial] = i
	}
	for _, vm := range lab.VMs {
		m := st.Machines[bySerial[vm.Serial]]
		if m.State != "booted" {
			t.Errorf("VM %s (%s): %s: %s", vm.Name, vm.Firmware, m.State, m.Failure)
			continue
		}
		var at time.Time
		var states []string
		for _, h := range m.History {
			states = append(states, h.To)
			if h.To == "booted" {
				at = h.Time
			}
		}
		if want := "admitted assigned installing installed booted"; strings.Join(states, " ") != want {
			t.Errorf("VM %s went through %v, want %s", vm.Name, states, want)
		}
		console, err := os.ReadFile(filepath.Join(stateDir, "lab", vm.Name+".serial.log"))
		if err != nil {
			t.Fatal(err)
		}
		// cloud-init on the installed system: the seed found on the disk
		// (its own partition after the image's three) and the hostname
		// from the assignment in the host keys it prints.
		if !strings.Contains(string(console), "root@"+m.Hostname) || !strings.Contains(string(console), "seed=/dev/vda4") {
			t.Errorf("VM %s: the console shows no cloud-init run from the seed on /dev/vda4 with hostname %s", vm.Name, m.Hostname)
		}
		t.Logf("%s (%s) %s: booted from its own disk %.1f minutes after power-on", vm.Name, vm.Firmware, m.Hostname, at.Sub(vm.Started).Minutes())
	}
}
