package httpboot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	"airlock.dev/airlock/services/sendbuf"
)

// openFiles keeps the files that requests asked for open, so that serving
// a kernel or boot image to the next machine makes no open, fstat, lseek or
// close: ordinary system calls, each of which wakes the Go runtime's sysmon
// thread when the server was idle, to poll every 20 us for a while after
// (bench/results-boot.md: that polling was most of what the server spent
// beyond nginx per GiB). The requests share each descriptor through
// sendbuf.Sections, each with its own position.
//
// An entry is trusted for valid; the first request after that opens the
// name again and keeps the new file if it differs (another inode, size or
// modification time), so a file replaced under --boot-files is served
// within valid. A replaced file stays open until its last request ends.
type openFiles struct {
	valid time.Duration
	max   int // entries kept at once; more are served uncached

	mu      sync.Mutex
	m       map[string]*openFile
	opening map[string]chan struct{} // names being opened; closed when done
	closed  bool
}

type openFile struct {
	f     *os.File
	st    fs.FileInfo
	until time.Time // trusted until then
	users int       // requests serving it now
	gone  bool      // out of the map: close when users reaches 0
}

func newOpenFiles(valid time.Duration, max int) *openFiles {
	return &openFiles{valid: valid, max: max, m: make(map[string]*openFile), opening: make(map[string]chan struct{})}
}

// open returns name's content, its FileInfo and the function to call when
// the request is done with it. Regular files on disk (fsys from os.DirFS)
// are kept open and returned as a sendbuf.Section; others (go:embed) are
// opened for the request. The error wraps fs.ErrNotExist when name is not
// a regular file.
func (o *openFiles) open(fsys fs.FS, name string) (io.ReadSeeker, fs.FileInfo, func(), error) {
	now := time.Now()
	o.mu.Lock()
	for {
		e := o.m[name]
		if e != nil && now.Before(e.until) {
			e.users++
			o.mu.Unlock()
			return o.use(e)
		}
		wait, busy := o.opening[name]
		if !busy {
			break
		}
		// Another request is opening name: the many machines that ask for
		// the same kernel at once share its one open.
		o.mu.Unlock()
		<-wait
		o.mu.Lock()
	}
	done := make(chan struct{})
	o.opening[name] = done
	o.mu.Unlock()
	defer func() {
		o.mu.Lock()
		delete(o.opening, name)
		o.mu.Unlock()
		close(done)
	}()

	ff, err := fsys.Open(name)
	if errors.Is(err, syscall.ENOTDIR) {
		err = fmt.Errorf("%w: %w", fs.ErrNotExist, err) // a path through a file
	}
	if err != nil {
		return nil, nil, nil, err
	}
	st, err := ff.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file: %w", name, fs.ErrNotExist)
	}
	if err != nil {
		ff.Close()
		return nil, nil, nil, err
	}
	f, onDisk := ff.(*os.File)
	if !onDisk {
		rs, ok := ff.(io.ReadSeeker)
		if !ok {
			ff.Close()
			return nil, nil, nil, fmt.Errorf("%s is not seekable", name)
		}
		return rs, st, func() { ff.Close() }, nil
	}

	o.mu.Lock()
	defer o.mu.Unlock()
	if e := o.m[name]; e != nil && sameFile(e.st, st) {
		f.Close() // unchanged: keep the one open already
		e.until = now.Add(o.valid)
		e.users++
		return o.use(e)
	}
	if e := o.m[name]; e != nil {
		o.drop(name, e)
	}
	n := &openFile{f: f, st: st, until: now.Add(o.valid), users: 1}
	if o.closed || !o.room(now) {
		n.gone = true // served once, then closed
	} else {
		o.m[name] = n
	}
	return o.use(n)
}

// use is the Section, FileInfo and done function of e, whose users the
// caller has counted.
func (o *openFiles) use(e *openFile) (io.ReadSeeker, fs.FileInfo, func(), error) {
	done := func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		e.users--
		if e.gone && e.users == 0 {
			e.f.Close()
		}
	}
	return sendbuf.NewSection(e.f, 0, e.st.Size()), e.st, done, nil
}

// room makes room for one more entry, dropping the expired ones, and says
// whether there is. o.mu is held.
func (o *openFiles) room(now time.Time) bool {
	if len(o.m) < o.max {
		return true
	}
	for name, e := range o.m {
		if !now.Before(e.until) {
			o.drop(name, e)
		}
	}
	return len(o.m) < o.max
}

// drop takes e out of the map and closes it once no request uses it.
// o.mu is held.
func (o *openFiles) drop(name string, e *openFile) {
	delete(o.m, name)
	e.gone = true
	if e.users == 0 {
		e.f.Close()
	}
}

// close closes every file no request uses, and the others as their
// requests end; later opens are served uncached.
func (o *openFiles) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	for name, e := range o.m {
		o.drop(name, e)
	}
}

// sameFile reports whether b is still the file a was: the same inode, size
// and modification time.
func sameFile(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
