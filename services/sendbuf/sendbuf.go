// Package sendbuf gives the TCP connections a listener accepts a large
// socket send buffer, so that sendfile moves bigger chunks per system call
// when a service streams files (measured on the registry: server CPU per
// GiB 0.17-0.20 -> 0.12-0.13 with 4 MiB, 0.13-0.14 with 8 MiB at 16 MiB
// effective; see bench/results-bundle.md), and sends cached file pages with
// raw sendfile (sendfile.go).
package sendbuf

import (
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Size is the send buffer asked for each accepted connection (the kernel
// doubles it for its own bookkeeping), while no more than BigConns are
// open. The kernel counts a sendfile'd page against the socket's memory
// like a copy, so many large buffers push the whole TCP stack into memory
// pressure (net.ipv4.tcp_mem, ~1.5 GiB here): beyond BigConns open
// connections, new ones keep the kernel's autotuning.
const (
	Size     = 8 << 20
	BigConns = 16
)

// Listener wraps l so that accepted TCP connections get a Size send buffer.
func Listener(l net.Listener) net.Listener { return &listener{Listener: l} }

type listener struct {
	net.Listener
	open atomic.Int64 // connections accepted and not yet closed
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok && err == nil {
		if l.open.Add(1) <= BigConns {
			setSize(tc)
		}
		return &conn{TCPConn: tc, open: &l.open}, nil
	}
	return c, err
}

// setSize gives c a Size send buffer. Setting SO_SNDBUF turns off the
// kernel's autotuning of the buffer (up to net.ipv4.tcp_wmem's maximum, 4
// MiB by default) and is capped at net.core.wmem_max (208 KiB by default):
// on a stock machine it would lock a smaller buffer than autotuning
// reaches. So: SO_SNDBUFFORCE, which is not capped, when airlock may (as
// root, which it runs as to serve DHCP); else SO_SNDBUF only if wmem_max
// allows Size; else autotuning.
func setSize(c *net.TCPConn) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, Size) == nil {
			return
		}
		if wmemMax() >= Size {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, Size)
		}
	})
}

// wmemMax is net.core.wmem_max, or 0 when it cannot be read.
func wmemMax() int {
	b, err := os.ReadFile("/proc/sys/net/core/wmem_max")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}
