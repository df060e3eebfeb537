package sendbuf

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serve accepts through Listener and hands each connection's ReadFrom the
// reader that open returns, then closes the connection and, if served is
// not nil, says so on it.
func serve(t *testing.T, open func() io.Reader, served chan<- struct{}) string {
	t.Helper()
	return serveSized(t, Boot, open, func(_ int64, err error, _ *conn) {
		if err != nil {
			t.Errorf("ReadFrom: %v", err)
		}
		if served != nil {
			served <- struct{}{}
		}
	})
}

// serveSized is serve with send buffers of size and done told what each
// ReadFrom returned, after the connection is closed.
func serveSized(t *testing.T, size int, open func() io.Reader, done func(int64, error, *conn)) string {
	t.Helper()
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	ln := Listener(plain, size)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				n, err := c.(io.ReaderFrom).ReadFrom(open())
				c.Close()
				done(n, err, c.(*conn))
			}()
		}
	}()
	return plain.Addr().String()
}

func fetch(t *testing.T, addr string) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Files, sections of files, pipes and plain readers all arrive intact.
func TestReadFromSendsEveryKindOfReader(t *testing.T) {
	data, p := randomFile(t, 5<<20+321)
	file := func(off int64) *os.File {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, tc := range []struct {
		name string
		open func() io.Reader
		want []byte
	}{
		{"whole file", func() io.Reader { return file(0) }, data},
		{"from an offset", func() io.Reader { return file(12345) }, data[12345:]},
		{"limited section", func() io.Reader { return io.LimitReader(file(4097), 3<<20) }, data[4097 : 4097+3<<20]},
		{"limit past the end", func() io.Reader { return io.LimitReader(file(len64(data)-10), 100) }, data[len(data)-10:]},
		{"a section of a file, as the registry's", func() io.Reader {
			return io.LimitReader(section{file(100)}, 2<<20)
		}, data[100 : 100+2<<20]},
		{"pipe", func() io.Reader {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			go func() { w.Write(data[:1<<20]); w.Close() }()
			return r
		}, data[:1<<20]},
		{"not a file", func() io.Reader { return strings.NewReader("hello") }, []byte("hello")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fetch(t, serve(t, tc.open, nil)); !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d (equal prefix: %v)", len(got), len(tc.want), bytes.HasPrefix(tc.want, got))
			}
		})
	}
}

func len64(b []byte) int64 { return int64(len(b)) }

// randomFile writes size random bytes to a file in t's temporary directory
// and returns them with its path.
func randomFile(t *testing.T, size int) ([]byte, string) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data, p
}

// section is a reader over a file that is not an *os.File but gives its
// descriptor (syscall.Conn), like the registry's fileSection.
type section struct{ f *os.File }

func (s section) Read(p []byte) (int, error)            { return s.f.Read(p) }
func (s section) SyscallConn() (syscall.RawConn, error) { return s.f.SyscallConn() }

// ReadFrom leaves the file offset and the LimitedReader where the bytes
// sent end, as io.Copy's contract asks.
func TestReadFromAdvancesOffsetAndLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, bytes.Repeat([]byte("x"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lr := &io.LimitedReader{R: f, N: 1000}
	served := make(chan struct{}, 1)
	fetch(t, serve(t, func() io.Reader { return lr }, served))
	<-served // the server's ReadFrom has returned: lr and f are ours again
	if lr.N != 0 {
		t.Fatalf("LimitedReader.N = %d after sending, want 0", lr.N)
	}
	if off, _ := f.Seek(0, io.SeekCurrent); off != 1000 {
		t.Fatalf("file offset %d, want 1000", off)
	}
}

// Through net/http, as the services use it: ServeContent with a Range.
func TestServeContentOverListener(t *testing.T) {
	data, p := randomFile(t, 2<<20)
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(p)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		http.ServeContent(w, r, "", fileModTime(t, f), f)
	})}
	go srv.Serve(Listener(plain, Registry))
	defer srv.Close()
	for _, rng := range []string{"", "bytes=1000-1500999"} {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/", plain.Addr()), nil)
		want := data
		if rng != "" {
			req.Header.Set("Range", rng)
			want = data[1000:1501000]
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("range %q: got %d bytes (err %v), want %d", rng, len(got), err, len(want))
		}
	}
}

func fileModTime(t *testing.T, f *os.File) (mt time.Time) {
	t.Helper()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return st.ModTime()
}

