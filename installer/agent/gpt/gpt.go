// Package gpt edits the GUID partition table of a disk that has just been
// written with an OS image: it moves the backup table to the disk's end and
// appends one partition in the last free MiBs (where the cloud-init seed
// goes, so that growpart can still grow the image's root partition up to
// it). It reads and checks the primary table and never guesses: a table
// that does not check out is an error.
package gpt

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

const (
	sector    = 512
	mib       = 1 << 20
	headerLen = 92
)

// Disk is what the editor needs of a block device (an *os.File will do).
type Disk interface {
	io.ReaderAt
	io.WriterAt
}

// Partition is the appended partition.
type Partition struct {
	Number int   // 1-based entry number (as in /dev/vdaN)
	Offset int64 // first byte
	Size   int64 // bytes
}

type header struct {
	raw         []byte
	entriesLBA  uint64
	numEntries  uint32
	entrySize   uint32
	firstUsable uint64
}

// ErrNoTable is returned for a disk without a valid primary GPT.
var ErrNoTable = errors.New("no valid GPT")

func readHeader(d Disk) (header, error) {
	b := make([]byte, sector)
	if _, err := d.ReadAt(b, sector); err != nil {
		return header{}, fmt.Errorf("read GPT header: %w", err)
	}
	if string(b[:8]) != "EFI PART" {
		return header{}, ErrNoTable
	}
	size := binary.LittleEndian.Uint32(b[12:])
	if size < headerLen || size > sector {
		return header{}, fmt.Errorf("%w: header size %d", ErrNoTable, size)
	}
	want := binary.LittleEndian.Uint32(b[16:])
	c := bytes.Clone(b[:size])
	binary.LittleEndian.PutUint32(c[16:], 0)
	if crc32.ChecksumIEEE(c) != want {
		return header{}, fmt.Errorf("%w: header checksum", ErrNoTable)
	}
	h := header{
		raw:         b[:size],
		firstUsable: binary.LittleEndian.Uint64(b[40:]),
		entriesLBA:  binary.LittleEndian.Uint64(b[72:]),
		numEntries:  binary.LittleEndian.Uint32(b[80:]),
		entrySize:   binary.LittleEndian.Uint32(b[84:]),
	}
	if binary.LittleEndian.Uint64(b[24:]) != 1 || h.entrySize < 128 || h.entrySize%8 != 0 ||
		h.numEntries == 0 || uint64(h.numEntries)*uint64(h.entrySize) > 1<<20 || h.entriesLBA < 2 {
		return header{}, fmt.Errorf("%w: implausible header", ErrNoTable)
	}
	return h, nil
}

