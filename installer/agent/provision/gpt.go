package provision

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// gptSectorSize returns the sector size the image's GPT was made for (the
// primary header sits at LBA 1), or 0 if first holds no GPT.
func gptSectorSize(first []byte) int64 {
	for _, ss := range []int64{512, 4096} {
		if int64(len(first)) >= 2*ss && string(first[ss:ss+8]) == "EFI PART" {
			return ss
		}
	}
	return 0
}

// gptMove is the result of relocating a GPT's backup to the disk's end.
type gptMove struct {
	backup    []byte // backup entries followed by the backup header sector
	backupOff int64  // where backup goes on the disk
	oldHeader int64  // byte offset of the image's own backup header
}

var errGPT = errors.New("image GPT is damaged")

// relocateGPT rewrites, in first (the image's held-back first bytes), the
// primary GPT header of an image made for sector size ss so that it
// describes a disk of diskSize bytes: the backup header goes to the last
// LBA, its entries just before it, and the last usable LBA grows to the
// sector before them (as `sgdisk -e` does); the protective MBR is widened
// to match. It returns the backup to write, or nil when the backup is
// already at the disk's end. CRCs of the header and entries are checked
// before and recomputed after.
func relocateGPT(first []byte, ss, diskSize int64) (*gptMove, error) {
	hdr := first[ss : 2*ss]
	le := binary.LittleEndian
	hsize := int64(le.Uint32(hdr[12:]))
	if hsize < 92 || hsize > ss {
		return nil, fmt.Errorf("%w: header size %d", errGPT, hsize)
	}
	if want := le.Uint32(hdr[16:]); want != headerCRC(hdr[:hsize]) {
		return nil, fmt.Errorf("%w: header CRC %08x does not match", errGPT, want)
	}
	lastLBA := diskSize/ss - 1
	altLBA := int64(le.Uint64(hdr[32:]))
	entLBA := int64(le.Uint64(hdr[72:]))
	n := int64(le.Uint32(hdr[80:]))
	esz := int64(le.Uint32(hdr[84:]))
	if esz < 128 || esz > 4096 || n < 1 || n > 4096 || entLBA < 2 {
		return nil, fmt.Errorf("%w: %d entries of %d bytes at LBA %d", errGPT, n, esz, entLBA)
	}
	entBytes := n * esz
	if (entLBA*ss)+entBytes > int64(len(first)) {
		return nil, fmt.Errorf("%w: partition entries beyond the first MiB", errGPT)
	}
	entries := first[entLBA*ss : entLBA*ss+entBytes]
	if want := le.Uint32(hdr[88:]); want != crc32.ChecksumIEEE(entries) {
		return nil, fmt.Errorf("%w: entries CRC %08x does not match", errGPT, want)
	}
	if altLBA == lastLBA {
		return nil, nil
	}
	if altLBA > lastLBA {
		return nil, fmt.Errorf("%w: backup header at LBA %d beyond the disk's last LBA %d", errGPT, altLBA, lastLBA)
	}
	entSectors := (entBytes + ss - 1) / ss
	for i := int64(0); i < n; i++ {
		last := int64(le.Uint64(entries[i*esz+40:]))
		if last > lastLBA-entSectors-1 {
			return nil, fmt.Errorf("%w: partition %d ends at LBA %d, past the disk's usable end", errGPT, i+1, last)
		}
	}
	le.PutUint64(hdr[32:], uint64(lastLBA))
	le.PutUint64(hdr[48:], uint64(lastLBA-entSectors-1))
	le.PutUint32(hdr[16:], headerCRC(hdr[:hsize]))

	backup := make([]byte, (entSectors+1)*ss)
	copy(backup, entries)
	bh := backup[entSectors*ss:]
	copy(bh, hdr[:hsize])
	le.PutUint64(bh[24:], uint64(lastLBA))
	le.PutUint64(bh[32:], 1)
	le.PutUint64(bh[72:], uint64(lastLBA-entSectors))
	le.PutUint32(bh[16:], headerCRC(bh[:hsize]))

	// Protective MBR: one partition of type 0xEE from LBA 1 to the end.
	if first[510] == 0x55 && first[511] == 0xaa && first[446+4] == 0xee {
		size := uint64(lastLBA)
		if size > 0xffffffff {
			size = 0xffffffff
		}
		le.PutUint32(first[446+12:], uint32(size))
	}
	return &gptMove{backup: backup, backupOff: (lastLBA - entSectors) * ss, oldHeader: altLBA * ss}, nil
}

// headerCRC is the CRC32 of a GPT header with its CRC field taken as 0.
func headerCRC(h []byte) uint32 {
	c := make([]byte, len(h))
	copy(c, h)
	binary.LittleEndian.PutUint32(c[16:], 0)
	return crc32.ChecksumIEEE(c)
}
