package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ustarHeader writes what archive/tar writes for the same fields, so
// bundles written before it (with archive/tar) read the same.
func TestHeaderIsArchiveTars(t *testing.T) {
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	long := "charts/" + strings.Repeat("c", 90) + "/" + strings.Repeat("n", 99)
	for _, c := range []struct {
		name string
		size int64
	}{
		{"oci-layout", 30}, {"blobs/sha256/" + strings.Repeat("ab", 32), 3 << 20}, {strings.Repeat("x", 100), 0},
		{long, 511}, {"files/" + strings.Repeat("f", 94), maxOctalSize},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: c.name, Size: c.size, Mode: 0o644, ModTime: mtime, Uname: "root", Gname: "root"}); err != nil {
			t.Fatal(err)
		}
		got, err := ustarHeader(c.name, c.size, mtime.Unix())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, buf.Bytes()) {
			t.Errorf("%s (%d bytes): header differs from archive/tar's at byte %d", c.name, c.size, firstDiff(got, buf.Bytes()))
		}
	}
	// Past 8 GiB the size is written base-256, and read back right.
	h, err := ustarHeader("files/disk.img", 1<<40+3, mtime.Unix())
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := tar.NewReader(bytes.NewReader(h)).Next()
	if err != nil || hdr.Size != 1<<40+3 || hdr.Name != "files/disk.img" || hdr.Mode != 0o644 {
		t.Fatalf("a header of 1 TiB: %+v %v", hdr, err)
	}
	// What a header cannot carry as is, is refused.
	for _, name := range []string{"files/" + strings.Repeat("f", 101), strings.Repeat("d", 160) + "/f", "files/caf\xc3\xa9", "files/a\x1b[2Jb", "files/a\\b"} {
		if _, err := ustarHeader(name, 1, 0); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%q: %v", name, err)
		}
	}
}

// A bundle extracts with tar as a plain tree of regular files, mode 0644,
// owned by root: nothing else comes out of it.
func TestExtractsWithTar(t *testing.T) {
	bin, err := exec.LookPath("tar")
	if err != nil {
		t.Fatal("tar not found: apt-get install tar")
	}
	tb := writeTestBundle(t, t.TempDir(), WriterOptions{}, nil)
	out, err := exec.Command(bin, "--numeric-owner", "-tvf", tb.path).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -t: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 7 {
		t.Fatalf("tar lists %d entries, want 7:\n%s", len(lines), out)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "-rw-r--r-- 0/0 ") {
			t.Errorf("tar -tv: %s", l)
		}
	}
}

// Every byte of a bundle, changed, is refused by opening it or by Verify:
// headers, padding, end-of-archive blocks, metadata, signature, trailer,
// contents, and the program a self-contained bundle is appended to.
func TestEveryByteIsCovered(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "airlock")
	os.WriteFile(exe, bytes.Repeat([]byte("\x7fELF-prog"), 70), 0o755)
	for _, c := range []struct {
		name string
		opts WriterOptions
	}{{"bundle", WriterOptions{}}, {"self-contained executable", WriterOptions{Executable: exe}}} {
		t.Run(c.name, func(t *testing.T) {
			path, pub := writeSmallBundleAt(t, filepath.Join(t.TempDir(), "s.bundle"), c.opts)
			if err := openVerify(path, pub); err != nil {
				t.Fatalf("the undamaged bundle: %v", err)
			}
			raw, _ := os.ReadFile(path)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			classes := map[string]int{}
			for off := range raw {
				mask := byte(0x01) // the lowest bit of even bytes, the highest of odd ones
				if off%2 == 1 {
					mask = 0x80
				}
				f.WriteAt([]byte{raw[off] ^ mask}, int64(off))
				err := openVerify(path, pub)
				f.WriteAt(raw[off:off+1], int64(off))
				if err == nil {
					t.Fatalf("byte %d of %d xor %#x: accepted", off, len(raw), mask)
				}
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrSignature) && !errors.Is(err, ErrNotBundle) {
					t.Fatalf("byte %d xor %#x: %v, want a corrupt, signature or not-a-bundle error", off, mask, err)
				}
				classes[errClass(err)]++
			}
			t.Logf("%d bytes, each changed, all refused: %v", len(raw), classes)
		})
	}
}

