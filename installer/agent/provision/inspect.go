package provision

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Signature is one thing found on a disk that says it is in use.
type Signature struct {
	Type   string // "gpt", "dos", "ext4", "xfs", "btrfs", "vfat", "swap", "LVM2_member", "linux_raid_member", ...
	Where  string // "disk" or "partition N"
	Offset int64  // byte offset on the disk of the magic
}

func (s Signature) String() string {
	return fmt.Sprintf("%s on %s at %d", s.Type, s.Where, s.Offset)
}

// Signatures is what Inspect found on a disk.
type Signatures struct {
	Found []Signature
	// Partitions are the kernel's partitions of the disk and Holders the
	// devices stacked on it (dm, md), from sysfs.
	Partitions []string
	Holders    []string
	// Busy lists mounts and swap on the disk or its partitions.
	Busy []string
	// partRanges are the partitions read from the tables found, as byte
	// ranges, for Wipe.
	partRanges [][2]int64
}

// Empty reports whether the disk holds nothing: no signature, partition
// or holder.
func (s Signatures) Empty() bool {
	return len(s.Found) == 0 && len(s.Partitions) == 0 && len(s.Holders) == 0 && len(s.Busy) == 0
}

func (s Signatures) String() string {
	if s.Empty() {
		return "empty"
	}
	var parts []string
	for _, f := range s.Found {
		parts = append(parts, f.String())
	}
	if len(s.Partitions) > 0 {
		parts = append(parts, "partitions "+strings.Join(s.Partitions, " "))
	}
	if len(s.Holders) > 0 {
		parts = append(parts, "holders "+strings.Join(s.Holders, " "))
	}
	if len(s.Busy) > 0 {
		parts = append(parts, "in use: "+strings.Join(s.Busy, ", "))
	}
	return strings.Join(parts, "; ")
}

// Inspect reads dev (a block device, or a disk image file) and reports the
// partition tables, filesystems, LVM and RAID signatures it holds, the
// partitions and holders sysfs shows for it, and its mounts.
func Inspect(dev string) (Signatures, error) {
	return Host{SysRoot: "/sys", DevRoot: "/dev"}.Inspect(dev)
}

// Inspect is the package function on h's sysfs.
func (h Host) Inspect(dev string) (Signatures, error) {
	f, err := os.Open(dev)
	if err != nil {
		return Signatures{}, fmt.Errorf("inspect %s: %w", dev, err)
	}
	defer f.Close()
	size, err := deviceSize(f)
	if err != nil {
		return Signatures{}, fmt.Errorf("inspect %s: %w", dev, err)
	}
	s := probe(f, size)
	if dir, ok := h.sysDir(f); ok {
		s.Holders = dirNames(filepath.Join(dir, "holders"))
		devnums := []string{sysText(dir, "dev")}
		names := []string{filepath.Base(dir)}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			if _, err := os.Stat(filepath.Join(p, "partition")); err == nil {
				s.Partitions = append(s.Partitions, e.Name())
				s.Holders = append(s.Holders, dirNames(filepath.Join(p, "holders"))...)
				devnums = append(devnums, sysText(p, "dev"))
				names = append(names, e.Name())
			}
		}
		s.Busy = busy(devnums, names)
	}
	return s, nil
}

// sysDir finds the sysfs directory of the block device f is open on.
func (h Host) sysDir(f *os.File) (string, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", false
	}
	link := filepath.Join(h.SysRoot, "dev/block", fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	dir, err := filepath.EvalSymlinks(link)
	return dir, err == nil
}

// busy lists the mounts (from /proc/self/mountinfo, by device number) and
// swap areas (from /proc/swaps, by name) on the given devices.
func busy(devnums, names []string) []string {
	var out []string
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) > 4 && contains(devnums, fields[2]) {
				out = append(out, fmt.Sprintf("%s mounted on %q", fields[2], fields[4]))
			}
		}
		f.Close()
	}
	if data, err := os.ReadFile("/proc/swaps"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			fields := strings.Fields(line)
			if len(fields) > 0 && contains(names, filepath.Base(fields[0])) {
				out = append(out, fields[0]+" is swap")
			}
		}
	}
	return out
}

// deviceSize is a block device's size in bytes (or a file's).
func deviceSize(f *os.File) (int64, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", f.Name(), err)
	}
	return size, nil
}

func readAt(r io.ReaderAt, off int64, n int) []byte {
	if off < 0 {
		return nil
	}
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil {
		return nil
	}
	return b
}

func has(r io.ReaderAt, off int64, magic string) bool {
	b := readAt(r, off, len(magic))
	return b != nil && string(b) == magic
}

