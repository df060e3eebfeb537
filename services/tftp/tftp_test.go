package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	ptftp "github.com/pin/tftp/v3"

	"airlock.dev/airlock/installer/lab/netns"
)

func TestCleanPath(t *testing.T) {
	for _, ok := range []string{"undionly.kpxe", "arm64/snponly.efi", "a-b_c.efi"} {
		if _, err := CleanPath(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/etc/passwd", "../etc/passwd", "a/../../b", "a\\b", "..\\x", "a\x00b", "./a", "a//b", "a/", "."} {
		if _, err := CleanPath(bad); !errors.Is(err, ErrBadPath) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"undionly.kpxe", "../x", "/x", "a\\b", "a\x00", "arm64/ipxe.efi", "....//x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		clean, err := CleanPath(name)
		if err != nil {
			return
		}
		for _, el := range strings.Split(clean, "/") {
			if el == ".." || el == "." || el == "" {
				t.Fatalf("%q cleaned to %q", name, clean)
			}
		}
		if strings.HasPrefix(clean, "/") || strings.ContainsAny(clean, "\\\x00") {
			t.Fatalf("%q cleaned to %q", name, clean)
		}
	})
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// serveInNS starts the server on a socket opened inside ns at addr.
func serveInNS(t *testing.T, ns *netns.NS, addr string, fsys fstest.MapFS, cfg Config) *Server {
	t.Helper()
	var conn net.PacketConn
	if err := ns.Do(func() error {
		var err error
		conn, err = net.ListenPacket("udp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv, err := New(fsys, conn, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(15 * time.Second):
			t.Error("tftp server did not stop")
		}
	})
	return srv
}

// TestNetnsTFTPHPA fetches files with tftp-hpa's client from another
// namespace: byte-identical, and traversal refused.
func TestNetnsTFTPHPA(t *testing.T) {
	netns.RequireTool(t, "tftp", "tftp-hpa")
	srvNS := netns.NewTest(t, "alts")
	cli := netns.NewTest(t, "altc")
	netns.MustVeth(t, srvNS, "eth0", cli, "eth0")
	srvNS.MustAddr(t, "eth0", "10.71.0.1/24")
	cli.MustAddr(t, "eth0", "10.71.0.2/24")

	kpxe := randomBytes(t, 300*1024+17)
	efi := randomBytes(t, 1024*1024)
	fsys := fstest.MapFS{
		"undionly.kpxe":     {Data: kpxe},
		"arm64/snponly.efi": {Data: efi},
	}
	serveInNS(t, srvNS, "10.71.0.1:69", fsys, Defaults())

	dir := t.TempDir()
	get := func(remote, local string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := cli.Command(ctx, "tftp", "-m", "binary", "10.71.0.1", "-c", "get", remote, local).CombinedOutput()
		return string(out), err
	}
	for name, want := range map[string][]byte{"undionly.kpxe": kpxe, "arm64/snponly.efi": efi} {
		local := filepath.Join(dir, strings.ReplaceAll(name, "/", "_"))
		if out, err := get(name, local); err != nil || strings.Contains(out, "Error") {
			t.Fatalf("tftp get %s: %v %s", name, err, out)
		}
		got, err := os.ReadFile(local)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: got %d bytes, want %d identical (err %v)", name, len(got), len(want), err)
		}
	}
	for _, bad := range []string{"../../../../etc/passwd", "/etc/passwd", "arm64/../undionly.kpxe", "..\\..\\etc\\passwd", "missing.efi"} {
		local := filepath.Join(dir, "bad")
		os.Remove(local)
		out, _ := get(bad, local)
		if !strings.Contains(out, "Error") {
			t.Errorf("tftp get %q was not refused: %q", bad, out)
		}
		if b, err := os.ReadFile(local); err == nil && len(b) > 0 {
			t.Errorf("tftp get %q delivered %d bytes", bad, len(b))
		}
	}
}

