package sendbuf

import (
	"net"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func sndbuf(t *testing.T, c net.Conn) int {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var size int
	var serr error
	raw.Control(func(fd uintptr) { size, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF) })
	if serr != nil {
		t.Fatal(serr)
	}
	return size
}

// Accepted connections get a bigger send buffer than the kernel's default.
func TestAcceptedConnectionsGetTheBuffer(t *testing.T) {
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ln := Listener(plain)
	go func() {
		if c, err := net.Dial("tcp", plain.Addr().String()); err == nil {
			defer c.Close()
			buf := make([]byte, 1)
			c.Read(buf)
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := sndbuf(t, c)
	dial, err := net.Dial("tcp", plain.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dial.Close()
	def := sndbuf(t, dial)
	if got <= def {
		t.Fatalf("accepted connection's send buffer %d is not above the default %d", got, def)
	}
	if os.Geteuid() == 0 && got < Size {
		t.Fatalf("as root the send buffer is %d, want at least %d whatever net.core.wmem_max says", got, Size)
	}
	t.Logf("send buffer %d bytes (a dialled one has %d; asked for %d, which the kernel doubles)", got, def, Size)
}
