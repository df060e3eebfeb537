package bundle

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
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
}

// Writer writes a bundle. Add entries, then Finish; Abort removes what
// was written. The output appears under its final name only when Finish
// succeeds.
type Writer struct {
	path    string
	opts    WriterOptions
	out     *partWriter
	pos     int64 // bytes of bundle written (excluding an executable prefix)
	entries []Entry
	seen    map[string]bool
	created time.Time
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
	w := &Writer{path: path, opts: opts, seen: map[string]bool{}, created: t.UTC().Truncate(time.Second)}
	w.out = &partWriter{base: path, partSize: opts.PartSize}
	if opts.PartSize <= 0 {
		w.out.partSize = 1 << 62
		w.out.single = true
	}
	if opts.Executable != "" {
		exe, err := os.Open(opts.Executable)
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
	}
	return w, nil
}

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
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg, Name: path, Size: size, Mode: 0o644, ModTime: w.created,
		Uname: "root", Gname: "root",
	}); err != nil {
		return fmt.Errorf("add %s: tar header: %w", path, err)
	}
	return w.write(buf.Bytes())
}

func (w *Writer) write(b []byte) error {
	n, err := w.out.Write(b)
	w.pos += int64(n)
	return err
}

func (w *Writer) pad(size int64) error {
	if r := size % 512; r != 0 {
		return w.write(make([]byte, 512-r))
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
	meta.APIVersion, meta.Kind = APIVersion, KindMetadata
	meta.Created = w.created.Format(time.RFC3339)
	meta.KeyID, meta.PublicKey = KeyID(pub), pub
	meta.Entries = w.entries
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
		err = w.write(make([]byte, 1024)) // tar end-of-archive
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

// Abort removes the partial output.
func (w *Writer) Abort() { w.out.abort() }

// partWriter writes a byte stream into one file or into numbered parts.
type partWriter struct {
	base     string
	partSize int64
	single   bool
	files    []*os.File
	cur      int64 // bytes in the last file
}

func (p *partWriter) finalName(i int) string {
	if p.single {
		return p.base
	}
	return fmt.Sprintf("%s.%03d", p.base, i+1)
}

func (p *partWriter) file() (*os.File, int64, error) {
	if len(p.files) == 0 || p.cur == p.partSize {
		if len(p.files) >= 999 {
			return nil, 0, errors.New("more than 999 parts: use a larger --split size")
		}
		f, err := os.OpenFile(p.finalName(len(p.files))+".partial", os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, 0, err
		}
		p.files = append(p.files, f)
		p.cur = 0
	}
	return p.files[len(p.files)-1], p.partSize - p.cur, nil
}

func (p *partWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		f, room, err := p.file()
		if err != nil {
			return n, err
		}
		chunk := b
		if int64(len(chunk)) > room {
			chunk = chunk[:room]
		}
		m, err := f.Write(chunk)
		n += m
		p.cur += int64(m)
		if err != nil {
			return n, err
		}
		b = b[m:]
	}
	return n, nil
}

// copyFile copies size bytes from src's current offset; between files the
// kernel copies (copy_file_range) without passing the bytes through us.
func (p *partWriter) copyFile(src *os.File, size int64) error {
	for size > 0 {
		f, room, err := p.file()
		if err != nil {
			return err
		}
		chunk := min(room, size)
		m, err := f.ReadFrom(&io.LimitedReader{R: src, N: chunk})
		p.cur += m
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

func (p *partWriter) commit(mode os.FileMode) ([]string, error) {
	var paths []string
	for i, f := range p.files {
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
		os.Remove(p.finalName(i) + ".partial")
	}
	p.files = nil
}
