package seed

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
)

// Label is the volume label of the seed filesystem. cloud-init's NoCloud
// datasource looks for a vfat or iso9660 filesystem labelled cidata or
// CIDATA on any block device.
const Label = "CIDATA"

// PartitionType is the GPT type GUID to give the seed's partition
// (Microsoft basic data, as for any FAT filesystem).
const PartitionType = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"

// MaxImageSize bounds the seed filesystem.
const MaxImageSize = 64 << 20

const (
	sectorSize  = 512
	rootEntries = 512 // fixed root directory of FAT12/16: 32 sectors
	rootSectors = rootEntries * 32 / sectorSize
	mib         = 1 << 20
)

// SeedFile is one file in the seed filesystem's root directory.
type SeedFile struct {
	Name    string
	Content []byte
}

// List returns the seed documents as files named the way NoCloud expects.
func (f Files) List() []SeedFile {
	l := []SeedFile{{"meta-data", f.MetaData}, {"user-data", f.UserData}}
	if f.NetworkConfig != nil {
		l = append(l, SeedFile{"network-config", f.NetworkConfig})
	}
	return l
}

// Image returns the seed as a FAT filesystem image labelled CIDATA (see
// FATImage).
func (f Files) Image() ([]byte, error) { return FATImage(Label, f.List()) }

// FATImage builds a FAT12 or FAT16 filesystem (whichever its cluster count
// makes it) holding files in its root directory, each with a long (VFAT)
// name and a generated 8.3 alias. The size is a whole number of MiB, at
// least 1 MiB, and the image is the same for the same input (timestamps
// fixed, volume serial from the content).
func FATImage(label string, files []SeedFile) ([]byte, error) {
	lab, err := shortLabel(label)
	if err != nil {
		return nil, err
	}
	total, entries := 0, 1 // the label's entry
	for _, f := range files {
		entries += 1 + (len(f.Name)+12)/13
	}
	if entries > rootEntries {
		return nil, fmt.Errorf("build FAT image: %d files with long names need %d directory entries, at most %d", len(files), entries, rootEntries)
	}
	seen := map[string]bool{}
	for _, f := range files {
		if err := checkLongName(f.Name); err != nil {
			return nil, err
		}
		if seen[strings.ToUpper(f.Name)] {
			return nil, fmt.Errorf("build FAT image: file %q twice", f.Name)
		}
		seen[strings.ToUpper(f.Name)] = true
		total += len(f.Content)
	}
	if total > MaxImageSize {
		return nil, fmt.Errorf("build FAT image: %d bytes of files, at most %d", total, MaxImageSize)
	}
	size := (total + total/8 + 64<<10 + mib - 1) / mib * mib
	for ; size <= MaxImageSize; size *= 2 {
		g, ok := newGeometry(uint32(size / sectorSize))
		if !ok {
			continue
		}
		need := uint32(0)
		for _, f := range files {
			need += g.clustersFor(len(f.Content))
		}
		if need <= g.clusters {
			return g.build(lab, files), nil
		}
	}
	return nil, fmt.Errorf("build FAT image: %d bytes of files do not fit in %d MiB", total, MaxImageSize/mib)
}

type geometry struct {
	total      uint32 // sectors
	spc        uint32 // sectors per cluster
	fatSectors uint32 // per FAT
	clusters   uint32 // data clusters
	bits       int    // 12 or 16
}

func newGeometry(total uint32) (geometry, bool) {
	for spc := uint32(1); spc <= 64; spc *= 2 {
		g := geometry{total: total, spc: spc, fatSectors: 1}
		for {
			g.clusters = (total - 1 - 2*g.fatSectors - rootSectors) / spc
			g.bits = 16
			if g.clusters < 4085 {
				g.bits = 12
			}
			need := ((g.clusters+2)*uint32(g.bits)/8 + sectorSize - 1) / sectorSize
			if need <= g.fatSectors {
				break
			}
			g.fatSectors = need
		}
		// Keep clear of the FAT12/FAT16 boundary, where implementations
		// have disagreed, and of FAT32's.
		if (g.clusters > 4085-16 && g.clusters < 4085+16) || g.clusters >= 65525-16 {
			continue
		}
		return g, true
	}
	return geometry{}, false
}

