package provision

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// These tests use real loop devices and Debian's disk tools; they run as
// root (CI does). Partition scanning of loop devices does not work on the
// build machines (no udev), so partitions are checked through offsets.

// need returns the path of a Debian tool or fails saying how to install it.
func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found: apt-get install %s", tool, pkg)
	}
	return p
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("this test attaches loop devices: run it as root")
	}
}

// run runs a command and returns its standard output, failing the test
// (with its output) if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// loopDevice attaches a new file of size bytes as a loop device and
// detaches it when the test ends.
func loopDevice(t *testing.T, size int64, extra ...string) (dev, backing string) {
	t.Helper()
	needRoot(t)
	need(t, "losetup", "mount")
	backing = filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, extra...), "--find", "--show", backing)
	dev = strings.TrimSpace(run(t, "losetup", args...))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
		}
	})
	return dev, backing
}

// testImage is a raw GPT disk image made with Debian's tools: a 40 MiB
// ext4 partition (holding a file) at 1 MiB and a 6 MiB partition after
// it, in an image of size bytes.
type testImage struct {
	raw    []byte
	sha256 string
}

func makeImage(t *testing.T, size int64) testImage {
	t.Helper()
	need(t, "sfdisk", "fdisk")
	need(t, "mkfs.ext4", "e2fsprogs")
	dir := t.TempDir()
	img := filepath.Join(dir, "image.raw")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "--quiet", img)
	cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, size=81920, type=linux, name=root\nstart=83968, size=12288, type=uefi, name=esp\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	content := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(content, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(content, "etc", "hostname"), []byte("airlock-test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-L", "root", "-E", "offset=1048576", "-d", content, img, "40M")
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	return testImage{raw: raw, sha256: hex.EncodeToString(sum[:])}
}

// blkid runs `blkid -p` (low-level probing, no cache) on dev at offset
// and returns its output and exit code (2: nothing found).
func blkid(t *testing.T, dev string, offset int64) (string, int) {
	t.Helper()
	need(t, "blkid", "util-linux")
	out, err := exec.Command("blkid", "-p", "-O", strconv.FormatInt(offset, 10), dev).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("blkid %s: %v", dev, err)
	}
	return string(out), 0
}

func readDev(t *testing.T, dev string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", dev, off, err)
	}
	return b
}

func putDev(t *testing.T, dev string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
