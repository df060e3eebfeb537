package httpboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"airlock.dev/airlock/services/sendbuf"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		_ = os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update creates it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (go test -update to accept):\n--- got\n%s--- want\n%s", name, got, want)
	}
}

var discover = BootSpec{State: StateDiscover, Kernel: "agent/vmlinuz", Initrds: []string{"agent/initramfs.cpio.zst"}, Cmdline: "console=ttyS0 quiet"}

type errBackend struct{}

func (errBackend) BootSpec(context.Context, net.HardwareAddr) (BootSpec, error) {
	return BootSpec{}, errors.New("inventory is busy")
}

// start runs a server on a loopback port 0 listener and returns its URL.
func start(t *testing.T, b Backend, ipxeFS fstest.MapFS, files fs.FS, mount func(*Server)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Defaults()
	cfg.BaseURL = "http://10.70.0.1:8080"
	cfg.MaxBodyBytes = 1024
	var ifs fs.FS
	if ipxeFS != nil {
		ifs = ipxeFS
	}
	s, err := New(cfg, ln, b, ifs, files, nil)
	if err != nil {
		t.Fatal(err)
	}
	if mount != nil {
		mount(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestGoldenScripts(t *testing.T) {
	b := NewMemBackend(discover)
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	b.Set(mac("52:54:00:00:00:02"), BootSpec{State: StateInstall, Kernel: "agent/vmlinuz", Initrds: []string{"agent/initramfs.cpio.zst", "agent/modules.cpio"}, Cmdline: "console=ttyS0"})
	b.Set(mac("52:54:00:00:00:03"), BootSpec{State: StateLocal})
	b.Set(mac("52:54:00:00:00:04"), BootSpec{State: StateInstall, Kernel: "agent/vmlinuz", Initrds: []string{"x"}, Cmdline: "evil ${net0/ip}"})
	base := start(t, b, nil, fstest.MapFS{}, nil)
	for name, q := range map[string]string{
		"discover.ipxe": "?mac=52:54:00:00:00:01",
		"install.ipxe":  "?mac=52:54:00:00:00:02",
		"local.ipxe":    "?mac=52-54-00-00-00-03",
		"rejected.ipxe": "?mac=52:54:00:00:00:04",
		"no-mac.ipxe":   "",
	} {
		resp, body := get(t, base+"/ipxe/boot.ipxe"+q)
		if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "#!ipxe\n") {
			t.Fatalf("%s: %d %q", name, resp.StatusCode, body)
		}
		golden(t, name, string(body))
	}
	if resp, _ := get(t, base+"/ipxe/boot.ipxe?mac=zz"); resp.StatusCode != 400 {
		t.Fatalf("bad mac: %d", resp.StatusCode)
	}
	errBase := start(t, errBackend{}, nil, fstest.MapFS{}, nil)
	_, body := get(t, errBase+"/ipxe/boot.ipxe?mac=52:54:00:00:00:01")
	golden(t, "backend-error.ipxe", string(body))
}

func TestFilesRangeAndPaths(t *testing.T) {
	data := make([]byte, 3<<20)
	rand.Read(data)
	files := fstest.MapFS{"agent/vmlinuz": {Data: data, ModTime: time.Unix(1700000000, 0)}}
	base := start(t, NewMemBackend(discover), nil, files, nil)

	resp, body := get(t, base+"/files/agent/vmlinuz")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) || resp.Header.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("full GET: %d, %d bytes", resp.StatusCode, len(body))
	}
	resp, body = get(t, base+"/files/agent/vmlinuz", "Range", "bytes=1000-1999")
	if resp.StatusCode != 206 || !bytes.Equal(body, data[1000:2000]) {
		t.Fatalf("range GET: %d %d bytes", resp.StatusCode, len(body))
	}
	resp, _ = get(t, base+"/files/agent/vmlinuz", "Range", fmt.Sprintf("bytes=%d-", len(data)+5))
	if resp.StatusCode != 416 {
		t.Fatalf("unsatisfiable range: %d", resp.StatusCode)
	}
	for _, bad := range []string{"/files/../etc/passwd", "/files/agent/%2e%2e/%2e%2e/etc/passwd", "/files/a%5cb", "/files/agent", "/files/missing"} {
		if resp, _ := get(t, base+bad); resp.StatusCode == 200 {
			t.Errorf("%s served", bad)
		}
	}
	// No iPXE binaries in this server: a clear 404.
	resp, body = get(t, base+"/ipxe/snponly.efi")
	if resp.StatusCode != 404 || !strings.Contains(string(body), "no iPXE binaries") {
		t.Fatalf("ipxe without binaries: %d %q", resp.StatusCode, body)
	}
}

func TestIPXEBinariesServed(t *testing.T) {
	efi := []byte("MZ fake efi")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	cfg := Defaults()
	cfg.BaseURL = "http://127.0.0.1"
	s, err := New(cfg, ln, NewMemBackend(discover), fstest.MapFS{"snponly.efi": {Data: efi}}, fstest.MapFS{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	resp, body := get(t, "http://"+ln.Addr().String()+"/ipxe/snponly.efi")
	if resp.StatusCode != 200 || !bytes.Equal(body, efi) {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

func TestMountAndBodyLimit(t *testing.T) {
	base := start(t, NewMemBackend(discover), nil, fstest.MapFS{}, func(s *Server) {
		s.Mount("/api/v1/agent/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
				return
			}
			fmt.Fprintf(w, "%s %d", r.URL.Path, len(b))
		}))
	})
	resp, err := http.Post(base+"/api/v1/agent/inventory", "application/json", strings.NewReader(`{"ok":true}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "/api/v1/agent/inventory 11" {
		t.Fatalf("mounted handler said %q", b)
	}
	resp, err = http.Post(base+"/api/v1/agent/inventory", "application/json", bytes.NewReader(make([]byte, 4096)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: %d", resp.StatusCode)
	}
	// Oversized headers are refused by the server itself.
	req, _ := http.NewRequest("GET", base+"/files/x", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err = http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("oversized header: %d", resp.StatusCode)
		}
	}
}

// TestGracefulDrain: a request in flight when Run is cancelled completes.
func TestGracefulDrain(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	cfg := Defaults()
	cfg.BaseURL = "http://127.0.0.1"
	s, _ := New(cfg, ln, NewMemBackend(discover), nil, fstest.MapFS{}, nil)
	started := make(chan struct{})
	s.Mount("/api/v1/agent/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(500 * time.Millisecond)
		io.WriteString(w, "done")
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/api/v1/agent/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-started
	cancel()
	if g := <-got; g != "done" {
		t.Fatalf("in-flight request got %q", g)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/ipxe/boot.ipxe"); err == nil {
		t.Fatal("server still accepts after shutdown")
	}
}

// A mounted handler can enlarge its connection's send buffer (the OS
// image's handler does): the server keeps each connection in its
// requests' contexts for sendbuf.Enlarge.
func TestMountedHandlerCanEnlargeItsConnection(t *testing.T) {
	base := start(t, NewMemBackend(discover), nil, fstest.MapFS{}, func(s *Server) {
		s.Mount("/os/images/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, sendbuf.Enlarge(r.Context()))
		}))
	})
	if resp, b := get(t, base+"/os/images/x"); resp.StatusCode != http.StatusOK || string(b) != "true" {
		t.Fatalf("Enlarge in a mounted handler: %d %q", resp.StatusCode, b)
	}
}
