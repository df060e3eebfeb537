//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/lab/testkit"
)

type labVM struct {
	Name, Rack, Firmware, Serial, MAC string
	Slot                              int
	DiskSize                          int64
	Started                           time.Time
	Running                           bool
}

type machine struct {
	ID, Serial, BootMAC, Rack, RackSource, Switch, SwitchPort, Firmware string
	Boots                                                               int
	FirstSeen, LastSeen                                                 time.Time
	Flags                                                               []string
	Hardware                                                            struct {
		Disks []struct{ SizeBytes int64 }
	}
}

func inventoryOf(t *testing.T, stateDir string) map[string]machine {
	t.Helper()
	out, err := airlock(t, "inventory", "-o", "json", "--state", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	var list []machine
	readJSON(t, out, &list)
	bySerial := map[string]machine{}
	for _, m := range list {
		bySerial[m.Serial] = m
	}
	return bySerial
}

// The acceptance test: a lab of 2 BIOS + 2 UEFI VMs in 2 racks all
// appear in the inventory with the right serials, MACs, disk sizes and
// racks within 180 s; a rebooted VM stays the same machine; a forged agent
// report is refused and logged.
func TestLabDiscoversAVirtualRack(t *testing.T) {
	bin := airlockBin(t)
	curl := netns.RequireTool(t, "curl", "curl")
	kernel, modules := testkit.CloudKernel(t)
	stateDir := t.TempDir()
	if os.Getenv("AIRLOCK_E2E_KEEP") == "1" {
		stateDir, _ = os.MkdirTemp("", "airlock-e2e-lab-")
	}
	begin := time.Now()
	if _, err := airlock(t, "lab", "up", "--state", stateDir, "--nodes", "4", "--racks", "2", "--firmware", "mixed", "--install",
		"--kernel", kernel, "--modules", modules, "--agent", filepath.Join(filepath.Dir(bin), "airlock-agent")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if keep(t) {
			t.Logf("the lab is still up: airlock lab status --state %s; serial consoles in %s/lab; airlock lab down --state %s", stateDir, stateDir, stateDir)
			return
		}
		if _, err := airlock(t, "lab", "down", "--state", stateDir); err != nil {
			t.Error(err)
		}
	})
	var status struct {
		Namespace string
		Serving   bool
		VMs       []labVM
	}
	out, err := airlock(t, "lab", "status", "-o", "json", "--state", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	readJSON(t, out, &status)
	if len(status.VMs) != 4 || !status.Serving {
		t.Fatalf("lab status = %s", out)
	}

	deadline := begin.Add(180 * time.Second)
	var found map[string]machine
	for {
		found = inventoryOf(t, stateDir)
		if len(found) >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Second)
	}
	if len(found) != 4 {
		t.Fatalf("%d of 4 machines discovered within 180 s of lab up; the lab's airlock log ends:\n%s", len(found), labLogTail(stateDir))
	}
	firmwares := map[string]int{}
	for _, vm := range status.VMs {
		m, ok := found[vm.Serial]
		if !ok {
			t.Errorf("VM %s (serial %s) is not in the inventory", vm.Name, vm.Serial)
			continue
		}
		firmwares[vm.Firmware]++
		port := fmt.Sprintf("Eth1/%d", vm.Slot)
		if m.BootMAC != strings.ToLower(vm.MAC) || m.Rack != vm.Rack || m.RackSource != "lldp" ||
			m.Switch != vm.Rack+"-tor" || m.SwitchPort != port || m.Firmware != vm.Firmware || len(m.Flags) != 0 {
			t.Errorf("VM %s: got mac %s rack %s (%s) switch %s %s firmware %s flags %v; want mac %s rack %s switch %s-tor %s firmware %s",
				vm.Name, m.BootMAC, m.Rack, m.RackSource, m.Switch, m.SwitchPort, m.Firmware, m.Flags, vm.MAC, vm.Rack, vm.Rack, port, vm.Firmware)
		}
		if len(m.Hardware.Disks) != 1 || m.Hardware.Disks[0].SizeBytes != vm.DiskSize {
			t.Errorf("VM %s: disks %+v, want one of %d bytes", vm.Name, m.Hardware.Disks, vm.DiskSize)
		}
		t.Logf("%s (%s, %s): discovered %.1f s after its VM started", vm.Name, vm.Firmware, vm.Rack, m.FirstSeen.Sub(vm.Started).Seconds())
	}
	if firmwares["bios"] != 2 || firmwares["uefi"] != 2 {
		t.Errorf("firmware mix = %v, want 2 bios and 2 uefi", firmwares)
	}
	checkLabInstall(t, stateDir, status.VMs)

	// A forged report (a token airlock never issued) is refused and logged.
	ns, err := netns.Open(status.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	forged := "0123456789abcdef." + strings.Repeat("A", 43)
	forgedOut, err := ns.Command(context.Background(), curl, "-sS", "--fail", "--max-time", "20", "--cacert", filepath.Join(stateDir, "ca.pem"), "--capath", "/nonexistent",
		"-H", "Authorization: Bearer "+forged, "-H", "Content-Type: application/json", "--data-binary", `{"bootMAC":"52:54:00:66:66:66","arch":"amd64","inventory":{}}`,
		"https://10.77.0.1:8443/api/v1/agent/register").CombinedOutput()
	if err == nil || !strings.Contains(string(forgedOut), "401") {
		t.Errorf("a report with a forged token: %v %s, want 401 from airlock over TLS", err, forgedOut)
	}
	if log := labLogTail(stateDir); !strings.Contains(readLabLog(t, stateDir), `reason="unknown or revoked agent token"`) {
		t.Errorf("the forged report was not logged; log ends:\n%s", log)
	}

	// A rebooted VM comes back as the same machine, not a new one.
	vm := status.VMs[0]
	before := found[vm.Serial]
	if _, err := airlock(t, "inventory", "rediscover", before.ID, "--state", stateDir); err != nil {
		t.Fatal(err)
	}
	rebootBy := time.Now().Add(150 * time.Second)
	for {
		found = inventoryOf(t, stateDir)
		if found[vm.Serial].Boots > before.Boots || time.Now().After(rebootBy) {
			break
		}
		time.Sleep(2 * time.Second)
	}
	after := found[vm.Serial]
	if after.Boots != before.Boots+1 || after.ID != before.ID || len(found) != 4 {
		t.Fatalf("after a reboot %s is %s with %d boots (before %s with %d) and the inventory holds %d machines:\n%s",
			vm.Name, after.ID, after.Boots, before.ID, before.Boots, len(found), labLogTail(stateDir))
	}
	t.Logf("%s rebooted and was rediscovered as the same machine %s", vm.Name, after.ID)
}

// checkLabInstall waits until the lab's airlock (lab up --install) has
// admitted every machine and recorded what it becomes: the first VM the
// control plane, the others workers named by rack, each with its own disk
// pinned by serial and size.
func checkLabInstall(t *testing.T, stateDir string, vms []labVM) {
	t.Helper()
	type status struct {
		Phases   []struct{ Name, Status string }
		Machines []struct {
			ID, State, Hostname, Role, Serial, Failure string
			Assignment                                 *struct {
				Disk *struct {
					Serial    string
					SizeBytes int64
				}
			}
		}
	}
	var st status
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := airlock(t, "status", "-o", "json", "--state", stateDir)
		if err != nil {
			t.Fatal(err)
		}
		st = status{}
		readJSON(t, out, &st)
		assigned := 0
		for _, m := range st.Machines {
			if m.State == "assigned" {
				assigned++
			}
		}
		if assigned == len(vms) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	bySerial := map[string]int{}
	hostnames := map[string]bool{}
	for i, m := range st.Machines {
		bySerial[m.Serial] = i
		hostnames[m.Hostname] = true
	}
	if len(hostnames) != len(vms) {
		t.Errorf("hostnames %v are not one per machine", hostnames)
	}
	for i, vm := range vms {
		m := st.Machines[bySerial[vm.Serial]]
		if m.State != "assigned" || m.Assignment == nil || m.Assignment.Disk == nil {
			t.Errorf("VM %s: state %s failure %q assignment %+v; the lab's log ends:\n%s", vm.Name, m.State, m.Failure, m.Assignment, labLogTail(stateDir))
			continue
		}
		if d := m.Assignment.Disk; d.Serial != vm.Serial+"-D0" || d.SizeBytes != vm.DiskSize {
			t.Errorf("VM %s: disk pinned as %+v, want serial %s-D0 of %d bytes", vm.Name, d, vm.Serial, vm.DiskSize)
		}
		if i == 0 && (m.Hostname != "cp-1" || m.Role != "control-plane") {
			t.Errorf("first VM: %s %s, want cp-1 control-plane", m.Hostname, m.Role)
		}
		if i > 0 && (m.Role != "worker" || !strings.HasPrefix(m.Hostname, "worker-"+vm.Rack+"-")) {
			t.Errorf("VM %s: %s %s, want a worker-%s-N", vm.Name, m.Hostname, m.Role, vm.Rack)
		}
	}
	for _, p := range st.Phases {
		if (p.Name == "discover" || p.Name == "admit" || p.Name == "assign") && p.Status != "done" {
			t.Errorf("phase %s is %s", p.Name, p.Status)
		}
	}
}

func readLabLog(t *testing.T, stateDir string) string {
	data, err := os.ReadFile(filepath.Join(stateDir, "lab", "airlock.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func labLogTail(stateDir string) string {
	data, _ := os.ReadFile(filepath.Join(stateDir, "lab", "airlock.log"))
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 25 {
		lines = lines[len(lines)-25:]
	}
	return strings.Join(lines, "\n")
}

// Rehearsal with the bundle that will be carried in: lab up --bundle
// builds the discovery image from the bundle's kernel package, the lab's
// airlock serves the bundle's registry, and a machine is discovered.
func TestLabRehearsesABundle(t *testing.T) {
	bin := airlockBin(t)
	busybox := netns.RequireTool(t, "busybox", "busybox-static")
	dir := t.TempDir()
	bundleFile := kernelBundle(t, dir)
	stateDir := filepath.Join(dir, "state")
	out, err := airlock(t, "lab", "up", "--state", stateDir, "--nodes", "1", "--racks", "1", "--firmware", "bios",
		"--bundle", bundleFile, "--bundle-key", filepath.Join(dir, "site.pub"), "--agent", filepath.Join(filepath.Dir(bin), "airlock-agent"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if keep(t) {
			t.Logf("the lab is still up: airlock lab down --state %s", stateDir)
			return
		}
		if _, err := airlock(t, "lab", "down", "--state", stateDir); err != nil {
			t.Error(err)
		}
	})
	if !strings.Contains(out, "the bundle's registry: 10.77.0.1:5000") {
		t.Errorf("lab up did not say where the registry is:\n%s", out)
	}
	var status struct {
		Namespace, Registry string
		VMs                 []labVM
	}
	out, err = airlock(t, "lab", "status", "-o", "json", "--state", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	readJSON(t, out, &status)
	if status.Registry != "10.77.0.1:5000" || len(status.VMs) != 1 {
		t.Fatalf("lab status = %s", out)
	}
	if log := readLabLog(t, stateDir); !strings.Contains(log, "serving the bundle's registry") {
		t.Errorf("the lab's airlock does not serve the bundle:\n%s", labLogTail(stateDir))
	}
	ns, err := netns.Open(status.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	catalog, err := ns.Command(context.Background(), busybox, "wget", "-q", "-O", "-", "http://"+status.Registry+"/v2/_catalog").Output()
	if err != nil || !strings.Contains(string(catalog), `"repositories"`) {
		t.Errorf("the registry in the lab: %q, %v", catalog, err)
	}
	deadline := time.Now().Add(180 * time.Second)
	for {
		if m, ok := inventoryOf(t, stateDir)[status.VMs[0].Serial]; ok {
			t.Logf("discovered from the bundle's kernel %.1f s after its VM started", m.FirstSeen.Sub(status.VMs[0].Started).Seconds())
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not discovered within 180 s; the lab's airlock log ends:\n%s", labLogTail(stateDir))
		}
		time.Sleep(2 * time.Second)
	}
}