// AppendPartition adds a partition of size bytes (rounded up to whole MiB)
// ending in the disk's last whole MiB before the backup table, with the
// given type GUID and name, in the first unused entry; then writes the
// primary and backup tables for a disk of diskSize bytes (so a backup table
// left where a smaller image ended moves to the end) and the protective
// MBR's size. The new partition must not overlap any other.
func AppendPartition(d Disk, diskSize, size int64, typeGUID, name string) (Partition, error) {
	tg, err := parseGUID(typeGUID)
	if err != nil {
		return Partition{}, err
	}
	if len(utf16.Encode([]rune(name))) > 36 || size <= 0 || diskSize%sector != 0 {
		return Partition{}, fmt.Errorf("append partition: bad name, size or disk size")
	}
	h, err := readHeader(d)
	if err != nil {
		return Partition{}, err
	}
	entries := make([]byte, int(h.numEntries)*int(h.entrySize))
	if _, err := d.ReadAt(entries, int64(h.entriesLBA)*sector); err != nil {
		return Partition{}, fmt.Errorf("read GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(h.raw[88:]) {
		return Partition{}, fmt.Errorf("%w: entries checksum", ErrNoTable)
	}
	sectors := uint64(diskSize / sector)
	entrySectors := (uint64(len(entries)) + sector - 1) / sector
	if sectors < 2*entrySectors+2*mib/sector+3 {
		return Partition{}, fmt.Errorf("append partition: disk of %d bytes too small", diskSize)
	}
	lastUsable := sectors - 2 - entrySectors
	size = (size + mib - 1) / mib * mib
	end := (lastUsable + 1) / (mib / sector) * (mib / sector) // exclusive, MiB aligned
	start := end - uint64(size/sector)
	if start < h.firstUsable || start >= end {
		return Partition{}, fmt.Errorf("append partition: %d bytes do not fit", size)
	}
	free := -1
	for i := 0; i < int(h.numEntries); i++ {
		e := entries[i*int(h.entrySize):][:h.entrySize]
		if isZero(e[:16]) {
			if free < 0 {
				free = i
			}
			continue
		}
		first, last := binary.LittleEndian.Uint64(e[32:]), binary.LittleEndian.Uint64(e[40:])
		if last >= start && first < end {
			return Partition{}, fmt.Errorf("append partition: sectors %d-%d overlap partition %d (%d-%d)", start, end-1, i+1, first, last)
		}
		if last > lastUsable {
			return Partition{}, fmt.Errorf("append partition: partition %d ends past the disk's usable end", i+1)
		}
	}
	if free < 0 {
		return Partition{}, fmt.Errorf("append partition: no free entry among %d", h.numEntries)
	}
	e := entries[free*int(h.entrySize):][:h.entrySize]
	copy(e[0:16], tg[:])
	if _, err := rand.Read(e[16:32]); err != nil {
		return Partition{}, err
	}
	e[16+7] = e[16+7]&0x0F | 0x40 // version 4, stored mixed-endian
	e[16+8] = e[16+8]&0x3F | 0x80
	binary.LittleEndian.PutUint64(e[32:], start)
	binary.LittleEndian.PutUint64(e[40:], end-1)
	binary.LittleEndian.PutUint64(e[48:], 0)
	for i, u := range utf16.Encode([]rune(name)) {
		binary.LittleEndian.PutUint16(e[56+2*i:], u)
	}
	entriesCRC := crc32.ChecksumIEEE(entries)

	backupEntries := sectors - 1 - entrySectors
	write := func(myLBA, altLBA, entriesLBA uint64) error {
		b := make([]byte, sector)
		copy(b, h.raw)
		le := binary.LittleEndian
		le.PutUint64(b[24:], myLBA)
		le.PutUint64(b[32:], altLBA)
		le.PutUint64(b[48:], lastUsable)
		le.PutUint64(b[72:], entriesLBA)
		le.PutUint32(b[88:], entriesCRC)
		le.PutUint32(b[16:], 0)
		le.PutUint32(b[16:], crc32.ChecksumIEEE(b[:len(h.raw)]))
		if _, err := d.WriteAt(entries, int64(entriesLBA)*sector); err != nil {
			return fmt.Errorf("write GPT entries at LBA %d: %w", entriesLBA, err)
		}
		if _, err := d.WriteAt(b, int64(myLBA)*sector); err != nil {
			return fmt.Errorf("write GPT header at LBA %d: %w", myLBA, err)
		}
		return nil
	}
	// Backup first: until the primary is rewritten, the old primary still
	// describes a consistent (smaller) disk.
	if err := write(sectors-1, 1, backupEntries); err != nil {
		return Partition{}, err
	}
	if err := write(1, sectors-1, h.entriesLBA); err != nil {
		return Partition{}, err
	}
	mbr := make([]byte, sector)
	if _, err := d.ReadAt(mbr, 0); err != nil {
		return Partition{}, fmt.Errorf("read protective MBR: %w", err)
	}
	if mbr[510] == 0x55 && mbr[511] == 0xAA && mbr[446+4] == 0xEE {
		n := min(sectors-1, 0xFFFFFFFF)
		binary.LittleEndian.PutUint32(mbr[446+12:], uint32(n))
		if _, err := d.WriteAt(mbr[446:462], 446); err != nil {
			return Partition{}, fmt.Errorf("write protective MBR: %w", err)
		}
	}
	return Partition{Number: free + 1, Offset: int64(start) * sector, Size: size}, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// parseGUID reads the textual form into GPT's mixed-endian bytes.
func parseGUID(s string) ([16]byte, error) {
	var g [16]byte
	parts := strings.Split(s, "-")
	if len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 || len(parts[3]) != 4 || len(parts[4]) != 12 {
		return g, fmt.Errorf("GUID %q: want 8-4-4-4-12 hex digits", s)
	}
	raw, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil {
		return g, fmt.Errorf("GUID %q: %w", s, err)
	}
	copy(g[:], raw)
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	return g, nil
}

// ESPType is the type GUID of an EFI system partition.
const ESPType = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

// Entry is one used entry of the primary partition table.
type Entry struct {
	Number   int    // 1-based entry number (as in /dev/vdaN and UEFI's HD() node)
	Type     string // type GUID, upper case
	UniqueID [16]byte
	FirstLBA uint64
	LastLBA  uint64
	Name     string
}

// GUID returns the entry's unique GUID in its textual form (lower case),
// as efibootmgr and blkid print it.
func (e Entry) GUID() string { return strings.ToLower(formatGUID(e.UniqueID)) }

// Partitions reads the used entries of the primary table, checking the
// header's and the entries' checksums.
func Partitions(d io.ReaderAt) ([]Entry, error) {
	h, err := readHeader(readerOnly{d})
	if err != nil {
		return nil, err
	}
	entries := make([]byte, int(h.numEntries)*int(h.entrySize))
	if _, err := d.ReadAt(entries, int64(h.entriesLBA)*sector); err != nil {
		return nil, fmt.Errorf("read GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(h.raw[88:]) {
		return nil, fmt.Errorf("%w: entries checksum", ErrNoTable)
	}
	var out []Entry
	for i := 0; i < int(h.numEntries); i++ {
		e := entries[i*int(h.entrySize):][:h.entrySize]
		if isZero(e[:16]) {
			continue
		}
		var tg [16]byte
		copy(tg[:], e[:16])
		en := Entry{Number: i + 1, Type: formatGUID(tg), FirstLBA: binary.LittleEndian.Uint64(e[32:]), LastLBA: binary.LittleEndian.Uint64(e[40:])}
		copy(en.UniqueID[:], e[16:32])
		if en.LastLBA < en.FirstLBA {
			return nil, fmt.Errorf("%w: partition %d ends before it starts", ErrNoTable, en.Number)
		}
		var name []uint16
		for j := 56; j+1 < len(e) && j < 56+72; j += 2 {
			u := binary.LittleEndian.Uint16(e[j:])
			if u == 0 {
				break
			}
			name = append(name, u)
		}
		en.Name = string(utf16.Decode(name))
		out = append(out, en)
	}
	return out, nil
}

// readerOnly lets readHeader take a disk opened for reading only.
type readerOnly struct{ io.ReaderAt }

func (readerOnly) WriteAt([]byte, int64) (int, error) {
	return 0, errors.New("gpt: read-only disk")
}

// formatGUID is parseGUID's inverse: GPT's mixed-endian bytes as text
// (upper case).
func formatGUID(g [16]byte) string {
	return fmt.Sprintf("%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-%02X%02X%02X%02X%02X%02X",
		g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15])
}
