package agentapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on what an agent may send.
const (
	// MaxBodyBytes bounds every request body.
	MaxBodyBytes = 1 << 20
	// MaxText bounds free-text fields (model names, serials).
	MaxText    = 128
	maxDisks   = 256
	maxNICs    = 256
	maxPCI     = 1024
	maxThreads = 1 << 16
	// 64 PiB of RAM or disk is more than any machine this decade.
	maxBytes = 64 << 50
	// maxTotalBytes bounds the sum of a machine's disks: 1 EiB. With
	// maxDisks disks of maxBytes the sum would be 2^64 and wrap to 0.
	maxTotalBytes = 1 << 60
)

// ErrDecode is returned for a body that is not one well-formed JSON value of
// the expected type.
var ErrDecode = errors.New("malformed agent report")

// Decode reads exactly one JSON value of type T from r, refusing unknown
// fields, trailing data and bodies over MaxBodyBytes. It does not validate.
func Decode[T any](r io.Reader, v *T) error {
	lr := &io.LimitedReader{R: r, N: MaxBodyBytes + 1}
	data, err := io.ReadAll(lr)
	if err != nil {
		return fmt.Errorf("%w: read: %w", ErrDecode, err)
	}
	if len(data) > MaxBodyBytes {
		return fmt.Errorf("%w: body larger than %d bytes", ErrDecode, MaxBodyBytes)
	}
	return DecodeBytes(data, v)
}

// DecodeBytes is Decode over a byte slice.
func DecodeBytes[T any](data []byte, v *T) error {
	if len(data) > MaxBodyBytes {
		return fmt.Errorf("%w: body larger than %d bytes", ErrDecode, MaxBodyBytes)
	}
	if !utf8.Valid(data) {
		return fmt.Errorf("%w: not UTF-8", ErrDecode)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrDecode, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after the JSON value", ErrDecode)
	}
	return nil
}

// problems collects validation failures with their field paths.
type problems []error

func (p *problems) add(path, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
}

func (p problems) err() error { return errors.Join(p...) }

var (
	// Linux interface and block device names as the kernel makes them.
	reDevName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.:-]{0,31}$`)
	reDriver  = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)
	reUUID    = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	rePCIAddr = regexp.MustCompile(`^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)
	reHex16   = regexp.MustCompile(`^0x[0-9a-f]{4}$`)
	reHex24   = regexp.MustCompile(`^0x[0-9a-f]{6}$`)
	reVersion = regexp.MustCompile(`^[a-zA-Z0-9._+~-]{0,64}$`)
	reState   = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
)

// checkText accepts printable text without control characters, at most max
// bytes. SMBIOS strings from real firmware are printable ASCII; we allow
// printable Unicode but never control characters, which could forge log
// lines or terminal escapes.
func checkText(p *problems, path, s string, max int) {
	if len(s) > max {
		p.add(path, "longer than %d bytes", max)
		return
	}
	if !utf8.ValidString(s) {
		p.add(path, "not UTF-8")
		return
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			p.add(path, "contains a non-printable character %U", r)
			return
		}
	}
}

