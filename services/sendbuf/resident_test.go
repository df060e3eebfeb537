package sendbuf

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A file just read is in the page cache; after fsync and
// POSIX_FADV_DONTNEED it is not. Both the cachestat and the mincore paths agree.
func TestResident(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 3<<20+123), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if _, err := os.ReadFile(p); err != nil {
		t.Fatal(err)
	}
	if !resident(fd, 0, window, -1) || !resident(fd, 4097, window, -1) || !resident(fd, 100, window, 200) {
		t.Fatal("cachestat: a file just read is not resident")
	}
	if !mincore(fd, 4097, 3<<20+123-4097) {
		t.Fatal("mincore: a file just read is not resident")
	}
	if resident(fd, 3<<20+123, window, -1) || resident(fd, 0, window, 4<<20) {
		t.Fatal("resident past the end of the file, or with an end past it")
	}
	unix.Fsync(fd)
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if resident(fd, 0, window, -1) {
		t.Fatal("cachestat: a file dropped from the page cache is resident")
	}
	if mincore(fd, 0, 3<<20) {
		t.Fatal("mincore: a file dropped from the page cache is resident")
	}
}
