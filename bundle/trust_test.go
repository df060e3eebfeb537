package bundle

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// A bundle is used only when its key was named or trusted on first use;
// trust on first use records the key and refuses any other afterwards.
func TestTrustIsNeverOptional(t *testing.T) {
	dir := t.TempDir()
	tb := writeTestBundle(t, filepath.Join(mkdir(t, dir, "a")), WriterOptions{}, nil)
	other := writeTestBundle(t, filepath.Join(mkdir(t, dir, "b")), WriterOptions{}, nil)

	// No trust chosen: refused, naming the key and what to do.
	_, err := Open(tb.path, Trust{})
	if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), KeyID(tb.pub)) || !strings.Contains(err.Error(), "bundle.publicKey") {
		t.Fatalf("open without any trust: %v", err)
	}
	// The appended bundle follows the same rule (this test binary has none).
	if _, err := OpenExecutable(Trust{}); !errors.Is(err, ErrNotBundle) {
		t.Fatalf("open executable: %v", err)
	}

	// The key named: used, and says so.
	b, err := Open(tb.path, Trust{PublicKey: tb.pub})
	if err != nil || b.Authenticity() != KeyGiven || !b.Trusted() {
		t.Fatalf("open with its key: %v", err)
	}
	b.Close()
	// Integrity only: opened, but not trusted.
	b, err = Open(tb.path, Trust{IntegrityOnly: true})
	if err != nil || b.Trusted() || b.Authenticity() != NotChecked || !strings.Contains(b.Inspect().Authenticity, "NOT checked") {
		t.Fatalf("open for integrity only: %v", err)
	}
	if res, err := b.Verify(context.Background(), VerifyOptions{}); err != nil || res.Trusted {
		t.Fatalf("verify for integrity only: %+v %v", res, err)
	}
	b.Close()

	// Trust on first use: the first key is recorded, the same key is
	// accepted again, another is refused.
	pin := filepath.Join(dir, "state", PinFileName)
	tofu := Trust{FirstUse: true, PinFile: pin}
	b, err = Open(tb.path, tofu)
	if err != nil || b.Authenticity() != FirstUse {
		t.Fatalf("first use: %v", err)
	}
	b.Close()
	if got, err := ReadPublicKey(pin); err != nil || !got.Equal(tb.pub) {
		t.Fatalf("recorded key: %v", err)
	}
	if st, err := os.Stat(pin); err != nil || st.Mode().Perm()&0o022 != 0 {
		t.Fatalf("recorded key file: %v %v", st.Mode(), err)
	}
	b, err = Open(tb.path, tofu)
	if err != nil || b.Authenticity() != KeyPinned {
		t.Fatalf("second use: %v", err)
	}
	b.Close()
	_, err = Open(other.path, tofu)
	if !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), KeyID(other.pub)) || !strings.Contains(err.Error(), pin) {
		t.Fatalf("another key after first use: %v", err)
	}
	// A named key wins over the recorded one.
	b, err = Open(other.path, Trust{PublicKey: other.pub, FirstUse: true, PinFile: pin})
	if err != nil || b.Authenticity() != KeyGiven {
		t.Fatalf("named key with a pin: %v", err)
	}
	b.Close()

	// A damaged bundle is not pinned at first use.
	pin2 := filepath.Join(dir, "state2", PinFileName)
	raw, _ := os.ReadFile(other.path)
	bad := filepath.Join(dir, "bad.bundle")
	raw[0] ^= 1 // the first archive header
	os.WriteFile(bad, raw, 0o644)
	if _, err := Open(bad, Trust{FirstUse: true, PinFile: pin2}); err == nil {
		t.Fatal("a damaged bundle opened")
	}
	if _, err := os.Stat(pin2); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a damaged bundle's key was recorded: %v", err)
	}

	// Two first uses at once with different keys: exactly one key is
	// recorded, and the bundle of the other is refused.
	pin3 := filepath.Join(dir, "state3", PinFileName)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, p := range []string{tb.path, other.path} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := Open(p, Trust{FirstUse: true, PinFile: pin3})
			if err == nil {
				b.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("two first uses with different keys: %v, %v", errs[0], errs[1])
	}
	// A pin that is not a key file is an error, not a first use.
	os.WriteFile(filepath.Join(dir, "garbage.pub"), []byte("not a key"), 0o600)
	if _, err := Open(tb.path, Trust{FirstUse: true, PinFile: filepath.Join(dir, "garbage.pub")}); err == nil || !strings.Contains(err.Error(), "trusted at first use") {
		t.Fatalf("garbage pin: %v", err)
	}
}

func mkdir(t *testing.T, parts ...string) string {
	t.Helper()
	p := filepath.Join(parts...)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
