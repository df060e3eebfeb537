// Package agent is airlock's node agent: it runs in the discovery
// initramfs (as PID 1 or under another init), reads the machine's hardware
// from /sys and /proc, listens for LLDP from the top-of-rack switch, gets an
// address by DHCP, registers with airlock using the per-boot token from the
// kernel command line, heartbeats and waits for orders.
//
// It imports services/agentapi for the wire types and nothing of the
// engine: the agent binary must stay small and free of Helm, tview, bbolt
// and go-containerregistry (a test enforces it).
package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"airlock.dev/airlock/services/agentapi"
)

// Collect reads the inventory from root, a file system laid out like / (the
// real one is os.DirFS("/"); tests use a captured fixture). It returns what
// it could read; missing files leave fields empty. NICs get no LLDP here.
func Collect(root fs.FS) (agentapi.Inventory, error) {
	var inv agentapi.Inventory
	inv.System = readSystem(root)
	cpu, err := readCPU(root)
	if err != nil {
		return inv, err
	}
	inv.CPU = cpu
	mem, err := readMemory(root)
	if err != nil {
		return inv, err
	}
	inv.Memory = mem
	inv.Disks = readDisks(root)
	inv.NICs = readNICs(root)
	inv.PCI = readPCI(root)
	return inv, nil
}

// readText reads a small sysfs attribute and trims it; "" if unreadable.
// It keeps only printable characters and at most agentapi.MaxText bytes,
// since firmware strings are sometimes padded with junk.
func readText(root fs.FS, name string) string {
	data, err := fs.ReadFile(root, name)
	if err != nil {
		return ""
	}
	return clean(string(data))
}

func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	for len(s) > agentapi.MaxText {
		s = s[:agentapi.MaxText]
		s = strings.ToValidUTF8(s, "")
	}
	return s
}

func readInt(root fs.FS, name string) (int64, bool) {
	v, err := strconv.ParseInt(readText(root, name), 0, 64)
	return v, err == nil
}

// placeholder firmware strings that mean "not set".
var unset = map[string]bool{
	"": true, "Default string": true, "To Be Filled By O.E.M.": true, "Not Specified": true,
	"None": true, "0123456789": true, "System Serial Number": true, "Chassis Serial Number": true,
}

func firmwareText(root fs.FS, name string) string {
	s := readText(root, name)
	if unset[s] {
		return ""
	}
	return s
}

func readSystem(root fs.FS) agentapi.System {
	const dmi = "sys/class/dmi/id/"
	s := agentapi.System{
		Vendor:          firmwareText(root, dmi+"sys_vendor"),
		Product:         firmwareText(root, dmi+"product_name"),
		Serial:          firmwareText(root, dmi+"product_serial"),
		UUID:            strings.ToLower(firmwareText(root, dmi+"product_uuid")),
		ChassisAssetTag: firmwareText(root, dmi+"chassis_asset_tag"),
		BIOSVendor:      firmwareText(root, dmi+"bios_vendor"),
		BIOSVersion:     firmwareText(root, dmi+"bios_version"),
		ChassisLocation: baseboardLocation(root),
		Firmware:        "bios",
	}
	if _, err := fs.Stat(root, "sys/firmware/efi"); err == nil {
		s.Firmware = "uefi"
	}
	return s
}

// baseboardLocation returns the SMBIOS type 2 "location in chassis" string,
// which sysfs does not expose as an attribute, from the raw DMI entry.
func baseboardLocation(root fs.FS) string {
	raw, err := fs.ReadFile(root, "sys/firmware/dmi/entries/2-0/raw")
	if err != nil {
		return ""
	}
	s := smbiosString(raw, 0x0a)
	if unset[s] {
		return ""
	}
	return s
}

// smbiosString returns the string that the byte at offset of an SMBIOS
// structure points to (1-based index into the strings after the formatted
// area), or "".
func smbiosString(raw []byte, offset int) string {
	if len(raw) < 2 {
		return ""
	}
	length := int(raw[1])
	if length < 4 || length > len(raw) || offset >= length {
		return ""
	}
	idx := int(raw[offset])
	if idx == 0 {
		return ""
	}
	strs := bytes.Split(raw[length:], []byte{0})
	if idx > len(strs) {
		return ""
	}
	return clean(string(strs[idx-1]))
}

func readCPU(root fs.FS) (agentapi.CPU, error) {
	f, err := root.Open("proc/cpuinfo")
	if err != nil {
		return agentapi.CPU{}, fmt.Errorf("read cpu info: %w", err)
	}
	defer f.Close()
	var c agentapi.CPU
	sockets := map[string]bool{}
	cores := map[string]bool{}
	var phys, core string
	flush := func() {
		if phys != "" || core != "" {
			sockets[phys] = true
			cores[phys+"/"+core] = true
		}
		phys, core = "", ""
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			flush()
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "processor":
			c.Threads++
		case "model name":
			if c.Model == "" {
				c.Model = clean(v)
			}
		case "physical id":
			phys = v
		case "core id":
			core = v
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return c, fmt.Errorf("read cpu info: %w", err)
	}
	c.Sockets, c.Cores = len(sockets), len(cores)
	if c.Sockets == 0 && c.Threads > 0 {
		// arm64 and some VMs give no topology in cpuinfo.
		c.Sockets, c.Cores = 1, c.Threads
	}
	return c, nil
}

