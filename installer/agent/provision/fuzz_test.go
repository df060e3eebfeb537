package provision

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"
)

// A disk's old contents are untrusted: whatever a previous owner left,
// probing it must not panic. Seeds: empty, an MBR with huge partitions, a
// GPT header with absurd entry counts.
func FuzzProbe(f *testing.F) {
	f.Add(make([]byte, 4096))
	mbr := make([]byte, 1024)
	mbr[510], mbr[511] = 0x55, 0xaa
	mbr[446+4] = 0x83
	binary.LittleEndian.PutUint32(mbr[446+8:], 0xffffffff)
	binary.LittleEndian.PutUint32(mbr[446+12:], 0xffffffff)
	f.Add(mbr)
	gpt := make([]byte, 8192)
	copy(gpt[512:], "EFI PART")
	binary.LittleEndian.PutUint64(gpt[512+72:], 1<<62)
	binary.LittleEndian.PutUint32(gpt[512+80:], 128)
	binary.LittleEndian.PutUint32(gpt[512+84:], 128)
	f.Add(gpt)
	f.Fuzz(func(t *testing.T, b []byte) {
		s := probe(bytes.NewReader(b), int64(len(b)))
		_ = s.String()
	})
}

// relocateGPT reads the verified image's first MiB; when it succeeds the
// headers it leaves must carry valid CRCs.
func FuzzRelocateGPT(f *testing.F) {
	f.Add(validGPT(), int64(64<<20))
	f.Add(validGPT(), int64(1<<20))
	f.Fuzz(func(t *testing.T, first []byte, diskSize int64) {
		if len(first) > MiB || diskSize < 0 {
			return
		}
		ss := gptSectorSize(first)
		if ss == 0 {
			return
		}
		mv, err := relocateGPT(first, ss, diskSize)
		if err != nil || mv == nil {
			return
		}
		hs := int64(binary.LittleEndian.Uint32(first[ss+12:]))
		if binary.LittleEndian.Uint32(first[ss+16:]) != headerCRC(first[ss:ss+hs]) {
			t.Fatal("primary header CRC wrong after relocation")
		}
		bh := mv.backup[int64(len(mv.backup))-ss:]
		if binary.LittleEndian.Uint32(bh[16:]) != headerCRC(bh[:hs]) {
			t.Fatal("backup header CRC wrong")
		}
		if mv.backupOff+int64(len(mv.backup)) != diskSize/ss*ss {
			t.Fatalf("backup at %d+%d does not end at the disk's last sector (%d)", mv.backupOff, len(mv.backup), diskSize)
		}
	})
}

// validGPT is a 1 MiB image start with a protective MBR and a GPT of 128
// entries (one partition, LBA 2048-4095) for a 4 MiB disk.
func validGPT() []byte {
	b := make([]byte, 64<<10)
	b[510], b[511] = 0x55, 0xaa
	b[446+4] = 0xee
	le := binary.LittleEndian
	h := b[512:]
	copy(h, "EFI PART")
	le.PutUint32(h[8:], 0x00010000)
	le.PutUint32(h[12:], 92)
	le.PutUint64(h[24:], 1)
	le.PutUint64(h[32:], 8191)
	le.PutUint64(h[40:], 34)
	le.PutUint64(h[48:], 8158)
	le.PutUint64(h[72:], 2)
	le.PutUint32(h[80:], 128)
	le.PutUint32(h[84:], 128)
	e := b[1024 : 1024+128*128]
	copy(e[0:16], "0123456789abcdef")
	le.PutUint64(e[32:], 2048)
	le.PutUint64(e[40:], 4095)
	le.PutUint32(h[88:], crc32.ChecksumIEEE(e))
	le.PutUint32(h[16:], headerCRC(h[:92]))
	return b
}

func TestRelocateGPT(t *testing.T) {
	first := validGPT()
	mv, err := relocateGPT(first, 512, 64<<20)
	if err != nil || mv == nil {
		t.Fatalf("relocateGPT: %v, %v", mv, err)
	}
	le := binary.LittleEndian
	const last = 64<<20/512 - 1
	if alt, usable := le.Uint64(first[512+32:]), le.Uint64(first[512+48:]); alt != last || usable != last-33 {
		t.Errorf("primary header: alternate LBA %d, last usable %d; want %d, %d", alt, usable, last, last-33)
	}
	if mv.backupOff != (last-32)*512 || len(mv.backup) != 33*512 || mv.oldHeader != 8191*512 {
		t.Errorf("backup at %d (%d bytes), old header at %d", mv.backupOff, len(mv.backup), mv.oldHeader)
	}
	bh := mv.backup[32*512:]
	if le.Uint64(bh[24:]) != last || le.Uint64(bh[32:]) != 1 || le.Uint64(bh[72:]) != last-32 {
		t.Errorf("backup header my/alternate/entries LBA %d/%d/%d", le.Uint64(bh[24:]), le.Uint64(bh[32:]), le.Uint64(bh[72:]))
	}
	if size := le.Uint32(first[446+12:]); size != last {
		t.Errorf("protective MBR size %d, want %d", size, last)
	}
	// Already at the end: nothing to do. Corrupt CRC: refused.
	if mv, err := relocateGPT(first, 512, 64<<20); err != nil || mv != nil {
		t.Errorf("second relocation: %v, %v", mv, err)
	}
	bad := validGPT()
	bad[1024+50] ^= 1
	if _, err := relocateGPT(bad, 512, 64<<20); err == nil {
		t.Error("entries with a wrong CRC accepted")
	}
}
