package bundle

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Repositories lists the full names of the image repositories, sorted.
func (b *Bundle) Repositories() []string { return b.repos }

// Tags lists a repository's tags, sorted; nil if it is not in the bundle.
func (b *Bundle) Tags(repository string) []string {
	t, ok := b.tags[repository]
	if !ok {
		return nil
	}
	out := make([]string, 0, len(t))
	for k := range t {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ResolveTag returns the digest a repository's tag points at.
func (b *Bundle) ResolveTag(repository, tag string) (string, bool) {
	d, ok := b.tags[repository][tag]
	return d, ok
}

// Content returns where the blob with digest lies: size bytes at off in
// r, and its media type (set for manifests). The blob's digest is checked
// the first time it is asked for; a blob that fails is refused from then
// on. When the blob lies within one file, r is that *os.File, so a server
// can send it with sendfile.
func (b *Bundle) Content(digest string) (r io.ReaderAt, off, size int64, mediaType string, err error) {
	e, ok := b.byDigest[digest]
	if !ok {
		return nil, 0, 0, "", fmt.Errorf("blob %s: %w", digest, fs.ErrNotExist)
	}
	c := b.checks[digest]
	c.once.Do(func() { c.err = b.checkEntry(e, nil) })
	if c.err != nil {
		return nil, 0, 0, "", c.err
	}
	r, off = b.locate(e.Offset, e.Size)
	return r, off, e.Size, e.MediaType, nil
}

// Unchecked returns the bytes of the blob with digest without checking
// them, for a caller that hashes them itself as it reads (bundle build
// reusing an earlier bundle's blobs).
func (b *Bundle) Unchecked(digest string) (*io.SectionReader, error) {
	e, ok := b.byDigest[digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", digest, fs.ErrNotExist)
	}
	return io.NewSectionReader(b.ra, e.Offset, e.Size), nil
}

// locate returns the file and offset holding [off, off+size) of the
// bundle when one file holds it all, else the whole bundle.
func (b *Bundle) locate(off, size int64) (io.ReaderAt, int64) {
	abs := b.base + off
	for _, p := range b.parts {
		if abs >= p.start && abs+size <= p.start+p.size {
			return p.f, abs - p.start
		}
	}
	return b.ra, off
}

// Open returns a reader of the file at path in the bundle, after checking
// its digest.
func (b *Bundle) Open(path string) (*io.SectionReader, error) {
	e, ok := b.byPath[path]
	if !ok {
		return nil, fmt.Errorf("open %s in bundle %s: %w", path, b.name, fs.ErrNotExist)
	}
	if err := b.checkEntry(e, nil); err != nil {
		return nil, err
	}
	return io.NewSectionReader(b.ra, e.Offset, e.Size), nil
}

// ReadFile returns the bytes of the file at path after checking its digest.
func (b *Bundle) ReadFile(path string) ([]byte, error) {
	r, err := b.Open(path)
	if err != nil {
		return nil, err
	}
	data := make([]byte, r.Size())
	if _, err := r.ReadAt(data, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("read %s in bundle %s: %w", path, b.name, err)
	}
	return data, nil
}

func newHash(digest string) (hash.Hash, string) {
	if strings.HasPrefix(digest, "sha512:") {
		return sha512.New(), "sha512:"
	}
	return sha256.New(), "sha256:"
}

// checkEntry hashes an entry and compares it with its signed digest.
func (b *Bundle) checkEntry(e *Entry, progress *atomic.Int64) error {
	got, err := hashSection(io.NewSectionReader(b.ra, e.Offset, e.Size), e.Digest, progress)
	if err != nil {
		return fmt.Errorf("%w: read %s: %v; copy the bundle again", ErrCorrupt, e.Path, err)
	}
	if got != e.Digest {
		return fmt.Errorf("%w: %s (%d bytes at offset %d) has digest %s, the signed metadata says %s: the bundle was damaged in transit or altered; copy it again (or rebuild it) and run airlock bundle verify",
			ErrCorrupt, e.Path, e.Size, e.Offset, got, e.Digest)
	}
	return nil
}

// checkExecutable hashes the program a self-contained bundle is appended
// to and compares it with the digest the metadata records.
func (b *Bundle) checkExecutable(progress *atomic.Int64) error {
	exe := b.meta.Executable
	got, err := hashSection(io.NewSectionReader(b.parts[0].f, 0, b.base), exe.Digest, progress)
	if err != nil {
		return fmt.Errorf("%w: read the executable before the bundle: %v", ErrCorrupt, err)
	}
	if got != exe.Digest {
		return fmt.Errorf("%w: the executable this bundle is appended to (%d bytes) has digest %s, the signed metadata says %s: the program was altered or damaged; do not run it, copy the self-contained executable again",
			ErrCorrupt, b.base, got, exe.Digest)
	}
	return nil
}

// hashSection hashes sr with the algorithm of digest and returns the
// result in the same form.
func hashSection(sr *io.SectionReader, digest string, progress *atomic.Int64) (string, error) {
	h, algo := newHash(digest)
	buf := make([]byte, max(min(sr.Size(), 1<<20), 1))
	for {
		n, err := sr.Read(buf)
		h.Write(buf[:n])
		if progress != nil {
			progress.Add(int64(n))
		}
		if err == io.EOF {
			return algo + hex.EncodeToString(h.Sum(nil)), nil
		}
		if err != nil {
			return "", err
		}
	}
}

// VerifyResult reports a full verification.
type VerifyResult struct {
	Entries  int
	Bytes    int64
	Duration time.Duration
	KeyID    string
	Trusted  bool
	// Authenticity says how the signing key was trusted.
	Authenticity Authenticity
}

// Throughput is bytes per second.
func (r VerifyResult) Throughput() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Bytes) / r.Duration.Seconds()
}

