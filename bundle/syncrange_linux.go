package bundle

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncRange starts writeback of a file range without waiting for it.
func syncRange(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
