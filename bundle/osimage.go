package bundle

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"strconv"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// OSImage is an operating system image in the bundle: a raw disk image,
// stored compressed or not, that the install writes to a machine's disk.
// The blob (Path, Size, Digest) is what airlock serves and the agent
// fetches; RawSize and RawSHA256 are those of the disk image once
// decompressed, which the agent checks as it writes.
type OSImage struct {
	// Name is what an answer file's machine rule names (osImage:).
	Name string `json:"name"`
	// Path of the blob in the bundle: osimages/NAME.
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Digest string `json:"digest"`
	// Compression of the blob, found from its first bytes: none, gzip,
	// xz or zstd.
	Compression string `json:"compression"`
	// RawSize and RawSHA256 (hex) describe the raw disk image.
	RawSize   int64  `json:"rawSize"`
	RawSHA256 string `json:"rawSHA256"`
	// Source says what it was built from ("debian-12.qcow2, qcow2
	// converted to raw, zstd").
	Source string `json:"source,omitempty"`
}

// Compressions of an OS image blob.
const (
	CompressionNone = "none"
	CompressionGzip = "gzip"
	CompressionXZ   = "xz"
	CompressionZstd = "zstd"
	// FormatQcow2 is what DetectFormat says of a qcow2 image: the bundle
	// builder converts it; a bundle never holds one.
	FormatQcow2 = "qcow2"
)

// MaxRawSize bounds an OS image's raw size (16 TiB, as the agent's
// orders do).
const MaxRawSize = 16 << 40

// OSImagePathPrefix is where OS images lie in the archive.
const OSImagePathPrefix = "osimages/"

// MaxZstdWindow is the largest zstd window an OS image may use: the
// agent decodes with it in the discovery image's RAM (zstd --long=28).
const MaxZstdWindow = 1 << 28

var osImageNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// ValidOSImageName reports whether name may name an OS image: 1 to 63
// lower-case letters, digits, '.', '_' and '-', starting and ending with
// a letter or digit.
func ValidOSImageName(name string) bool { return osImageNameRE.MatchString(name) }

// DetectFormat names the format of a disk image from its first bytes
// (at least 6 of them, when the image has that many): gzip, xz, zstd,
// qcow2 or none (a raw image). Never from a file name.
func DetectFormat(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return CompressionGzip
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return CompressionXZ
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return CompressionZstd
	case bytes.HasPrefix(head, []byte("QFI\xfb")):
		return FormatQcow2
	}
	return CompressionNone
}

