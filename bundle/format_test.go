package bundle

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testBundle struct {
	path  string
	pub   ed25519.PublicKey
	priv  ed25519.PrivateKey
	blob  []byte // a 3 MiB layer
	blobD string
	manD  string
}

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// writeTestBundle writes a small bundle: an OCI layout with one image.
func writeTestBundle(t testing.TB, dir string, opts WriterOptions, edit func(w *Writer)) testBundle {
	t.Helper()
	tb := testBundle{path: filepath.Join(dir, "site.bundle")}
	tb.pub, tb.priv = newKey(t)
	tb.blob = make([]byte, 3<<20+123)
	for i := range tb.blob {
		tb.blob[i] = byte(i * 7 % 251)
	}
	if opts.Time.IsZero() {
		opts.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	}
	w, err := Create(tb.path, opts)
	if err != nil {
		t.Fatal(err)
	}
	must := func(d string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	must(w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), ""))
	blobFile := filepath.Join(dir, "blob")
	if err := os.WriteFile(blobFile, tb.blob, 0o644); err != nil {
		t.Fatal(err)
	}
	tb.blobD = digestOf(tb.blob)
	f, err := os.Open(blobFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := w.AddFile("blobs/sha256/"+tb.blobD[7:], f, int64(len(tb.blob)), tb.blobD, ""); err != nil {
		t.Fatal(err)
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgD := digestOf(cfg)
	must(w.AddBytes("blobs/sha256/"+cfgD[7:], cfg, ""))
	man := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + cfgD + `","size":` + itoa(len(cfg)) + `},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"` + tb.blobD + `","size":` + itoa(len(tb.blob)) + `}]}`)
	tb.manD = must(w.AddBytes("blobs/sha256/"+digestOf(man)[7:], man, "application/vnd.oci.image.manifest.v1+json"))
	must(w.AddBytes("files/vmlinuz", []byte("kernel"), ""))
	if edit != nil {
		edit(w)
	}
	meta := Metadata{Name: "test", Images: []Image{{Repository: "docker.io/library/busybox", Tag: "1.36", Digest: tb.manD, MediaType: "application/vnd.oci.image.manifest.v1+json"}}}
	if _, err := w.Finish(meta, tb.priv); err != nil {
		t.Fatal(err)
	}
	return tb
}

func itoa(n int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(n)) }

