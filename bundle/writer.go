package bundle

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"
)

// WriterOptions shapes the output of a Writer.
type WriterOptions struct {
	// PartSize, when positive, splits the bundle into numbered parts of
	// this many bytes: PATH.001, PATH.002, ...
	PartSize int64
	// Executable, when set, is copied first: the result is a
	// self-contained executable with the bundle appended. It cannot be
	// combined with PartSize.
	Executable string
	// Time is written into the archive headers and the metadata; zero
	// means now.
	Time time.Time
	// Resumable opens existing .partial output without truncating it and
	// leaves it in place on Abort, so that a later build can reuse the
	// content of reserved entries it wrote (after checking its digests).
	Resumable bool
}

// Writer writes a bundle. Add entries, then Finish; Abort removes what
// was written. The output appears under its final name only when Finish
// succeeds.
type Writer struct {
	path    string
	opts    WriterOptions
	out     *partWriter
	base    int64 // size of the executable prefix
	pos     int64 // bytes of bundle written (excluding an executable prefix)
	entries []Entry
	regions []*Region
	seen    map[string]bool
	created time.Time
	exe     *Executable // the program copied first, if any
	// unchecked lets tests write duplicate and escaping paths.
	unchecked bool
}

// Create starts a bundle at path.
func Create(path string, opts WriterOptions) (*Writer, error) {
	if opts.PartSize > 0 && opts.Executable != "" {
		return nil, errors.New("create bundle: a self-contained executable cannot be split into parts")
	}
	if opts.PartSize > 0 && opts.PartSize < 1<<20 {
		return nil, fmt.Errorf("create bundle: part size %d is below the 1 MiB minimum", opts.PartSize)
	}
	t := opts.Time
	if t.IsZero() {
		t = time.Now()
	}
	t = t.UTC().Truncate(time.Second)
	if t.Unix() < 0 || t.Unix() > maxMtime {
		return nil, fmt.Errorf("create bundle: time %s cannot be written in an archive header", t)
	}
	w := &Writer{path: path, opts: opts, seen: map[string]bool{}, created: t}
	w.out = &partWriter{base: path, partSize: opts.PartSize, keep: opts.Resumable}
	if opts.PartSize <= 0 {
		w.out.partSize = 1 << 62
		w.out.single = true
	}
	if opts.Executable != "" {
		exe, err := OpenRegular(opts.Executable)
		if err != nil {
			return nil, fmt.Errorf("create self-contained executable: %w", err)
		}
		defer exe.Close()
		st, err := exe.Stat()
		if err != nil {
			return nil, fmt.Errorf("create self-contained executable: %w", err)
		}
		if err := w.out.copyFile(exe, st.Size()); err != nil {
			w.Abort()
			return nil, fmt.Errorf("create self-contained executable: copy %s: %w", opts.Executable, err)
		}
		w.base = w.out.off
		// Hash the copy, not the source: the bundle records what it holds.
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(readerAtFunc(w.out.readAt), 0, w.base)); err != nil {
			w.Abort()
			return nil, fmt.Errorf("create self-contained executable: hash the copy of %s: %w", opts.Executable, err)
		}
		w.exe = &Executable{Size: w.base, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil))}
	}
	return w, nil
}

// Prefix is the size of the executable the bundle is appended to (0 for
// a plain bundle).
func (w *Writer) Prefix() int64 { return w.base }

// Created is the time recorded in the bundle.
func (w *Writer) Created() time.Time { return w.created }

func (w *Writer) header(path string, size int64) error {
	if err := checkPath(path); err != nil && !w.unchecked {
		return fmt.Errorf("add %s: %w", path, err)
	}
	if w.seen[path] && !w.unchecked {
		return fmt.Errorf("add %s: %w: the path is already in the bundle", path, ErrCorrupt)
	}
	w.seen[path] = true
	h, err := ustarHeader(path, size, w.created.Unix())
	if err != nil {
		return fmt.Errorf("add %s: %w", path, err)
	}
	return w.write(h)
}

