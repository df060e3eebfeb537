//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
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

// Provisioning on the virtual rack: a BIOS and a UEFI machine go from
// power-on through discovery, admission and assignment to their own disks
// (the OS image and their seeds written by the agent; on UEFI a boot entry
// for the disk behind the network ones), reboot into them (iPXE's local
// answer: sanboot on BIOS, exit 1 on UEFI so that the firmware moves on to
// that entry), and the installed systems phone home. From their serial
// consoles: the hostname and static address from the lab's answer file
// and containerd's mirrors of the five upstreams pointing at airlock's
// registry. lab up builds the OS image into a signed bundle of the lab's
// own, which the lab's airlock serves (so there is a registry) and
// installs from as a site's does: the image its rules name, with the raw
// size and SHA-256 of the signed metadata. Minutes from power-on to booted
// are logged per machine.
func TestLabInstallsToDisk(t *testing.T) {
	bin := airlockBin(t)
	image := osImageDir(t)
	dir := t.TempDir()
	kernel, modules := testkit.CloudKernel(t)
	stateDir := filepath.Join(dir, "state")
	if os.Getenv("AIRLOCK_E2E_KEEP") == "1" {
		stateDir, _ = os.MkdirTemp("", "airlock-e2e-install-")
	}
	// Taken down even when lab up fails half-way (its airlock outlives it).
	t.Cleanup(func() {
		if keep(t) {
			t.Logf("the lab is still up: airlock status --state %s; serial consoles in %s/lab; airlock lab down --state %s", stateDir, stateDir, stateDir)
			return
		}
		if _, err := airlock(t, "lab", "down", "--state", stateDir); err != nil {
			t.Error(err)
		}
	})
	// lab up builds its bundle around the OS image and the discovery image
	// before the rack starts: minutes on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	up := exec.CommandContext(ctx, bin, "lab", "up", "--state", stateDir, "--nodes", "2", "--racks", "1", "--firmware", "mixed",
		"--install", "--os-image", image, "--kernel", kernel, "--modules", modules,
		"--agent", filepath.Join(filepath.Dir(bin), "airlock-agent"))
	began := time.Now()
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("airlock lab up: %v\n%s", err, out)
	}
	t.Logf("lab up took %.0f s", time.Since(began).Seconds())
	answers, err := os.ReadFile(filepath.Join(stateDir, "lab", "answers.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(answers), "osImage: lab-os") || !strings.Contains(string(answers), filepath.Join(stateDir, "lab-os.bundle")) {
		t.Fatalf("the lab's answer file does not install lab-os from the bundle lab up built:\n%s", answers)
	}
	var lab struct {
		VMs      []labVM
		Registry string
	}
	out, err := airlock(t, "lab", "status", "-o", "json", "--state", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	readJSON(t, out, &lab)
	if lab.Registry == "" {
		t.Fatalf("the lab serves no registry although it built a bundle: %s", out)
	}
	type status struct {
		Machines []struct {
			ID, State, Hostname, Serial, Failure string
			Assignment                           struct{ Address string }
			History                              []struct {
				To   string
				Time time.Time
			}
		}
	}
	var st status
	deadline := time.Now().Add(30 * time.Minute)
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
			t.Fatalf("not every machine booted from its disk within 30 minutes: %s\nthe lab's log ends:\n%s", out, labLogTail(stateDir))
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
		// cloud-init on the installed system: the seed found on the disk
		// (its own partition after the image's three) and the hostname
		// from the assignment in the host keys it prints. Its final
		// message, naming the seed, comes after the phone-home: wait for it.
		seen := func(console []byte) bool {
			return strings.Contains(string(console), "root@"+m.Hostname) && strings.Contains(string(console), "seed=/dev/vda4")
		}
		var console []byte
		for wait := time.Now().Add(5 * time.Minute); ; time.Sleep(2 * time.Second) {
			if console, err = os.ReadFile(filepath.Join(stateDir, "lab", vm.Name+".serial.log")); err != nil {
				t.Fatal(err)
			}
			if seen(console) || time.Now().After(wait) {
				break
			}
		}
		if !seen(console) {
			t.Errorf("VM %s: the console shows no cloud-init run from the seed on /dev/vda4 with hostname %s", vm.Name, m.Hostname)
		}
		// A UEFI machine came up through the boot entry its agent wrote
		// (OVMF names the entry it starts on the console).
		if vm.Firmware == "uefi" && !regexp.MustCompile(`BdsDxe: starting Boot[0-9A-F]{4} "airlock installed system" from HD\(2,GPT,`).Match(console) {
			t.Errorf("VM %s: OVMF did not start the \"airlock installed system\" entry on the ESP", vm.Name)
		}
		// What the installed system says of itself at the end of its
		// first boot (the lab's seeds print it).
		check := labCheck(string(console))
		if check == nil {
			t.Errorf("VM %s: no airlock-lab-check line on its console %s", vm.Name, filepath.Join(stateDir, "lab", vm.Name+".serial.log"))
		} else {
			t.Logf("%s: %v", vm.Name, check)
			if check["hostname"] != m.Hostname {
				t.Errorf("VM %s: the installed system's hostname is %q, want %q", vm.Name, check["hostname"], m.Hostname)
			}
			if m.Assignment.Address == "" || !slices.Contains(strings.Split(check["addresses"], ","), m.Assignment.Address) {
				t.Errorf("VM %s: the installed system's addresses are %q, want the static %q from the answer file", vm.Name, check["addresses"], m.Assignment.Address)
			}
			for _, up := range []string{"docker.io", "ghcr.io", "nvcr.io", "quay.io", "registry.k8s.io"} {
				if !slices.Contains(strings.Split(check["mirrors"], ","), up) {
					t.Errorf("VM %s: no containerd mirror for %s among %q", vm.Name, up, check["mirrors"])
				}
			}
			if got := check["docker.io"]; !strings.Contains(got, lab.Registry) {
				t.Errorf("VM %s: docker.io's hosts.toml names %q, not airlock's registry %s", vm.Name, got, lab.Registry)
			}
		}
		t.Logf("%s (%s) %s: booted from its own disk %.1f minutes after power-on", vm.Name, vm.Firmware, m.Hostname, at.Sub(vm.Started).Minutes())
	}
}

// labCheck parses the last "airlock-lab-check key=value ... end" line of a
// console log.
func labCheck(console string) map[string]string {
	i := strings.LastIndex(console, "airlock-lab-check ")
	if i < 0 {
		return nil
	}
	line, _, _ := strings.Cut(console[i:], "\n")
	line, _, ok := strings.Cut(line, " end")
	if !ok {
		return nil
	}
	out := map[string]string{}
	for _, f := range strings.Fields(line)[1:] {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}
