package inventory

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"airlock.dev/airlock/installer/agent"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// site is the agent API handler over the real inventory over a bbolt
// store, served on a loopback listener.
type site struct {
	t    *testing.T
	inv  *Store
	st   *state.BoltStore
	url  *url.URL
	logs *syncBuffer
}

func newSite(t *testing.T) *site {
	t.Helper()
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	inv := New(st, nil, log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: agentapi.NewHandler(inv, log), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	u, _ := url.Parse("http://" + ln.Addr().String())
	return &site{t: t, inv: inv, st: st, url: u, logs: logs}
}

// client is the real agent's client for a token, sending from the
// loopback address from (127.0.0.1 when empty).
func (s *site) client(tok agentapi.Token, from string) *agent.Client {
	tr := &http.Transport{}
	if from != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		tr.DialContext = d.DialContext
	}
	s.t.Cleanup(tr.CloseIdleConnections)
	return agent.NewClient(s.url, tok, &http.Client{Transport: tr, Timeout: 10 * time.Second})
}

func (s *site) issue(mac string) agentapi.Token {
	s.t.Helper()
	tok, err := s.inv.IssueBoot(mac)
	if err != nil {
		s.t.Fatal(err)
	}
	return tok
}

func statusOf(err error) int {
	var se *agent.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// A token is bound to the MAC that fetched the boot script, and a boot to
// the address it registered from.
func TestTokenBoundToMACAndAddress(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	x := registration(t, "LAB-X", "", "52:54:00:10:00:01")
	y := registration(t, "LAB-Y", "", "52:54:00:10:00:02")
	tok := s.issue(x.BootMAC)
	c := s.client(tok, "")
	if _, err := c.Register(ctx, y); statusOf(err) != http.StatusForbidden {
		t.Fatalf("a token issued to %s registered %s: %v", x.BootMAC, y.BootMAC, err)
	}
	if !strings.Contains(s.logs.String(), "issued to another MAC") {
		t.Errorf("the refusal is not logged:\n%s", s.logs)
	}
	if ms, _ := List(s.st); len(ms) != 0 {
		t.Fatalf("the refused registration left machines: %+v", ms)
	}
	// The backend refuses it too, whoever calls it.
	if _, err := s.inv.Register(ctx, tok.BootID, agentapi.Identity(y), y); !errors.Is(err, agentapi.ErrWrongMAC) {
		t.Fatalf("inventory.Register with another MAC: %v", err)
	}
	// The MAC it was issued to registers, from 127.0.0.1.
	if _, err := c.Register(ctx, x); err != nil {
		t.Fatalf("register with the token's MAC: %v", err)
	}
	// The same token from another address is refused, even for the
	// machine it belongs to.
	thief := s.client(tok, "127.0.0.2")
	if _, err := thief.Heartbeat(ctx, &agentapi.Heartbeat{Seq: 1, State: "waiting"}); statusOf(err) != http.StatusForbidden {
		t.Fatalf("heartbeat from another address: %v", err)
	}
	if _, err := thief.Register(ctx, x); statusOf(err) != http.StatusForbidden {
		t.Fatalf("registration from another address: %v", err)
	}
	if _, err := c.Heartbeat(ctx, &agentapi.Heartbeat{Seq: 1, State: "waiting"}); err != nil {
		t.Fatalf("heartbeat from the registered address: %v", err)
	}
}