func checkMAC(p *problems, path, s string, required bool) {
	if s == "" {
		if required {
			p.add(path, "required")
		}
		return
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 || hw.String() != strings.ToLower(s) {
		p.add(path, "%q is not a MAC address like 52:54:00:12:34:56", s)
		return
	}
	if hw[0]&1 == 1 {
		p.add(path, "%q is a multicast address", s)
	}
}

// Validate returns every problem in the registration at once.
func (r *Registration) Validate() error {
	var p problems
	checkMAC(&p, "bootMAC", r.BootMAC, true)
	if !reVersion.MatchString(r.AgentVersion) {
		p.add("agentVersion", "not a version string")
	}
	switch r.Arch {
	case "amd64", "arm64":
	default:
		p.add("arch", "%q is not amd64 or arm64", r.Arch)
	}
	r.Inventory.validate(&p, "inventory")
	if r.BootMAC != "" && len(p) == 0 {
		found := false
		for _, n := range r.Inventory.NICs {
			if strings.EqualFold(n.MAC, r.BootMAC) {
				found = true
			}
		}
		if !found {
			p.add("bootMAC", "%s is not the MAC of any reported NIC", r.BootMAC)
		}
	}
	return p.err()
}

// Validate returns every problem in the inventory at once.
func (inv *Inventory) Validate() error {
	var p problems
	inv.validate(&p, "")
	return p.err()
}

func join(prefix, field string) string {
	if prefix == "" {
		return field
	}
	return prefix + "." + field
}

func (inv *Inventory) validate(p *problems, at string) {
	s := inv.System
	sys := join(at, "system")
	checkText(p, sys+".vendor", s.Vendor, MaxText)
	checkText(p, sys+".product", s.Product, MaxText)
	checkText(p, sys+".serial", s.Serial, MaxText)
	checkText(p, sys+".chassisAssetTag", s.ChassisAssetTag, MaxText)
	checkText(p, sys+".chassisLocation", s.ChassisLocation, MaxText)
	checkText(p, sys+".biosVendor", s.BIOSVendor, MaxText)
	checkText(p, sys+".biosVersion", s.BIOSVersion, MaxText)
	if s.UUID != "" && !reUUID.MatchString(s.UUID) {
		p.add(sys+".uuid", "%q is not a UUID", s.UUID)
	}
	switch s.Firmware {
	case "", "bios", "uefi":
	default:
		p.add(sys+".firmware", "%q is not bios or uefi", s.Firmware)
	}

	c := inv.CPU
	cpu := join(at, "cpu")
	checkText(p, cpu+".model", c.Model, MaxText)
	if c.Threads < 1 || c.Threads > maxThreads {
		p.add(cpu+".threads", "%d is not between 1 and %d", c.Threads, maxThreads)
	}
	if c.Sockets < 0 || c.Sockets > 64 {
		p.add(cpu+".sockets", "%d is not between 0 and 64", c.Sockets)
	}
	if c.Cores < 0 || c.Cores > c.Threads {
		p.add(cpu+".cores", "%d is not between 0 and the thread count %d", c.Cores, c.Threads)
	}
	if inv.Memory.TotalBytes == 0 || inv.Memory.TotalBytes > maxBytes {
		p.add(join(at, "memory.totalBytes"), "%d is not a plausible memory size", inv.Memory.TotalBytes)
	}

	if len(inv.Disks) > maxDisks {
		p.add(join(at, "disks"), "%d disks, more than %d", len(inv.Disks), maxDisks)
	} else {
		// Checked before each add, so the sum itself never wraps.
		var total uint64
		for _, d := range inv.Disks {
			if d.SizeBytes > maxTotalBytes-total {
				total = maxTotalBytes + 1
				break
			}
			total += d.SizeBytes
		}
		if total > maxTotalBytes {
			p.add(join(at, "disks"), "sizes add up to more than %d bytes", uint64(maxTotalBytes))
		}
		seen := map[string]bool{}
		for i, d := range inv.Disks {
			path := fmt.Sprintf("%s[%d]", join(at, "disks"), i)
			if !reDevName.MatchString(d.Name) {
				p.add(path+".name", "%q is not a block device name", d.Name)
			} else if seen[d.Name] {
				p.add(path+".name", "%q reported twice", d.Name)
			}
			seen[d.Name] = true
			if d.SizeBytes > maxBytes {
				p.add(path+".sizeBytes", "%d is not a plausible disk size", d.SizeBytes)
			}
			checkText(p, path+".model", d.Model, MaxText)
			checkText(p, path+".serial", d.Serial, MaxText)
			checkText(p, path+".wwn", d.WWN, MaxText)
		}
	}

	if len(inv.NICs) > maxNICs {
		p.add(join(at, "nics"), "%d NICs, more than %d", len(inv.NICs), maxNICs)
	} else {
		seen := map[string]bool{}
		for i, n := range inv.NICs {
			path := fmt.Sprintf("%s[%d]", join(at, "nics"), i)
			if !reDevName.MatchString(n.Name) || len(n.Name) > 15 {
				p.add(path+".name", "%q is not an interface name", n.Name)
			} else if seen[n.Name] {
				p.add(path+".name", "%q reported twice", n.Name)
			}
			seen[n.Name] = true
			checkMAC(p, path+".mac", n.MAC, true)
			if n.Driver != "" && !reDriver.MatchString(n.Driver) {
				p.add(path+".driver", "%q is not a driver name", n.Driver)
			}
			if n.SpeedMbps < 0 || n.SpeedMbps > 10_000_000 {
				p.add(path+".speedMbps", "%d is not a plausible speed", n.SpeedMbps)
			}
			if l := n.LLDP; l != nil {
				checkText(p, path+".lldp.chassisID", l.ChassisID, MaxText*2)
				checkText(p, path+".lldp.portID", l.PortID, MaxText*2)
				checkText(p, path+".lldp.systemName", l.SystemName, MaxText*2)
				checkText(p, path+".lldp.portDescription", l.PortDescription, MaxText*2)
				if l.ChassisID == "" {
					p.add(path+".lldp.chassisID", "required")
				}
				if l.PortID == "" {
					p.add(path+".lldp.portID", "required")
				}
			}
		}
	}

	if len(inv.PCI) > maxPCI {
		p.add(join(at, "pci"), "%d PCI devices, more than %d", len(inv.PCI), maxPCI)
	} else {
		for i, d := range inv.PCI {
			path := fmt.Sprintf("%s[%d]", join(at, "pci"), i)
			if !rePCIAddr.MatchString(d.Address) {
				p.add(path+".address", "%q is not a PCI address like 0000:00:02.0", d.Address)
			}
			if !reHex16.MatchString(d.Vendor) {
				p.add(path+".vendor", "%q is not a vendor ID like 0x10de", d.Vendor)
			}
			if !reHex16.MatchString(d.Device) {
				p.add(path+".device", "%q is not a device ID like 0x20b0", d.Device)
			}
			if !reHex24.MatchString(d.Class) {
				p.add(path+".class", "%q is not a class like 0x030200", d.Class)
			}
			if d.Driver != "" && !reDriver.MatchString(d.Driver) {
				p.add(path+".driver", "%q is not a driver name", d.Driver)
			}
			checkText(p, path+".name", d.Name, MaxText)
		}
	}
}

// Validate returns every problem in the heartbeat at once.
func (h *Heartbeat) Validate() error {
	var p problems
	if h.Seq == 0 {
		p.add("seq", "must start at 1")
	}
	if !reState.MatchString(h.State) {
		p.add("state", "%q is not a state name", h.State)
	}
	checkText(&p, "message", h.Message, 512)
	if len(h.Results) > MaxResults {
		p.add("results", "%d results, at most %d", len(h.Results), MaxResults)
	}
	for i, r := range h.Results {
		if i >= MaxResults {
			break
		}
		path := fmt.Sprintf("results[%d]", i)
		if !ReOrderID.MatchString(r.ID) {
			p.add(path+".id", "%q is not an order ID", r.ID)
		}
		switch r.Status {
		case ResultRunning, ResultDone, ResultFailed:
		default:
			p.add(path+".status", "%q: want running, done or failed", r.Status)
		}
		checkText(&p, path+".error", r.Error, 1024)
		if r.Total > 0 && r.Done > r.Total {
			p.add(path+".done", "%d past the total %d", r.Done, r.Total)
		}
	}
	return p.err()
}

// ReOrderID is the form of the order IDs airlock makes.
var ReOrderID = regexp.MustCompile(`^o-[a-z0-9][a-z0-9-]{0,62}$`)

var (
	reArtifactPath = regexp.MustCompile(`^/[A-Za-z0-9._/-]{1,255}$`)
	reSHA256Hex    = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// MaxArtifactBytes bounds an artifact's raw size (16 TiB, larger than any
// OS image; the disk's own size bounds it again).
const MaxArtifactBytes = 16 << 40

// Validate checks an order before the agent acts on it: a known kind, an
// ID of the form airlock makes, and for an install order a pinned disk and
// artifacts that are paths on airlock (no other host, no "..") with a raw
// size and SHA-256.
func (o *Order) Validate() error {
	var p problems
	if !ReOrderID.MatchString(o.ID) {
		p.add("id", "%q is not an order ID", o.ID)
	}
	switch o.Kind {
	case OrderWait, OrderReboot, OrderPowerOff:
		if o.Install != nil {
			p.add("install", "set on a %s order", o.Kind)
		}
	case OrderInstall:
		if o.Install == nil {
			p.add("install", "missing")
			break
		}
		in := o.Install
		if in.Disk.WWN == "" && in.Disk.Serial == "" {
			p.add("install.disk", "names neither a WWN nor a serial")
		}
		checkText(&p, "install.disk.wwn", in.Disk.WWN, 128)
		checkText(&p, "install.disk.serial", in.Disk.Serial, 128)
		for _, a := range []struct {
			path string
			a    Artifact
		}{{"install.image", in.Image}, {"install.seed", in.Seed}} {
			if !reArtifactPath.MatchString(a.a.Path) || strings.Contains(a.a.Path, "..") || strings.Contains(a.a.Path, "//") {
				p.add(a.path+".path", "%q is not a path on airlock", a.a.Path)
			}
			if a.a.Size <= 0 || a.a.Size > MaxArtifactBytes {
				p.add(a.path+".size", "%d is out of range", a.a.Size)
			}
			if !reSHA256Hex.MatchString(a.a.SHA256) {
				p.add(a.path+".sha256", "%q is not a hex SHA-256", a.a.SHA256)
			}
		}
	default:
		p.add("kind", "unknown order kind %q", o.Kind)
	}
	return p.err()
}
