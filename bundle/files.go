package bundle

import (
	"fmt"
	"io"
	"io/fs"
	"os"
)

// FilePathPrefix is where a bundle's files (File.Path) lie in the archive.
const FilePathPrefix = "files/"

// File returns the bundle file called name (a File's Name, such as
// kubernetes/v1.35.4/linux-amd64/kubelet).
func (b *Bundle) File(name string) (File, bool) {
	for _, f := range b.meta.Files {
		if f.Name == name {
			return f, true
		}
	}
	return File{}, false
}

// FileContent returns where the bundle file called name lies: size bytes
// at off in r, for a server to send (with sendfile when r is an *os.File).
// Its digest is checked the first time it is asked for, and the outcome
// remembered, as Content does for blobs: a damaged file is refused from
// then on.
func (b *Bundle) FileContent(name string) (f File, r io.ReaderAt, off, size int64, err error) {
	f, ok := b.File(name)
	if !ok {
		return File{}, nil, 0, 0, fmt.Errorf("file %q in bundle %s: %w", name, b.name, fs.ErrNotExist)
	}
	e, ok := b.byPath[f.Path]
	c := b.pathChecks[f.Path]
	if !ok || c == nil || e.Digest != f.Digest || e.Size != f.Size {
		return File{}, nil, 0, 0, fmt.Errorf("%w: file %q: its entry %q is missing or differs from the file's size and digest", ErrCorrupt, name, f.Path)
	}
	c.once.Do(func() { c.err = b.checkEntry(e, nil) })
	if c.err != nil {
		return File{}, nil, 0, 0, c.err
	}
	r, off = b.locate(e.Offset, e.Size)
	return f, r, off, e.Size, nil
}

// OpenRegular opens path for reading and refuses anything but a regular
// file. The open does not block (an ordinary open of a FIFO waits for a
// writer), and the kind is checked on the opened file, not on the name,
// so the file cannot be swapped in between.
func OpenRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|openNonblock, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, notRegular(st.Mode()))
	}
	if err := clearNonblock(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// notRegular describes a file that is not a regular file.
func notRegular(m fs.FileMode) error {
	kind := "special file"
	switch {
	case m.IsDir():
		kind = "directory"
	case m&fs.ModeNamedPipe != 0:
		kind = "FIFO"
	case m&fs.ModeCharDevice != 0:
		kind = "character device"
	case m&fs.ModeDevice != 0:
		kind = "block device"
	case m&fs.ModeSocket != 0:
		kind = "socket"
	case m&fs.ModeSymlink != 0:
		kind = "symbolic link"
	}
	return fmt.Errorf("is a %s, not a regular file", kind)
}

// ReadRegularFile reads a regular file of at most max bytes. The size is
// checked before anything is read, and the read stops at max+1 bytes, so
// a file that grows meanwhile is refused too; what says what the file is,
// for messages ("public key").
func ReadRegularFile(path string, max int64, what string) ([]byte, error) {
	f, err := OpenRegular(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > max {
		return nil, fmt.Errorf("read %s %s: %d bytes, more than the %d a %s can have", what, path, st.Size(), max, what)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("read %s %s: more than the %d bytes a %s can have", what, path, max, what)
	}
	return b, nil
}
