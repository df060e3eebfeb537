// Package testkit is what tests in several packages need from this
// machine: Debian's cloud kernel with its module tree (the stand-in for a
// bundle's kernel package), the node agent built from source, and a
// goroutine-safe buffer for the logs of processes a test runs. Missing
// prerequisites fail the test with how to install them; nothing is skipped.
// Only tests import it (architecture_test.go holds that).
package testkit

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// TB is the part of testing.TB these helpers use.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	TempDir() string
	Cleanup(func())
}

// CloudKernel returns the newest /boot/vmlinuz-*-cloud-amd64 and its
// module tree.
func CloudKernel(t TB) (kernel, modules string) {
	t.Helper()
	ks, _ := filepath.Glob("/boot/vmlinuz-*-cloud-amd64")
	if len(ks) == 0 {
		t.Fatalf("no /boot/vmlinuz-*-cloud-amd64: apt-get install linux-image-cloud-amd64")
	}
	kernel = ks[len(ks)-1]
	modules = filepath.Join("/lib/modules", strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-"))
	if _, err := os.Stat(filepath.Join(modules, "modules.dep")); err != nil {
		t.Fatalf("no %s/modules.dep: apt-get install --reinstall linux-image-cloud-amd64", modules)
	}
	return kernel, modules
}

// BuildAgent compiles the static linux/amd64 agent and returns its path.
func BuildAgent(t TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "airlock-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "airlock.dev/airlock/installer/agent/cmd/airlock-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, b)
	}
	return out
}

// Buffer is a bytes.Buffer safe for concurrent writers, for process logs.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// DiskImage makes a small raw GPT disk image of size bytes with sfdisk
// (one Linux partition named root at 1 MiB) and "airlock image marker"
// at 4 MiB, and returns it raw and zstd-compressed.
func DiskImage(t TB, size int64) (raw, compressed []byte) {
	t.Helper()
	need(t, "sfdisk", "fdisk")
	path := filepath.Join(t.TempDir(), "image.raw")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatalf("%v", err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatalf("%v", err)
	}
	cmd := exec.Command("sfdisk", "--quiet", path)
	cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, size=20480, type=linux, name=root\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v", err)
	}
	copy(raw[4<<20:], "airlock image marker")
	var z bytes.Buffer
	zw, err := zstd.NewWriter(&z)
	if err != nil {
		t.Fatalf("%v", err)
	}
	if _, err := zw.Write(raw); err != nil {
		t.Fatalf("%v", err)
	}
	if err := zw.Close(); err != nil {
		t.Fatalf("%v", err)
	}
	return raw, z.Bytes()
}

// LoopDevice attaches a new sparse file of size bytes as a loop device
// (root only) and detaches it when the test ends.
func LoopDevice(t TB, size int64) (dev, backing string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test attaches loop devices: run it as root")
	}
	need(t, "losetup", "mount")
	backing = filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatalf("%v", err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatalf("%v", err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev, backing
}

func need(t TB, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("%s is needed: apt-get install %s", tool, pkg)
	}
}