func (w *Writer) write(b []byte) error {
	n, err := w.out.Write(b)
	w.pos += int64(n)
	return err
}

func (w *Writer) pad(size int64) error {
	if n := padding(size); n > 0 {
		return w.write(make([]byte, n))
	}
	return nil
}

// AddFile copies size bytes from src into the bundle at path. digest is
// the content's digest, which the caller has checked; mediaType is set
// for manifests.
func (w *Writer) AddFile(path string, src *os.File, size int64, digest, mediaType string) error {
	if err := w.header(path, size); err != nil {
		return err
	}
	off := w.pos
	if err := w.out.copyFile(src, size); err != nil {
		return fmt.Errorf("add %s: %w", path, err)
	}
	w.pos += size
	w.entries = append(w.entries, Entry{Path: path, Offset: off, Size: size, Digest: digest, MediaType: mediaType})
	return w.pad(size)
}

// Reserve adds an entry of size bytes at path whose content the caller
// writes later through the returned Region, in any order and concurrently
// with other regions, while more entries are added. The caller vouches
// for digest, as with AddFile; Finish refuses to sign until every region
// is Complete.
func (w *Writer) Reserve(path string, size int64, digest, mediaType string) (*Region, error) {
	if err := w.header(path, size); err != nil {
		return nil, err
	}
	r := &Region{out: w.out, path: path, start: w.base + w.pos, size: size}
	if err := w.out.skip(size); err != nil {
		return nil, fmt.Errorf("add %s: %w", path, err)
	}
	w.entries = append(w.entries, Entry{Path: path, Offset: w.pos, Size: size, Digest: digest, MediaType: mediaType})
	w.pos += size
	w.regions = append(w.regions, r)
	return r, w.pad(size)
}

// Region is the content of a reserved entry.
type Region struct {
	out         *partWriter
	path        string
	start, size int64
	complete    atomic.Bool
}

// Size is the entry's size.
func (r *Region) Size() int64 { return r.size }

// WriteAt writes p at offset off of the entry.
func (r *Region) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > r.size {
		return 0, fmt.Errorf("write %s: %d bytes at %d are outside its %d bytes", r.path, len(p), off, r.size)
	}
	return r.out.writeAt(p, r.start+off)
}

// ReadAt reads what the region holds (in a resumed build, what an earlier
// run wrote there).
func (r *Region) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= r.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.size-off)]
	n, err := r.out.readAt(p, r.start+off)
	if err == nil && off+int64(n) == r.size {
		err = io.EOF
	}
	return n, err
}

// Complete marks the region's content as written and starts writing it
// back to disk.
func (r *Region) Complete() {
	r.complete.Store(true)
	r.out.startWriteback(r.start, r.size)
}

// AddBytes adds data at path and returns its digest.
func (w *Writer) AddBytes(path string, data []byte, mediaType string) (string, error) {
	sum := sha256.Sum256(data)
	d := "sha256:" + hex.EncodeToString(sum[:])
	if err := w.header(path, int64(len(data))); err != nil {
		return "", err
	}
	off := w.pos
	if err := w.write(data); err != nil {
		return "", fmt.Errorf("add %s: %w", path, err)
	}
	w.entries = append(w.entries, Entry{Path: path, Offset: off, Size: int64(len(data)), Digest: d, MediaType: mediaType})
	return d, w.pad(int64(len(data)))
}

// Entries returns the entries written so far.
func (w *Writer) Entries() []Entry { return w.entries }