// TestNetnsBlksizeTsize negotiates blksize 1432 and tsize with a client
// from the same library, across a veth pair.
func TestNetnsBlksizeTsize(t *testing.T) {
	srvNS := netns.NewTest(t, "alts")
	cli := netns.NewTest(t, "altc")
	netns.MustVeth(t, srvNS, "eth0", cli, "eth0")
	srvNS.MustAddr(t, "eth0", "10.71.0.1/24")
	cli.MustAddr(t, "eth0", "10.71.0.2/24")
	data := randomBytes(t, 2*1024*1024+5)
	cfg := Defaults()
	cfg.MaxTransfers = 1
	serveInNS(t, srvNS, "10.71.0.1:69", fstest.MapFS{"ipxe.efi": {Data: data}}, cfg)

	var c *ptftp.Client
	if err := cli.Do(func() error {
		var err error
		c, err = ptftp.NewClient("10.71.0.1:69")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c.SetBlockSize(1432)
	c.RequestTSize(true)
	c.SetTimeout(2 * time.Second)
	var wt io.WriterTo
	// The client opens its socket per transfer: open it inside the namespace.
	if err := cli.Do(func() error {
		var err error
		wt, err = c.Receive("ipxe.efi", "octet")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n, ok := wt.(ptftp.IncomingTransfer).Size(); !ok || n != int64(len(data)) {
		t.Fatalf("tsize %d %v, want %d", n, ok, len(data))
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), data) {
		t.Fatal("content differs")
	}
}

// TestNetnsEDK2SizeProbe: EDK2 first asks for the file size (RRQ with
// tsize), then aborts with error 8 after the OACK. That is normal: the
// server must drop the transfer quietly and serve the real fetch after it.
func TestNetnsEDK2SizeProbe(t *testing.T) {
	srvNS := netns.NewTest(t, "alts")
	cli := netns.NewTest(t, "altc")
	netns.MustVeth(t, srvNS, "eth0", cli, "eth0")
	srvNS.MustAddr(t, "eth0", "10.71.0.1/24")
	cli.MustAddr(t, "eth0", "10.71.0.2/24")
	data := randomBytes(t, 100*1024+3)
	serveInNS(t, srvNS, "10.71.0.1:69", fstest.MapFS{"snponly.efi": {Data: data}}, Defaults())

	var conn net.PacketConn
	if err := cli.Do(func() error {
		var err error
		conn, err = net.ListenPacket("udp4", "10.71.0.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// RRQ snponly.efi octet tsize 0 blksize 1468
	rrq := []byte("\x00\x01snponly.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00")
	if _, err := conn.WriteTo(rrq, &net.UDPAddr{IP: net.IPv4(10, 71, 0, 1), Port: 69}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := conn.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no OACK: %v", err)
	}
	if buf[1] != 6 || !bytes.Contains(buf[:n], []byte(fmt.Sprintf("tsize\x00%d\x00", len(data)))) {
		t.Fatalf("want OACK with tsize %d, got %q", len(data), buf[:n])
	}
	// ERROR 8 (option negotiation refused), as EDK2 sends.
	if _, err := conn.WriteTo([]byte("\x00\x05\x00\x08\x00"), from); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)

	// The real fetch works (tftp-hpa as a stand-in for EDK2's second RRQ).
	netns.RequireTool(t, "tftp", "tftp-hpa")
	local := filepath.Join(t.TempDir(), "snponly.efi")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := cli.Command(ctx, "tftp", "-m", "binary", "10.71.0.1", "-c", "get", "snponly.efi", local).CombinedOutput(); err != nil {
		t.Fatalf("fetch after the size probe: %v %s", err, out)
	}
	got, _ := os.ReadFile(local)
	if !bytes.Equal(got, data) {
		t.Fatalf("fetch after the size probe: %d bytes, want %d", len(got), len(data))
	}
}
