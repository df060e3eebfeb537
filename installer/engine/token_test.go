package engine

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/state"
)

// A seed's phone-home token works once, and only within seedTokenTTL of
// the seed being made: checked on a real bbolt store with a clock the test
// moves (no sleeps). A token refused as expired is not spent; a record
// without an issue time is refused.
func TestPhoneHomeTokenExpiresAndWorksOnce(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	t0 := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	now := t0
	e := &Engine{store: st, inv: inventory.New(st, nil, slog.New(slog.DiscardHandler)), log: slog.New(slog.DiscardHandler),
		seedTokenTTL: 6 * time.Hour, now: func() time.Time { return now }}
	installed := func(serial, mac string) string {
		id := report(t, e.inv, serial, mac, testDisks...)
		for _, s := range []string{inventory.StateAdmitted, inventory.StateAssigned, inventory.StateInstalling, inventory.StateInstalled} {
			if _, err := e.inv.Transition(id, s, "test"); err != nil {
				t.Fatal(err)
			}
		}
		return id
	}
	seed := func(id, token string, issued time.Time) {
		sum := sha256.Sum256([]byte(token))
		if err := st.Update(func(tx state.Tx) error {
			return putProvisionTx(tx, id, provisionRecord{TokenHash: hex.EncodeToString(sum[:]), Issued: issued})
		}); err != nil {
			t.Fatal(err)
		}
	}
	state := func(id string) string {
		m, err := e.inv.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		return m.State
	}

	a := installed("SN-A", "52:54:00:00:0a:01")
	seed(a, "token-a", t0)
	now = t0.Add(6*time.Hour + time.Second)
	if err := e.acceptPhoneHome(a, "token-a"); !errors.Is(err, ErrPhoneHome) {
		t.Fatalf("an expired token: %v, want ErrPhoneHome", err)
	}
	if rec, _, _ := getProvision(st, a); rec.Used || state(a) != inventory.StateInstalled {
		t.Fatalf("an expired token was spent (used %v) or moved the machine (%s)", rec.Used, state(a))
	}
	now = t0.Add(6*time.Hour - time.Second)
	if err := e.acceptPhoneHome(a, "wrong"); !errors.Is(err, ErrPhoneHome) {
		t.Fatalf("a wrong token: %v", err)
	}
	if err := e.acceptPhoneHome(a, "token-a"); err != nil {
		t.Fatalf("the token within its time: %v", err)
	}
	if state(a) != inventory.StateBooted {
		t.Fatalf("after the phone-home the machine is %s", state(a))
	}
	if err := e.acceptPhoneHome(a, "token-a"); !errors.Is(err, ErrPhoneHome) {
		t.Fatalf("the token a second time: %v", err)
	}

	b := installed("SN-B", "52:54:00:00:0b:01")
	seed(b, "token-b", time.Time{})
	if err := e.acceptPhoneHome(b, "token-b"); !errors.Is(err, ErrPhoneHome) {
		t.Fatalf("a token without an issue time: %v", err)
	}
}

// The phone-home handler answers another method with 405 and a body over
// its bound with 413, before it looks at the machine or the token.
func TestPhoneHomeHandlerBoundsItsRequest(t *testing.T) {
	e := &Engine{log: slog.New(slog.DiscardHandler)}
	for _, c := range []struct {
		method string
		body   int
		want   int
	}{
		{http.MethodGet, 0, http.StatusMethodNotAllowed},
		{http.MethodPut, 10, http.StatusMethodNotAllowed},
		{http.MethodPost, 64<<10 + 1, http.StatusRequestEntityTooLarge},
	} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(c.method, phoneHomePath+"m-0123456789?token=x", bytes.NewReader(make([]byte, c.body)))
		e.phoneHome(w, r)
		if w.Code != c.want {
			t.Errorf("%s with %d bytes: %d, want %d", c.method, c.body, w.Code, c.want)
		}
		if c.method != http.MethodPost && w.Header().Get("Allow") != http.MethodPost {
			t.Errorf("%s: Allow %q", c.method, w.Header().Get("Allow"))
		}
	}
}
