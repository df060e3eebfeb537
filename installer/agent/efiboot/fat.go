package efiboot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf16"
)

// fatFS is a read-only view of a FAT12, FAT16 or FAT32 filesystem that
// lists directories; enough to find a boot loader on an EFI system
// partition. Everything it reads is bounded by the partition.
type fatFS struct {
	r          io.ReaderAt
	off, size  int64 // the partition in r
	bps        int64 // bytes per sector
	spc        int64 // sectors per cluster
	fatStart   int64 // byte offset of the first FAT in the partition
	rootStart  int64 // FAT12/16: byte offset of the fixed root directory
	rootBytes  int64
	dataStart  int64 // byte offset of cluster 2
	clusters   uint32
	bits       int // 12, 16 or 32
	rootClus   uint32
	maxEntries int
}

// ErrNotFAT is returned for a partition that holds no FAT filesystem.
var ErrNotFAT = errors.New("no FAT filesystem")

func openFAT(r io.ReaderAt, off, size int64) (*fatFS, error) {
	bs := make([]byte, 512)
	if size < 512 {
		return nil, fmt.Errorf("%w: partition of %d bytes", ErrNotFAT, size)
	}
	if _, err := r.ReadAt(bs, off); err != nil {
		return nil, fmt.Errorf("read FAT boot sector: %w", err)
	}
	le := binary.LittleEndian
	f := &fatFS{r: r, off: off, size: size, maxEntries: 1 << 16}
	f.bps = int64(le.Uint16(bs[11:]))
	f.spc = int64(bs[13])
	reserved := int64(le.Uint16(bs[14:]))
	nfats := int64(bs[16])
	rootEntries := int64(le.Uint16(bs[17:]))
	total := int64(le.Uint16(bs[19:]))
	if total == 0 {
		total = int64(le.Uint32(bs[32:]))
	}
	fatSize := int64(le.Uint16(bs[22:]))
	if fatSize == 0 {
		fatSize = int64(le.Uint32(bs[36:]))
	}
	if bs[510] != 0x55 || bs[511] != 0xAA || (f.bps != 512 && f.bps != 1024 && f.bps != 2048 && f.bps != 4096) ||
		f.spc == 0 || f.spc&(f.spc-1) != 0 || reserved == 0 || nfats == 0 || fatSize == 0 || total == 0 {
		return nil, fmt.Errorf("%w: implausible boot sector", ErrNotFAT)
	}
	if total*f.bps > size {
		return nil, fmt.Errorf("%w: %d sectors of %d bytes do not fit the partition's %d bytes", ErrNotFAT, total, f.bps, size)
	}
	f.fatStart = reserved * f.bps
	f.rootStart = f.fatStart + nfats*fatSize*f.bps
	f.rootBytes = (rootEntries*32 + f.bps - 1) / f.bps * f.bps
	f.dataStart = f.rootStart + f.rootBytes
	if f.dataStart >= total*f.bps {
		return nil, fmt.Errorf("%w: no room for data", ErrNotFAT)
	}
	f.clusters = uint32((total*f.bps - f.dataStart) / (f.spc * f.bps))
	switch {
	case f.clusters < 4085:
		f.bits = 12
	case f.clusters < 65525:
		f.bits = 16
	default:
		f.bits = 32
		f.rootClus = le.Uint32(bs[44:])
		if rootEntries != 0 {
			return nil, fmt.Errorf("%w: FAT32 with a fixed root directory", ErrNotFAT)
		}
	}
	if int64(f.clusters+2)*int64(f.bits)/8 > fatSize*f.bps {
		return nil, fmt.Errorf("%w: the FAT is too small for %d clusters", ErrNotFAT, f.clusters)
	}
	return f, nil
}

func (f *fatFS) read(b []byte, at int64) error {
	if at < 0 || at+int64(len(b)) > f.size {
		return fmt.Errorf("FAT: read of %d bytes at %d outside the partition", len(b), at)
	}
	if _, err := f.r.ReadAt(b, f.off+at); err != nil {
		return fmt.Errorf("FAT: read at %d: %w", at, err)
	}
	return nil
}

// next returns the cluster after c in its chain, and whether there is one.
func (f *fatFS) next(c uint32) (uint32, bool, error) {
	var b [4]byte
	switch f.bits {
	case 12:
		if err := f.read(b[:2], f.fatStart+int64(c)*3/2); err != nil {
			return 0, false, err
		}
		v := uint32(binary.LittleEndian.Uint16(b[:]))
		if c&1 == 1 {
			v >>= 4
		}
		v &= 0xfff
		return v, v >= 2 && v < 0xff7, nil
	case 16:
		if err := f.read(b[:2], f.fatStart+int64(c)*2); err != nil {
			return 0, false, err
		}
		v := uint32(binary.LittleEndian.Uint16(b[:]))
		return v, v >= 2 && v < 0xfff7, nil
	default:
		if err := f.read(b[:], f.fatStart+int64(c)*4); err != nil {
			return 0, false, err
		}
		v := binary.LittleEndian.Uint32(b[:]) & 0x0fffffff
		return v, v >= 2 && v < 0x0ffffff7, nil
	}
}

