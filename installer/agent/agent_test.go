package agent

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"airlock.dev/airlock/services/agentapi"
)

// An order the agent cannot accept (an unknown kind, an install order
// without a disk) is answered as failed, saying why, and does not keep the
// agent from the next one; an order seen before is not started again.
func TestOrderBookRefusesAndRunsOnce(t *testing.T) {
	b := newOrderBook()
	runs := map[string]int{}
	done := make(chan string, 4)
	opts := Options{Log: slog.New(slog.DiscardHandler), OnOrder: func(_ context.Context, o agentapi.Order, _ func(uint64, uint64)) error {
		runs[o.ID]++
		done <- o.ID
		return nil
	}}
	ctx := context.Background()
	b.take(ctx, agentapi.Order{ID: "o-1", Kind: "dance"}, opts)
	b.take(ctx, agentapi.Order{ID: "o-2", Kind: agentapi.OrderInstall, Install: &agentapi.InstallOrder{}}, opts)
	b.take(ctx, agentapi.Order{ID: "o-3", Kind: agentapi.OrderWait}, opts)
	if id := <-done; id != "o-3" {
		t.Fatalf("ran %s", id)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.state() != "waiting" { // the result is recorded after OnOrder returns
		if time.Now().After(deadline) {
			t.Fatal("o-3 still running 10 s after it returned")
		}
		time.Sleep(time.Millisecond)
	}
	b.take(ctx, agentapi.Order{ID: "o-3", Kind: agentapi.OrderWait}, opts) // re-sent
	// An order without an ID of airlock's form cannot be answered: its
	// result would make every later heartbeat invalid.
	b.take(ctx, agentapi.Order{Kind: agentapi.OrderReboot}, opts)
	if got := b.answers([]agentapi.Order{{ID: ""}}); len(got) != 0 {
		t.Fatalf("answered an order without an ID: %+v", got)
	}
	got := b.answers([]agentapi.Order{{ID: "o-1"}, {ID: "o-2"}, {ID: "o-3"}})
	if len(got) != 3 || got[0].Status != agentapi.ResultFailed || got[1].Status != agentapi.ResultFailed || got[2].Status != agentapi.ResultDone {
		t.Fatalf("answers %+v", got)
	}
	if runs["o-3"] != 1 || runs["o-1"]+runs["o-2"] != 0 {
		t.Fatalf("runs %v", runs)
	}
	for _, r := range got[:2] {
		if r.Error == "" {
			t.Errorf("refusal of %s says nothing", r.ID)
		}
	}
}