func fmtInt(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

func TestRoundTrip(t *testing.T) {
	tb := writeTestBundle(t, t.TempDir(), WriterOptions{}, nil)
	b, err := Open(tb.path, Trust{PublicKey: tb.pub})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.Trusted() || b.Embedded() {
		t.Fatalf("trusted=%v embedded=%v", b.Trusted(), b.Embedded())
	}
	if got := b.Repositories(); len(got) != 1 || got[0] != "docker.io/library/busybox" {
		t.Fatalf("repositories %v", got)
	}
	if d, ok := b.ResolveTag("docker.io/library/busybox", "1.36"); !ok || d != tb.manD {
		t.Fatalf("resolve: %s %v", d, ok)
	}
	r, off, size, mt, err := b.Content(tb.blobD)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.(*os.File); !ok {
		t.Errorf("content reader is %T, want *os.File for sendfile", r)
	}
	got := make([]byte, size)
	if _, err := r.ReadAt(got, off); err != nil || !bytes.Equal(got, tb.blob) || mt != "" {
		t.Fatalf("content differs (err %v, media type %q)", err, mt)
	}
	if _, _, _, mt, err := b.Content(tb.manD); err != nil || mt != "application/vnd.oci.image.manifest.v1+json" {
		t.Fatalf("manifest: %q %v", mt, err)
	}
	if _, _, _, _, err := b.Content("sha256:" + strings.Repeat("0", 64)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unknown digest: %v", err)
	}
	if data, err := b.ReadFile("files/vmlinuz"); err != nil || string(data) != "kernel" {
		t.Fatalf("file: %q %v", data, err)
	}
	res, err := b.Verify(context.Background(), VerifyOptions{})
	if err != nil || res.Entries != 5 || !res.Trusted {
		t.Fatalf("verify: %+v %v", res, err)
	}
	// Without a key the signature is still checked, but not trusted.
	b2, err := Open(tb.path, Trust{IntegrityOnly: true})
	if err != nil || b2.Trusted() {
		t.Fatalf("open without key: trusted=%v %v", b2 != nil && b2.Trusted(), err)
	}
	b2.Close()
}

func TestSplitParts(t *testing.T) {
	dir := t.TempDir()
	tb := writeTestBundle(t, dir, WriterOptions{PartSize: 1 << 20}, nil)
	parts, _ := filepath.Glob(tb.path + ".*")
	if len(parts) != 4 {
		t.Fatalf("parts %v, want 4", parts)
	}
	for _, name := range []string{tb.path, tb.path + ".001"} {
		b, err := Open(name, Trust{PublicKey: tb.pub})
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		if _, err := b.Verify(context.Background(), VerifyOptions{}); err != nil {
			t.Fatal(err)
		}
		r, off, size, _, err := b.Content(tb.blobD)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		if _, err := r.ReadAt(got, off); err != nil || !bytes.Equal(got, tb.blob) {
			t.Fatalf("blob across parts differs: %v", err)
		}
		b.Close()
	}
	// A missing middle part is named.
	if err := os.Rename(tb.path+".002", tb.path+".x"); err != nil {
		t.Fatal(err)
	}
	_, err := Open(tb.path, Trust{PublicKey: tb.pub})
	if !errors.Is(err, ErrMissingPart) || !strings.Contains(err.Error(), "site.bundle.002") {
		t.Fatalf("missing part 2: %v", err)
	}
	os.Rename(tb.path+".x", tb.path+".002")
	// A missing last part.
	os.Rename(tb.path+".004", tb.path+".x")
	_, err = Open(tb.path, Trust{PublicKey: tb.pub})
	if !errors.Is(err, ErrMissingPart) || !strings.Contains(err.Error(), "last part") {
		t.Fatalf("missing last part: %v", err)
	}
	os.Rename(tb.path+".x", tb.path+".004")
	// A truncated part.
	if err := os.Truncate(tb.path+".003", 1000); err != nil {
		t.Fatal(err)
	}
	_, err = Open(tb.path, Trust{PublicKey: tb.pub})
	if !errors.Is(err, ErrMissingPart) || !strings.Contains(err.Error(), "site.bundle.003 has 1000 bytes") {
		t.Fatalf("truncated part: %v", err)
	}
}

func TestEmbedded(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "airlock")
	prog := bytes.Repeat([]byte("\x7fELF-not-really"), 1000)
	if err := os.WriteFile(exe, prog, 0o755); err != nil {
		t.Fatal(err)
	}
	tb := writeTestBundle(t, dir, WriterOptions{Executable: exe}, nil)
	b, err := Open(tb.path, Trust{PublicKey: tb.pub})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.Embedded() {
		t.Fatal("not embedded")
	}
	if _, err := b.Verify(context.Background(), VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	r, off, size, _, err := b.Content(tb.blobD)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := r.ReadAt(got, off); err != nil || !bytes.Equal(got, tb.blob) {
		t.Fatal("embedded blob differs")
	}
	head := make([]byte, len(prog))
	f, _ := os.Open(tb.path)
	defer f.Close()
	io.ReadFull(f, head)
	if !bytes.Equal(head, prog) {
		t.Fatal("the executable was not copied first")
	}
	st, _ := os.Stat(tb.path)
	if st.Mode().Perm()&0o100 == 0 {
		t.Fatalf("mode %v is not executable", st.Mode())
	}
}

// flip inverts one byte of the file at off.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func entryOffset(t *testing.T, tb testBundle, path string) int64 {
	b, err := Open(tb.path, Trust{IntegrityOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, e := range b.Metadata().Entries {
		if e.Path == path {
			return e.Offset
		}
	}
	t.Fatalf("no entry %s", path)
	return 0
}

func TestRefusesCorruption(t *testing.T) {
	wrongPub, _ := newKey(t)
	cases := []struct {
		name    string
		damage  func(t *testing.T, tb testBundle) Trust
		edit    func(w *Writer)
		openErr error  // refused by Open
		lazyErr error  // refused when served and by Verify
		msg     string // in the message
	}{
		{name: "flipped byte in a layer", damage: func(t *testing.T, tb testBundle) Trust {
			flip(t, tb.path, entryOffset(t, tb, "blobs/sha256/"+tb.blobD[7:])+1<<20)
			return Trust{PublicKey: tb.pub}
		}, lazyErr: ErrCorrupt, msg: "blobs/sha256/"},
		{name: "flipped byte in a manifest", damage: func(t *testing.T, tb testBundle) Trust {
			flip(t, tb.path, entryOffset(t, tb, "blobs/sha256/"+tb.manD[7:])+10)
			return Trust{PublicKey: tb.pub}
		}, lazyErr: ErrCorrupt, msg: "the signed metadata says"},
		{name: "flipped byte in the metadata", damage: func(t *testing.T, tb testBundle) Trust {
			st, _ := os.Stat(tb.path)
			tr := readTrailer(t, tb.path, st.Size())
			flip(t, tb.path, tr.metaOff+tr.metaSize/2)
			return Trust{PublicKey: tb.pub}
		}, openErr: ErrSignature, msg: "metadata.json"},
		{name: "flipped byte in the signature", damage: func(t *testing.T, tb testBundle) Trust {
			st, _ := os.Stat(tb.path)
			tr := readTrailer(t, tb.path, st.Size())
			flip(t, tb.path, tr.sigOff+5)
			return Trust{PublicKey: tb.pub}
		}, openErr: ErrSignature, msg: "does not match its signature"},
		{name: "flipped byte in an archive header", damage: func(t *testing.T, tb testBundle) Trust {
			flip(t, tb.path, entryOffset(t, tb, "files/vmlinuz")-512+3)
			return Trust{PublicKey: tb.pub}
		}, openErr: ErrCorrupt, msg: "archive header"},
		{name: "flipped byte in the trailer", damage: func(t *testing.T, tb testBundle) Trust {
			st, _ := os.Stat(tb.path)
			flip(t, tb.path, st.Size()-trailerSize+16+7) // metadata offset
			return Trust{PublicKey: tb.pub}
		}, openErr: ErrCorrupt, msg: "as the trailer says"},
		{name: "truncated", damage: func(t *testing.T, tb testBundle) Trust {
			st, _ := os.Stat(tb.path)
			os.Truncate(tb.path, st.Size()-4096)
			return Trust{PublicKey: tb.pub}
		}, openErr: ErrCorrupt, msg: "truncated"},
		{name: "truncated to half", damage: func(t *testing.T, tb testBundle) Trust {
			st, _ := os.Stat(tb.path)
			os.Truncate(tb.path, st.Size()/2)
			return Trust{PublicKey: tb.pub}
		}, openErr: ErrCorrupt, msg: "truncated"},
		{name: "wrong key", damage: func(t *testing.T, tb testBundle) Trust {
			return Trust{PublicKey: wrongPub}
		}, openErr: ErrSignature, msg: "not by the given key " + KeyID(wrongPub)},
		{name: "duplicate path", edit: func(w *Writer) {
			w.unchecked = true
			w.AddBytes("files/vmlinuz", []byte("other kernel"), "")
		}, openErr: ErrCorrupt, msg: `"files/vmlinuz" appears twice`},
		{name: "dot-dot path", edit: func(w *Writer) {
			w.unchecked = true
			w.AddBytes("files/../../etc/passwd", []byte("root::0:0"), "")
		}, openErr: ErrCorrupt, msg: "escapes the bundle"},
		{name: "absolute path", edit: func(w *Writer) {
			w.unchecked = true
			w.AddBytes("/etc/passwd", []byte("root::0:0"), "")
		}, openErr: ErrCorrupt, msg: "not relative"},
		{name: "not a bundle", damage: func(t *testing.T, tb testBundle) Trust {
			os.WriteFile(tb.path, bytes.Repeat([]byte("hello"), 1000), 0o644)
			return Trust{IntegrityOnly: true}
		}, openErr: ErrNotBundle, msg: "is it a bundle"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tb := writeTestBundle(t, t.TempDir(), WriterOptions{}, c.edit)
			opts := Trust{PublicKey: tb.pub}
			if c.damage != nil {
				opts = c.damage(t, tb)
			}
			b, err := Open(tb.path, opts)
			if c.openErr != nil {
				if !errors.Is(err, c.openErr) || !strings.Contains(err.Error(), c.msg) {
					t.Fatalf("open: got %v, want %v mentioning %q", err, c.openErr, c.msg)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer b.Close()
			_, verr := b.Verify(context.Background(), VerifyOptions{})
			if !errors.Is(verr, c.lazyErr) || !strings.Contains(verr.Error(), c.msg) {
				t.Fatalf("verify: got %v, want %v mentioning %q", verr, c.lazyErr, c.msg)
			}
			t.Logf("verify refused: %v", verr)
			var served int
			for _, d := range []string{tb.blobD, tb.manD} {
				if _, _, _, _, err := b.Content(d); err != nil {
					if !errors.Is(err, c.lazyErr) {
						t.Fatalf("content %s: %v", d, err)
					}
					// Refused again on a second request.
					if _, _, _, _, err2 := b.Content(d); err2 == nil {
						t.Fatal("a failed blob was served on the second request")
					}
				} else {
					served++
				}
			}
			if served != 1 {
				t.Fatalf("%d of 2 blobs served, want exactly the undamaged one", served)
			}
		})
	}
}

func readTrailer(t *testing.T, path string, size int64) trailer {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, trailerSize)
	f.ReadAt(b, size-trailerSize)
	tr, err := parseTrailer(b)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}