// dirData reads a directory's entries: the fixed root (cluster 0 on
// FAT12/16) or a cluster chain, bounded by maxEntries.
func (f *fatFS) dirData(first uint32) ([]byte, error) {
	if first == 0 && f.bits != 32 {
		b := make([]byte, f.rootBytes)
		return b, f.read(b, f.rootStart)
	}
	if first == 0 {
		first = f.rootClus
	}
	csize := f.spc * f.bps
	var out []byte
	for c, ok := first, true; ok; {
		if c < 2 || c >= f.clusters+2 {
			return nil, fmt.Errorf("FAT: directory cluster %d out of range", c)
		}
		if int64(len(out))+csize > int64(f.maxEntries)*32 {
			return nil, fmt.Errorf("FAT: directory of more than %d entries (a loop in the FAT?)", f.maxEntries)
		}
		b := make([]byte, csize)
		if err := f.read(b, f.dataStart+int64(c-2)*csize); err != nil {
			return nil, err
		}
		out = append(out, b...)
		var err error
		if c, ok, err = f.next(c); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// dirEntry is one file or directory.
type dirEntry struct {
	Name    string // the long name when there is one, else the 8.3 name
	Dir     bool
	Cluster uint32
	Size    uint32
}

// readDir lists the directory starting at cluster first (0: the root).
func (f *fatFS) readDir(first uint32) ([]dirEntry, error) {
	data, err := f.dirData(first)
	if err != nil {
		return nil, err
	}
	var out []dirEntry
	var long []uint16
	var longSum byte
	for i := 0; i+32 <= len(data); i += 32 {
		e := data[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xE5 {
			long = nil
			continue
		}
		attr := e[11]
		if attr&0x3F == 0x0F { // a long-name entry, last part first
			seq := e[0] & 0x1F
			if e[0]&0x40 != 0 {
				long, longSum = make([]uint16, 0, 13*int(seq)), e[13]
			}
			if long == nil || seq == 0 || e[13] != longSum {
				long = nil
				continue
			}
			var part []uint16
			for _, r := range [][2]int{{1, 11}, {14, 26}, {28, 32}} {
				for j := r[0]; j < r[1]; j += 2 {
					part = append(part, binary.LittleEndian.Uint16(e[j:]))
				}
			}
			long = append(part, long...)
			continue
		}
		name := ""
		if long != nil && checksum83(e[:11]) == longSum {
			if k := slices.Index(long, 0); k >= 0 {
				long = long[:k]
			}
			name = string(utf16.Decode(long))
		}
		long = nil
		if attr&0x08 != 0 { // volume label
			continue
		}
		if name == "" {
			base := strings.TrimRight(string(e[0:8]), " ")
			if e[0] == 0x05 {
				base = "\xE5" + base[1:]
			}
			ext := strings.TrimRight(string(e[8:11]), " ")
			// Windows NT's case flags: base and extension stored upper
			// case but meant lower case (mtools writes them).
			if e[12]&0x08 != 0 {
				base = strings.ToLower(base)
			}
			if e[12]&0x10 != 0 {
				ext = strings.ToLower(ext)
			}
			name = base
			if ext != "" {
				name += "." + ext
			}
		}
		if name == "." || name == ".." {
			continue
		}
		cl := uint32(binary.LittleEndian.Uint16(e[26:]))
		if f.bits == 32 {
			cl |= uint32(binary.LittleEndian.Uint16(e[20:])) << 16
		}
		out = append(out, dirEntry{Name: name, Dir: attr&0x10 != 0, Cluster: cl, Size: binary.LittleEndian.Uint32(e[28:])})
	}
	return out, nil
}

func checksum83(n []byte) byte {
	var s byte
	for _, c := range n {
		s = (s>>1 | s<<7) + c
	}
	return s
}

// lookup finds name (case-insensitive, as FAT is) in a directory.
func lookup(es []dirEntry, name string) (dirEntry, bool) {
	for _, e := range es {
		if strings.EqualFold(e.Name, name) {
			return e, true
		}
	}
	return dirEntry{}, false
}

// FallbackLoader is the removable-media path of an x86-64 loader.
const FallbackLoader = `\EFI\BOOT\BOOTX64.EFI`

// ErrNoLoader means the EFI system partition holds no x86-64 boot loader.
var ErrNoLoader = errors.New("no x86-64 boot loader on the EFI system partition")

// FindLoader returns the path of the boot loader on the FAT filesystem of
// the partition at off (size bytes) in r, with the case the filesystem
// stores: \EFI\BOOT\BOOTX64.EFI when there is one (what cloud images
// carry), else a vendor directory's shimx64.efi or grubx64.efi (the first
// vendor by name).
func FindLoader(r io.ReaderAt, off, size int64) (string, error) {
	f, err := openFAT(r, off, size)
	if err != nil {
		return "", err
	}
	root, err := f.readDir(0)
	if err != nil {
		return "", err
	}
	efi, ok := lookup(root, "EFI")
	if !ok || !efi.Dir {
		return "", fmt.Errorf("%w: no \\EFI directory", ErrNoLoader)
	}
	vendors, err := f.readDir(efi.Cluster)
	if err != nil {
		return "", err
	}
	file := func(dir dirEntry, names ...string) (string, bool, error) {
		es, err := f.readDir(dir.Cluster)
		if err != nil {
			return "", false, err
		}
		for _, n := range names {
			if e, ok := lookup(es, n); ok && !e.Dir && e.Size > 0 {
				return `\` + efi.Name + `\` + dir.Name + `\` + e.Name, true, nil
			}
		}
		return "", false, nil
	}
	if d, ok := lookup(vendors, "BOOT"); ok && d.Dir {
		if p, ok, err := file(d, "BOOTX64.EFI"); err != nil || ok {
			return p, err
		}
	}
	slices.SortFunc(vendors, func(a, b dirEntry) int { return strings.Compare(strings.ToUpper(a.Name), strings.ToUpper(b.Name)) })
	for _, d := range vendors {
		if !d.Dir || strings.EqualFold(d.Name, "BOOT") {
			continue
		}
		if p, ok, err := file(d, "shimx64.efi", "grubx64.efi"); err != nil || ok {
			return p, err
		}
	}
	return "", ErrNoLoader
}
