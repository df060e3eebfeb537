//go:build unix

package bundle

import (
	"os"
	"syscall"
)

// openNonblock opens without waiting: a FIFO does not block the open.
const openNonblock = syscall.O_NONBLOCK

// clearNonblock puts a file opened with openNonblock, once known to be a
// regular file, back into ordinary blocking mode.
func clearNonblock(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetNonblock(int(fd), false) }); err != nil {
		return err
	}
	return serr
}
