package netns

import (
	"os/exec"
	"strings"
)

// TB is the part of testing.TB these helpers use (declared here so that the
// package does not link the testing package into product binaries).
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
}

// NewTest creates a uniquely named namespace (prefix + pid + counter) and
// removes it, with every process still inside, when the test ends. It fails
// the test with an install hint if iproute2 is missing or we lack privilege.
func NewTest(t TB, prefix string) *NS {
	t.Helper()
	RequireTool(t, "ip", "iproute2")
	n, err := Add(UniqueName(prefix))
	if err != nil {
		t.Fatalf("netns: %v (tests that use network namespaces run as root)", err)
	}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Logf("netns cleanup: %v", err)
		}
	})
	return n
}

// RequireTool fails the test unless tool is on PATH, saying which Debian
// package provides it. Tests never skip for a missing tool.
func RequireTool(t TB, tool, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found: apt-get install %s", tool, debianPackage)
	}
	return p
}

// MustVeth is AddVeth for tests: it fails the test on error.
func MustVeth(t TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	if err := AddVeth(a, aName, b, bName); err != nil {
		t.Fatalf("netns: %v", err)
	}
}

// MustAddr is AddAddr for tests.
func (n *NS) MustAddr(t TB, dev, cidr string) {
	t.Helper()
	if err := n.AddAddr(dev, cidr); err != nil {
		t.Fatalf("netns: %v", err)
	}
}

// MustIP is IP for tests.
func (n *NS) MustIP(t TB, args ...string) {
	t.Helper()
	if err := n.IP(args...); err != nil {
		t.Fatalf("netns: %s: %v", strings.Join(args, " "), err)
	}
}
