package sendbuf

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// conn is an accepted TCP connection whose ReadFrom sends files with
// sendfile(2) called without the Go runtime's system-call bookkeeping when
// the bytes are in the page cache.
type conn struct {
	*net.TCPConn
	open *atomic.Int64 // the listener's count of open connections
	// l is the listener that accepted it. mu guards closed and enlarged
	// (set once Enlarge gave it the Registry buffer, counted in
	// l.enlarged until it closes).
	l                *listener
	mu               sync.Mutex
	closed, enlarged bool

	rawOnce sync.Once
	raw     syscall.RawConn
	rawErr  error

	// waits counts ReadFrom's waits for the socket, and eagains those
	// that followed a sendfile refused with EAGAIN (the rest followed a
	// short send); the tests read them.
	waits, eagains int
}

// Close closes the connection and counts it out of the listener's open
// connections.
func (c *conn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.open.Add(-1)
		if c.enlarged {
			c.l.enlarged.Add(-1)
		}
	}
	c.mu.Unlock()
	return c.TCPConn.Close()
}

// Read and Write make their system calls raw, as ReadFrom does for cached
// pages: the socket is non-blocking, so read(2) and write(2) return at
// once, and an ordinary system call made after the process idled wakes
// sysmon, which then polls every 20 us for a while (one wake-up per
// request from net/http's read of the next request and write of the
// response header; bench/results-boot.md). Deadlines work as on the
// net.TCPConn: the waits are the netpoller's.
func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := c.rawIO(syscall.SYS_READ, p)
	if err == nil && n == 0 {
		return 0, io.EOF
	}
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	var written int
	for written < len(p) {
		n, err := c.rawIO(syscall.SYS_WRITE, p[written:])
		written += n
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// rawIO makes one read(2) or write(2) of p on the socket, waiting in the
// netpoller while it would block. Errors are *net.OpError with Op "read"
// or "write", as net's own (net/http tells ordinary read errors by it).
func (c *conn) rawIO(trap uintptr, p []byte) (int, error) {
	rc, err := c.rawConn()
	if err != nil {
		return 0, err
	}
	var n int
	var e syscall.Errno
	try := func(fd uintptr) bool {
		for {
			r, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch errno {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			}
			n, e = int(r), errno
			return true
		}
	}
	op := "read"
	if trap == syscall.SYS_WRITE {
		op = "write"
		err = rc.Write(try)
	} else {
		err = rc.Read(try)
	}
	if err == nil && e != 0 {
		err = os.NewSyscallError(op, e)
		n = 0
	}
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = oe.Err // the raw conn's own "raw-read"
		}
		return n, &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, nil
}

// rawConn is the connection's syscall.RawConn, made once.
func (c *conn) rawConn() (syscall.RawConn, error) {
	c.rawOnce.Do(func() { c.raw, c.rawErr = c.TCPConn.SyscallConn() })
	return c.raw, c.rawErr
}

// stallTimeout ends a transfer whose client has taken nothing for this
// long (nginx's send_timeout is the same minute). Without it a client
// that stops reading but keeps its connection open (its window at zero)
// would hold a goroutine and an open file for ever.
var stallTimeout = time.Minute

// window is how far ahead ReadFrom checks that the file's pages are in
// the page cache before sending them with a raw system call.
const window = 16 << 20