// Finish writes the metadata (its Entries, KeyID, PublicKey, APIVersion,
// Kind and Created are filled in), the signature and the trailer, and
// moves the output to its final name(s). It returns the paths written.
func (w *Writer) Finish(meta Metadata, key ed25519.PrivateKey) ([]string, error) {
	pub, ok := key.Public().(ed25519.PublicKey)
	if !ok || len(key) != ed25519.PrivateKeySize {
		w.Abort()
		return nil, errors.New("finish bundle: the signing key is not an ed25519 key")
	}
	for _, r := range w.regions {
		if !r.complete.Load() {
			w.Abort()
			return nil, fmt.Errorf("finish bundle: the content of %s was never written", r.path)
		}
	}
	meta.APIVersion, meta.Kind = APIVersion, KindMetadata
	meta.Created = w.created.Format(time.RFC3339)
	meta.KeyID, meta.PublicKey = KeyID(pub), pub
	meta.Entries = w.entries
	meta.PartSize, meta.Executable = max(w.opts.PartSize, 0), w.exe
	raw, err := json.Marshal(meta)
	if err != nil {
		w.Abort()
		return nil, fmt.Errorf("finish bundle: encode metadata: %w", err)
	}
	sig := ed25519.Sign(key, raw)
	var t trailer
	err = w.header(MetadataPath, int64(len(raw)))
	t.metaOff, t.metaSize = w.pos, int64(len(raw))
	if err == nil {
		err = w.write(raw)
	}
	if err == nil {
		err = w.pad(int64(len(raw)))
	}
	if err == nil {
		err = w.header(SignaturePath, int64(len(sig)))
	}
	t.sigOff, t.sigSize = w.pos, int64(len(sig))
	if err == nil {
		err = w.write(sig)
	}
	if err == nil {
		err = w.pad(int64(len(sig)))
	}
	if err == nil {
		err = w.write(make([]byte, endOfArchive))
	}
	t.total = w.pos + trailerSize
	if w.opts.PartSize > 0 {
		t.partSize = w.opts.PartSize
	}
	if err == nil {
		err = w.write(t.marshal())
	}
	if err != nil {
		w.Abort()
		return nil, fmt.Errorf("finish bundle: %w", err)
	}
	mode := os.FileMode(0o644)
	if w.opts.Executable != "" {
		mode = 0o755
	}
	paths, err := w.out.commit(mode)
	if err != nil {
		w.Abort()
		return nil, fmt.Errorf("finish bundle: %w", err)
	}
	return paths, nil
}

// readerAtFunc adapts a ReadAt method value to io.ReaderAt.
type readerAtFunc func(p []byte, off int64) (int, error)

func (f readerAtFunc) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }

// Abort removes the partial output.
func (w *Writer) Abort() { w.out.abort() }

// partWriter writes a byte stream into one file or into numbered parts.
// Offsets are global: the position in the stream, an executable prefix
// included. Sequential writes advance off; reserved ranges are filled
// later with writeAt, concurrently with each other.
type partWriter struct {
	base     string
	partSize int64
	single   bool
	keep     bool // open existing .partial files without truncating them, and leave them on abort
	files    []*os.File
	off      int64 // sequential position
}

func (p *partWriter) finalName(i int) string {
	if p.single {
		return p.base
	}
	return fmt.Sprintf("%s.%03d", p.base, i+1)
}

// part returns the file holding global offset off (creating the parts up
// to it) and the room left in that part from off.
func (p *partWriter) part(off int64) (*os.File, int64, int64, error) {
	i := int(off / p.partSize)
	if i >= 999 {
		return nil, 0, 0, errors.New("more than 999 parts: use a larger --split size")
	}
	for len(p.files) <= i {
		flags := os.O_RDWR | os.O_CREATE
		if !p.keep {
			flags |= os.O_TRUNC
		}
		f, err := os.OpenFile(p.finalName(len(p.files))+".partial", flags|openNonblock, 0o644)
		if err != nil {
			return nil, 0, 0, err
		}
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			f.Close()
			if err == nil {
				err = fmt.Errorf("%s: %w", f.Name(), notRegular(st.Mode()))
			}
			return nil, 0, 0, err
		}
		if err := clearNonblock(f); err != nil {
			f.Close()
			return nil, 0, 0, err
		}
		p.files = append(p.files, f)
	}
	local := off - int64(i)*p.partSize
	return p.files[i], local, p.partSize - local, nil
}