func (g geometry) clusterBytes() int { return int(g.spc) * sectorSize }

func (g geometry) clustersFor(n int) uint32 {
	return uint32((n + g.clusterBytes() - 1) / g.clusterBytes())
}

// Fixed timestamp of every entry: 2020-01-01 00:00:00.
const (
	dosDate = (2020-1980)<<9 | 1<<5 | 1
	dosTime = 0
)

func (g geometry) build(label [11]byte, files []SeedFile) []byte {
	img := make([]byte, int(g.total)*sectorSize)
	fat := make([]uint32, g.clusters+2)
	eoc := uint32(0xFFF)
	if g.bits == 16 {
		eoc = 0xFFFF
	}
	fat[0], fat[1] = eoc&^0xFF|0xF8, eoc

	h := sha256.New()
	for _, f := range files {
		h.Write([]byte(f.Name))
		h.Write([]byte{0})
		h.Write(f.Content)
	}
	serial := binary.LittleEndian.Uint32(h.Sum(nil))

	// Boot sector with the BIOS parameter block.
	b := img[:sectorSize]
	copy(b, []byte{0xEB, 0x3C, 0x90})
	copy(b[3:], "AIRLOCK ")
	le16 := binary.LittleEndian.PutUint16
	le32 := binary.LittleEndian.PutUint32
	le16(b[11:], sectorSize)
	b[13] = byte(g.spc)
	le16(b[14:], 1) // reserved sectors
	b[16] = 2       // FATs
	le16(b[17:], rootEntries)
	if g.total < 1<<16 {
		le16(b[19:], uint16(g.total))
	} else {
		le32(b[32:], g.total)
	}
	b[21] = 0xF8
	le16(b[22:], uint16(g.fatSectors))
	le16(b[24:], 32) // sectors per track
	le16(b[26:], 64) // heads
	b[36] = 0x80
	b[38] = 0x29
	le32(b[39:], serial)
	copy(b[43:54], label[:])
	copy(b[54:62], fmt.Sprintf("FAT%d   ", g.bits))
	copy(b[62:], []byte{0xCD, 0x18, 0xEB, 0xFE}) // not bootable: int 18h
	b[510], b[511] = 0x55, 0xAA

	rootOff := (1 + 2*int(g.fatSectors)) * sectorSize
	dataOff := rootOff + rootSectors*sectorSize
	dir := img[rootOff:dataOff]
	var ent [32]byte
	copy(ent[:11], label[:])
	ent[11] = 0x08 // volume label
	le16(ent[22:], dosTime)
	le16(ent[24:], dosDate)
	copy(dir, ent[:])
	pos := 32

	next := uint32(2)
	var aliases [][11]byte
	for _, f := range files {
		short := shortName(f.Name, aliases)
		aliases = append(aliases, short)
		for _, e := range lfnEntries(f.Name, short) {
			copy(dir[pos:], e[:])
			pos += 32
		}
		first := uint32(0)
		if n := g.clustersFor(len(f.Content)); n > 0 {
			first = next
			for i := uint32(0); i < n; i++ {
				fat[next+i] = next + i + 1
			}
			fat[next+n-1] = eoc
			copy(img[dataOff+int(first-2)*g.clusterBytes():], f.Content)
			next += n
		}
		var e [32]byte
		copy(e[:11], short[:])
		e[11] = 0x20 // archive
		le16(e[14:], dosTime)
		le16(e[16:], dosDate)
		le16(e[18:], dosDate)
		le16(e[22:], dosTime)
		le16(e[24:], dosDate)
		le16(e[26:], uint16(first))
		le32(e[28:], uint32(len(f.Content)))
		copy(dir[pos:], e[:])
		pos += 32
	}

	// Both FATs.
	fatBytes := make([]byte, int(g.fatSectors)*sectorSize)
	for i, v := range fat {
		if g.bits == 16 {
			le16(fatBytes[2*i:], uint16(v))
			continue
		}
		o := i * 3 / 2
		if i%2 == 0 {
			fatBytes[o] = byte(v)
			fatBytes[o+1] = fatBytes[o+1]&0xF0 | byte(v>>8)&0x0F
		} else {
			fatBytes[o] = fatBytes[o]&0x0F | byte(v<<4)
			fatBytes[o+1] = byte(v >> 4)
		}
	}
	copy(img[sectorSize:], fatBytes)
	copy(img[sectorSize+len(fatBytes):], fatBytes)
	return img
}

