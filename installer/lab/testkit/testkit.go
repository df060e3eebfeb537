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
)

// TB is the part of testing.TB these helpers use.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	TempDir() string
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