func readMemory(root fs.FS) (agentapi.Memory, error) {
	data, err := fs.ReadFile(root, "proc/meminfo")
	if err != nil {
		return agentapi.Memory{}, fmt.Errorf("read memory info: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseUint(f[0], 10, 64)
				if err == nil {
					return agentapi.Memory{TotalBytes: kb * 1024}, nil
				}
			}
		}
	}
	return agentapi.Memory{}, errors.New("read memory info: no MemTotal in /proc/meminfo")
}

// skipDisk names block devices that are not disks to install on.
func skipDisk(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "dm-", "md", "nbd", "sr", "fd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func readDisks(root fs.FS) []agentapi.Disk {
	entries, err := fs.ReadDir(root, "sys/block")
	if err != nil {
		return nil
	}
	var out []agentapi.Disk
	for _, e := range entries {
		name := e.Name()
		if skipDisk(name) {
			continue
		}
		dir := "sys/block/" + name + "/"
		sectors, _ := readInt(root, dir+"size")
		if sectors <= 0 {
			continue
		}
		d := agentapi.Disk{
			Name:      name,
			SizeBytes: uint64(sectors) * 512,
			Model:     firstText(root, dir+"device/model", dir+"device/name"),
			Serial:    firstText(root, dir+"device/serial", dir+"serial"),
			WWN:       firstText(root, dir+"device/wwid", dir+"wwid"),
		}
		rot, _ := readInt(root, dir+"queue/rotational")
		rem, _ := readInt(root, dir+"removable")
		d.Rotational, d.Removable = rot == 1, rem == 1
		out = append(out, d)
	}
	return out
}

func firstText(root fs.FS, names ...string) string {
	for _, n := range names {
		if s := readText(root, n); s != "" {
			return s
		}
	}
	return ""
}

// linkBase returns the last element of a symlink's target, e.g. a driver
// name from .../device/driver.
func linkBase(root fs.FS, name string) string {
	target, err := fs.ReadLink(root, name)
	if err != nil {
		return ""
	}
	return path.Base(target)
}

func readNICs(root fs.FS) []agentapi.NIC {
	entries, err := fs.ReadDir(root, "sys/class/net")
	if err != nil {
		return nil
	}
	var out []agentapi.NIC
	for _, e := range entries {
		name := e.Name()
		dir := "sys/class/net/" + name + "/"
		// Physical NICs have a device; lo, bridges, veths and taps do not.
		if _, err := fs.Stat(root, dir+"device"); err != nil {
			continue
		}
		if t, _ := readInt(root, dir+"type"); t != 1 { // ARPHRD_ETHER
			continue
		}
		n := agentapi.NIC{
			Name:   name,
			MAC:    strings.ToLower(readText(root, dir+"address")),
			Driver: linkBase(root, dir+"device/driver"),
		}
		carrier, _ := readInt(root, dir+"carrier")
		n.Link = carrier == 1
		if sp, ok := readInt(root, dir+"speed"); ok && sp > 0 && n.Link {
			n.SpeedMbps = int(sp)
		}
		out = append(out, n)
	}
	return out
}

// NVIDIA is the PCI vendor ID of NVIDIA.
const NVIDIA = "0x10de"

// nvidiaNames names the data-centre GPUs airlock's GPU profiles know; others
// are named generically.
var nvidiaNames = map[string]string{
	"0x20b0": "NVIDIA A100-SXM4-40GB", "0x20b2": "NVIDIA A100-SXM4-80GB", "0x20b5": "NVIDIA A100 80GB PCIe",
	"0x20f1": "NVIDIA A100-PCIE-40GB", "0x2235": "NVIDIA A40", "0x2236": "NVIDIA A10", "0x25b6": "NVIDIA A16",
	"0x20b7": "NVIDIA A30", "0x2330": "NVIDIA H100 80GB HBM3", "0x2331": "NVIDIA H100 PCIe",
	"0x2324": "NVIDIA H800", "0x2335": "NVIDIA H200", "0x233b": "NVIDIA H200 NVL", "0x26b9": "NVIDIA L40S",
	"0x26b5": "NVIDIA L40", "0x27b8": "NVIDIA L4", "0x1eb8": "NVIDIA T4", "0x1db4": "NVIDIA V100-PCIE-16GB",
	"0x1db1": "NVIDIA V100-SXM2-16GB", "0x2901": "NVIDIA B200",
}

// GPUName names an NVIDIA display or 3D controller; "" for anything else.
func GPUName(vendor, device, class string) string {
	if vendor != NVIDIA || !(strings.HasPrefix(class, "0x0300") || strings.HasPrefix(class, "0x0302")) {
		return ""
	}
	if n, ok := nvidiaNames[device]; ok {
		return n
	}
	return "NVIDIA GPU " + device
}

func readPCI(root fs.FS) []agentapi.PCIDevice {
	entries, err := fs.ReadDir(root, "sys/bus/pci/devices")
	if err != nil {
		return nil
	}
	var out []agentapi.PCIDevice
	for _, e := range entries {
		dir := "sys/bus/pci/devices/" + e.Name() + "/"
		d := agentapi.PCIDevice{
			Address: e.Name(),
			Vendor:  strings.ToLower(readText(root, dir+"vendor")),
			Device:  strings.ToLower(readText(root, dir+"device")),
			Class:   strings.ToLower(readText(root, dir+"class")),
			Driver:  linkBase(root, dir+"driver"),
		}
		d.Name = GPUName(d.Vendor, d.Device, d.Class)
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}