// shortLabel pads a volume label to 11 bytes; it must be a valid 8.3 name
// character set, upper case.
func shortLabel(label string) ([11]byte, error) {
	var out [11]byte
	if label == "" || len(label) > 11 || strings.ToUpper(label) != label {
		return out, fmt.Errorf("volume label %q: want 1-11 upper-case characters", label)
	}
	for i := 0; i < len(label); i++ {
		if !shortChar(label[i]) && label[i] != ' ' {
			return out, fmt.Errorf("volume label %q: character %q not allowed", label, label[i])
		}
	}
	copy(out[:], label+strings.Repeat(" ", 11-len(label)))
	return out, nil
}

func shortChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'()-@^_`{}~", c) >= 0
}

var errName = errors.New("want 1-255 printable ASCII characters, none of \\/:*?\"<>|, not starting with '.' or ending with '.' or ' '")

func checkLongName(name string) error {
	if name == "" || len(name) > 255 || name[0] == '.' || strings.HasSuffix(name, ".") || strings.HasSuffix(name, " ") {
		return fmt.Errorf("file name %q: %w", name, errName)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7E || strings.IndexByte(`\/:*?"<>|`, c) >= 0 {
			return fmt.Errorf("file name %q: %w", name, errName)
		}
	}
	return nil
}

// shortName makes the 8.3 alias of a long name: upper case, characters
// outside the 8.3 set dropped, base cut to 6 characters plus ~N so that it
// differs from the aliases already taken.
func shortName(name string, taken [][11]byte) [11]byte {
	base, ext := name, ""
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		base, ext = name[:i], name[i+1:]
	}
	clean := func(s string, max int) string {
		var b strings.Builder
		for i := 0; i < len(s) && b.Len() < max; i++ {
			if c := strings.ToUpper(s[i : i+1])[0]; shortChar(c) {
				b.WriteByte(c)
			}
		}
		return b.String()
	}
	e := clean(ext, 3)
	full := clean(base, 255)
	if full == "" {
		full = "FILE"
	}
	for n := 1; ; n++ {
		tail := fmt.Sprintf("~%d", n)
		b := full
		if len(b) > 8-len(tail) {
			b = b[:8-len(tail)]
		}
		var s [11]byte
		copy(s[:], fmt.Sprintf("%-8s%-3s", b+tail, e))
		if !bytes.Contains(flatten(taken), s[:]) {
			return s
		}
	}
}

func flatten(l [][11]byte) []byte {
	var b []byte
	for _, s := range l {
		b = append(b, s[:]...)
		b = append(b, 0) // separator: no match across entries
	}
	return b
}

func lfnChecksum(short [11]byte) byte {
	var sum byte
	for _, c := range short {
		sum = (sum&1)<<7 + sum>>1 + c
	}
	return sum
}

// lfnEntries returns the VFAT long-name entries of name, in directory order
// (last part first).
func lfnEntries(name string, short [11]byte) [][32]byte {
	u := utf16.Encode([]rune(name))
	n := (len(u) + 12) / 13
	if len(u)%13 != 0 {
		u = append(u, 0)
	}
	for len(u)%13 != 0 {
		u = append(u, 0xFFFF)
	}
	sum := lfnChecksum(short)
	out := make([][32]byte, 0, n)
	for seq := n; seq >= 1; seq-- {
		var e [32]byte
		e[0] = byte(seq)
		if seq == n {
			e[0] |= 0x40
		}
		e[11] = 0x0F
		e[13] = sum
		part := u[(seq-1)*13 : seq*13]
		offs := []int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30}
		for i, o := range offs {
			binary.LittleEndian.PutUint16(e[o:], part[i])
		}
		out = append(out, e)
	}
	return out
}
