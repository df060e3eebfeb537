package httpboot

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"
)

// countingFS counts the opens that reach a directory.
type countingFS struct {
	fs.FS
	opens atomic.Int64
}

func (c *countingFS) Open(name string) (fs.File, error) {
	c.opens.Add(1)
	return c.FS.Open(name)
}

// writeFile writes data to dir/name through a temporary file and a rename,
// as a new boot image lands: a new inode under the old name.
func writeFile(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p+".tmp", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// Files on disk are opened once and served to many requests at once, each
// from its own range of the one descriptor; a replaced file is served
// once the entry is no longer trusted.
func TestDiskFilesStayOpen(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(3<<20 + 17)
	writeFile(t, dir, "agent/vmlinuz", data)
	files := &countingFS{FS: os.DirFS(dir)}
	var caches []*openFiles
	base := start(t, NewMemBackend(discover), nil, files, func(s *Server) {
		caches = s.caches
		for _, c := range caches {
			c.valid = time.Hour
		}
	})

	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := i * 77777
			resp, body := get(t, base+"/files/agent/vmlinuz", "Range", fmt.Sprintf("bytes=%d-", from))
			if resp.StatusCode != 206 || !bytes.Equal(body, data[from:]) {
				errs <- fmt.Errorf("range from %d: %d, %d bytes, want %d", from, resp.StatusCode, len(body), len(data)-from)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if resp, body := get(t, base+"/files/agent/vmlinuz"); resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("whole file: %d, %d bytes", resp.StatusCode, len(body))
	}
	if n := files.opens.Load(); n != 1 {
		t.Fatalf("41 requests opened the file %d times, want once", n)
	}

	newer := randomBytes(1 << 20)
	writeFile(t, dir, "agent/vmlinuz", newer)
	for _, c := range caches {
		c.mu.Lock()
		c.valid = 0
		for _, e := range c.m {
			e.until = time.Time{}
		}
		c.mu.Unlock()
	}
	if resp, body := get(t, base+"/files/agent/vmlinuz"); resp.StatusCode != 200 || !bytes.Equal(body, newer) {
		t.Fatalf("after the file was replaced: %d, %d bytes, want the new %d", resp.StatusCode, len(body), len(newer))
	}

	for _, p := range []string{"/files/agent", "/files/agent/vmlinuz/x", "/files/missing"} {
		if resp, _ := get(t, base+p); resp.StatusCode != 404 {
			t.Errorf("%s: %d, want 404", p, resp.StatusCode)
		}
	}
}

// readAll reads r from its start.
func readAll(t *testing.T, r io.ReadSeeker) []byte {
	t.Helper()
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func isClosed(e *openFile) bool {
	_, err := e.f.Stat()
	return errors.Is(err, os.ErrClosed)
}

func TestOpenFilesLifecycle(t *testing.T) {
	dir := t.TempDir()
	first := randomBytes(10000)
	writeFile(t, dir, "k", first)
	writeFile(t, dir, "other", []byte("other"))
	fsys := &countingFS{FS: os.DirFS(dir)}
	o := newOpenFiles(0, 1) // never trusted: every open checks the file again

	// Unchanged: the entry's descriptor is kept, the new one closed.
	r1, _, done1, err := o.open(fsys, "k")
	if err != nil {
		t.Fatal(err)
	}
	e1 := o.m["k"]
	r2, st, done2, err := o.open(fsys, "k")
	if err != nil {
		t.Fatal(err)
	}
	if o.m["k"] != e1 || fsys.opens.Load() != 2 || st.Size() != int64(len(first)) {
		t.Fatalf("unchanged file: entry replaced %v, opens %d, size %d", o.m["k"] != e1, fsys.opens.Load(), st.Size())
	}
	done2()
	if got := readAll(t, r2); !bytes.Equal(got, first) {
		t.Fatal("second reader's bytes differ")
	}

	// Replaced while r1 is in use: the new file is served, the old one
	// stays readable until its request ends, then is closed.
	second := randomBytes(5000)
	writeFile(t, dir, "k", second)
	o.valid = time.Hour
	r3, _, done3, err := o.open(fsys, "k")
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, r3); !bytes.Equal(got, second) {
		t.Fatal("the replaced file was not served")
	}
	if isClosed(e1) {
		t.Fatal("the old file was closed while a request read it")
	}
	if got := readAll(t, r1); !bytes.Equal(got, first) {
		t.Fatal("the old request's bytes changed")
	}
	done1()
	if !isClosed(e1) {
		t.Fatal("the old file is still open after its last request")
	}

	// Full (max 1, "k" trusted and in use): "other" is served and closed
	// after.
	r4, _, done4, err := o.open(fsys, "other")
	if err != nil {
		t.Fatal(err)
	}
	if _, kept := o.m["other"]; kept || string(readAll(t, r4)) != "other" {
		t.Fatalf("over the limit: kept %v", kept)
	}
	done4()

	// Closing: the file in use is closed when its request ends; later
	// opens are served uncached.
	e3 := o.m["k"]
	o.close()
	if isClosed(e3) {
		t.Fatal("closed while in use")
	}
	done3()
	if !isClosed(e3) || len(o.m) != 0 {
		t.Fatal("still open after close and the last request")
	}
	r5, _, done5, err := o.open(fsys, "k")
	if err != nil || !bytes.Equal(readAll(t, r5), second) || len(o.m) != 0 {
		t.Fatalf("after close: %v, %d entries", err, len(o.m))
	}
	done5()

	// Not regular files, and files that are not on disk.
	for _, name := range []string{".", "k/x", "missing"} {
		if _, _, _, err := o.open(fsys, name); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%q: %v, want not exist", name, err)
		}
	}
	mem := fstest.MapFS{"ipxe.efi": {Data: []byte("MZ")}}
	r6, _, done6, err := o.open(mem, "ipxe.efi")
	if err != nil || string(readAll(t, r6)) != "MZ" {
		t.Fatalf("in-memory file: %v", err)
	}
	done6()
}
