package engine

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/services/agentapi"
)

// The discovery image assembled from a kernel package (a real one, made
// with dpkg-deb) carries airlock's CA from the state directory where the
// agent reads it; a restart reuses the image, and a new CA gets a new
// image with the new certificate.
func TestDiscoveryImageCarriesTheCA(t *testing.T) {
	dpkgDeb := netns.RequireTool(t, "dpkg-deb", "dpkg")
	cpio := netns.RequireTool(t, "cpio", "cpio")
	root := t.TempDir()
	for name, data := range map[string]string{
		"boot/vmlinuz-6.1.0-test":                "not really a kernel",
		"lib/modules/6.1.0-test/modules.dep":     "",
		"lib/modules/6.1.0-test/modules.builtin": "",
		"DEBIAN/control":                         "Package: linux-image-test\nVersion: 1\nArchitecture: amd64\nMaintainer: airlock tests <tests@airlock.invalid>\nDescription: test kernel\n",
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deb := filepath.Join(t.TempDir(), "kernel.deb")
	if out, err := exec.Command(dpkgDeb, "--root-owner-group", "-Zgzip", "-b", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	pkg, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(pkg)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	agentBin := append([]byte("\x7fELF"), bytes.Repeat([]byte{2}, 64)...)
	stateDir := t.TempDir()
	log := slog.New(slog.DiscardHandler)

	caInImage := func() []byte {
		t.Helper()
		files, image, err := DiscoveryFromKernelPackage(bytes.NewReader(pkg), digest, stateDir, agentBin, log)
		if err != nil {
			t.Fatal(err)
		}
		f, err := files.Open(image.Initrd)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		cmd := exec.Command(cpio, "-id", "--no-absolute-filenames", "etc/airlock/ca.pem")
		cmd.Dir, cmd.Stdin = dir, bytes.NewReader(raw)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cpio: %v\n%s", err, out)
		}
		ca, err := os.ReadFile(filepath.Join(dir, agentapi.CACertPath))
		if err != nil {
			t.Fatalf("no CA in the discovery image: %v", err)
		}
		return ca
	}
	first := caInImage()
	want, err := os.ReadFile(filepath.Join(stateDir, "ca.pem"))
	if err != nil || !bytes.Equal(first, want) {
		t.Fatalf("the image's CA is not STATE/ca.pem (%v)", err)
	}
	// A mark in the image's directory survives only if it is reused.
	dirs, _ := filepath.Glob(filepath.Join(stateDir, "boot", "*"))
	if len(dirs) != 1 {
		t.Fatalf("boot directories %v", dirs)
	}
	if err := os.WriteFile(filepath.Join(dirs[0], "mark"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if again := caInImage(); !bytes.Equal(again, first) {
		t.Fatal("a restart changed the image's CA")
	}
	if _, err := os.Stat(filepath.Join(dirs[0], "mark")); err != nil {
		t.Fatal("a restart did not reuse the image")
	}
	for _, name := range []string{"ca.pem", "ca-key.pem"} {
		if err := os.Remove(filepath.Join(stateDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	renewed := caInImage()
	want, _ = os.ReadFile(filepath.Join(stateDir, "ca.pem"))
	if bytes.Equal(renewed, first) || !bytes.Equal(renewed, want) {
		t.Fatal("after a new CA the image does not carry it")
	}
}
