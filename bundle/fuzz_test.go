package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
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
	// Each way of changing a bundle that archive/tar still reads.
	for _, bad := range hostileBundles(f, small) {
		f.Add(bad)
	}
	// A bundle with an OS image (zstd).
	osRaw := rawDisk(8 << 10)
	osPath, _ := writeOSImageBundle(f, f.TempDir(), compressWith(f, CompressionZstd, osRaw), osRaw, nil)
	osBundle, err := os.ReadFile(osPath)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(osBundle)
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
		if _, err := b.Verify(context.Background(), VerifyOptions{Workers: 1}); err == nil {
			checkExtracts(t, p, b)
		}
		for _, r := range b.Repositories() {
			for _, tag := range b.Tags(r) {
				if d, ok := b.ResolveTag(r, tag); ok {
					b.Content(d)
				}
			}
		}
		for _, im := range b.OSImages() {
			b.OSImageContent(im.Name)
		}
		b.Inspect()
	})
}

// writeSmallBundle returns a complete valid bundle of a few KiB.
func writeSmallBundle(t testing.TB) []byte {
	p, _ := writeSmallBundleAt(t, filepath.Join(t.TempDir(), "s.bundle"), WriterOptions{})
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkExtracts reads an accepted, verified bundle as tar does: regular
// files only, mode 0644, owned by root, no extended records, exactly the
// signed entries in their order.
func checkExtracts(t *testing.T, path string, b *Bundle) {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{}
	for _, e := range b.Metadata().Entries {
		want = append(want, e.Path)
	}
	want = append(want, MetadataPath, SignaturePath)
	tr := tar.NewReader(bytes.NewReader(raw[b.base : b.base+b.size-trailerSize]))
	var got []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("a verified bundle is not a tar archive: %v", err)
		}
		if h.Typeflag != tar.TypeReg || h.Mode != 0o644 || h.Uid != 0 || h.Gid != 0 || len(h.PAXRecords) > 0 || h.Linkname != "" {
			t.Fatalf("a verified bundle holds %+v", h)
		}
		got = append(got, h.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("a verified bundle holds %q, its metadata lists %q", got, want)
	}
}
