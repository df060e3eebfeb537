package agent

import (
	"io/fs"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"airlock.dev/airlock/services/agentapi"
)

// overlay serves files from top first, then base.
type overlay struct{ top, base fs.FS }

func (o overlay) Open(name string) (fs.File, error) {
	if f, err := o.top.Open(name); err == nil {
		return f, nil
	}
	return o.base.Open(name)
}

func (o overlay) ReadDir(name string) ([]fs.DirEntry, error) {
	a, errA := fs.ReadDir(o.top, name)
	b, errB := fs.ReadDir(o.base, name)
	if errA != nil && errB != nil {
		return nil, errB
	}
	seen := map[string]bool{}
	var out []fs.DirEntry
	for _, e := range append(a, b...) {
		if !seen[e.Name()] {
			seen[e.Name()] = true
			out = append(out, e)
		}
	}
	return out, nil
}

func (o overlay) ReadLink(name string) (string, error) {
	if t, err := fs.ReadLink(o.top, name); err == nil {
		return t, nil
	}
	return fs.ReadLink(o.base, name)
}

func (o overlay) Lstat(name string) (fs.FileInfo, error) {
	if fi, err := fs.Lstat(o.top, name); err == nil {
		return fi, nil
	}
	return fs.Lstat(o.base, name)
}