// probe looks for partition tables on the whole disk and for content
// signatures on the disk and in every partition those tables list.
func probe(r io.ReaderAt, size int64) Signatures {
	var s Signatures
	add := func(typ, where string, off int64) {
		s.Found = append(s.Found, Signature{Type: typ, Where: where, Offset: off})
	}
	for _, ss := range []int64{512, 4096} {
		if has(r, ss, "EFI PART") {
			add("gpt", "disk", ss)
			s.partRanges = append(s.partRanges, gptPartitions(r, ss)...)
			break
		}
	}
	for _, ss := range []int64{512, 4096} {
		if size >= 2*ss && has(r, size-ss, "EFI PART") {
			add("gpt (backup header)", "disk", size-ss)
			break
		}
	}
	fsType := probeContent(r, 0, size)
	if mbr := readAt(r, 0, 512); mbr != nil && mbr[510] == 0x55 && mbr[511] == 0xaa && fsType == "" {
		var dosParts [][2]int64
		for i := 0; i < 4; i++ {
			e := mbr[446+16*i:]
			typ := e[4]
			start := int64(binary.LittleEndian.Uint32(e[8:])) * 512
			n := int64(binary.LittleEndian.Uint32(e[12:])) * 512
			if typ != 0 && n > 0 {
				if typ != 0xee {
					dosParts = append(dosParts, [2]int64{start, start + n})
				}
			}
		}
		switch {
		case len(dosParts) > 0:
			add("dos", "disk", 510)
			s.partRanges = append(s.partRanges, dosParts...)
		case len(s.partRanges) == 0 && !contains(types(s.Found), "gpt"):
			add("dos (boot sector)", "disk", 510)
		}
	}
	if fsType != "" {
		add(fsType, "disk", 0)
	}
	for i, pr := range s.partRanges {
		if pr[0] >= size || pr[1] <= pr[0] {
			continue
		}
		end := min(pr[1], size)
		if t := probeContent(io.NewSectionReader(r, pr[0], end-pr[0]), 0, end-pr[0]); t != "" {
			add(t, "partition "+strconv.Itoa(i+1), pr[0])
		}
	}
	return s
}

func types(sigs []Signature) []string {
	var out []string
	for _, s := range sigs {
		out = append(out, s.Type)
	}
	return out
}

// gptPartitions reads the partition entries of the GPT whose header is at
// byte hdr (the sector size), as byte ranges.
func gptPartitions(r io.ReaderAt, ss int64) [][2]int64 {
	h := readAt(r, ss, 92)
	if h == nil {
		return nil
	}
	entLBA := int64(binary.LittleEndian.Uint64(h[72:]))
	n := int64(binary.LittleEndian.Uint32(h[80:]))
	esz := int64(binary.LittleEndian.Uint32(h[84:]))
	if n > 1024 || esz < 128 || esz > 4096 {
		return nil
	}
	ents := readAt(r, entLBA*ss, int(n*esz))
	if ents == nil {
		return nil
	}
	var out [][2]int64
	for i := int64(0); i < n; i++ {
		e := ents[i*esz:]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		first := int64(binary.LittleEndian.Uint64(e[32:]))
		last := int64(binary.LittleEndian.Uint64(e[40:]))
		out = append(out, [2]int64{first * ss, (last + 1) * ss})
	}
	return out
}

// probeContent names the filesystem, volume manager or RAID signature at
// the start (or, for RAID 0.90/1.0, the end) of a device of size bytes,
// or "".
func probeContent(r io.ReaderAt, base, size int64) string {
	le16 := func(off int64) uint16 {
		if b := readAt(r, base+off, 2); b != nil {
			return binary.LittleEndian.Uint16(b)
		}
		return 0
	}
	le32 := func(off int64) uint32 {
		if b := readAt(r, base+off, 4); b != nil {
			return binary.LittleEndian.Uint32(b)
		}
		return 0
	}
	const mdMagic = 0xa92b4efc
	switch {
	case le16(0x438) == 0xef53:
		compat, incompat := le32(0x45c), le32(0x460)
		switch {
		case incompat&0x2c0 != 0: // extents, 64bit, flex_bg
			return "ext4"
		case compat&0x4 != 0: // has_journal
			return "ext3"
		}
		return "ext2"
	case has(r, base, "XFSB"):
		return "xfs"
	case has(r, base+0x10040, "_BHRfS_M"):
		return "btrfs"
	case has(r, base, "LUKS\xba\xbe"):
		return "crypto_LUKS"
	case has(r, base+3, "NTFS    "):
		return "ntfs"
	case has(r, base+0x36, "FAT1") || has(r, base+0x52, "FAT32   "):
		return "vfat"
	case has(r, base+4096-10, "SWAPSPACE2") || has(r, base+4096-10, "SWAP-SPACE") || has(r, base+65536-10, "SWAPSPACE2"):
		return "swap"
	case has(r, base+0x8001, "CD001"):
		return "iso9660"
	case has(r, base, "hsqs"):
		return "squashfs"
	case le32(4096) == mdMagic || le32(0) == mdMagic:
		return "linux_raid_member"
	}
	for sector := int64(0); sector < 4; sector++ {
		if has(r, base+sector*512, "LABELONE") && has(r, base+sector*512+24, "LVM2 001") {
			return "LVM2_member"
		}
	}
	if size >= 128*1024 {
		v10 := ((size >> 9) - 16) &^ 7 * 512 // md 1.0: 8 KiB from the end, 4 KiB aligned
		v090 := size&^(65536-1) - 65536
		if le32(v10) == mdMagic || le32(v090) == mdMagic {
			return "linux_raid_member"
		}
	}
	return ""
}
