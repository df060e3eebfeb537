package sendbuf

import (
	"context"
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
	ln := Listener(plain, Boot)
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
	if os.Geteuid() == 0 && got < Boot {
		t.Fatalf("as root the send buffer is %d, want at least %d whatever net.core.wmem_max says", got, Boot)
	}
	t.Logf("send buffer %d bytes (a dialled one has %d; asked for %d, which the kernel doubles)", got, def, Boot)
}

// Large buffers are rationed by the TCP memory pressure threshold.
func TestBigConnsFollowTCPMemory(t *testing.T) {
	for _, tc := range []struct {
		size     int
		pressure int64
		want     int64
	}{
		{Boot, 1536 << 20, 16},     // this 24 GiB machine: 384 MiB / 16 MiB = 24, capped
		{Registry, 1536 << 20, 12}, // 384 MiB / 32 MiB
		{Registry, 512 << 20, 4},   // a laptop's smaller tcp_mem
		{Registry, 64 << 20, 0},    // too little: autotuning for all
		{Boot, 0, 16},              // unknown: the cap
	} {
		if got := bigConns(tc.size, tc.pressure); got != tc.want {
			t.Errorf("bigConns(%d, %d) = %d, want %d", tc.size, tc.pressure, got, tc.want)
		}
	}
	if tcpMemPressure() <= 0 {
		t.Error("net.ipv4.tcp_mem unreadable")
	}
}

// Beyond the rationed number, connections keep the kernel's autotuning.
func TestOnlyTheFirstConnectionsGetTheBuffer(t *testing.T) {
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ln := &listener{Listener: plain, size: Boot, big: 2}
	// connect dials the listener and returns the connection it accepts.
	connect := func() net.Conn {
		d, err := net.Dial("tcp", plain.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	accepted := []net.Conn{connect(), connect(), connect()}
	if os.Geteuid() == 0 && (sndbuf(t, accepted[0]) < Boot || sndbuf(t, accepted[1]) < Boot) {
		t.Error("the first two connections did not get the large buffer")
	}
	if got := sndbuf(t, accepted[2]); got >= Boot {
		t.Errorf("the third connection got %d bytes, want the kernel's own size", got)
	}
	// Once fewer are open again, the next one gets it.
	accepted[0].Close()
	accepted[2].Close()
	c := connect()
	if os.Geteuid() == 0 && sndbuf(t, c) < Boot {
		t.Error("a connection accepted after a close did not get the large buffer")
	}
}

// Enlarge gives a request's connection the Registry buffer, to at most
// the listener's ration at once; a closed connection gives its share back.
func TestEnlargeIsRationed(t *testing.T) {
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ln := Listener(plain, Boot)
	ln.(*listener).largeMax = 1
	accept := func() net.Conn {
		t.Helper()
		dialled, err := net.Dial("tcp", plain.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dialled.Close() })
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := accept(), accept()
	before := sndbuf(t, a)
	if !Enlarge(ConnContext(context.Background(), a)) {
		t.Fatal("the first connection was not enlarged")
	}
	if got := sndbuf(t, a); got <= before || (os.Geteuid() == 0 && got < Registry) {
		t.Fatalf("enlarged send buffer %d (was %d, asked for %d)", got, before, Registry)
	}
	if !Enlarge(ConnContext(context.Background(), a)) {
		t.Fatal("a second request on the enlarged connection was refused")
	}
	if Enlarge(ConnContext(context.Background(), b)) {
		t.Fatal("a second connection was enlarged beyond the ration of 1")
	}
	a.Close()
	if Enlarge(ConnContext(context.Background(), a)) {
		t.Fatal("a closed connection was enlarged")
	}
	if !Enlarge(ConnContext(context.Background(), b)) {
		t.Fatal("the ration was not given back when the enlarged connection closed")
	}
	if Enlarge(context.Background()) {
		t.Fatal("a context without a connection enlarged something")
	}
}
