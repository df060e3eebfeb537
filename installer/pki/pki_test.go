package pki

import (
	"crypto/x509"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// The CA is made once, kept 0600 and reused; the serving certificate it
// signs names the addresses, verifies against the CA alone, and is reused
// until the addresses change or it nears its end.
func TestCAKeptAndServingRenewed(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreate(dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{CACertFile, CAKeyFile} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", name, st.Mode().Perm())
		}
	}
	again, err := LoadOrCreate(dir, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if again.Fingerprint() != ca.Fingerprint() || !again.Cert.IsCA {
		t.Fatalf("a restart made another CA: %s, then %s", ca.Fingerprint(), again.Fingerprint())
	}
	if len(strings.Split(ca.Fingerprint(), ":")) != 32 {
		t.Errorf("fingerprint %q", ca.Fingerprint())
	}

	c, renewed, err := ca.Serving(dir, addrs("10.77.0.1"), t0)
	if err != nil || !renewed {
		t.Fatalf("first serving certificate: renewed %v, %v", renewed, err)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: t0}); err != nil {
		t.Fatalf("the serving certificate does not verify against the CA: %v", err)
	}
	if err := c.Leaf.VerifyHostname("10.77.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Leaf.VerifyHostname("10.77.0.2"); err == nil {
		t.Fatal("the certificate names an address it was not made for")
	}
	first := Fingerprint(c.Leaf)
	c, renewed, err = ca.Serving(dir, addrs("10.77.0.1"), t0.Add(24*time.Hour))
	if err != nil || renewed || Fingerprint(c.Leaf) != first {
		t.Fatalf("same addresses a day later: renewed %v, %v", renewed, err)
	}
	c, renewed, err = ca.Serving(dir, addrs("10.77.0.1", "10.78.0.1"), t0.Add(24*time.Hour))
	if err != nil || !renewed || c.Leaf.VerifyHostname("10.78.0.1") != nil {
		t.Fatalf("new address: renewed %v, %v", renewed, err)
	}
	second := Fingerprint(c.Leaf)
	late := c.Leaf.NotAfter.Add(-RenewBefore + time.Hour)
	c, renewed, err = ca.Serving(dir, addrs("10.78.0.1", "10.77.0.1"), late)
	if err != nil || !renewed || Fingerprint(c.Leaf) == second {
		t.Fatalf("near its end: renewed %v, %v", renewed, err)
	}
	st, err := os.Stat(filepath.Join(dir, ServingKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("serving key: %v %v", st, err)
	}

	// Another CA's serving certificate in the directory is not reused.
	other, err := LoadOrCreate(t.TempDir(), t0)
	if err != nil {
		t.Fatal(err)
	}
	c, renewed, err = other.Serving(dir, addrs("10.77.0.1", "10.78.0.1"), late)
	if err != nil || !renewed {
		t.Fatalf("another CA's certificate: renewed %v, %v", renewed, err)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: late}); err == nil {
		t.Fatal("a certificate of another CA verifies against the first")
	}
}

// Half a CA (the key without its certificate, or the other way round) is
// refused, not silently replaced; a key readable by others is refused.
func TestHalfCARefused(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreate(dir, t0); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(dir, t0); !errors.Is(err, ErrHalfCA) {
		t.Fatalf("key without certificate: %v", err)
	}

	dir = t.TempDir()
	if _, err := LoadOrCreate(dir, t0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, CAKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(dir, t0); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("key readable by others: %v", err)
	}
}

// openssl reads the CA as the README says to look at it, and its
// fingerprint is ours.
func TestOpenSSLReadsTheCA(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is needed: apt-get install openssl")
	}
	dir := t.TempDir()
	ca, err := LoadOrCreate(dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "x509", "-in", filepath.Join(dir, CACertFile), "-noout", "-fingerprint", "-sha256", "-text").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), ca.Fingerprint()) || !strings.Contains(string(out), "CA:TRUE") {
		t.Fatalf("openssl says:\n%s\nwant fingerprint %s", out, ca.Fingerprint())
	}
}