// RawDigest decompresses r (compressed as compression says) and returns
// the raw content's size and SHA-256 (hex). It fails on a stream that
// does not decompress whole, or has bytes after the compressed data.
// progress, when set, counts the bytes read from r. With limit > 0 it
// stops once the raw content passes limit bytes (a stream that inflates
// past what is recorded is not read to its end).
func RawDigest(r io.Reader, compression string, limit int64, progress *atomic.Int64) (int64, string, error) {
	if progress != nil {
		r = &countingReader{r: r, n: progress}
	}
	var raw io.Reader
	br := bufio.NewReaderSize(r, 256<<10)
	switch compression {
	case CompressionNone:
		raw = br
	case CompressionGzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return 0, "", fmt.Errorf("read gzip: %w", err)
		}
		defer zr.Close()
		raw = zr
	case CompressionXZ:
		zr, err := xz.NewReader(br)
		if err != nil {
			return 0, "", fmt.Errorf("read xz: %w", err)
		}
		raw = zr
	case CompressionZstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(MaxZstdWindow), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return 0, "", fmt.Errorf("read zstd: %w", err)
		}
		defer zr.Close()
		raw = zr
	default:
		return 0, "", fmt.Errorf("compression %q: not one of none, gzip, xz, zstd", compression)
	}
	if limit > 0 {
		raw = io.LimitReader(raw, limit+1)
	}
	h := sha256.New()
	n, err := io.Copy(h, raw)
	if err != nil {
		return 0, "", fmt.Errorf("decompress %s: %w", compression, err)
	}
	if limit > 0 && n > limit {
		return n, "", fmt.Errorf("decompress %s: more than %d raw bytes", compression, limit)
	}
	if compression != CompressionNone {
		// The decompressor stopped at the end of its data: nothing may follow.
		if extra, _ := io.Copy(io.Discard, br); extra > 0 {
			return 0, "", fmt.Errorf("decompress %s: %d bytes follow the compressed data", compression, extra)
		}
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// RawDigestError is a raw image whose size or digest is not the one
// recorded.
type RawDigestError struct {
	// What names the image (the bundle entry, or a file).
	What                         string
	ExpectedSHA256, ActualSHA256 string
	ExpectedSize, ActualSize     int64
}

func (e *RawDigestError) Error() string {
	return fmt.Sprintf("%s: the raw disk image has %d bytes and sha256 %s, but %d bytes and sha256 %s are recorded",
		e.What, e.ActualSize, e.ActualSHA256, e.ExpectedSize, e.ExpectedSHA256)
}

var sha256HexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// checkOSImages checks the signed list of OS images against the entries:
// each names a distinct valid name, an entry under osimages/ with the same
// size and digest, a known compression, and a raw size and digest.
func (b *Bundle) checkOSImages() error {
	seen := map[string]bool{}
	for i, im := range b.meta.OSImages {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: OS image %d (%q): %s", ErrCorrupt, i, im.Name, fmt.Sprintf(format, args...))
		}
		switch {
		case !ValidOSImageName(im.Name):
			return bad("not a valid name")
		case seen[im.Name]:
			return bad("listed twice")
		case im.Path != OSImagePathPrefix+im.Name:
			return bad("path %q, want %s%s", im.Path, OSImagePathPrefix, im.Name)
		case im.Compression != CompressionNone && im.Compression != CompressionGzip && im.Compression != CompressionXZ && im.Compression != CompressionZstd:
			return bad("compression %q is not none, gzip, xz or zstd", im.Compression)
		case im.RawSize <= 0 || im.RawSize > MaxRawSize || !sha256HexRE.MatchString(im.RawSHA256):
			return bad("no raw size (%d) and SHA-256 (%q)", im.RawSize, im.RawSHA256)
		}
		seen[im.Name] = true
		e, ok := b.byPath[im.Path]
		if !ok {
			return bad("%s is not in the bundle", im.Path)
		}
		if e.Size != im.Size || e.Digest != im.Digest {
			return bad("size %d and digest %s, but its entry has %d and %s", im.Size, im.Digest, e.Size, e.Digest)
		}
		if im.Compression == CompressionNone && im.RawSize != im.Size {
			return bad("uncompressed, yet its raw size %d is not its size %d", im.RawSize, im.Size)
		}
	}
	return nil
}

// OSImages lists the bundle's OS images, in the order the metadata has
// them.
func (b *Bundle) OSImages() []OSImage { return append([]OSImage(nil), b.meta.OSImages...) }

// OSImage returns the OS image called name.
func (b *Bundle) OSImage(name string) (OSImage, bool) {
	for _, im := range b.meta.OSImages {
		if im.Name == name {
			return im, true
		}
	}
	return OSImage{}, false
}

// OSImageContent returns where the blob of the OS image called name lies:
// size bytes at off in r. Its digest is checked the first time it is
// asked for (and the outcome remembered), as Content does for blobs.
func (b *Bundle) OSImageContent(name string) (r io.ReaderAt, off, size int64, err error) {
	im, ok := b.OSImage(name)
	if !ok {
		return nil, 0, 0, fmt.Errorf("OS image %q: %w", name, fs.ErrNotExist)
	}
	e := b.byPath[im.Path]
	c := b.pathChecks[im.Path]
	c.once.Do(func() { c.err = b.checkEntry(e, nil) })
	if c.err != nil {
		return nil, 0, 0, c.err
	}
	r, off = b.locate(e.Offset, e.Size)
	return r, off, e.Size, nil
}

// checkRaw decompresses an OS image and compares its raw size and digest
// with the signed ones.
func (b *Bundle) checkRaw(im OSImage, progress *atomic.Int64) error {
	e := b.byPath[im.Path]
	n, sum, err := RawDigest(io.NewSectionReader(b.ra, e.Offset, e.Size), im.Compression, im.RawSize, progress)
	if err != nil {
		return fmt.Errorf("%w: OS image %s (%s): %v", ErrCorrupt, strconv.Quote(im.Name), im.Path, err)
	}
	if n != im.RawSize || sum != im.RawSHA256 {
		return fmt.Errorf("%w: %w", ErrCorrupt, &RawDigestError{What: "OS image " + strconv.Quote(im.Name) + " (" + im.Path + ")",
			ExpectedSHA256: im.RawSHA256, ActualSHA256: sum, ExpectedSize: im.RawSize, ActualSize: n})
	}
	return nil
}