// A client that stops reading is cut off after stallTimeout; one that
// reads slowly but keeps taking data is not, however long it takes, and
// the waits for its socket follow short sends and poll(2), not a sendfile
// refused with EAGAIN. Each kind of reader: a file sent to its end, a
// file under io.LimitedReader (as http.ServeContent sends) and a Section.
func TestReadFromEndsStalledTransfers(t *testing.T) {
	old := stallTimeout
	stallTimeout = 300 * time.Millisecond
	t.Cleanup(func() { stallTimeout = old })

	data, p := randomFile(t, 4<<20)
	file := func(t *testing.T) *os.File {
		f, err := os.Open(p)
		if err != nil {
			t.Error(err)
			return nil
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	for _, tc := range []struct {
		name   string
		reader func(t *testing.T) io.Reader
	}{
		{"file", func(t *testing.T) io.Reader { return file(t) }},
		{"limited", func(t *testing.T) io.Reader { return io.LimitReader(file(t), int64(len(data))) }},
		{"section", func(t *testing.T) io.Reader { return NewSection(file(t), 0, int64(len(data))) }},
	} {
		t.Run(tc.name, func(t *testing.T) { testStalledAndSlow(t, data, func() io.Reader { return tc.reader(t) }) })
	}
}

func testStalledAndSlow(t *testing.T, data []byte, open func() io.Reader) {
	type result struct {
		n              int64
		err            error
		waits, eagains int
	}
	results := make(chan result, 2)
	// Small buffers: 4 MiB cannot sit in them.
	addr := serveSized(t, 64<<10, open, func(n int64, err error, c *conn) { results <- result{n, err, c.waits, c.eagains} })
	dial := func() *net.TCPConn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		tc := c.(*net.TCPConn)
		tc.SetReadBuffer(64 << 10) // keep the client's window small too
		return tc
	}

	// Stalled: connects and never reads.
	dial()
	start := time.Now()
	select {
	case r := <-results:
		if !errors.Is(r.err, os.ErrDeadlineExceeded) {
			t.Fatalf("stalled client: ReadFrom = %d bytes, %v; want a deadline error", r.n, r.err)
		}
		if r.n >= int64(len(data)) {
			t.Fatalf("stalled client: all %d bytes sent; the buffers are too large for this test", r.n)
		}
		t.Logf("stalled client cut off after %v with %d bytes in buffers", time.Since(start).Round(time.Millisecond), r.n)
	case <-time.After(10 * time.Second):
		t.Fatal("stalled client: the transfer was still running after 10s")
	}

	// Slow: 64 KiB every 50 ms, so that the whole file takes several
	// stall timeouts; it must arrive whole.
	c := dial()
	got := make([]byte, 0, len(data))
	buf := make([]byte, 64<<10)
	for len(got) < len(data) {
		time.Sleep(50 * time.Millisecond)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.ReadAtLeast(c, buf, 1)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("slow client: read after %d bytes: %v", len(got), err)
		}
	}
	r := <-results
	if r.err != nil || r.n != int64(len(data)) {
		t.Fatalf("slow client: ReadFrom = %d bytes, %v; want %d, nil", r.n, r.err, len(data))
	}
	t.Logf("slow client: %d waits for the socket, %d after EAGAIN", r.waits, r.eagains)
	if r.waits < 8 {
		t.Fatalf("slow client: ReadFrom waited for the socket %d times; the buffers are too large for this test", r.waits)
	}
	if r.eagains > r.waits/4 {
		t.Fatalf("slow client: %d of %d waits followed an EAGAIN; after a short send ReadFrom should ask poll, not sendfile", r.eagains, r.waits)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("slow client: the bytes differ")
	}
}

// The raw Read and Write behave as net.TCPConn's: data both ways,
// deadlines that net/http can tell from other errors, io.EOF at the end.
func TestRawReadAndWrite(t *testing.T) {
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	client, err := net.Dial("tcp", plain.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := Listener(plain, Boot).Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64)
	_, err = c.Read(buf)
	var oe *net.OpError
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &oe) || oe.Op != "read" || !oe.Timeout() {
		t.Fatalf("Read past its deadline = %v; want a timeout *net.OpError with Op read", err)
	}
	c.SetReadDeadline(time.Time{})

	big := bytes.Repeat([]byte("airlock "), 1<<20) // more than the socket buffers: Write waits
	go func() {
		client.Write([]byte("GET / HTTP/1.1\r\n"))
		io.Copy(io.Discard, io.LimitReader(client, int64(len(big))))
		client.Close()
	}()
	if n, err := io.ReadAtLeast(c, buf, 16); err != nil || string(buf[:n]) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if n, err := c.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v; want %d", n, err, len(big))
	}
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want io.EOF", n, err)
	}
	// Writing to a closed peer fails with a write error.
	var werr error
	for i := 0; i < 100 && werr == nil; i++ {
		_, werr = c.Write(big[:4096])
		time.Sleep(time.Millisecond)
	}
	if !errors.As(werr, &oe) || oe.Op != "write" {
		t.Fatalf("Write to a closed peer = %v; want a *net.OpError with Op write", werr)
	}
}