func errClass(err error) string {
	s := err.Error()
	s = s[strings.Index(s, ".bundle")+1:] // not the test's directory name
	for _, k := range []string{"archive header", "padding", "end-of-archive", "trailer", "signature", "executable", "digest", "not an airlock bundle"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	return "other"
}

// openVerify opens with the key and verifies every digest.
func openVerify(path string, pub ed25519.PublicKey) error {
	b, err := Open(path, Trust{PublicKey: pub})
	if err != nil {
		return err
	}
	defer b.Close()
	_, err = b.Verify(context.Background(), VerifyOptions{Workers: 1})
	return err
}

// writeSmallBundleAt writes a complete bundle of a few KiB at path.
func writeSmallBundleAt(t testing.TB, path string, opts WriterOptions) (string, ed25519.PublicKey) {
	pub, priv := newKey(t)
	opts.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	w, err := Create(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), "")
	d, _ := w.AddBytes("blobs/sha256/"+digestOf([]byte("{}"))[7:], []byte("{}"), "application/vnd.oci.image.manifest.v1+json")
	w.AddBytes("files/vmlinuz", bytes.Repeat([]byte("k"), 512), "")
	if _, err := w.Finish(Metadata{Name: "small", Images: []Image{{Repository: "docker.io/library/x", Tag: "1", Digest: d}}}, priv); err != nil {
		t.Fatal(err)
	}
	return path, pub
}

// headerAt returns the offset of the archive header of the entry at path.
func headerAt(t testing.TB, raw []byte, path string) int {
	t.Helper()
	for off := 0; off+blockSize <= len(raw); off += blockSize {
		if h, err := tar.NewReader(bytes.NewReader(raw[off : off+blockSize])).Next(); err == nil && h.Name == path {
			return off
		}
	}
	t.Fatalf("no header for %s", path)
	return 0
}

// setField writes value into a header field and fixes the checksum, as an
// attacker who knows tar would.
func setField(raw []byte, hdr, field, size int, value string) {
	b := raw[hdr : hdr+blockSize]
	copy(b[field:field+size], append([]byte(value), make([]byte, size)...)[:size])
	fixChecksum(b)
}

func fixChecksum(b []byte) {
	var sum int64
	for i, c := range b[:blockSize] {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
	}
	octal(b[148:155], sum)
	b[155] = ' '
}

// paxHeader returns a PAX extended header (header block and records) that
// sets key to value for the next entry, as tar writes it.
func paxHeader(key, value string) []byte {
	rec := " " + key + "=" + value + "\n"
	n := len(rec)
	for len(strconv.Itoa(n))+len(rec) != n {
		n = len(strconv.Itoa(n)) + len(rec)
	}
	rec = strconv.Itoa(n) + rec
	h, _ := ustarHeader("PaxHeaders.0/x", int64(len(rec)), 0)
	h[156] = 'x'
	fixChecksum(h)
	return append(h, append([]byte(rec), make([]byte, padding(int64(len(rec))))...)...)
}

// insert puts extra at off and moves the trailer's offsets past it, and
// its total, as an attacker would to keep the trailer consistent.
func insert(raw []byte, off int, extra []byte) []byte {
	out := append(append(append([]byte(nil), raw[:off]...), extra...), raw[off:]...)
	tr := out[len(out)-trailerSize:]
	for _, i := range []int{0, 2, 4} { // metadata offset, signature offset, total
		if v := binary.BigEndian.Uint64(tr[16+8*i:]); i == 4 || v >= uint64(off) {
			binary.BigEndian.PutUint64(tr[16+8*i:], v+uint64(len(extra)))
		}
	}
	return out
}

