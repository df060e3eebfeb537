package assign

import (
	"errors"
	"testing"
	"time"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/services/agentapi"
)

func machine(id, serial, rack, mac string, mem uint64, gpus int, model string, seen int) inventory.Machine {
	return inventory.Machine{
		ID: id, Serial: serial, Rack: rack, BootMAC: mac, MACs: []string{mac},
		Summary:   inventory.Summary{CPUs: 32, MemoryBytes: mem, GPUs: gpus, GPUModel: model},
		FirstSeen: time.Unix(int64(seen), 0),
	}
}

func answers(t *testing.T, policy string) *config.Answers {
	t.Helper()
	a := config.Defaults()
	zero := 0
	a.Admission.Policy = policy
	a.Machines = []config.Rule{
		{Name: "cp", Match: config.Match{Serials: []string{"SN-1", "SN-2", "SN-3"}}, Role: config.RoleControlPlane, Hostname: "cp-{index}"},
		{Name: "gpu", Match: config.Match{MinGPUs: 4, GPUModels: []string{"A100"}}, Role: config.RoleGPUWorker, Hostname: "gpu-{rack}-{index}"},
		{Name: "small", Match: config.Match{MaxMemory: 64 << 30, MaxGPUs: &zero}, Role: config.RoleWorker, Hostname: "w-{serial}"},
		{Name: "rest", Role: config.RoleWorker, Hostname: "worker-{rack}-{index}"},
	}
	return &a
}

func TestAssign(t *testing.T) {
	ms := []inventory.Machine{
		machine("m-1", "SN-1", "rack-a", "52:54:00:00:00:01", 128<<30, 0, "", 1),
		machine("m-5", "SN-5", "rack-b", "52:54:00:00:00:05", 1<<40, 8, "NVIDIA A100-SXM4-80GB", 5),
		machine("m-6", "SN-6", "rack-b", "52:54:00:00:00:06", 1<<40, 8, "NVIDIA A100-SXM4-80GB", 6),
		machine("m-7", "SN/7 x", "rack-a", "52:54:00:00:00:07", 32<<30, 0, "", 7),
		machine("m-8", "SN-8", "", "52:54:00:00:00:08", 256<<30, 2, "NVIDIA L40S", 8),
		machine("m-2", "SN-2", "rack-a", "52:54:00:00:00:02", 128<<30, 0, "", 2),
	}
	got := Assign(answers(t, config.AdmitAllowlist), ms)
	want := map[string]Assignment{
		"m-8": {Rule: "rest", Role: "worker", Hostname: "worker-norack-1", Admission: NotInAllowlist},
		"m-1": {Rule: "cp", Role: "control-plane", Hostname: "cp-1", Admission: Admitted},
		"m-2": {Rule: "cp", Role: "control-plane", Hostname: "cp-2", Admission: Admitted},
		"m-7": {Rule: "small", Role: "worker", Hostname: "w-sn-7-x", Admission: NotInAllowlist},
		"m-5": {Rule: "gpu", Role: "gpu-worker", Hostname: "gpu-rack-b-1", Admission: NotInAllowlist},
		"m-6": {Rule: "gpu", Role: "gpu-worker", Hostname: "gpu-rack-b-2", Admission: NotInAllowlist},
	}
	if len(got) != len(ms) {
		t.Fatalf("%d assignments for %d machines", len(got), len(ms))
	}
	for _, as := range got {
		w := want[as.MachineID]
		if as.Rule != w.Rule || as.Role != w.Role || as.Hostname != w.Hostname || as.Admission != w.Admission {
			t.Errorf("%s: got %s/%s/%s/%s, want %s/%s/%s/%s", as.MachineID, as.Rule, as.Role, as.Hostname, as.Admission, w.Rule, w.Role, w.Hostname, w.Admission)
		}
	}
	for _, as := range Assign(answers(t, config.AdmitAny), ms) {
		if as.Admission != Admitted {
			t.Errorf("policy any: %s is %s", as.MachineID, as.Admission)
		}
	}
	for _, as := range Assign(answers(t, config.AdmitApprove), ms) {
		if as.Admission != AwaitsApproval {
			t.Errorf("policy approve: %s is %s", as.MachineID, as.Admission)
		}
	}
}