// writeAt writes b at global offset off, across parts if it must. It is
// safe for concurrent use on disjoint ranges once the parts exist (skip
// creates them).
func (p *partWriter) writeAt(b []byte, off int64) (int, error) {
	n, err := p.across(off, int64(len(b)), func(f *os.File, local, at, chunk int64) (int64, error) {
		m, err := f.WriteAt(b[at:at+chunk], local)
		return int64(m), err
	})
	return int(n), err
}

// readAt reads from global offset off (used to check resumed content).
func (p *partWriter) readAt(b []byte, off int64) (int, error) {
	n, err := p.across(off, int64(len(b)), func(f *os.File, local, at, chunk int64) (int64, error) {
		m, err := f.ReadAt(b[at:at+chunk], local)
		return int64(m), err
	})
	return int(n), err
}

// across calls op for each part that [off, off+n) spans, with the part's
// file, the offset in it, the offset within the range and the length of
// the piece; op returns how much it did. It returns the total.
func (p *partWriter) across(off, n int64, op func(f *os.File, local, at, chunk int64) (int64, error)) (int64, error) {
	var done int64
	for done < n {
		f, local, room, err := p.part(off + done)
		if err != nil {
			return done, err
		}
		m, err := op(f, local, done, min(n-done, room))
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func (p *partWriter) Write(b []byte) (int, error) {
	n, err := p.writeAt(b, p.off)
	p.off += int64(n)
	return n, err
}

// skip leaves n bytes to be written later, creating the parts they span.
func (p *partWriter) skip(n int64) error {
	if n > 0 {
		if _, _, _, err := p.part(p.off + n - 1); err != nil {
			return err
		}
	}
	p.off += n
	return nil
}

// copyFile copies size bytes from src's current offset; between files the
// kernel copies (copy_file_range) without passing the bytes through us.
func (p *partWriter) copyFile(src *os.File, size int64) error {
	for size > 0 {
		f, local, room, err := p.part(p.off)
		if err != nil {
			return err
		}
		if _, err := f.Seek(local, io.SeekStart); err != nil {
			return err
		}
		chunk := min(room, size)
		m, err := f.ReadFrom(&io.LimitedReader{R: src, N: chunk})
		p.off += m
		size -= m
		if err != nil {
			return err
		}
		if m < chunk {
			return fmt.Errorf("%s: %w", src.Name(), io.ErrUnexpectedEOF)
		}
	}
	return nil
}

// startWriteback asks the kernel to start writing [off, off+n) to disk
// now, so that the fsync at commit has little left to do.
func (p *partWriter) startWriteback(off, n int64) {
	_, _ = p.across(off, n, func(f *os.File, local, _, chunk int64) (int64, error) {
		syncRange(f, local, chunk)
		return chunk, nil
	})
}

func (p *partWriter) commit(mode os.FileMode) ([]string, error) {
	var paths []string
	for i, f := range p.files {
		size := p.partSize
		if i == len(p.files)-1 {
			size = p.off - int64(i)*p.partSize
		}
		// A resumed .partial may be longer than this build's layout.
		if err := f.Truncate(size); err != nil {
			return nil, err
		}
		if err := f.Chmod(mode); err != nil {
			return nil, err
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
		name := p.finalName(i)
		if err := os.Rename(name+".partial", name); err != nil {
			return nil, err
		}
		paths = append(paths, name)
	}
	p.files = nil
	// Remove stale parts of an earlier, larger split of the same name.
	if !p.single {
		for i := len(paths); i < 999; i++ {
			if os.Remove(p.finalName(i)) != nil {
				break
			}
		}
	}
	return paths, nil
}

func (p *partWriter) abort() {
	for i, f := range p.files {
		f.Close()
		if !p.keep {
			os.Remove(p.finalName(i) + ".partial")
		}
	}
	p.files = nil
}