// hostileBundles are a valid bundle changed the ways an attacker would
// change it so that archive/tar still reads it: each must be refused.
func hostileBundles(t testing.TB, raw []byte) map[string][]byte {
	k := headerAt(t, raw, "files/vmlinuz")
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), raw...)) }
	field := func(at, size int, v string) []byte {
		return edit(func(b []byte) []byte { setField(b, k, at, size, v); return b })
	}
	trailerField := func(i int, delta int64) []byte {
		return edit(func(b []byte) []byte {
			tr := b[len(b)-trailerSize:]
			binary.BigEndian.PutUint64(tr[16+8*i:], uint64(int64(binary.BigEndian.Uint64(tr[16+8*i:]))+delta))
			return b
		})
	}
	eoa := len(raw) - trailerSize - endOfArchive
	return map[string][]byte{
		"setuid":           field(100, 8, "0004755"),
		"setgid":           field(100, 8, "0002644"),
		"sticky":           field(100, 8, "0001644"),
		"executable":       field(100, 8, "0000755"),
		"world-writable":   field(100, 8, "0000666"),
		"uid":              field(108, 8, "0001750"),
		"gid":              field(116, 8, "0000012"),
		"mtime":            field(136, 12, "00000000001"),
		"user name":        field(265, 32, "mallory"),
		"group name":       field(297, 32, "wheel"),
		"symlink":          edit(func(b []byte) []byte { b[k+156] = '2'; setField(b, k, 157, 100, "/etc/shadow"); return b }),
		"hard link":        edit(func(b []byte) []byte { b[k+156] = '1'; setField(b, k, 157, 100, "oci-layout"); return b }),
		"directory":        edit(func(b []byte) []byte { b[k+156] = '5'; fixChecksum(b[k:]); return b }),
		"character device": edit(func(b []byte) []byte { b[k+156] = '3'; setField(b, k, 329, 8, "0000001"); return b }),
		"fifo":             edit(func(b []byte) []byte { b[k+156] = '6'; fixChecksum(b[k:]); return b }),
		"contiguous file":  edit(func(b []byte) []byte { b[k+156] = '7'; fixChecksum(b[k:]); return b }),
		"gnu magic":        field(257, 8, "ustar  "),
		"v7 header":        field(257, 8, ""),
		"name prefix":      field(345, 155, "x"),
		"octal with space": field(100, 8, "000644 "),
		"base-256 mtime": edit(func(b []byte) []byte {
			m := b[k+136 : k+148]
			v, _ := strconv.ParseInt(strings.TrimRight(string(m), "\x00"), 8, 64)
			clear(m)
			m[0] = 0x80
			binary.BigEndian.PutUint64(m[4:], uint64(v))
			fixChecksum(b[k:])
			return b
		}),
		"pax path":        insert(raw, k, paxHeader("path", "files/vmlinuz")),
		"pax mode":        insert(raw, k, paxHeader("SCHILY.xattr.security.capability", "x")),
		"pax before meta": insert(raw, headerAt(t, raw, MetadataPath), paxHeader("comment", "hi")),
		"extra entry at the end": insert(raw, eoa, func() []byte {
			h, _ := ustarHeader("files/extra", 3, 0)
			return append(h, append([]byte("abc"), make([]byte, 509)...)...)
		}()),
		"extra entry in the middle": insert(raw, k, func() []byte {
			h, _ := ustarHeader("files/evil", 1, 0)
			return append(h, append([]byte("x"), make([]byte, 511)...)...)
		}()),
		"reordered entries": edit(func(b []byte) []byte {
			m := headerAt(t, b, "oci-layout")
			n := headerAt(t, b, "blobs/sha256/"+digestOf([]byte("{}"))[7:])
			// Both take one header and one content block: swap them.
			x := append([]byte(nil), b[m:m+1024]...)
			copy(b[m:m+1024], b[n:n+1024])
			copy(b[n:n+1024], x)
			return b
		}),
		"padding":                edit(func(b []byte) []byte { b[headerAt(t, b, "oci-layout")+blockSize+100] = 'x'; return b }),
		"end-of-archive":         edit(func(b []byte) []byte { b[eoa+700] = 1; return b }),
		"garbage before trailer": insert(raw, len(raw)-trailerSize, []byte("garbage")),
		"garbage after trailer":  append(append([]byte(nil), raw...), "garbage"...),
		"garbage before bundle":  append([]byte("#!/bin/sh\nexec evil\n"), raw...),
		"trailer reserved":       edit(func(b []byte) []byte { b[len(b)-trailerSize+13] = 1; return b }),
		"trailer part size":      trailerField(5, 1<<20),
		"trailer total":          trailerField(4, 512),
		"trailer metadata size":  trailerField(1, -1),
		"trailer version":        edit(func(b []byte) []byte { b[len(b)-trailerSize+11] = 2; return b }),
	}
}

