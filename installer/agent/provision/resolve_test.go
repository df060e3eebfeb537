package provision

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// The fixture testdata/sys is a hand-made sysfs: a virtio disk with a
// serial, two SATA disks with WWNs (one partitioned, a dm device on the
// partition), an NVMe namespace, a removable USB stick, a read-only disk,
// two disks reporting the same bogus serial, and loop, dm and zram devices
// that are never candidates.
func fixture() Host { return Host{SysRoot: "testdata/sys", DevRoot: "/dev"} }

func TestDisksFixture(t *testing.T) {
	disks, err := fixture().Disks()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Disk{}
	var names []string
	for _, d := range disks {
		got[d.Name] = d
		names = append(names, d.Name)
	}
	if want := []string{"nvme0n1", "sda", "sdb", "sdc", "vda", "vdb", "vdc", "vdd"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("disks %v, want %v", names, want)
	}
	sda := got["sda"]
	if sda.WWN != "naa.5000c500a1b2c3d4" || sda.Serial != "ZA1B2C3D" || sda.Model != "ST1000NM0008" || sda.SizeBytes != 1953525168*512 {
		t.Errorf("sda = %+v", sda)
	}
	if want := []string{"pci-0000:00:1f.2-ata-1", "pci-0000:00:1f.2-ata-1.0"}; !reflect.DeepEqual(sda.ByPath, want) {
		t.Errorf("sda by-path %v, want %v", sda.ByPath, want)
	}
	if want := []string{"pci-0000:01:00.0-nvme-1"}; !reflect.DeepEqual(got["nvme0n1"].ByPath, want) {
		t.Errorf("nvme0n1 by-path %v, want %v", got["nvme0n1"].ByPath, want)
	}
	if got["nvme0n1"].Serial != "S4EWNX0R123456" || got["nvme0n1"].WWN != "eui.0025388b91b2c3d4" {
		t.Errorf("nvme0n1 = %+v", got["nvme0n1"])
	}
	if want := []string{"pci-0000:00:05.0", "virtio-pci-0000:00:05.0"}; !reflect.DeepEqual(got["vda"].ByPath, want) {
		t.Errorf("vda by-path %v, want %v", got["vda"].ByPath, want)
	}
	if want := []string{"pci-0000:00:14.0-scsi-6:0:0:0"}; !reflect.DeepEqual(got["sdb"].ByPath, want) {
		t.Errorf("sdb by-path %v, want %v", got["sdb"].ByPath, want)
	}
	sdc := got["sdc"]
	if !reflect.DeepEqual(sdc.Partitions, []string{"sdc1"}) || !reflect.DeepEqual(sdc.Holders, []string{"dm-0"}) {
		t.Errorf("sdc partitions %v holders %v, want [sdc1] [dm-0]", sdc.Partitions, sdc.Holders)
	}
	if !got["sdb"].Removable || !got["vdb"].ReadOnly || got["sda"].Removable || got["sda"].ReadOnly {
		t.Errorf("removable/read-only flags wrong: sdb %+v vdb %+v", got["sdb"], got["vdb"])
	}
}

func TestResolveFixture(t *testing.T) {
	for _, tc := range []struct {
		name string
		pin  DiskPin
		want string
		err  error
	}{
		{"serial", DiskPin{Serial: "lab-os-disk"}, "vda", nil},
		{"serial and size", DiskPin{Serial: "lab-os-disk", SizeBytes: 41943040 * 512}, "vda", nil},
		{"wwn any case", DiskPin{WWN: "NAA.5000C500A1B2C3D4"}, "sda", nil},
		{"wwn serial size", DiskPin{WWN: "eui.0025388b91b2c3d4", Serial: "S4EWNX0R123456", SizeBytes: 7501476528 * 512}, "nvme0n1", nil},
		{"by-path ata", DiskPin{ByPath: "/dev/disk/by-path/pci-0000:00:1f.2-ata-1.0"}, "sda", nil},
		{"by-path nvme", DiskPin{ByPath: "pci-0000:01:00.0-nvme-1"}, "nvme0n1", nil},
		{"by-path virtio", DiskPin{ByPath: "virtio-pci-0000:00:05.0"}, "vda", nil},
		{"size changed", DiskPin{Serial: "lab-os-disk", SizeBytes: 41943040*512 + 512}, "", ErrNoMatch},
		{"serial gone", DiskPin{WWN: "naa.5000c500a1b2c3d4", Serial: "OTHER"}, "", ErrNoMatch},
		{"by-path of another disk", DiskPin{Serial: "lab-os-disk", ByPath: "pci-0000:00:1f.2-ata-1"}, "", ErrNoMatch},
		{"twin serials", DiskPin{Serial: "0000"}, "", ErrAmbiguous},
		{"removable", DiskPin{Serial: "USB-STICK-1"}, "", ErrRemovable},
		{"read-only", DiskPin{Serial: "ro-disk"}, "", ErrReadOnly},
		{"size only", DiskPin{SizeBytes: 2097152 * 512}, "", ErrWeakPin},
		{"loop not a candidate", DiskPin{Serial: "/var/tmp/disk.img"}, "", ErrNoMatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := fixture().Resolve(tc.pin)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Resolve(%s) error %v, want %v", tc.pin, err, tc.err)
			}
			if d.Name != tc.want {
				t.Fatalf("Resolve(%s) = %q, want %q", tc.pin, d.Name, tc.want)
			}
			if err == nil && d.Dev != "/dev/"+tc.want {
				t.Fatalf("Dev = %q", d.Dev)
			}
		})
	}
	// With Loop, the loop device's backing file stands for its serial.
	h := fixture()
	h.Loop = true
	if d, err := h.Resolve(DiskPin{Serial: "/var/tmp/disk.img", SizeBytes: 1048576 * 512}); err != nil || d.Name != "loop0" {
		t.Fatalf("Resolve loop0 = %q, %v", d.Name, err)
	}
	if dev, err := Resolve("testdata/sys", DiskPin{Serial: "lab-os-disk"}); err != nil || dev != "/dev/vda" {
		t.Fatalf("package Resolve = %q, %v", dev, err)
	}
}

// TestTearDownFailsClosed: this machine's kernel has neither
// device-mapper nor md, so tearing down real holders is not tested here;
// what is tested is that a holder that cannot be removed stops the wipe
// with an error naming it, and that an unknown kind of holder is refused.
func TestTearDownFailsClosed(t *testing.T) {
	h := Host{SysRoot: "testdata/sys", DevRoot: t.TempDir()}
	var done []string
	err := h.tearDown("dm-0", &done, 0)
	if err == nil || !strings.Contains(err.Error(), "dm-0 (vg0-root)") || !strings.Contains(err.Error(), "device-mapper control") {
		t.Fatalf("tearDown dm-0 without /dev/mapper/control: %v", err)
	}
	if err := h.tearDown("bcache0", &done, 0); err == nil || !strings.Contains(err.Error(), "neither device-mapper nor md") {
		t.Fatalf("tearDown of an unknown holder: %v", err)
	}
	if len(done) != 0 {
		t.Fatalf("torn down %v", done)
	}
}
