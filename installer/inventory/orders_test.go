package inventory

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"airlock.dev/airlock/installer/agent"
	"airlock.dev/airlock/services/agentapi"
)

// lossy loses the replies to heartbeats while drop is above zero: airlock
// handled the request, the agent never hears the answer.
type lossy struct {
	next  http.RoundTripper
	drop  atomic.Int32
	beats atomic.Int32 // heartbeats answered
}

var errLost = errors.New("reply lost on the way")

func (l *lossy) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err != nil || r.URL.Path != agentapi.Prefix+agentapi.PathHeartbeat {
		return resp, err
	}
	l.beats.Add(1)
	if l.drop.Add(-1) >= 0 {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, errLost
	}
	return resp, err
}

// An order whose reply is lost is sent again; the agent carries it out
// once although airlock sends it with every heartbeat until the final
// result arrives; then airlock stops sending it and keeps the result.
func TestOrdersAreNeverLostNorRedone(t *testing.T) {
	s := newSite(t)
	s.inv.heartbeat = 1
	root := os.DirFS("../agent/testdata/host")
	inv, err := agent.Collect(root)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := agent.Registration(inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok := s.issue(reg.BootMAC)
	tr := &lossy{next: &http.Transport{}}
	client := agent.NewClient(s.url, tok, &http.Client{Transport: tr, Timeout: 10 * time.Second})
	release := make(chan struct{})
	var mu sync.Mutex
	calls := map[string]int{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(ctx, agent.Options{Root: root, Client: client, Log: s.inv.log,
			Backoff: agent.Backoff{Initial: 50 * time.Millisecond, Max: time.Second},
			OnOrder: func(ctx context.Context, o agentapi.Order, progress func(uint64, uint64)) error {
				mu.Lock()
				calls[o.ID]++
				mu.Unlock()
				progress(1, 2)
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}})
	}()
	var id string
	waitFor(t, "registration", func() bool {
		ms, _ := s.inv.List()
		if len(ms) == 1 {
			id = ms[0].ID
		}
		return id != ""
	})
	tr.drop.Store(2) // the next two replies, which carry the order, are lost
	if _, err := s.inv.Order(id, agentapi.Order{Kind: "dance"}); err == nil {
		t.Error("an order of an unknown kind was queued")
	}
	o, err := s.inv.Order(id, agentapi.Order{Kind: agentapi.OrderWait})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent running the order", func() bool {
		r, pending, _ := s.inv.Result(id, o.ID)
		return pending && r.Status == agentapi.ResultRunning && r.Done == 1 && r.Total == 2
	})
	// Still running: airlock sends the order with every heartbeat; the
	// agent answers each with its progress and does not start it again.
	from := tr.beats.Load()
	waitFor(t, "three more heartbeats", func() bool { return tr.beats.Load() >= from+3 })
	close(release)
	waitFor(t, "the final result", func() bool {
		r, pending, _ := s.inv.Result(id, o.ID)
		return !pending && r.Status == agentapi.ResultDone
	})
	mu.Lock()
	if calls[o.ID] != 1 {
		t.Errorf("the order was carried out %d times", calls[o.ID])
	}
	mu.Unlock()
	if tr.drop.Load() >= 0 {
		t.Errorf("no reply was lost (drop %d): the test did not test a loss", tr.drop.Load())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A reboot order goes out until the machine's next boot registers, so a
// lost reply does not lose it; then it is done.
func TestRebootOrderLastsUntilTheNextBoot(t *testing.T) {
	s, _ := newStore(t, nil)
	reg := registration(t, "SN-R", "", "52:54:00:00:0a:01")
	tok, id := register(t, s, reg)
	if err := s.Rediscover(id); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 2; seq++ { // the first reply is lost
		out, err := s.Heartbeat(context.Background(), tok.BootID, &agentapi.Heartbeat{Seq: seq, State: "waiting"})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Orders) != 1 || out.Orders[0].Kind != agentapi.OrderReboot || out.Orders[0].ID == "" {
			t.Fatalf("heartbeat %d: orders %+v", seq, out.Orders)
		}
	}
	register(t, s, reg) // the machine came back
	m, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Orders) != 0 {
		t.Fatalf("orders after the reboot: %+v", m.Orders)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