// TestCollectHost reads the fixture captured from the build machine (a VM
// without DMI tables).
func TestCollectHost(t *testing.T) {
	inv, err := Collect(os.DirFS("testdata/host"))
	if err != nil {
		t.Fatal(err)
	}
	if inv.CPU.Threads != 2 || inv.CPU.Cores != 2 || inv.CPU.Sockets != 1 || inv.CPU.Model != "AMD EPYC" {
		t.Errorf("cpu = %+v", inv.CPU)
	}
	if inv.Memory.TotalBytes != 24684084*1024 {
		t.Errorf("memory = %d", inv.Memory.TotalBytes)
	}
	if len(inv.Disks) != 1 || inv.Disks[0].Name != "vda" || inv.Disks[0].SizeBytes != 536870912*512 {
		t.Errorf("disks = %+v (loop and zram must be skipped)", inv.Disks)
	}
	if len(inv.NICs) != 1 || inv.NICs[0].Name != "eth0" || inv.NICs[0].MAC != "02:fc:00:00:00:01" ||
		inv.NICs[0].Driver != "virtio_net" || !inv.NICs[0].Link || inv.NICs[0].SpeedMbps != 0 {
		t.Errorf("nics = %+v (lo and ifb must be skipped)", inv.NICs)
	}
	if len(inv.PCI) != 6 || inv.PCI[3].Vendor != "0x1af4" || inv.PCI[3].Class != "0x020000" || inv.PCI[3].Driver != "virtio-pci" {
		t.Errorf("pci = %+v", inv.PCI)
	}
	if inv.System.Firmware != "bios" || inv.System.Serial != "" {
		t.Errorf("system = %+v", inv.System)
	}
	reg, err := Registration(inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Validate(); err != nil {
		t.Fatalf("registration from the host fixture does not validate: %v", err)
	}
}

// smbiosType2 is a baseboard structure whose location-in-chassis string is
// "U7".
var smbiosType2 = []byte{2, 0x0f, 0, 0, 1, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0,
	'Q', 'E', 'M', 'U', 0, 'b', 'o', 'a', 'r', 'd', 0, 'U', '7', 0, 0}

// TestCollectDMIAndGPU adds what a QEMU VM's DMI tables and an NVIDIA GPU
// look like in sysfs.
func TestCollectDMIAndGPU(t *testing.T) {
	top := fstest.MapFS{
		"sys/class/dmi/id/sys_vendor":             {Data: []byte("QEMU\n")},
		"sys/class/dmi/id/product_name":           {Data: []byte("Standard PC (i440FX + PIIX, 1996)\n")},
		"sys/class/dmi/id/product_serial":         {Data: []byte("LAB-A-01\n")},
		"sys/class/dmi/id/product_uuid":           {Data: []byte("4C4C4544-0042-3510-8052-B4C04F4E3232\n")},
		"sys/class/dmi/id/chassis_asset_tag":      {Data: []byte("To Be Filled By O.E.M.\n")},
		"sys/firmware/dmi/entries/2-0/raw":        {Data: smbiosType2},
		"sys/firmware/efi/systab":                 {Data: []byte("x")},
		"sys/bus/pci/devices/0000:3b:00.0/vendor": {Data: []byte("0x10de\n")},
		"sys/bus/pci/devices/0000:3b:00.0/device": {Data: []byte("0x20b0\n")},
		"sys/bus/pci/devices/0000:3b:00.0/class":  {Data: []byte("0x030200\n")},
		"sys/bus/pci/devices/0000:3c:00.0/vendor": {Data: []byte("0x10de\n")},
		"sys/bus/pci/devices/0000:3c:00.0/device": {Data: []byte("0x9999\n")},
		"sys/bus/pci/devices/0000:3c:00.0/class":  {Data: []byte("0x030000\n")},
		"sys/bus/pci/devices/0000:3d:00.0/vendor": {Data: []byte("0x10de\n")},
		"sys/bus/pci/devices/0000:3d:00.0/device": {Data: []byte("0x1aeb\n")},
		"sys/bus/pci/devices/0000:3d:00.0/class":  {Data: []byte("0x040300\n")}, // GPU's audio function
	}
	inv, err := Collect(overlay{top, os.DirFS("testdata/host")})
	if err != nil {
		t.Fatal(err)
	}
	s := inv.System
	if s.Vendor != "QEMU" || s.Serial != "LAB-A-01" || s.UUID != "4c4c4544-0042-3510-8052-b4c04f4e3232" ||
		s.ChassisAssetTag != "" || s.ChassisLocation != "U7" || s.Firmware != "uefi" {
		t.Errorf("system = %+v", s)
	}
	names := map[string]string{}
	for _, d := range inv.PCI {
		names[d.Address] = d.Name
	}
	if names["0000:3b:00.0"] != "NVIDIA A100-SXM4-40GB" || names["0000:3c:00.0"] != "NVIDIA GPU 0x9999" || names["0000:3d:00.0"] != "" {
		t.Errorf("GPU names = %v", names)
	}
	if err := inv.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestCleanDropsControlCharacters(t *testing.T) {
	top := fstest.MapFS{"sys/class/dmi/id/product_serial": {Data: []byte("SN\x1b[2J\x00" + strings.Repeat("x", 300))}}
	inv, err := Collect(overlay{top, os.DirFS("testdata/host")})
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(inv.System.Serial, "\x1b\x00") || len(inv.System.Serial) > agentapi.MaxText {
		t.Fatalf("serial %q", inv.System.Serial)
	}
}

func TestParseCmdline(t *testing.T) {
	tok, _ := agentapi.NewToken(nil)
	c, err := ParseCmdline("console=ttyS0 BOOTIF=01-52-54-00-12-34-56 airlock.url=http://10.0.0.1:8080 airlock.api=https://10.0.0.1:8443 airlock.token=" + tok.String() + " airlock.lldp=2s quiet")
	if err != nil {
		t.Fatal(err)
	}
	if c.Token != tok || c.URL.String() != "http://10.0.0.1:8080" || c.API.String() != "https://10.0.0.1:8443" || c.BootMAC.String() != "52:54:00:12:34:56" || c.LLDPWait.Seconds() != 2 {
		t.Fatalf("config = %+v", c)
	}
	// The line airlock's httpboot script passes (services/httpboot golden discover.ipxe).
	c, err = ParseCmdline("initrd=initramfs.cpio.zst airlock.url=http://10.70.0.1:8080 airlock.mac=52:54:00:00:00:01 airlock.state=discover airlock.token=" + tok.String() + " airlock.api=https://10.70.0.1:8443 console=ttyS0 quiet")
	if err != nil || c.BootMAC.String() != "52:54:00:00:00:01" || c.URL.Host != "10.70.0.1:8080" || c.API.Host != "10.70.0.1:8443" {
		t.Fatalf("httpboot line: %+v %v", c, err)
	}
	api := " airlock.api=https://x:8443"
	for _, bad := range []string{
		"",
		"airlock.url=http://x airlock.mac=zz airlock.token=" + tok.String() + api,
		"airlock.url=http://x airlock.token=bad" + api,
		"airlock.url=file:///etc/passwd airlock.token=" + tok.String() + api,
		"airlock.url=http://u:p@x airlock.token=" + tok.String() + api,
		"airlock.url=http://x airlock.token=" + tok.String() + " BOOTIF=zz" + api,
		// The API is https, always, and must be given.
		"airlock.url=http://x airlock.token=" + tok.String(),
		"airlock.url=http://x airlock.api=http://x:8443 airlock.token=" + tok.String(),
		"airlock.url=http://x airlock.api=https://u:p@x:8443 airlock.token=" + tok.String(),
	} {
		if _, err := ParseCmdline(bad); err == nil {
			t.Errorf("ParseCmdline(%q) accepted", bad)
		}
	}
}
