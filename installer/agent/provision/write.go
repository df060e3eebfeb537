package provision

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// WriteSpec says what image to expect.
type WriteSpec struct {
	// RawSize and RawSHA256 (hex) are the size and digest of the raw,
	// decompressed image, from the bundle's signed metadata.
	RawSize   int64
	RawSHA256 string
	// StreamSHA256 (hex), if set, is the digest of the stream as sent
	// (the bundle blob's digest). With RawSHA256 empty it is checked
	// instead of the raw stream's, which costs a hash of the compressed
	// bytes only; the decompressor then checks its own checksum of the
	// raw content (zstd's frame checksum, gzip's CRC-32, xz's block
	// checks) against decoder faults. RawSize is checked either way. With
	// both set, both are checked.
	StreamSHA256 string
	// Buffered turns off O_DIRECT for the bulk of the image (it is on by
	// default: see docs-provision.md for what it measured).
	Buffered bool
	// ChunkSize is the size of each disk write; 0 means 4 MiB.
	ChunkSize int
}

// Progress is reported while an image is written.
type Progress struct {
	Written     int64 // raw bytes on the disk so far
	Total       int64 // RawSize
	Elapsed     time.Duration
	BytesPerSec float64 // average since the start
}

// WriteReport says what Write did.
type WriteReport struct {
	Dev            string
	Format         string // gzip, xz, zstd or raw, from the stream's magic bytes
	RawSize        int64
	SHA256         string // of the raw stream, when RawSHA256 was given
	StreamSHA256   string // of the stream as sent, when StreamSHA256 was given
	Elapsed        time.Duration
	BackupGPTMoved bool   // the backup GPT was moved to the disk's end
	ZeroedOut      int64  // bytes of all-zero chunks left to the device (BLKZEROOUT)
	Reread         string // what re-reading the partition table gave
}

// Fetch GETs an image over HTTP for Write; the caller closes the body.
func Fetch(ctx context.Context, client *http.Client, url string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch image %q: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch image %q: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("fetch image %q: HTTP status %q", url, resp.Status)
	}
	return resp.Body, nil
}

// decompress wraps src in the decompressor its first bytes name (gzip, xz,
// zstd) or none. The peeked bytes are put back with a MultiReader rather
// than a bufio.Reader, so that the raw and zstd paths copy nothing more.
func decompress(src io.Reader, checkFrames bool) (io.Reader, string, func(), error) {
	magic := make([]byte, 6)
	n, err := io.ReadFull(src, magic)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, "", nil, fmt.Errorf("read image: %w", err)
	}
	magic = magic[:n]
	r := io.MultiReader(bytes.NewReader(magic), src)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(bufio.NewReaderSize(r, 256<<10))
		if err != nil {
			return nil, "", nil, fmt.Errorf("read gzip image: %w", err)
		}
		zr.Multistream(true)
		return zr, "gzip", func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		zr, err := xz.NewReader(bufio.NewReaderSize(r, 256<<10))
		if err != nil {
			return nil, "", nil, fmt.Errorf("read xz image: %w", err)
		}
		return zr, "xz", func() {}, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		// The frame's own xxhash is checked only when the raw stream's
		// SHA-256 is not. Windows up to 256 MiB (zstd --long=28) are
		// accepted; a larger one would cost the discovery image's RAM.
		zr, err := zstd.NewReader(r, zstd.WithDecoderMaxWindow(1<<28), zstd.IgnoreChecksum(!checkFrames))
		if err != nil {
			return nil, "", nil, fmt.Errorf("read zstd image: %w", err)
		}
		return zr, "zstd", zr.Close, nil
	case bytes.HasPrefix(magic, []byte("QFI\xfb")):
		return nil, "", nil, errors.New("image is qcow2: convert it to raw at bundle build time")
	}
	return r, "raw", func() {}, nil
}

// alignedBuf returns n bytes aligned to 4096 for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := (4096 - int(uintptr(unsafe.Pointer(&b[0]))&4095)) & 4095
	return b[off : off+n : off+n]
}

type chunk struct {
	buf  []byte
	off  int64
	zero bool // every byte is 0
}