func TestRefusesHostileArchives(t *testing.T) {
	path, pub := writeSmallBundleAt(t, filepath.Join(t.TempDir(), "s.bundle"), WriterOptions{})
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range hostileBundles(t, raw) {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "bad.bundle")
			os.WriteFile(p, bad, 0o644)
			err := openVerify(p, pub)
			if err == nil {
				t.Fatal("accepted")
			}
			t.Logf("refused: %v", err)
		})
	}
	// The changed headers are still tar: the old reader, which trusted
	// archive/tar's view, would have read a setuid file out of it.
	tr := tar.NewReader(bytes.NewReader(hostileBundles(t, raw)["setuid"]))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("archive/tar does not read the setuid variant: %v", err)
		}
		if h.Name == "files/vmlinuz" {
			if h.Mode != 0o4755 {
				t.Fatalf("setuid variant: mode %o", h.Mode)
			}
			break
		}
		io.Copy(io.Discard, tr)
	}
}

// The signed file list and the archive agree: a writer that lists an
// entry it did not write, or writes one it does not list, makes a bundle
// that is refused.
func TestSignedListMatchesArchive(t *testing.T) {
	cases := map[string]func(w *Writer){
		"unlisted entry": func(w *Writer) {
			w.AddBytes("files/unlisted", []byte("x"), "")
			w.entries = w.entries[:len(w.entries)-1]
		},
		"ghost entry after the last": func(w *Writer) {
			last := w.entries[len(w.entries)-1]
			w.entries = append(w.entries, Entry{Path: "files/ghost", Offset: last.Offset + 4096, Size: 1, Digest: last.Digest})
		},
		"ghost entry over another": func(w *Writer) {
			last := w.entries[len(w.entries)-1]
			w.entries = append(w.entries, Entry{Path: "files/ghost", Offset: last.Offset + 512, Size: 1, Digest: last.Digest})
		},
		"listed under another name": func(w *Writer) { w.entries[len(w.entries)-1].Path = "files/other" },
		"listed with another size":  func(w *Writer) { w.entries[len(w.entries)-1].Size-- },
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			tb := writeTestBundle(t, t.TempDir(), WriterOptions{}, edit)
			_, err := Open(tb.path, Trust{PublicKey: tb.pub})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// inspect prints text from the metadata escaped: a signer (any signer, when
// no key is given) cannot write escape sequences or bidi overrides to the
// terminal.
func TestInspectEscapes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "e.bundle")
	_, priv := newKey(t)
	w, err := Create(p, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := w.AddBytes("blobs/sha256/"+digestOf([]byte("{}"))[7:], []byte("{}"), "application/vnd.oci.image.manifest.v1+json")
	hostile := "evil\x1b[2J\x1b]0;pwned\a\u202etxt.exe\r\ttab"
	meta := Metadata{Name: hostile, Components: []string{hostile},
		Images: []Image{{Repository: "docker.io/" + hostile, Tag: hostile, Digest: d, From: []string{hostile}, Platforms: []string{hostile}}},
		Charts: []Chart{{Name: hostile, Version: hostile, Images: []string{hostile, hostile + "2"}}},
		Files:  []File{{Name: hostile, Digest: hostile}}}
	if _, err := w.Finish(meta, priv); err != nil {
		t.Fatal(err)
	}
	b, err := Open(p, Trust{IntegrityOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var out bytes.Buffer
	if err := b.Inspect().WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"\x1b", "\a", "\u202e", "\r", "\ttab"} {
		if strings.Contains(out.String(), bad) {
			t.Errorf("inspect printed %q raw:\n%s", bad, out.String())
		}
	}
	if !strings.Contains(out.String(), `\x1b[2J`) {
		t.Errorf("inspect does not show the escaped name:\n%s", out.String())
	}
}