// A signal pending during sendfile ends the call early with room left in
// the send buffer (the kernel's splice checks for signals between
// batches; Go preempts a long call with SIGURG), so a short send is not
// a full buffer: were ReadFrom to wait after it, no wake-up would come
// and a fast client would stall until the deadline. Here every thread of
// the process is sent SIGURG (which the Go runtime takes as a spurious
// preemption request) every 100 us while transfers run; each must
// arrive whole, and well before stallTimeout.
func TestReadFromSurvivesSignals(t *testing.T) {
	old := stallTimeout
	stallTimeout = 2 * time.Second
	t.Cleanup(func() { stallTimeout = old })

	data, p := randomFile(t, 8<<20)
	type result struct {
		n   int64
		err error
	}
	results := make(chan result, 1)
	addr := serveSized(t, 64<<10, func() io.Reader {
		f, err := os.Open(p)
		if err != nil {
			t.Error(err)
			return strings.NewReader("")
		}
		t.Cleanup(func() { f.Close() })
		return NewSection(f, 0, int64(len(data)))
	}, func(n int64, err error, _ *conn) { results <- result{n, err} })

	stop := make(chan struct{})
	signalled := make(chan int)
	go func() {
		sent := 0
		defer func() { signalled <- sent }()
		pid := os.Getpid()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
			tasks, err := os.ReadDir("/proc/self/task")
			if err != nil {
				t.Error(err)
				return
			}
			for _, task := range tasks {
				var tid int
				fmt.Sscan(task.Name(), &tid)
				if syscall.Tgkill(pid, tid, syscall.SIGURG) == nil {
					sent++
				}
			}
		}
	}()
	defer func() {
		close(stop)
		t.Logf("%d signals sent", <-signalled)
	}()

	// As many transfers as fit in 3 s, 4 at the least: when short sends
	// were taken for full buffers, one transfer in about eight stalled
	// (~100 fit without the race detector, ~6 with it, where this test
	// caught that in one run of four; TestReadFromFileCutShort catches it
	// every time).
	n := 0
	defer func() { t.Logf("%d transfers", n) }()
	for begin := time.Now(); n < 4 || time.Since(begin) < 3*time.Second; n++ {
		i := n
		start := time.Now()
		got := fetchInto(t, addr, make([]byte, len(data)+1))
		r := <-results
		if r.err != nil || r.n != int64(len(data)) {
			t.Fatalf("transfer %d: ReadFrom = %d bytes, %v after %v; want %d, nil", i, r.n, r.err, time.Since(start).Round(time.Millisecond), len(data))
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("transfer %d: the bytes differ", i)
		}
	}
}

// fetchInto reads what the server at addr sends into buf, in reads as
// large as buf allows (io.ReadAll's small first reads are slow under the
// race detector), and returns what arrived.
func fetchInto(t *testing.T, addr string, buf []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, err := io.ReadFull(c, buf)
	if err != io.ErrUnexpectedEOF {
		t.Fatalf("read %d bytes: %v; want the connection closed before %d", n, err, len(buf))
	}
	return buf[:n]
}

// A body longer than its file (a file cut short under the transfer) ends
// with a short send that leaves the send buffer room (32 KiB fit in any
// send buffer): ReadFrom returns what the file had, at once, rather than
// wait for a wake-up that will not come. As with HTTP, the client speaks
// first (after a pause, so that the server waits for it in the
// netpoller, which then holds no stale readiness from the accept to wake
// a wrong wait).
func TestReadFromFileCutShort(t *testing.T) {
	old := stallTimeout
	stallTimeout = 2 * time.Second
	t.Cleanup(func() { stallTimeout = old })

	data, p := randomFile(t, 32<<10)
	for _, tc := range []struct {
		name   string
		reader func(f *os.File) io.Reader
	}{
		{"limited", func(f *os.File) io.Reader { return io.LimitReader(f, 64<<10) }},
		{"section", func(f *os.File) io.Reader { return NewSection(f, 0, 64<<10) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plain, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer plain.Close()
			type result struct {
				n   int64
				err error
			}
			results := make(chan result, 1)
			go func() {
				c, err := Listener(plain, Boot).Accept()
				if err != nil {
					results <- result{0, err}
					return
				}
				defer c.Close()
				if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
					results <- result{0, err}
					return
				}
				f, err := os.Open(p)
				if err != nil {
					results <- result{0, err}
					return
				}
				defer f.Close()
				n, err := c.(io.ReaderFrom).ReadFrom(tc.reader(f))
				results <- result{n, err}
			}()
			c, err := net.Dial("tcp", plain.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			time.Sleep(50 * time.Millisecond)
			start := time.Now()
			if _, err := c.Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
			r := <-results
			if r.err != nil || r.n != int64(len(data)) {
				t.Fatalf("ReadFrom = %d bytes, %v after %v; want %d, nil (the file's end)", r.n, r.err, time.Since(start).Round(time.Millisecond), len(data))
			}
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("received %d bytes, %v; want the file's %d", len(got), err, len(data))
			}
		})
	}
}
