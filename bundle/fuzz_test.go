package bundle

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to the reader: it must refuse or accept
// them without panicking or allocating without bound, and whatever it
// accepts must verify without panicking.
func FuzzOpen(f *testing.F) {
	tb := writeTestBundle(f, f.TempDir(), WriterOptions{}, nil)
	valid, err := os.ReadFile(tb.path)
	if err != nil {
		f.Fatal(err)
	}
	// Seeds: the valid bundle with its big layer cut out keeps the
	// structure but is small; plus its tail and a few shapes.
	f.Add(valid[len(valid)-8192:])
	f.Add(valid[:4096])
	f.Add(valid[len(valid)-trailerSize:])
	f.Add([]byte{})
	small := writeSmallBundle(f)
	f.Add(small)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.bundle")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		b, err := Open(p, Trust{IntegrityOnly: true})
		if err != nil {
			return
		}
		defer b.Close()
		b.Verify(context.Background(), VerifyOptions{Workers: 1})
		for _, r := range b.Repositories() {
			for _, tag := range b.Tags(r) {
				if d, ok := b.ResolveTag(r, tag); ok {
					b.Content(d)
				}
			}
		}
		b.Inspect()
	})
}

// writeSmallBundle returns a complete valid bundle of a few KiB.
func writeSmallBundle(t testing.TB) []byte {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.bundle")
	_, priv := newKey(t)
	w, err := Create(p, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), "")
	d, _ := w.AddBytes("blobs/sha256/"+digestOf([]byte("{}"))[7:], []byte("{}"), "application/vnd.oci.image.manifest.v1+json")
	if _, err := w.Finish(Metadata{Images: []Image{{Repository: "docker.io/library/x", Tag: "1", Digest: d}}}, priv); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
