package build

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/lima-vm/go-qcow2reader/image/qcow2"

	"airlock.dev/airlock/bundle"
)

// OSImageInfo describes an OS image file: its format (from its first
// bytes), its size, and the size and SHA-256 of the raw disk image in it.
type OSImageInfo struct {
	Format    string `json:"format"` // none, gzip, xz, zstd or qcow2
	Size      int64  `json:"size"`
	RawSize   int64  `json:"rawSize"`
	RawSHA256 string `json:"rawSHA256"`
}

// InspectOSImage reads the OS image file at path whole: it finds its
// format from its first bytes, decompresses it (or reads the qcow2 image's
// virtual disk) and hashes the raw disk image, as bundle build does.
func InspectOSImage(ctx context.Context, path string) (OSImageInfo, error) {
	f, err := bundle.OpenRegular(path)
	if err != nil {
		return OSImageInfo{}, fmt.Errorf("open OS image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return OSImageInfo{}, err
	}
	info := OSImageInfo{Size: st.Size(), Format: detect(f)}
	if info.Format == bundle.FormatQcow2 {
		info.RawSize, info.RawSHA256, err = convertQcow2(ctx, f, st.Size(), io.Discard, maxQcow2Size)
	} else {
		info.RawSize, info.RawSHA256, err = bundle.RawDigest(ctxReader{ctx, io.NewSectionReader(f, 0, st.Size())}, info.Format, 0, nil)
	}
	if err != nil {
		return info, fmt.Errorf("OS image %s (%s): %w", path, info.Format, err)
	}
	return info, nil
}

// detect names the format of the file from its first bytes.
func detect(f io.ReaderAt) string {
	head := make([]byte, 8)
	n, _ := f.ReadAt(head, 0)
	return bundle.DetectFormat(head[:n])
}

// ctxReader stops a long read when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// osImageRecord is what the cache keeps of an OS image made from a
// source file: the blob (next to it) and what the metadata records.
type osImageRecord struct {
	Compression string `json:"compression"`
	Size        int64  `json:"size"`
	Digest      string `json:"digest"`
	RawSize     int64  `json:"rawSize"`
	RawSHA256   string `json:"rawSHA256"`
	Source      string `json:"source"`
}

// osImage brings one OS image into the build. The source is hashed; the
// blob made from it (a copy, or for qcow2 the raw image compressed with
// zstd) is kept in the cache under the source's digest, so that a rebuild
// converts nothing again; its raw size and digest are measured from the
// blob, and compared with the spec's rawSHA256 when it gives one.
func (b *builder) osImage(ctx context.Context, s OSImageSpec) error {
	src := s.Path
	if !filepath.IsAbs(src) {
		src = filepath.Join(b.opts.SpecDir, src)
	}
	sum, err := hashFile(src)
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	dir := filepath.Join(b.cache, "osimages")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	key := sum.digest[len("sha256:"):]
	blobPath, recPath := filepath.Join(dir, key+".blob"), filepath.Join(dir, key+".json")
	rec, ok := cachedOSImage(blobPath, recPath)
	if ok {
		b.prog.linef("OS image %s: in the cache (%s, %s)", s.Name, rec.Compression, bundle.HumanSize(rec.Size))
	} else {
		if rec, err = b.makeOSImage(ctx, src, filepath.Base(s.Path), blobPath, recPath); err != nil {
			return err
		}
		b.prog.linef("OS image %s: %s, raw %s, sha256 %s", s.Name, rec.Source, bundle.HumanSize(rec.RawSize), rec.RawSHA256)
	}
	if s.RawSHA256 != "" && s.RawSHA256 != rec.RawSHA256 {
		return &bundle.RawDigestError{What: fmt.Sprintf("OS image %s (%s)", s.Name, s.Path),
			ExpectedSHA256: s.RawSHA256, ActualSHA256: rec.RawSHA256, ExpectedSize: rec.RawSize, ActualSize: rec.RawSize}
	}
	im := bundle.OSImage{Name: s.Name, Path: bundle.OSImagePathPrefix + s.Name, Size: rec.Size, Digest: rec.Digest,
		Compression: rec.Compression, RawSize: rec.RawSize, RawSHA256: rec.RawSHA256, Source: rec.Source}
	b.osImages = append(b.osImages, im)
	b.fileCache[im.Path] = blobPath
	return nil
}

// cachedOSImage returns the record of a blob made earlier, if the blob is
// still what the record says.
func cachedOSImage(blobPath, recPath string) (osImageRecord, bool) {
	var rec osImageRecord
	raw, err := bundle.ReadRegularFile(recPath, 64<<10, "cached OS image record")
	if err != nil || json.Unmarshal(raw, &rec) != nil {
		return rec, false
	}
	sum, err := hashFile(blobPath)
	return rec, err == nil && sum.n == rec.Size && sum.digest == rec.Digest
}

// makeOSImage makes the blob of the OS image at src into blobPath and
// records it in recPath.
func (b *builder) makeOSImage(ctx context.Context, src, name, blobPath, recPath string) (osImageRecord, error) {
	f, err := bundle.OpenRegular(src)
	if err != nil {
		return osImageRecord{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return osImageRecord{}, err
	}
	tmp, err := os.CreateTemp(filepath.Join(b.cache, "tmp"), "osimage-*")
	if err != nil {
		return osImageRecord{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	blobHash := sha256.New()
	out := &countWriter{w: io.MultiWriter(tmp, blobHash)}
	rec := osImageRecord{Compression: detect(f)}
	switch rec.Compression {
	case bundle.FormatQcow2:
		b.prog.linef("OS image %s: qcow2, converting to raw compressed with zstd", name)
		zw, err := zstd.NewWriter(out, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithWindowSize(8<<20))
		if err != nil {
			return rec, err
		}
		rec.RawSize, rec.RawSHA256, err = convertQcow2(ctx, f, st.Size(), zw, maxQcow2Size)
		if err = errors.Join(err, zw.Close()); err != nil {
			return rec, fmt.Errorf("convert qcow2 %s: %w", src, err)
		}
		rec.Compression = bundle.CompressionZstd
		rec.Source = name + ", qcow2 converted to raw, zstd"
	default:
		if _, err := io.Copy(out, ctxReader{ctx, io.NewSectionReader(f, 0, st.Size())}); err != nil {
			return rec, fmt.Errorf("copy %s: %w", src, err)
		}
		// The raw digest is measured on the copy: what goes in the bundle.
		rec.RawSize, rec.RawSHA256, err = bundle.RawDigest(ctxReader{ctx, io.NewSectionReader(tmp, 0, out.n)}, rec.Compression, 0, nil)
		if err != nil {
			return rec, fmt.Errorf("OS image %s (%s): %w", src, rec.Compression, err)
		}
		rec.Source = name + ", " + rec.Compression
	}
	if rec.RawSize <= 0 {
		return rec, fmt.Errorf("OS image %s: the raw disk image is empty", src)
	}
	rec.Size, rec.Digest = out.n, "sha256:"+hex.EncodeToString(blobHash.Sum(nil))
	if err := tmp.Sync(); err != nil {
		return rec, err
	}
	if err := os.Rename(tmp.Name(), blobPath); err != nil {
		return rec, err
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return rec, err
	}
	return rec, os.WriteFile(recPath, raw, 0o644)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// maxQcow2Size bounds the virtual disk of a qcow2 image the build
// converts (64 TiB).
const maxQcow2Size = 64 << 40

// qcow2Header is what convertQcow2 checks of a qcow2 header before the
// reader library sees it.
type qcow2Header struct {
	Magic             [4]byte
	Version           uint32
	BackingFileOffset uint64
	BackingFileSize   uint32
	ClusterBits       uint32
	Size              uint64
	CryptMethod       uint32
	L1Size            uint32
}

// checkQcow2Header refuses what the build does not convert: a backing
// file (the reader would open a path the image names), encryption, and
// sizes past what a disk image has (the reader allocates its L1 table
// from the header).
func checkQcow2Header(f io.ReaderAt, fileSize, maxSize int64) (qcow2Header, error) {
	var h qcow2Header
	if err := binary.Read(io.NewSectionReader(f, 0, 40), binary.BigEndian, &h); err != nil {
		return h, fmt.Errorf("read qcow2 header: %w", err)
	}
	switch {
	case string(h.Magic[:]) != "QFI\xfb":
		return h, errors.New("not a qcow2 image")
	case h.Version != 2 && h.Version != 3:
		return h, fmt.Errorf("qcow2 version %d: only 2 and 3 are known", h.Version)
	case h.BackingFileOffset != 0 || h.BackingFileSize != 0:
		return h, errors.New("the qcow2 image has a backing file: give a standalone image (qemu-img convert -O qcow2 merges the backing chain)")
	case h.CryptMethod != 0:
		return h, errors.New("the qcow2 image is encrypted")
	case h.ClusterBits < 9 || h.ClusterBits > 21:
		return h, fmt.Errorf("qcow2 cluster bits %d: not 9 to 21", h.ClusterBits)
	case h.Size == 0 || h.Size > uint64(maxSize):
		return h, fmt.Errorf("qcow2 virtual size %d bytes: not 1 to %d", h.Size, maxSize)
	}
	// Each L1 entry maps an L2 table of 2^(bits-3) clusters.
	perL1 := uint64(1) << (2*h.ClusterBits - 3)
	if need := (h.Size + perL1 - 1) / perL1; uint64(h.L1Size) < need || int64(h.L1Size)*8 > fileSize {
		return h, fmt.Errorf("qcow2 L1 table of %d entries for a virtual size of %d bytes", h.L1Size, h.Size)
	}
	return h, nil
}

var registerZstd sync.Once

// noName hides the file's name from the qcow2 reader, which resolves
// backing files relative to it.
type noName struct{ io.ReaderAt }

// convertQcow2 reads the virtual disk of the qcow2 image f (fileSize
// bytes) with the go-qcow2reader library, writes it raw to w and returns
// its size and SHA-256. Unallocated clusters read as zeros.
func convertQcow2(ctx context.Context, f io.ReaderAt, fileSize int64, w io.Writer, maxSize int64) (n int64, sum string, err error) {
	if _, err := checkQcow2Header(f, fileSize, maxSize); err != nil {
		return 0, "", err
	}
	registerZstd.Do(func() {
		qcow2.SetDecompressor(qcow2.CompressionTypeZstd, func(r io.Reader) (io.ReadCloser, error) {
			zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(bundle.MaxZstdWindow))
			if err != nil {
				return nil, err
			}
			return zr.IOReadCloser(), nil
		})
	})
	defer func() {
		// The reader is a library over a file of the builder's: a fault
		// in it fails this image, not the program.
		if r := recover(); r != nil {
			err = fmt.Errorf("read qcow2: %v", r)
		}
	}()
	img, err := qcow2.Open(noName{io.NewSectionReader(f, 0, fileSize)}, nil)
	if err != nil {
		return 0, "", fmt.Errorf("open qcow2: %w", err)
	}
	if err := img.Readable(); err != nil {
		return 0, "", fmt.Errorf("qcow2: %w", err)
	}
	size := img.Size()
	var h hash.Hash = sha256.New()
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return 0, "", err
		}
		chunk := buf[:min(int64(len(buf)), size-off)]
		k, err := img.ReadAt(chunk, off)
		if k != len(chunk) {
			return 0, "", fmt.Errorf("read qcow2 at %d: %d of %d bytes: %v", off, k, len(chunk), err)
		}
		h.Write(chunk)
		if _, err := w.Write(chunk); err != nil {
			return 0, "", err
		}
		off += int64(k)
	}
	return size, hex.EncodeToString(h.Sum(nil)), nil
}