// ReadFrom sends r with sendfile when r is a file or a Section (or an
// *io.LimitedReader over one), and otherwise does what net.TCPConn.ReadFrom
// does.
//
// Why not net's own sendfile: the socket is non-blocking, so a sendfile
// call never sleeps on the socket: it copies what fits in the send buffer
// (megabytes with Size) and returns, or returns EAGAIN, and the goroutine
// then waits in the netpoller like any other write. But net makes each call
// an ordinary blocking system call for the Go scheduler, and a call that
// copies megabytes lasts long enough for sysmon to take the P away and hand
// it to another thread: wake-ups, futex calls, context switches and a
// second thread competing for the CPU, for a call that was using the CPU
// all along. Measured with perf stat on bench/httpboot: context switches
// per second 3.1k -> 0.6k, futex 1.0k -> 0.2k.
//
// A sendfile whose file pages are not in memory does sleep, on the disk;
// holding the P through that would stall other goroutines (DHCP, TFTP),
// so each window of the file is checked first (cachestat(2), or mincore(2)
// on kernels older than 6.5) and sent with an ordinary system call unless
// every page is resident.
//
// A client that takes nothing for stallTimeout (3/4 of it at the least)
// ends the transfer with an error that wraps os.ErrDeadlineExceeded
// (ReadFrom manages the connection's write deadline, and clears it when it
// returns).
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	remain := int64(-1) // until EOF
	src := r
	lr, limited := r.(*io.LimitedReader)
	if limited {
		remain, src = lr.N, lr.R
		if remain <= 0 {
			return 0, nil
		}
	}
	sec, isSection := src.(*Section)
	var f syscall.Conn
	if isSection {
		// Sent from the section's position, to its end at the most.
		left := max(0, sec.size-sec.pos)
		if remain < 0 || remain > left {
			remain = left
		}
		if remain == 0 {
			return 0, nil
		}
		f = sec.f
	} else if fsrc, ok := src.(syscall.Conn); ok { // *os.File, or a reader that gives one
		f = fsrc
	} else {
		return c.copy(r)
	}
	fc, err := f.SyscallConn()
	if err != nil {
		return c.copy(r)
	}
	sc, err := c.TCPConn.SyscallConn()
	if err != nil {
		return c.copy(r)
	}
	// The write deadline moves with the transfer: before a wait that
	// follows progress it is pushed to stallTimeout ahead, at most every
	// quarter of stallTimeout (one timer update per quarter, not per
	// wait), so a client is cut off after taking nothing for between 3/4
	// and all of stallTimeout.
	pushedAt := time.Now()
	c.SetWriteDeadline(pushedAt.Add(stallTimeout))
	defer c.SetWriteDeadline(time.Time{})
	var written, pushed int64 // bytes sent, and sent when the deadline was last pushed
	var serr error
	unsupported := false
	cerr := fc.Control(func(sfd uintptr) {
		var off int64
		if isSection {
			off = sec.base + sec.pos
			defer func() { sec.pos = off - sec.base }()
		} else {
			// sendfile reads from the file's own offset, as net's does,
			// so that a reader positioned by Seek is sent from there on.
			var err error
			if off, err = seek(sfd, 0, io.SeekCurrent); err != nil {
				unsupported = true // not a seekable file: a pipe, a socket
				return
			}
			defer func() {
				if _, err := seek(sfd, off, io.SeekStart); err != nil && serr == nil {
					serr = err
				}
			}()
		}
		checked := off // pages before this offset were found resident
		var raw bool   // whether [off, checked) may be sent raw
		// wait pushes the deadline if the transfer has moved, and has
		// sc.Write wait until the socket is writable.
		wait := func() bool {
			c.waits++
			if written > pushed {
				if now := time.Now(); now.Sub(pushedAt) >= stallTimeout/4 {
					c.SetWriteDeadline(now.Add(stallTimeout))
					pushedAt, pushed = now, written
				}
			}
			return false
		}
		werr := sc.Write(func(dfd uintptr) bool {
			for remain != 0 {
				if off >= checked {
					end := int64(-1) // the file's end, or where the body ends
					if remain > 0 {
						end = off + remain
					}
					raw = resident(int(sfd), off, window, end)
					checked = off + window
				}
				chunk := checked - off
				if remain > 0 {
					chunk = min(remain, chunk)
				}
				n, e := sendfile(raw, dfd, sfd, &off, chunk)
				switch {
				case e == syscall.EAGAIN:
					c.eagains++
					return wait()
				case e == syscall.EINTR:
					continue
				case e != 0:
					if written == 0 && (e == syscall.EINVAL || e == syscall.ENOSYS || e == syscall.EOPNOTSUPP) {
						unsupported = true
					} else {
						serr = &net.OpError{Op: "sendfile", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("sendfile", e)}
					}
					return true
				case n == 0:
					return true // end of file
				}
				written += n
				if remain > 0 {
					remain -= n
				}
				if n < chunk && remain != 0 && !writable(dfd) {
					// A short send mostly means a full send
					// buffer: ask poll(2), not sendfile, whether
					// there is room, which costs less than half
					// of a sendfile refused with EAGAIN (that one
					// takes the file's pages into the splice pipe
					// before the socket refuses them; 1.5 against
					// 3.6 us here). Not "short, so wait" as nginx
					// does: a signal pending (Go preempts with
					// SIGURG) also ends a send early, with room
					// left and so no wake-up to come, and the end
					// of the file does too. poll marks a full
					// socket as sendfile does, so that its next
					// free space wakes the netpoller.
					return wait()
				}
			}
			return true
		})
		if werr != nil && serr == nil {
			serr = werr
		}
	})
	if unsupported {
		// Not a file sendfile can read: nothing was sent and the offset
		// has not moved.
		return c.copy(r)
	}
	if limited {
		lr.N -= written
	}
	if cerr != nil && serr == nil {
		serr = cerr
	}
	return written, serr
}

