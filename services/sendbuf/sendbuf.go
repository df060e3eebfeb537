// Package sendbuf gives the TCP connections a listener accepts a large
// socket send buffer, so that sendfile moves bigger chunks per system call
// when a service streams files (measured on the registry: server CPU per
// GiB 0.17-0.20 -> 0.12-0.13 with 4 MiB).
package sendbuf

import "net"

// Size is the send buffer given to each accepted connection.
const Size = 4 << 20

// Listener wraps l so that accepted TCP connections get a Size send buffer.
func Listener(l net.Listener) net.Listener { return listener{l} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok && err == nil {
		_ = tc.SetWriteBuffer(Size) // best effort: the kernel caps it at wmem_max*2
		return conn{tc}, nil
	}
	return c, err
}
