package provision

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"airlock.dev/airlock/services/agentapi"
)

// DiskPin is the identity the engine recorded for a machine's install disk
// at assignment. Every field that is set must match; at least one of WWN,
// Serial and ByPath must be set. SizeBytes, when set, must match exactly.
type DiskPin struct {
	WWN       string
	Serial    string
	SizeBytes uint64
	// ByPath is a udev by-path name (with or without /dev/disk/by-path/),
	// computed here from sysfs since the agent runs without udev: for
	// virtio "pci-0000:00:05.0" (or the older "virtio-pci-0000:00:05.0"),
	// NVMe "pci-0000:01:00.0-nvme-1", SATA "pci-0000:00:1f.2-ata-1" (or
	// "-ata-1.0"), other SCSI "pci-ADDR-scsi-H:C:T:L" with the raw host
	// number.
	ByPath string
}

func (p DiskPin) String() string {
	var parts []string
	if p.WWN != "" {
		parts = append(parts, "wwn "+strconv.Quote(p.WWN))
	}
	if p.Serial != "" {
		parts = append(parts, "serial "+strconv.Quote(p.Serial))
	}
	if p.ByPath != "" {
		parts = append(parts, "by-path "+strconv.Quote(p.ByPath))
	}
	if p.SizeBytes != 0 {
		parts = append(parts, fmt.Sprintf("size %d", p.SizeBytes))
	}
	return strings.Join(parts, ", ")
}

// Disk is one whole block device as sysfs shows it.
type Disk struct {
	Name      string // e.g. sda, nvme0n1, vda, loop3
	Dev       string // device node, DevRoot/Name
	SizeBytes uint64
	Serial    string // for a loop device (Host.Loop), its backing file
	WWN       string
	Model     string
	ByPath    []string // by-path names this disk answers to
	Removable bool
	ReadOnly  bool
	// Partitions are the kernel's partitions of the disk (sda1, ...).
	Partitions []string
	// Holders are devices stacked on the disk or one of its partitions
	// (dm-0, md127), as sysfs holders/ lists them.
	Holders []string
}

// Host reads block devices from a sysfs tree.
type Host struct {
	SysRoot string // "/sys" on a machine; a fixture in tests
	DevRoot string // "/dev"
	// Loop makes loop devices candidates, their backing file standing for
	// a serial. For tests and the lab only: a real install never targets
	// a loop device.
	Loop bool
}

// Resolve finds the one disk on this machine matching pin, reading
// sysRoot (normally "/sys"), and returns its device node under /dev. It
// fails with ErrNoMatch, ErrAmbiguous, ErrWeakPin, ErrRemovable or
// ErrReadOnly (wrapped, naming the pin and the candidates).
func Resolve(sysRoot string, pin DiskPin) (string, error) {
	d, err := Host{SysRoot: sysRoot, DevRoot: "/dev"}.Resolve(pin)
	return d.Dev, err
}