// isZero reports whether b holds only zero bytes, comparing it with zero
// (a zeroed buffer) piece by piece.
func isZero(b, zero []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zero))
		if !bytes.Equal(b[:n], zero[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Write streams the image in src onto dev (a block device, normally just
// wiped; or a file in tests). It detects the compression by magic bytes,
// hashes the raw stream (and/or the stream as sent: see WriteSpec), zeroes
// the disk's first MiB before anything else and writes the image's first
// MiB last, only after the raw size and the digests match spec: on any
// failure the first MiB stays zeroed. The bulk goes down with O_DIRECT in
// aligned chunks; all-zero chunks are left to the device (BLKZEROOUT). A
// GPT image smaller than the disk gets its backup GPT moved to the disk's
// end. The disk is synced and its partition table re-read. progress, if
// not nil, is called from Write's goroutines about four times a second and
// once at the end.
func Write(ctx context.Context, dev string, src io.Reader, spec WriteSpec, progress func(Progress)) (WriteReport, error) {
	rep := WriteReport{Dev: dev}
	start := time.Now()
	want, wantStream := strings.ToLower(spec.RawSHA256), strings.ToLower(spec.StreamSHA256)
	for _, d := range []string{want, wantStream} {
		if _, err := hex.DecodeString(d); err != nil || (len(d) != 64 && d != "") {
			return rep, fmt.Errorf("write image to %s: expected sha256 %q is not 64 hex digits", dev, d)
		}
	}
	if want == "" && wantStream == "" {
		return rep, fmt.Errorf("write image to %s: no digest to check the image against", dev)
	}
	if spec.RawSize <= 0 {
		return rep, fmt.Errorf("write image to %s: raw size %d: %w", dev, spec.RawSize, ErrSize)
	}
	chunkSize := spec.ChunkSize
	if chunkSize <= 0 {
		chunkSize = 4 * MiB
	}
	chunkSize = (chunkSize + 4095) &^ 4095

	f, err := openExclusive(dev)
	if err != nil {
		return rep, err
	}
	defer f.Close()
	diskSize, err := deviceSize(f)
	if err != nil {
		return rep, err
	}
	ss, err := sectorSize(f)
	if err != nil {
		return rep, err
	}
	if isBlock(f) && spec.RawSize > diskSize {
		return rep, fmt.Errorf("write image to %s: image of %d bytes does not fit a disk of %d: %w", dev, spec.RawSize, diskSize, ErrSize)
	}
	if !isBlock(f) {
		diskSize = max(diskSize, spec.RawSize)
	}

	streamHash := sha256.New()
	if wantStream != "" {
		src = io.TeeReader(src, streamHash)
	}
	raw, format, closeDec, err := decompress(src, want == "")
	if err != nil {
		return rep, fmt.Errorf("write image to %s: %w", dev, err)
	}
	defer closeDec()
	rep.Format = format
	raw = io.LimitReader(raw, spec.RawSize+1)

	// The first MiB is read before the disk is touched: a stream that
	// fails at once, or an image for another sector size, leaves it as
	// it was.
	held := make([]byte, MiB)
	n, err := io.ReadFull(raw, held)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return rep, fmt.Errorf("write image to %s: read %s image: %w", dev, format, err)
	}
	held = held[:n]
	var gptSS int64
	if gptSS = gptSectorSize(held); gptSS != 0 && gptSS != ss {
		return rep, fmt.Errorf("write image to %s: image's GPT is for %d-byte sectors, the disk has %d-byte sectors", dev, gptSS, ss)
	}
	hash, hashRaw := sha256.New(), want != ""
	if hashRaw {
		hash.Write(held)
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("write image to %s: %w", dev, err)
	}

	// Nothing boots from this disk until the image is proven whole: zero
	// its first MiB now, and the last MiB past the image (a stale backup
	// GPT), before the bulk goes down.
	zero := alignedBuf(MiB)
	head := min(int64(MiB), diskSize)
	if _, err := f.WriteAt(zero[:head], 0); err != nil {
		return rep, fmt.Errorf("write image to %s: zero first MiB: %w", dev, err)
	}
	if tail := max(spec.RawSize, diskSize-MiB); tail < diskSize {
		if _, err := f.WriteAt(zero[:diskSize-tail], tail); err != nil {
			return rep, fmt.Errorf("write image to %s: zero last MiB: %w", dev, err)
		}
	}
	if err := f.Sync(); err != nil {
		return rep, fmt.Errorf("write image to %s: sync: %w", dev, err)
	}

	direct := !spec.Buffered && isBlock(f)
	if direct {
		if err := setDirect(f, true); err != nil {
			direct = false // a device without direct I/O: buffered writes
		}
	}

	var written atomic.Int64
	report := func() {
		if progress == nil {
			return
		}
		el := time.Since(start)
		w := written.Load()
		progress(Progress{Written: w, Total: spec.RawSize, Elapsed: el, BytesPerSec: float64(w) / max(el.Seconds(), 1e-9)})
	}

	// Three stages over a ring of aligned buffers: read (decompress),
	// hash, write. Order is kept by the channels.
	const depth = 4
	free := make(chan []byte, depth)
	for i := 0; i < depth; i++ {
		free <- alignedBuf(chunkSize)
	}
	toHash := make(chan chunk, depth)
	toWrite := make(chan chunk, depth)
	total := int64(n)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(toHash)
		off := int64(n)
		if n < MiB {
			return nil
		}
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-gctx.Done():
				return gctx.Err()
			}
			m, err := io.ReadFull(raw, buf)
			if m > 0 {
				select {
				case toHash <- chunk{buf: buf[:m], off: off}:
				case <-gctx.Done():
					return gctx.Err()
				}
				off += int64(m)
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				total = off
				return nil
			}
			if err != nil {
				return fmt.Errorf("read %s image at raw offset %d: %w", format, off, err)
			}
			if off > spec.RawSize {
				return fmt.Errorf("image is longer than %d bytes: %w", spec.RawSize, ErrSize)
			}
		}
	})
	g.Go(func() error {
		defer close(toWrite)
		for c := range toHash {
			if hashRaw {
				hash.Write(c.buf)
			}
			c.zero = isZero(c.buf, zero)
			select {
			case toWrite <- c:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	g.Go(func() error {
		last := time.Now()
		zeroOut := isBlock(f)
		for c := range toWrite {
			if c.zero && zeroOut && c.off%ss == 0 && int64(len(c.buf))%ss == 0 {
				// The device zeroes the range itself (WRITE ZEROES, or
				// the kernel's own zero pages): no copy of our zeros.
				if err := blkZeroOut(f, c.off, int64(len(c.buf))); err == nil {
					rep.ZeroedOut += int64(len(c.buf))
					written.Add(int64(len(c.buf)))
					free <- c.buf[:cap(c.buf)]
					continue
				}
				zeroOut = false // not supported here: write them
			}
			if direct && len(c.buf)%4096 != 0 {
				if err := setDirect(f, false); err != nil {
					return err
				}
				direct = false
			}
			if _, err := f.WriteAt(c.buf, c.off); err != nil {
				return fmt.Errorf("write bytes %d-%d: %w", c.off, c.off+int64(len(c.buf)), err)
			}
			written.Add(int64(len(c.buf)))
			free <- c.buf[:cap(c.buf)]
			if time.Since(last) >= 250*time.Millisecond {
				last = time.Now()
				report()
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return rep, fmt.Errorf("write image to %s: %w (first MiB left zeroed)", dev, err)
	}
	if direct {
		if err := setDirect(f, false); err != nil {
			return rep, err
		}
	}
	rep.RawSize = total
	if hashRaw {
		rep.SHA256 = hex.EncodeToString(hash.Sum(nil))
	}
	if total != spec.RawSize {
		return rep, fmt.Errorf("write image to %s: raw image is %d bytes, expected %d: %w (first MiB left zeroed)", dev, total, spec.RawSize, ErrSize)
	}
	if want != "" && rep.SHA256 != want {
		return rep, fmt.Errorf("write image to %s: %w", dev, &DigestError{Expected: want, Actual: rep.SHA256})
	}
	if wantStream != "" {
		// The decompressor may not have read its input to the end (a
		// trailing frame, padding): what was sent is what is checked.
		if _, err := io.Copy(io.Discard, src); err != nil {
			return rep, fmt.Errorf("write image to %s: read the stream's end: %w (first MiB left zeroed)", dev, err)
		}
		rep.StreamSHA256 = hex.EncodeToString(streamHash.Sum(nil))
		if rep.StreamSHA256 != wantStream {
			return rep, fmt.Errorf("write image to %s: stream %w", dev, &DigestError{Expected: wantStream, Actual: rep.StreamSHA256})
		}
	}

	// Verified. Move the backup GPT to the disk's end, then write the
	// first MiB.
	if gptSS != 0 {
		mv, err := relocateGPT(held, gptSS, diskSize)
		if err != nil {
			return rep, fmt.Errorf("write image to %s: %w (first MiB left zeroed)", dev, err)
		}
		if mv != nil {
			if mv.oldHeader >= MiB && mv.oldHeader < mv.backupOff {
				if _, err := f.WriteAt(zero[:gptSS], mv.oldHeader); err != nil {
					return rep, fmt.Errorf("write image to %s: clear the image's backup GPT header: %w", dev, err)
				}
			}
			if _, err := f.WriteAt(mv.backup, mv.backupOff); err != nil {
				return rep, fmt.Errorf("write image to %s: write backup GPT: %w", dev, err)
			}
			rep.BackupGPTMoved = true
		}
	}
	if err := f.Sync(); err != nil {
		return rep, fmt.Errorf("write image to %s: sync: %w", dev, err)
	}
	if _, err := f.WriteAt(held, 0); err != nil {
		return rep, fmt.Errorf("write image to %s: write first MiB: %w", dev, err)
	}
	if err := f.Sync(); err != nil {
		return rep, fmt.Errorf("write image to %s: sync: %w", dev, err)
	}
	written.Add(int64(len(held)))
	if rep.Reread, err = rereadPartitions(f); err != nil {
		return rep, fmt.Errorf("write image to %s: %w", dev, err)
	}
	rep.Elapsed = time.Since(start)
	report()
	return rep, nil
}

// setDirect turns O_DIRECT on or off on an open file.
func setDirect(f *os.File, on bool) error {
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("get flags of %s: %w", f.Name(), err)
	}
	if on {
		flags |= unix.O_DIRECT
	} else {
		flags &^= unix.O_DIRECT
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFL, flags); err != nil {
		return fmt.Errorf("set O_DIRECT=%v on %s: %w", on, f.Name(), err)
	}
	return nil
}
