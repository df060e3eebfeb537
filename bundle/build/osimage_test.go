package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"airlock.dev/airlock/bundle"
)

// diskImage is a raw disk image of n bytes with data in some places and
// holes (zeros) elsewhere, as a cloud image has.
func diskImage(n int) []byte {
	b := make([]byte, n)
	x := uint32(88172645)
	for i := range b {
		if (i/(64<<10))%3 == 1 {
			continue // a hole
		}
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x % 16) // compressible
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func compressed(t *testing.T, kind string, raw []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch kind {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "zstd":
		w, err = zstd.NewWriter(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	w.Write(raw)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// qemuImg runs Debian's qemu-img, failing the test with how to install it
// when it is missing.
func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatal("qemu-img is needed to make qcow2 test images: apt-get install qemu-utils")
	}
	if out, err := exec.Command(p, args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// buildOSImages builds a bundle of the given OS images from dir and opens it.
func buildOSImages(t *testing.T, dir, spec string) (*bundle.Bundle, string, error) {
	t.Helper()
	specPath := filepath.Join(dir, "bundle.yaml")
	s, problems := ParseSpec(specPath, []byte(spec))
	if err := problems.Err(); err != nil {
		t.Fatalf("spec: %v", err)
	}
	_, priv := testKey(t)
	var log bytes.Buffer
	out := filepath.Join(dir, "site.bundle")
	_, err := Build(context.Background(), Options{Spec: s, SpecDir: dir, Output: out, Key: priv, Progress: &log})
	if err != nil {
		return nil, log.String(), err
	}
	b, err := bundle.Open(out, bundle.Trust{IntegrityOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, log.String(), nil
}

// Every kind of input, each under a file name that lies about it (the
// format comes from the first bytes): raw, gzip, xz and zstd go in as
// they are; qcow2 (plain, zlib-compressed and zstd-compressed clusters,
// made by qemu-img) is converted to raw compressed with zstd. The signed
// metadata records each blob's digest, compression, raw size and raw
// SHA-256, Verify decompresses and checks them, and the qcow2 blob
// decompresses to exactly the raw image qemu-img was given. A second
// build converts nothing again.
func TestBuildOSImages(t *testing.T) {
	dir := t.TempDir()
	raw := diskImage(3<<20 + 64<<10)
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("raw.img.gz", raw)
	write("gz.img.xz", compressed(t, "gzip", raw))
	write("xz.img.zst", compressed(t, "xz", raw))
	write("zst.img", compressed(t, "zstd", raw))
	write("plain.raw", raw)
	qemuImg(t, "convert", "-f", "raw", "-O", "qcow2", filepath.Join(dir, "plain.raw"), filepath.Join(dir, "q.img.gz"))
	qemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", filepath.Join(dir, "plain.raw"), filepath.Join(dir, "qz.raw"))
	qemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", filepath.Join(dir, "plain.raw"), filepath.Join(dir, "qzstd.xz"))
	spec := `apiVersion: airlock.dev/v1alpha1
kind: Bundle
metadata: {name: os}
osImages:
  - {name: raw, path: raw.img.gz}
  - {name: gz, path: gz.img.xz}
  - {name: xz, path: xz.img.zst}
  - {name: zst, path: zst.img, rawSHA256: ` + sha(raw) + `}
  - {name: qcow2, path: q.img.gz}
  - {name: qcow2-zlib, path: qz.raw}
  - {name: qcow2-zstd, path: qzstd.xz}
`
	b, log, err := buildOSImages(t, dir, spec)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, log)
	}
	want := map[string]string{"raw": "none", "gz": "gzip", "xz": "xz", "zst": "zstd", "qcow2": "zstd", "qcow2-zlib": "zstd", "qcow2-zstd": "zstd"}
	if got := b.OSImages(); len(got) != len(want) {
		t.Fatalf("%d OS images, want %d", len(got), len(want))
	}
	for name, comp := range want {
		im, ok := b.OSImage(name)
		if !ok {
			t.Fatalf("no OS image %s", name)
		}
		if im.Compression != comp || im.RawSize != int64(len(raw)) || im.RawSHA256 != sha(raw) {
			t.Errorf("%s: %+v, want compression %s, raw %d bytes sha256 %s", name, im, comp, len(raw), sha(raw))
		}
		if strings.HasPrefix(name, "qcow2") && !strings.Contains(im.Source, "qcow2 converted") {
			t.Errorf("%s: source %q", name, im.Source)
		}
	}
	if _, err := b.Verify(context.Background(), bundle.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	// The converted blob is zstd of exactly the raw image.
	r, off, size, err := b.OSImageContent("qcow2-zstd")
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zstd.NewReader(io.NewSectionReader(r, off, size))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	zr.Close()
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("the converted qcow2 is not the raw image (%d bytes, %v)", len(got), err)
	}
	// Inspect shows each with its raw digest.
	var text bytes.Buffer
	b.Inspect().WriteText(&text)
	if !strings.Contains(text.String(), "OS IMAGES (7)") || !strings.Contains(text.String(), "qcow2-zlib") {
		t.Errorf("inspect:\n%s", text.String())
	}
	// InspectOSImage (bundle check) says the same of each input.
	info, err := InspectOSImage(context.Background(), filepath.Join(dir, "qz.raw"))
	if err != nil || info.Format != "qcow2" || info.RawSHA256 != sha(raw) || info.RawSize != int64(len(raw)) {
		t.Fatalf("InspectOSImage qcow2: %+v %v", info, err)
	}
	info, err = InspectOSImage(context.Background(), filepath.Join(dir, "xz.img.zst"))
	if err != nil || info.Format != "xz" || info.RawSHA256 != sha(raw) {
		t.Fatalf("InspectOSImage xz: %+v %v", info, err)
	}

	// Built again: the conversion is taken from the cache.
	b.Close()
	_, log, err = buildOSImages(t, dir, spec)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(log, "in the cache"); n != len(want) {
		t.Errorf("second build: %d OS images from the cache, want %d:\n%s", n, len(want), log)
	}
}

// A raw SHA-256 in bundle.yaml that the image does not have fails the
// build, naming the image and both digests; so does a qcow2 image with a
// backing file (the build never follows a path an image names).
func TestBuildOSImageRefuses(t *testing.T) {
	dir := t.TempDir()
	raw := diskImage(1 << 20)
	if err := os.WriteFile(filepath.Join(dir, "node.img"), compressed(t, "zstd", raw), 0o644); err != nil {
		t.Fatal(err)
	}
	wrong := strings.Repeat("0", 64)
	_, _, err := buildOSImages(t, dir, "apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nosImages:\n  - {name: node, path: node.img, rawSHA256: "+wrong+"}\n")
	var de *bundle.RawDigestError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), wrong) || !strings.Contains(err.Error(), sha(raw)) || !strings.Contains(err.Error(), "osImages[0] node") {
		t.Fatalf("wrong rawSHA256: %v", err)
	}

	base := filepath.Join(dir, "base.qcow2")
	qemuImg(t, "create", "-f", "qcow2", base, "4M")
	qemuImg(t, "create", "-f", "qcow2", "-F", "qcow2", "-b", base, filepath.Join(dir, "overlay.qcow2"))
	_, _, err = buildOSImages(t, dir, "apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nosImages:\n  - {name: node, path: overlay.qcow2}\n")
	if err == nil || !strings.Contains(err.Error(), "backing file") {
		t.Fatalf("qcow2 with a backing file: %v", err)
	}
	// Bytes after the compressed stream: refused too.
	if err := os.WriteFile(filepath.Join(dir, "trail.img"), append(compressed(t, "gzip", raw), "more"...), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = buildOSImages(t, dir, "apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nosImages:\n  - {name: node, path: trail.img}\n")
	if err == nil || !strings.Contains(err.Error(), "trail.img (gzip)") {
		t.Fatalf("gzip with trailing bytes: %v", err)
	}
}

// FuzzQcow2 feeds arbitrary bytes to the qcow2 conversion: it refuses or
// converts without panicking or allocating without bound, and what it
// converts has the virtual size the header gives.
func FuzzQcow2(f *testing.F) {
	dir := f.TempDir()
	raw := filepath.Join(dir, "raw")
	os.WriteFile(raw, diskImage(256<<10), 0o644)
	for i, args := range [][]string{{}, {"-c"}, {"-c", "-o", "compression_type=zstd"}} {
		out := filepath.Join(dir, "q"+string(rune('0'+i)))
		cmd := exec.Command("qemu-img", append(append([]string{"convert", "-f", "raw", "-O", "qcow2"}, args...), raw, out)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			f.Fatalf("qemu-img (apt-get install qemu-utils): %v %s", err, b)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		n, _, err := convertQcow2(context.Background(), bytes.NewReader(data), int64(len(data)), &out, 16<<20)
		if err != nil {
			return
		}
		if n != int64(out.Len()) || n > 16<<20 {
			t.Fatalf("converted %d bytes, wrote %d", n, out.Len())
		}
	})
}
