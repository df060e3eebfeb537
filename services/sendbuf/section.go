package sendbuf

import (
	"errors"
	"io"
	"os"
	"syscall"
	"unsafe"
)

// Section is size bytes of an open file from base, with a read position of
// its own, so that many requests can read one descriptor at once: Read is
// pread(2), Seek only moves the position, and a connection's ReadFrom sends
// the section with sendfile from that position, leaving the file's offset
// alone. A service that keeps its files open thus serves a request with no
// open, lseek or close of its own: ordinary system calls that wake sysmon
// when the process was idle (see conn.Read).
//
// The file must stay open while a Section of it is in use.
type Section struct {
	f          *os.File
	base, size int64
	pos        int64 // from base
}

// NewSection returns the size bytes of f from off.
func NewSection(f *os.File, off, size int64) *Section {
	return &Section{f: f, base: off, size: max(0, size)}
}

// Size is the section's length.
func (s *Section) Size() int64 { return s.size }

// Read reads from the section's position.
func (s *Section) Read(p []byte) (int, error) {
	left := s.size - s.pos
	if left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := pread(s.f, p, s.base+s.pos)
	s.pos += int64(n)
	return n, err
}

// pread is one pread(2) of p from f at off, made raw when those pages are
// in the page cache (it cannot block then; net/http reads the first 512
// bytes of every body before it calls ReadFrom). It returns io.EOF at the
// file's end.
func pread(f *os.File, p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var e syscall.Errno
	cerr := rc.Control(func(fd uintptr) {
		raw := resident(int(fd), off, int64(len(p)), off+int64(len(p)))
		for {
			var r uintptr
			buf, count := uintptr(unsafe.Pointer(&p[0])), uintptr(len(p))
			if raw {
				r, _, e = syscall.RawSyscall6(syscall.SYS_PREAD64, fd, buf, count, uintptr(off), 0, 0)
			} else {
				r, _, e = syscall.Syscall6(syscall.SYS_PREAD64, fd, buf, count, uintptr(off), 0, 0)
			}
			if e != syscall.EINTR {
				n = int(r)
				return
			}
		}
	})
	switch {
	case cerr != nil:
		return 0, cerr
	case e != 0:
		return 0, &os.PathError{Op: "read", Path: f.Name(), Err: e}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

var errNegative = errors.New("sendbuf: seek to a negative position")

// Seek moves the section's position; whence is io.SeekStart, SeekCurrent
// or SeekEnd (the section's end).
func (s *Section) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += s.pos
	case io.SeekEnd:
		offset += s.size
	default:
		return 0, errors.New("sendbuf: seek: bad whence")
	}
	if offset < 0 {
		return 0, errNegative
	}
	s.pos = offset
	return offset, nil
}