// copy sends r with plain writes, each allowed stallTimeout.
func (c *conn) copy(r io.Reader) (int64, error) {
	defer c.SetWriteDeadline(time.Time{})
	return io.Copy(stallWriter{c.TCPConn}, r)
}

// stallWriter writes to c with a deadline of stallTimeout per write. It
// hides c's ReadFrom, which would write without one.
type stallWriter struct{ c *net.TCPConn }

func (w stallWriter) Write(p []byte) (int, error) {
	w.c.SetWriteDeadline(time.Now().Add(stallTimeout))
	return w.c.Write(p)
}

// writable reports whether the socket dfd has room to send (poll(2) with
// no timeout, so never blocking). A socket without room is marked by the
// kernel so that its next free space wakes its waiters: the netpoller's
// epoll among them.
func writable(dfd uintptr) bool {
	pfd := unix.PollFd{Fd: int32(dfd), Events: unix.POLLOUT}
	var ts unix.Timespec // zero: return at once
	// Raw, as unix.Ppoll is not: a poll that cannot block needs none of the
	// scheduler's system-call bookkeeping.
	n, _, e := syscall.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	// On an error, or an error or hang-up on the socket, say writable:
	// the next sendfile reports it.
	return e != 0 || n == 1 && pfd.Revents != 0
}

// sendfile sends up to n bytes of sfd at *off to dfd and advances *off.
// raw skips the scheduler's system-call bookkeeping.
func sendfile(raw bool, dfd, sfd uintptr, off *int64, n int64) (int64, syscall.Errno) {
	var w uintptr
	var e syscall.Errno
	if raw {
		w, _, e = syscall.RawSyscall6(syscall.SYS_SENDFILE, dfd, sfd, uintptr(unsafe.Pointer(off)), uintptr(n), 0, 0)
	} else {
		w, _, e = syscall.Syscall6(syscall.SYS_SENDFILE, dfd, sfd, uintptr(unsafe.Pointer(off)), uintptr(n), 0, 0)
	}
	if e != 0 {
		return 0, e
	}
	return int64(w), 0
}

// noCachestat is set once cachestat(2) turns out to be missing.
var noCachestat atomic.Bool

// resident reports whether every page of fd in [off, off+n), and before
// end, is in the page cache; end < 0 is the end of the file (found with
// fstat, which stays an ordinary system call: it can block on a network
// file system). It errs towards false. cachestat(2) only looks at the
// page cache and never blocks, so it is made raw (see conn.Read).
func resident(fd int, off, n, end int64) bool {
	if end < 0 {
		end = size(fd)
	}
	n = min(n, end-off)
	if n <= 0 {
		return false
	}
	if !noCachestat.Load() {
		var st unix.Cachestat_t
		rng := unix.CachestatRange{Off: uint64(off), Len: uint64(n)}
		_, _, e := syscall.RawSyscall6(unix.SYS_CACHESTAT, uintptr(fd), uintptr(unsafe.Pointer(&rng)), uintptr(unsafe.Pointer(&st)), 0, 0, 0)
		if e == 0 {
			pages := (off+n-1)/pageSize - off/pageSize + 1
			return int64(st.Cache) >= pages
		}
		if e != syscall.ENOSYS {
			return false
		}
		noCachestat.Store(true)
	}
	return mincore(fd, off, n)
}

// seek is lseek(2) made raw: it never blocks.
func seek(fd uintptr, off int64, whence int) (int64, error) {
	r, _, e := syscall.RawSyscall(syscall.SYS_LSEEK, fd, uintptr(off), uintptr(whence))
	if e != 0 {
		return 0, e
	}
	return int64(r), nil
}

var pageSize = int64(os.Getpagesize())

// size is fd's size, or 0.
func size(fd int) int64 {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0
	}
	return st.Size
}

// mincore is resident for kernels without cachestat: it maps the range
// [off, off+n), which must be inside the file (no page is faulted in), and
// asks which pages are in memory.
func mincore(fd int, off, n int64) bool {
	start := off &^ (pageSize - 1)
	end := off + n
	m, err := unix.Mmap(fd, start, int(end-start), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return false
	}
	defer unix.Munmap(m)
	vec := make([]byte, (int64(len(m))+pageSize-1)/pageSize)
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		return false
	}
	for _, v := range vec {
		if v&1 == 0 {
			return false
		}
	}
	return true
}