// VerifyOptions tunes Verify.
type VerifyOptions struct {
	// Workers hash entries in parallel; 0 means 2.
	Workers int
	// Progress, when set, is called about every 200ms with bytes hashed so far
	// and the total.
	Progress func(done, total int64)
}

// Verify checks the digest of every entry, the raw size and digest of
// every OS image (decompressing it), and the digest of the executable a
// self-contained bundle is appended to (the signature, structure and
// signing key were checked by Open). It returns every failure, joined.
func (b *Bundle) Verify(ctx context.Context, opts VerifyOptions) (VerifyResult, error) {
	start := time.Now()
	workers := opts.Workers
	if workers <= 0 {
		workers = 2
	}
	type job struct {
		size  int64
		check func(progress *atomic.Int64) error
	}
	entries := make([]job, 0, len(b.meta.Entries)+1)
	var total int64
	for i := range b.meta.Entries {
		e := &b.meta.Entries[i]
		entries = append(entries, job{e.Size, func(p *atomic.Int64) error { return b.checkEntry(e, p) }})
		total += e.Size
	}
	nEntries := len(entries)
	// Each OS image is decompressed too, and its raw size and digest
	// compared with the signed ones.
	for _, im := range b.meta.OSImages {
		entries = append(entries, job{im.Size, func(p *atomic.Int64) error { return b.checkRaw(im, p) }})
		total += im.Size
	}
	if b.meta.Executable != nil {
		entries = append(entries, job{b.base, b.checkExecutable})
		total += b.base
	}
	// Largest first, so that the workers finish together.
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].size > entries[j].size })
	var (
		done   atomic.Int64
		mu     sync.Mutex
		errs   []error
		next   atomic.Int64
		wg     sync.WaitGroup
		stopPg = make(chan struct{})
	)
	if opts.Progress != nil {
		go func() {
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopPg:
					return
				case <-t.C:
					opts.Progress(done.Load(), total)
				}
			}
		}()
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(entries) || ctx.Err() != nil {
					return
				}
				if err := entries[i].check(&done); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	close(stopPg)
	if opts.Progress != nil {
		opts.Progress(done.Load(), total)
	}
	res := VerifyResult{Entries: nEntries, Bytes: done.Load(), Duration: time.Since(start), KeyID: b.meta.KeyID, Trusted: b.Trusted(), Authenticity: b.auth}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("verify bundle %s: %w", b.name, err)
	}
	if len(errs) > 0 {
		sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
		return res, fmt.Errorf("verify bundle %s: %d of %d checks failed:\n%w", b.name, len(errs), len(entries), joinLines(errs))
	}
	return res, nil
}

type lineErrors []error

func (l lineErrors) Error() string {
	var s []string
	for _, e := range l {
		s = append(s, "  "+e.Error())
	}
	return strings.Join(s, "\n")
}

func (l lineErrors) Unwrap() []error { return l }

func joinLines(errs []error) error { return lineErrors(errs) }
