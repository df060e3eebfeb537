package bundle

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// rawDisk is a small pseudo disk image: not all zeros, not repetitive.
func rawDisk(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		if i%4096 < 3000 { // compressible, as disks are
			b[i] = byte(x)
		}
	}
	return b
}

func compressWith(t testing.TB, kind string, raw []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch kind {
	case CompressionNone:
		return bytes.Clone(raw)
	case CompressionGzip:
		w = gzip.NewWriter(&buf)
	case CompressionXZ:
		w, err = xz.NewWriter(&buf)
	case CompressionZstd:
		w, err = zstd.NewWriter(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeOSImageBundle writes a bundle holding blob as the OS image
// "node", with the metadata edit changes (nil: as a builder records it).
func writeOSImageBundle(t testing.TB, dir string, blob []byte, raw []byte, edit func(*OSImage)) (string, ed25519.PublicKey) {
	t.Helper()
	pub, priv := newKey(t)
	path := filepath.Join(dir, "os.bundle")
	w, err := Create(path, WriterOptions{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), "")
	d, err := w.AddBytes(OSImagePathPrefix+"node", blob, "")
	if err != nil {
		t.Fatal(err)
	}
	im := OSImage{Name: "node", Path: OSImagePathPrefix + "node", Size: int64(len(blob)), Digest: d,
		Compression: DetectFormat(blob), RawSize: int64(len(raw)), RawSHA256: hexSHA256(raw), Source: "test"}
	if edit != nil {
		edit(&im)
	}
	if _, err := w.Finish(Metadata{Name: "os", OSImages: []OSImage{im}}, priv); err != nil {
		t.Fatal(err)
	}
	return path, pub
}

// Each compression, detected by its magic bytes, round-trips through a
// bundle: the signed metadata records blob and raw digests, the content
// served is the blob, Verify decompresses and checks the raw digest, and
// inspect shows it.
func TestOSImageRoundTrip(t *testing.T) {
	raw := rawDisk(1<<20 + 512)
	for _, kind := range []string{CompressionNone, CompressionGzip, CompressionXZ, CompressionZstd} {
		t.Run(kind, func(t *testing.T) {
			blob := compressWith(t, kind, raw)
			if got := DetectFormat(blob); got != kind {
				t.Fatalf("DetectFormat: %s, want %s", got, kind)
			}
			path, pub := writeOSImageBundle(t, t.TempDir(), blob, raw, nil)
			b, err := Open(path, Trust{PublicKey: pub})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			im, ok := b.OSImage("node")
			if !ok || im.Compression != kind || im.RawSize != int64(len(raw)) || im.RawSHA256 != hexSHA256(raw) || im.Digest != digestOf(blob) {
				t.Fatalf("OS image %+v", im)
			}
			r, off, size, err := b.OSImageContent("node")
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, size)
			if _, err := r.ReadAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, blob) {
				t.Fatal("OSImageContent is not the blob")
			}
			if _, err := b.Verify(context.Background(), VerifyOptions{}); err != nil {
				t.Fatal(err)
			}
			var text bytes.Buffer
			in := b.Inspect()
			if err := in.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			if len(in.OSImages) != 1 || !strings.Contains(text.String(), "OS IMAGES (1)") || !strings.Contains(text.String(), hexSHA256(raw)) || !strings.Contains(text.String(), kind) {
				t.Fatalf("inspect:\n%s", text.String())
			}
			if _, _, _, err := b.OSImageContent("other"); err == nil {
				t.Fatal("an OS image the bundle does not have was found")
			}
		})
	}
}

// A raw digest recorded wrong (signed, so Open takes it) is caught by
// Verify, which names the image and both digests.
func TestVerifyCatchesAWrongRawDigest(t *testing.T) {
	raw := rawDisk(1 << 20)
	blob := compressWith(t, CompressionZstd, raw)
	wrong := strings.Repeat("ab", 32)
	path, pub := writeOSImageBundle(t, t.TempDir(), blob, raw, func(im *OSImage) { im.RawSHA256 = wrong })
	b, err := Open(path, Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.Verify(context.Background(), VerifyOptions{})
	var de *RawDigestError
	if !errors.As(err, &de) || de.ExpectedSHA256 != wrong || de.ActualSHA256 != hexSHA256(raw) {
		t.Fatalf("Verify: %v, want a RawDigestError", err)
	}
	for _, s := range []string{wrong, hexSHA256(raw), `"node"`, "osimages/node"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("the error does not say %s: %v", s, err)
		}
	}
	// The blob itself is intact: it is served (the agent checks the raw
	// digest as it writes and fails the machine).
	if _, _, _, err := b.OSImageContent("node"); err != nil {
		t.Fatal(err)
	}
}

// A flipped byte in the blob: the digest check refuses to serve it.
func TestOSImageFlippedByteIsNotServed(t *testing.T) {
	raw := rawDisk(1 << 20)
	blob := compressWith(t, CompressionZstd, raw)
	path, pub := writeOSImageBundle(t, t.TempDir(), blob, raw, nil)
	b, err := Open(path, Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	off := b.byPath[OSImagePathPrefix+"node"].Offset + 100
	b.Close()
	flip(t, path, off)
	b, err = Open(path, Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, _, _, err := b.OSImageContent("node"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("OSImageContent of a damaged blob: %v", err)
	}
	if _, err := b.Verify(context.Background(), VerifyOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify of a damaged blob: %v", err)
	}
}

// Signed metadata that does not hold together is refused by Open, whoever
// signed it.
func TestOpenRefusesInconsistentOSImages(t *testing.T) {
	raw := rawDisk(64 << 10)
	blob := compressWith(t, CompressionZstd, raw)
	for name, edit := range map[string]func(*OSImage){
		"bad name":          func(im *OSImage) { im.Name = "../x" },
		"path not its name": func(im *OSImage) { im.Name = "other" },
		"digest":            func(im *OSImage) { im.Digest = digestOf([]byte("x")) },
		"size":              func(im *OSImage) { im.Size++ },
		"compression":       func(im *OSImage) { im.Compression = "qcow2" },
		"no raw digest":     func(im *OSImage) { im.RawSHA256 = "" },
		"no raw size":       func(im *OSImage) { im.RawSize = 0 },
		"raw size of none":  func(im *OSImage) { im.Compression = CompressionNone },
	} {
		t.Run(name, func(t *testing.T) {
			path, pub := writeOSImageBundle(t, t.TempDir(), blob, raw, edit)
			b, err := Open(path, Trust{PublicKey: pub})
			if err == nil {
				b.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "OS image") {
				t.Fatalf("error: %v", err)
			}
		})
	}
}

// RawDigest refuses bytes after the compressed data.
func TestRawDigestRefuses(t *testing.T) {
	raw := rawDisk(256 << 10)
	trailing := append(compressWith(t, CompressionGzip, raw), "junk"...)
	if _, _, err := RawDigest(bytes.NewReader(trailing), CompressionGzip, 0, nil); err == nil {
		t.Error("gzip with trailing bytes accepted")
	}
	n, sum, err := RawDigest(bytes.NewReader(compressWith(t, CompressionXZ, raw)), CompressionXZ, 0, nil)
	if err != nil || n != int64(len(raw)) || sum != hexSHA256(raw) {
		t.Fatalf("xz: %d %s %v", n, sum, err)
	}
}

// A raw size recorded smaller than the content: Verify stops reading past
// it (an image that inflates without end is not read to its end).
func TestVerifyStopsPastTheRawSize(t *testing.T) {
	raw := rawDisk(1 << 20)
	path, pub := writeOSImageBundle(t, t.TempDir(), compressWith(t, CompressionZstd, raw), raw, func(im *OSImage) { im.RawSize = 4096 })
	b, err := Open(path, Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Verify(context.Background(), VerifyOptions{}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "more than 4096 raw bytes") {
		t.Fatalf("Verify: %v", err)
	}
	n, _, err := RawDigest(bytes.NewReader(compressWith(t, CompressionGzip, raw)), CompressionGzip, 8192, nil)
	if err == nil || n != 8193 {
		t.Fatalf("RawDigest with a limit read %d bytes: %v", n, err)
	}
}
