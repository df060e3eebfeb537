package bootimage

import (
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/pki"
	"airlock.dev/airlock/services/agentapi"
)

var fakeELF = []byte("\x7fELF fake module")

// testCA is a real airlock CA's certificate (PEM), made in a temporary
// state directory.
func testCA(t *testing.T) []byte {
	t.Helper()
	ca, err := pki.LoadOrCreate(t.TempDir(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca.CertPEM
}

// fakeTree makes a module tree with a plain, an xz- and a zstd-compressed
// module.
func fakeTree(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "6.1.0-test")
	write := func(name string, data []byte) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var xzb, zb bytes.Buffer
	xw, _ := xz.NewWriter(&xzb)
	xw.Write(fakeELF)
	xw.Close()
	zw, _ := zstd.NewWriter(&zb)
	zw.Write(fakeELF)
	zw.Close()
	write("kernel/drivers/virtio/virtio_ring.ko", fakeELF)
	write("kernel/drivers/virtio/virtio.ko.xz", xzb.Bytes())
	write("kernel/drivers/net/virtio_net.ko.zst", zb.Bytes())
	write("kernel/drivers/unused.ko", fakeELF)
	write("modules.dep", []byte("kernel/drivers/net/virtio_net.ko.zst: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko\n"+
		"kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_ring.ko:\nkernel/drivers/unused.ko:\n"))
	write("modules.builtin", []byte("kernel/drivers/nvme/host/nvme.ko\n"))
	return dir
}

// TestBuildListsWithCpio builds an image and reads it back with Debian's
// cpio, for each compression.
func TestBuildListsWithCpio(t *testing.T) {
	cpio := netns.RequireTool(t, "cpio", "cpio")
	tree := fakeTree(t)
	ca := testCA(t)
	agentBin := append([]byte("\x7fELF"), bytes.Repeat([]byte{1}, 1000)...)
	for _, comp := range []string{Gzip, Zstd, None} {
		t.Run(comp, func(t *testing.T) {
			var buf bytes.Buffer
			rep, err := Build(&buf, Options{Agent: agentBin, CACert: ca, ModulesDir: tree, Modules: []string{"virtio_net", "nvme", "e1000"}, Compression: comp})
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/net/virtio_net.ko"}
			if strings.Join(rep.Modules, " ") != strings.Join(want, " ") {
				t.Fatalf("modules %v, want %v", rep.Modules, want)
			}
			if strings.Join(rep.Builtin, ",") != "nvme" || strings.Join(rep.Missing, ",") != "e1000" {
				t.Fatalf("builtin %v missing %v", rep.Builtin, rep.Missing)
			}
			raw := buf.Bytes()
			switch comp {
			case Gzip:
				zr, err := gzip.NewReader(&buf)
				if err != nil {
					t.Fatal(err)
				}
				var plain bytes.Buffer
				plain.ReadFrom(zr)
				raw = plain.Bytes()
			case Zstd:
				zr, _ := zstd.NewReader(&buf)
				raw, err = zr.DecodeAll(buf.Bytes(), nil)
				if err != nil {
					t.Fatal(err)
				}
			}
			dir := t.TempDir()
			cmd := exec.Command(cpio, "-idmv", "--no-absolute-filenames")
			cmd.Dir = dir
			cmd.Stdin = bytes.NewReader(raw)
			out, err := cmd.CombinedOutput()
			if err != nil && !strings.Contains(string(out), "dev/console") {
				t.Fatalf("cpio: %v\n%s", err, out)
			}
			for _, f := range []string{"init", "lib/modules/6.1.0-test/kernel/drivers/virtio/virtio.ko", "lib/modules/6.1.0-test/kernel/drivers/net/virtio_net.ko"} {
				data, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil {
					t.Fatalf("%s not in image: %v\ncpio says:\n%s", f, err, out)
				}
				if f != "init" && !bytes.Equal(data, fakeELF) {
					t.Fatalf("%s not decompressed", f)
				}
			}
			// airlock's CA, where the agent reads it, byte for byte.
			if got, err := os.ReadFile(filepath.Join(dir, agentapi.CACertPath)); err != nil || !bytes.Equal(got, ca) {
				t.Fatalf("CA certificate in the image: %v\n%s", err, got)
			}
			if fi, err := os.Stat(filepath.Join(dir, agentapi.CACertPath)); err != nil || fi.Mode().Perm() != 0o644 {
				t.Fatalf("CA certificate mode: %v %v", fi, err)
			}
			if fi, err := os.Stat(filepath.Join(dir, "init")); err != nil || fi.Mode().Perm() != 0o755 {
				t.Fatalf("init mode: %v %v", fi, err)
			}
			if _, err := os.Stat(filepath.Join(dir, "lib/modules/6.1.0-test/kernel/drivers/unused.ko")); err == nil {
				t.Fatal("a module nobody asked for is in the image")
			}
			dep, _ := os.ReadFile(filepath.Join(dir, "lib/modules/6.1.0-test/modules.dep"))
			if !strings.Contains(string(dep), "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko") {
				t.Fatalf("modules.dep:\n%s", dep)
			}
			if !strings.Contains(string(out), "dev/console") {
				t.Fatalf("no dev/console:\n%s", out)
			}
		})
	}
}

func TestBuildRejectsNonELFAgent(t *testing.T) {
	if _, err := Build(&bytes.Buffer{}, Options{Agent: []byte("#!/bin/sh\n"), CACert: testCA(t)}); err == nil {
		t.Fatal("accepted a shell script as the agent")
	}
}

// An image without airlock's CA would leave the agent unable to trust
// anyone: it is not built.
func TestBuildRequiresTheCA(t *testing.T) {
	agentBin := append([]byte("\x7fELF"), bytes.Repeat([]byte{1}, 100)...)
	for _, ca := range [][]byte{nil, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")} {
		if _, err := Build(&bytes.Buffer{}, Options{Agent: agentBin, CACert: ca}); err == nil || !strings.Contains(err.Error(), "CA certificate") {
			t.Errorf("CA %q: %v", ca, err)
		}
	}
}
