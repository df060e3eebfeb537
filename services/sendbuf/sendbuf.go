// Package sendbuf gives the TCP connections a listener accepts a large
// socket send buffer, so that sendfile moves bigger chunks per system call
// when a service streams files (measured on the registry: server CPU per
// GiB 0.17-0.20 -> 0.12-0.13 with 4 MiB, 0.13-0.14 with 8 MiB at 16 MiB
// effective; see bench/results-bundle.md), and sends cached file pages with
// raw sendfile (sendfile.go).
package sendbuf

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Sizes of send buffer a service asks for (the kernel doubles them for
// its own bookkeeping). The registry streams large layers to a few pulling
// nodes at a time; the boot server sends kernels and boot images to many
// machines at once, where a smaller buffer serves better (measured:
// bench/results-boot.md, results-bundle.md).
const (
	Registry = 16 << 20
	Boot     = 8 << 20
)

// maxBig caps the connections of one listener that get the large buffer.
const maxBig = 16

// Listener wraps l so that accepted TCP connections get a send buffer of
// size bytes while few are open. The kernel counts a sendfile'd page
// against the socket's memory like a copy, so many large buffers push the
// whole TCP stack into memory pressure (net.ipv4.tcp_mem; 1.5 GiB on a
// 24 GiB machine, less on a laptop): the listener gives the large buffer
// to at most maxBig open connections and to no more than a quarter of the
// pressure threshold's bytes, and leaves later ones to the kernel's
// autotuning.
func Listener(l net.Listener, size int) net.Listener {
	pressure := tcpMemPressure()
	return &listener{Listener: l, size: size, big: bigConns(size, pressure), largeMax: bigConns(Registry, pressure)}
}

type listener struct {
	net.Listener
	size int
	big  int64        // connections that may have the large buffer at once
	open atomic.Int64 // connections accepted and not yet closed
	// enlarged counts the connections Enlarge gave the Registry buffer,
	// at most largeMax at once (rationed as the registry's own are).
	enlarged atomic.Int64
	largeMax int64
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok && err == nil {
		if l.open.Add(1) <= l.big {
			setSize(tc, l.size)
		}
		return &conn{TCPConn: tc, open: &l.open, l: l}, nil
	}
	return c, err
}

type connKey struct{}

// ConnContext, as an http.Server's ConnContext, keeps each connection in
// its requests' contexts, for Enlarge.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// Enlarge gives the connection of a request (kept by ConnContext, accepted
// by a Listener) the Registry send buffer, for a large stream on a server
// whose other answers are small: the boot server sending an OS image to
// an installing machine (bench/install8: 1.07x the registry's CPU per GiB
// sent with the Boot buffer, 0.92x with this one). At most as many
// connections of one listener at once as the registry's own listener lets
// have it; it reports whether this one got it.
func Enlarge(ctx context.Context) bool {
	c, ok := ctx.Value(connKey{}).(*conn)
	if !ok || c.l == nil || c.l.size >= Registry {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return false
	case c.enlarged:
		return true // an earlier request on this connection did
	}
	if c.l.enlarged.Add(1) > c.l.largeMax {
		c.l.enlarged.Add(-1)
		return false
	}
	c.enlarged = true
	setSize(c.TCPConn, Registry)
	return true
}

// bigConns is how many connections may hold a size-byte buffer (2*size
// with the kernel's doubling) within a quarter of pressure bytes, at most
// maxBig; with pressure unknown, maxBig.
func bigConns(size int, pressure int64) int64 {
	if pressure <= 0 {
		return maxBig
	}
	return max(0, min(maxBig, pressure/4/int64(2*size)))
}

// tcpMemPressure is net.ipv4.tcp_mem's pressure threshold in bytes, or 0.
func tcpMemPressure() int64 {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_mem")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return 0
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}

// setSize gives c a size-byte send buffer. Setting SO_SNDBUF turns off the
// kernel's autotuning of the buffer (up to net.ipv4.tcp_wmem's maximum, 4
// MiB by default) and is capped at net.core.wmem_max (208 KiB by default):
// on a stock machine it would lock a smaller buffer than autotuning
// reaches. So: SO_SNDBUFFORCE, which is not capped, when airlock may (as
// root, which it runs as to serve DHCP); else SO_SNDBUF only if wmem_max
// allows size; else autotuning.
func setSize(c *net.TCPConn, size int) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size) == nil {
			return
		}
		if wmemMax() >= size {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, size)
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
