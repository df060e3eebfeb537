//go:build unix

package bundle

import "syscall"

const openNonblock = syscall.O_NONBLOCK
