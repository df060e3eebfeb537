// Package efiboot gives an installed disk a UEFI boot entry: it encodes
// UEFI device paths and load options (EFI_LOAD_OPTION, UEFI 2.10 §3.1.3
// and §10.3), finds the boot loader on a disk's EFI system partition (a
// read-only FAT reader), and writes Boot#### and BootOrder through Linux's
// efivarfs, where each file is four attribute bytes followed by the
// variable's data.
//
// The entry it makes is what `efibootmgr -c` makes: the short-form
// HD(partition, GPT, partition GUID, start, size)/File(\EFI\...) path,
// which the firmware expands to the disk that holds that partition.
package efiboot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
)

// Device path node types and subtypes used here.
const (
	typeMessaging = 0x03
	typeMedia     = 0x04
	typeEnd       = 0x7f

	subHardDrive = 0x01 // media
	subFilePath  = 0x04 // media
	subEndEntire = 0xff // end

	subMAC  = 0x0b // messaging
	subIPv4 = 0x0c
	subIPv6 = 0x0d
	subURI  = 0x18

	hardDriveLen = 42
)

// HardDrive is the HD() media node of a GPT partition.
type HardDrive struct {
	// Partition is the 1-based entry number in the GPT.
	Partition uint32
	// Start and Size are in logical blocks (512-byte sectors).
	Start, Size uint64
	// GUID is the partition's unique GUID as stored on disk (the first
	// three fields little-endian).
	GUID [16]byte
}

// DevicePath is an encoded device path: nodes, ending with an end node.
type DevicePath []byte

// DiskPath is HD(...)/File(file)/End, the path of a loader on a GPT
// partition. file uses backslashes, e.g. \EFI\BOOT\BOOTX64.EFI.
func DiskPath(hd HardDrive, file string) (DevicePath, error) {
	if hd.Partition == 0 || hd.Size == 0 {
		return nil, fmt.Errorf("device path: partition %d of %d sectors", hd.Partition, hd.Size)
	}
	if !strings.HasPrefix(file, `\`) || strings.ContainsAny(file, "/\x00") {
		return nil, fmt.Errorf("device path: file %q must start with a backslash and hold no slash or NUL", file)
	}
	var b bytes.Buffer
	n := make([]byte, hardDriveLen)
	n[0], n[1] = typeMedia, subHardDrive
	le := binary.LittleEndian
	le.PutUint16(n[2:], hardDriveLen)
	le.PutUint32(n[4:], hd.Partition)
	le.PutUint64(n[8:], hd.Start)
	le.PutUint64(n[16:], hd.Size)
	copy(n[24:40], hd.GUID[:])
	n[40] = 0x02 // partition format: GPT
	n[41] = 0x02 // signature type: GUID
	b.Write(n)

	name := ucs2(file)
	if 4+len(name) > 0xffff {
		return nil, fmt.Errorf("device path: file name of %d bytes is too long", len(name))
	}
	fp := make([]byte, 4, 4+len(name))
	fp[0], fp[1] = typeMedia, subFilePath
	le.PutUint16(fp[2:], uint16(4+len(name)))
	b.Write(append(fp, name...))

	b.Write([]byte{typeEnd, subEndEntire, 4, 0})
	return b.Bytes(), nil
}

// ucs2 encodes s as NUL-terminated UTF-16LE.
func ucs2(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u)+2)
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return b
}

// fromUCS2 decodes UTF-16LE up to the first NUL (or the end).
func fromUCS2(b []byte) string {
	var u []uint16
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

type node struct {
	typ, sub byte
	data     []byte // after the 4-byte header
}

// ErrBadPath is returned for a device path that does not parse.
var ErrBadPath = errors.New("malformed device path")

// nodes splits the first device path instance of p into its nodes, up to
// and without its end node. Every node must fit and be at least 4 bytes.
func (p DevicePath) nodes() ([]node, error) {
	var out []node
	for rest := []byte(p); ; {
		if len(rest) < 4 {
			return nil, fmt.Errorf("%w: %d bytes left, no end node", ErrBadPath, len(rest))
		}
		l := int(binary.LittleEndian.Uint16(rest[2:]))
		if l < 4 || l > len(rest) {
			return nil, fmt.Errorf("%w: node of length %d with %d bytes left", ErrBadPath, l, len(rest))
		}
		if rest[0] == typeEnd {
			return out, nil
		}
		out = append(out, node{rest[0], rest[1], rest[4:l]})
		rest = rest[l:]
		if len(out) > 256 {
			return nil, fmt.Errorf("%w: more than 256 nodes", ErrBadPath)
		}
	}
}

// IsNetwork reports whether the path leads to a network boot (it holds a
// MAC, IPv4, IPv6 or URI node), as the firmware's PXE and HTTP boot
// entries do.
func (p DevicePath) IsNetwork() bool {
	ns, err := p.nodes()
	if err != nil {
		return false
	}
	for _, n := range ns {
		if n.typ == typeMessaging && (n.sub == subMAC || n.sub == subIPv4 || n.sub == subIPv6 || n.sub == subURI) {
			return true
		}
	}
	return false
}

// String renders the path as efibootmgr -v does for the nodes this
// package knows (HD, File, MAC, IPv4, IPv6) and as a generic
// Path(type,subtype,hex) otherwise.
func (p DevicePath) String() string {
	ns, err := p.nodes()
	if err != nil {
		return "<" + err.Error() + ">"
	}
	var parts []string
	for _, n := range ns {
		parts = append(parts, n.String())
	}
	return strings.Join(parts, "/")
}

func (n node) String() string {
	le := binary.LittleEndian
	switch {
	case n.typ == typeMedia && n.sub == subHardDrive && len(n.data) == hardDriveLen-4:
		d := n.data
		var g [16]byte
		copy(g[:], d[20:36])
		if d[36] == 0x02 && d[37] == 0x02 {
			return fmt.Sprintf("HD(%d,GPT,%s,%#x,%#x)", le.Uint32(d), FormatGUID(g), le.Uint64(d[4:]), le.Uint64(d[12:]))
		}
		return fmt.Sprintf("HD(%d,MBR,%#x,%#x,%#x)", le.Uint32(d), le.Uint32(d[20:]), le.Uint64(d[4:]), le.Uint64(d[12:]))
	case n.typ == typeMedia && n.sub == subFilePath:
		return "File(" + fromUCS2(n.data) + ")"
	case n.typ == typeMessaging && n.sub == subMAC && len(n.data) == 33:
		return fmt.Sprintf("MAC(%x,%d)", n.data[:6], n.data[32])
	case n.typ == typeMessaging && n.sub == subIPv4:
		return "IPv4(...)"
	case n.typ == typeMessaging && n.sub == subIPv6:
		return "IPv6(...)"
	}
	return fmt.Sprintf("Path(%d,%d,%x)", n.typ, n.sub, n.data)
}

// FormatGUID writes a GUID stored in UEFI's mixed-endian byte order as
// text (lower case, as efibootmgr prints it).
func FormatGUID(g [16]byte) string {
	return fmt.Sprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15])
}
