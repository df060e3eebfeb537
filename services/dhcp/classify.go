package dhcp

import (
	"encoding/binary"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// Client is what a request says about the machine that sent it.
type Client struct {
	// Arch is the client system architecture (option 93, else the
	// "Arch:NNNNN" field of the vendor class); HasArch says whether either
	// was present.
	Arch    iana.Arch
	HasArch bool
	// Vendor is option 60 as sent.
	Vendor string
	// PXE: vendor class starts with "PXEClient" (firmware PXE or iPXE).
	PXE bool
	// HTTP: vendor class starts with "HTTPClient" (UEFI HTTP boot), or an
	// HTTP-boot architecture.
	HTTP bool
	// IPXE: user class (option 77) is "iPXE", raw as iPXE sends it or in
	// RFC 3004 form.
	IPXE bool
}

// Netboot reports whether the client is asking to boot from the network.
func (c Client) Netboot() bool { return c.PXE || c.HTTP || c.IPXE }

// Classify reads options 93, 60 and 77 of m.
func Classify(m *dhcpv4.DHCPv4) Client {
	var c Client
	if v := m.GetOneOption(dhcpv4.OptionClientSystemArchitectureType); len(v) >= 2 {
		c.Arch = iana.Arch(binary.BigEndian.Uint16(v))
		c.HasArch = true
	}
	c.Vendor = string(m.GetOneOption(dhcpv4.OptionClassIdentifier))
	switch {
	case strings.HasPrefix(c.Vendor, "PXEClient"):
		c.PXE = true
	case strings.HasPrefix(c.Vendor, "HTTPClient"):
		c.HTTP = true
	}
	if !c.HasArch && (c.PXE || c.HTTP) {
		// "PXEClient:Arch:00007:UNDI:003010"
		if i := strings.Index(c.Vendor, ":Arch:"); i >= 0 && len(c.Vendor) >= i+11 {
			if n, err := strconv.ParseUint(c.Vendor[i+6:i+11], 10, 16); err == nil {
				c.Arch, c.HasArch = iana.Arch(n), true
			}
		}
	}
	if c.HasArch && isHTTPArch(c.Arch) {
		c.HTTP = true
	}
	c.IPXE = hasIPXEUserClass(m.GetOneOption(dhcpv4.OptionUserClassInformation))
	return c
}

func isHTTPArch(a iana.Arch) bool {
	switch a {
	case iana.EFI_X86_HTTP, iana.EFI_X86_64_HTTP, iana.EFI_BC_HTTP, iana.EFI_ARM32_HTTP,
		iana.EFI_ARM64_HTTP, iana.INTEL_X86PC_HTTP:
		return true
	}
	return false
}

// hasIPXEUserClass accepts iPXE's raw "iPXE" (what Debian's iPXE sends) and
// the RFC 3004 encoding (length-prefixed strings).
func hasIPXEUserClass(v []byte) bool {
	if string(v) == "iPXE" {
		return true
	}
	for len(v) > 0 {
		n := int(v[0])
		if n == 0 || 1+n > len(v) {
			return false
		}
		if string(v[1:1+n]) == "iPXE" {
			return true
		}
		v = v[1+n:]
	}
	return false
}

// firmware is the kind of first stage a client needs.
type firmware int

const (
	fwNone firmware = iota
	fwBIOS
	fwUEFI
	fwARM64
)

func (c Client) firmware() firmware {
	if !c.HasArch {
		if c.PXE {
			return fwBIOS // PXE clients that omit option 93 are legacy BIOS
		}
		return fwNone
	}
	switch c.Arch {
	case iana.INTEL_X86PC:
		return fwBIOS
	case iana.EFI_X86_64, iana.EFI_BC, iana.EFI_X86_64_HTTP, iana.EFI_BC_HTTP:
		return fwUEFI
	case iana.EFI_ARM64, iana.EFI_ARM64_HTTP:
		return fwARM64
	}
	return fwNone
}

// bootChoice is what a netboot client is told.
type bootChoice struct {
	file       string // option 67 / file field
	tftp       bool   // file is on the TFTP server (siaddr, option 66)
	vendor     string // option 60 to echo
	ipxeNoWait bool   // option 175.176 = 1
}

// choose picks the boot file for c; ok is false when there is none.
func (b Boot) choose(c Client, m *dhcpv4.DHCPv4) (bootChoice, bool) {
	vendor := "PXEClient"
	if c.HTTP && !c.IPXE {
		vendor = "HTTPClient"
	}
	if c.IPXE {
		// The second stage: iPXE fetches its script over HTTP.
		return bootChoice{file: b.ChainURL(m.ClientHWAddr), vendor: vendor, ipxeNoWait: true}, true
	}
	var name string
	switch c.firmware() {
	case fwBIOS:
		name = b.BIOSFile
	case fwUEFI:
		name = b.UEFIFile
	case fwARM64:
		name = b.ARM64File
	}
	if name == "" {
		return bootChoice{}, false
	}
	if c.HTTP {
		return bootChoice{file: b.FileURL(name), vendor: vendor}, true
	}
	return bootChoice{file: name, tftp: true, vendor: vendor}, true
}