// Resolve is the package function on h's roots.
func (h Host) Resolve(pin DiskPin) (Disk, error) {
	if pin.WWN == "" && pin.Serial == "" && pin.ByPath == "" {
		return Disk{}, fmt.Errorf("resolve disk (%s): %w", pin, ErrWeakPin)
	}
	disks, err := h.Disks()
	if err != nil {
		return Disk{}, err
	}
	want := strings.TrimPrefix(pin.ByPath, "/dev/disk/by-path/")
	var match []Disk
	for _, d := range disks {
		if pin.WWN != "" && !strings.EqualFold(d.WWN, pin.WWN) {
			continue
		}
		if pin.Serial != "" && d.Serial != pin.Serial {
			continue
		}
		if pin.SizeBytes != 0 && d.SizeBytes != pin.SizeBytes {
			continue
		}
		if want != "" && !contains(d.ByPath, want) {
			continue
		}
		match = append(match, d)
	}
	switch len(match) {
	case 0:
		return Disk{}, fmt.Errorf("resolve disk (%s) among %s: %w", pin, names(disks), ErrNoMatch)
	case 1:
	default:
		return Disk{}, fmt.Errorf("resolve disk (%s): %s all match: %w", pin, names(match), ErrAmbiguous)
	}
	d := match[0]
	if d.Removable {
		return Disk{}, fmt.Errorf("resolve disk (%s): %s: %w", pin, d.Name, ErrRemovable)
	}
	if d.ReadOnly {
		return Disk{}, fmt.Errorf("resolve disk (%s): %s: %w", pin, d.Name, ErrReadOnly)
	}
	return d, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func names(disks []Disk) string {
	if len(disks) == 0 {
		return "no disks"
	}
	var n []string
	for _, d := range disks {
		n = append(n, d.Name)
	}
	return strings.Join(n, ", ")
}

// notDisk names block devices that are never install targets.
func (h Host) notDisk(name string) bool {
	if strings.HasPrefix(name, "loop") {
		return !h.Loop
	}
	for _, p := range []string{"ram", "zram", "dm-", "md", "nbd", "sr", "fd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Disks lists the whole disks under SysRoot/block that could hold an OS,
// removable and read-only ones included (Resolve refuses those).
func (h Host) Disks() ([]Disk, error) {
	blockDir := filepath.Join(h.SysRoot, "block")
	entries, err := os.ReadDir(blockDir)
	if err != nil {
		return nil, fmt.Errorf("list disks in %s: %w", blockDir, err)
	}
	var out []Disk
	for _, e := range entries {
		name := e.Name()
		if h.notDisk(name) {
			continue
		}
		dir := filepath.Join(blockDir, name)
		sectors, _ := strconv.ParseUint(sysText(dir, "size"), 10, 64)
		if sectors == 0 {
			continue
		}
		d := Disk{
			Name:      name,
			Dev:       filepath.Join(h.DevRoot, name),
			SizeBytes: sectors * 512,
			Model:     firstText(dir, "device/model", "device/name"),
			Serial:    firstText(dir, "device/serial", "serial"),
			WWN:       firstText(dir, "device/wwid", "wwid"),
			Removable: sysText(dir, "removable") == "1",
			ReadOnly:  sysText(dir, "ro") == "1",
		}
		if strings.HasPrefix(name, "loop") {
			d.Serial = sysText(dir, "loop/backing_file")
		}
		d.ByPath = pathIDs(h.SysRoot, dir)
		d.Holders = dirNames(filepath.Join(dir, "holders"))
		parts, _ := os.ReadDir(dir)
		for _, p := range parts {
			if _, err := os.Stat(filepath.Join(dir, p.Name(), "partition")); err == nil {
				d.Partitions = append(d.Partitions, p.Name())
				d.Holders = append(d.Holders, dirNames(filepath.Join(dir, p.Name(), "holders"))...)
			}
		}
		sort.Strings(d.Holders)
		out = append(out, d)
	}
	return out, nil
}

func dirNames(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// sysText reads a small sysfs attribute the way the inventory does
// (printable characters, trimmed, at most agentapi.MaxText bytes), so a
// pin made from the inventory compares equal.
func sysText(dir, name string) string {
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, 4096)
	n, _ := f.Read(buf)
	s := strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, string(buf[:n]))
	s = strings.TrimSpace(s)
	for len(s) > agentapi.MaxText {
		s = strings.ToValidUTF8(s[:agentapi.MaxText], "")
	}
	return s
}

func firstText(dir string, names ...string) string {
	for _, n := range names {
		if s := sysText(dir, n); s != "" {
			return s
		}
	}
	return ""
}

var (
	pciAddr = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)
	hctl    = regexp.MustCompile(`^[0-9]+:[0-9]+:[0-9]+:[0-9]+$`)
	virtio  = regexp.MustCompile(`^virtio[0-9]+$`)
	ataPort = regexp.MustCompile(`^ata[0-9]+$`)
	nvmeNS  = regexp.MustCompile(`n([0-9]+)$`)
)

// pathIDs computes the by-path names of the disk at dir (SysRoot/block/X)
// from its place under SysRoot/devices, the way udev's path_id names the
// common cases. Disks not below a PCI device get none.
func pathIDs(sysRoot, dir string) []string {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil
	}
	devices, err := filepath.EvalSymlinks(filepath.Join(sysRoot, "devices"))
	if err != nil {
		return nil
	}
	rel, err := filepath.Rel(devices, real)
	if err != nil || strings.HasPrefix(rel, "..") {
		return nil
	}
	parts := strings.Split(filepath.ToSlash(rel), "/")
	pci := -1
	for i, p := range parts {
		if pciAddr.MatchString(p) {
			pci = i
		}
	}
	if pci < 0 {
		return nil
	}
	base := "pci-" + parts[pci]
	name := parts[len(parts)-1]
	var ata, scsi string
	for _, p := range parts[pci+1:] {
		switch {
		case virtio.MatchString(p):
			return []string{base, "virtio-pci-" + parts[pci]}
		case strings.HasPrefix(p, "nvme"):
			nsid := sysText(dir, "nsid")
			if nsid == "" {
				if m := nvmeNS.FindStringSubmatch(name); m != nil {
					nsid = m[1]
				}
			}
			return []string{base + "-nvme-" + nsid}
		case ataPort.MatchString(p):
			ata = sysText(filepath.Join(sysRoot, "class/ata_port", p), "port_no")
			if ata == "" {
				ata = strings.TrimPrefix(p, "ata")
			}
		case hctl.MatchString(p):
			scsi = p
		}
	}
	switch {
	case ata != "":
		return []string{base + "-ata-" + ata, base + "-ata-" + ata + ".0"}
	case scsi != "":
		return []string{base + "-scsi-" + scsi}
	}
	return []string{base}
}