func TestNoRuleAndDuplicateHostnames(t *testing.T) {
	a := config.Defaults()
	a.Admission.Policy = config.AdmitAny
	a.Machines = []config.Rule{{Name: "only-a", Match: config.Match{Racks: []string{"rack-a"}}, Role: config.RoleWorker, Hostname: "w-{rack}"}}
	got := Assign(&a, []inventory.Machine{
		machine("m-1", "S1", "rack-a", "52:54:00:00:00:01", 1<<30, 0, "", 1),
		machine("m-2", "S2", "rack-a", "52:54:00:00:00:02", 1<<30, 0, "", 2),
		machine("m-3", "S3", "rack-b", "52:54:00:00:00:03", 1<<30, 0, "", 3),
	})
	if got[0].Admission != Admitted || got[1].Admission != DuplicateTarget || got[2].Admission != NoRule {
		t.Errorf("got %+v", got)
	}
}

func TestDisk(t *testing.T) {
	ssd, hdd := false, true
	disks := []agentapi.Disk{
		{Name: "sda", SizeBytes: 4 << 40, Serial: "HDD1", Rotational: true},
		{Name: "nvme0n1", SizeBytes: 960 << 30, WWN: "eui.1", Serial: "NV1"},
		{Name: "nvme1n1", SizeBytes: 480 << 30, WWN: "eui.2", Serial: "NV2"},
		{Name: "sdb", SizeBytes: 64 << 30, Serial: "USB", Removable: true},
		{Name: "vdz", SizeBytes: 10 << 30}, // no identity: never chosen
	}
	cases := []struct {
		p    config.InstallDisk
		want string
	}{
		{config.InstallDisk{}, "nvme1n1"},
		{config.InstallDisk{Policy: config.DiskLargest}, "sda"},
		{config.InstallDisk{Policy: config.DiskLargest, Rotational: &ssd}, "nvme0n1"},
		{config.InstallDisk{Policy: config.DiskSmallest, MinSize: 500 << 30}, "nvme0n1"},
		{config.InstallDisk{Policy: config.DiskFirst, Rotational: &hdd}, "sda"},
		{config.InstallDisk{Policy: config.DiskSerial, Serial: "NV1"}, "nvme0n1"},
		{config.InstallDisk{Policy: config.DiskSerial, Serial: "USB"}, ""},
		{config.InstallDisk{MinSize: 8 << 40}, ""},
	}
	for _, c := range cases {
		pin, err := Disk(c.p, disks)
		if c.want == "" {
			if !errors.Is(err, ErrNoDisk) {
				t.Errorf("%+v: %v, want ErrNoDisk", c.p, err)
			}
			continue
		}
		if err != nil || pin.Name != c.want {
			t.Errorf("%+v: %+v %v, want %s", c.p, pin, err, c.want)
			continue
		}
		for _, d := range disks {
			if d.Name == pin.Name && (pin.WWN != d.WWN || pin.Serial != d.Serial || pin.SizeBytes != d.SizeBytes) {
				t.Errorf("pin %+v does not carry the disk's identity %+v", pin, d)
			}
		}
	}
	if _, err := Disk(config.InstallDisk{Policy: config.DiskSerial, Serial: "X"}, []agentapi.Disk{{Name: "a", Serial: "X", SizeBytes: 1}, {Name: "b", Serial: "X", SizeBytes: 1}}); !errors.Is(err, ErrNoDisk) {
		t.Errorf("two disks with one serial: %v", err)
	}
}

// A recorded assignment keeps its hostname and index when a machine that
// sorts before it appears later.
func TestAssignKeepsRecorded(t *testing.T) {
	a := answers(t, config.AdmitAny)
	m2 := machine("m-2", "SN-2", "rack-a", "52:54:00:00:00:02", 128<<30, 0, "", 2)
	m2.State = inventory.StateAssigned
	m2.Assignment = &inventory.Assignment{Rule: "cp", Role: config.RoleControlPlane, Hostname: "cp-1", Index: 1}
	m1 := machine("m-1", "SN-1", "rack-a", "52:54:00:00:00:01", 128<<30, 0, "", 1) // seen first, assigned later
	got := Assign(a, []inventory.Machine{m1, m2})
	for _, as := range got {
		switch as.MachineID {
		case "m-2":
			if as.Hostname != "cp-1" || as.Index != 1 {
				t.Errorf("recorded machine moved: %+v", as)
			}
		case "m-1":
			if as.Hostname != "cp-2" || as.Index != 2 {
				t.Errorf("new machine got %+v, want cp-2", as)
			}
		}
	}
}
