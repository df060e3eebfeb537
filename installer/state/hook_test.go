package state

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// The hook sees exactly the committed writes to watched buckets, numbered
// in order, with the watched buckets each wrote; failed transactions,
// reads and writes elsewhere are not counted.
func TestCommitHookCountsWatchedCommits(t *testing.T) {
	type call struct {
		n       int
		buckets []string
	}
	var calls []call
	s := WithCommitHook(NewMem(), []string{"journal", "orders", "steps"}, func(n int, b []string) {
		calls = append(calls, call{n, b})
	})
	j := NewJournal(s)
	if _, err := j.Record("a/m-1", StatusStarted, "", nil); err != nil { // journal + steps
		t.Fatal(err)
	}
	if err := s.Update(func(tx Tx) error { return tx.Put("leases", "k", []byte("v")) }); err != nil { // not watched
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := s.Update(func(tx Tx) error { // rolled back
		if err := tx.Put("journal", "x", []byte("v")); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("failed transaction: %v", err)
	}
	if err := s.Update(func(tx Tx) error { _, err := tx.NextSequence("orders"); return err }); err != nil {
		t.Fatal(err)
	}
	if err := s.View(func(tx Tx) error { tx.Get("journal", "x"); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(tx Tx) error { return tx.Delete("steps", "a/m-1") }); err != nil {
		t.Fatal(err)
	}
	want := []call{{1, []string{"journal", "steps"}}, {2, []string{"orders"}}, {3, []string{"steps"}}}
	if len(calls) != len(want) {
		t.Fatalf("hook calls %v, want %v", calls, want)
	}
	for i := range want {
		if calls[i].n != want[i].n || !slices.Equal(calls[i].buckets, want[i].buckets) {
			t.Errorf("call %d: %v, want %v", i, calls[i], want[i])
		}
	}
	// The wrapped store still reads and writes as before.
	if _, found, err := j.Last("a/m-1"); err != nil || found {
		t.Errorf("step after its delete: found %v, %v", found, err)
	}
}

// No other write commits while the hook runs: a hook that stops the
// process stops it right after its own write. (Absence is watched for a
// window: an unserialised write commits in microseconds.)
func TestCommitHookHoldsOtherWriters(t *testing.T) {
	wrote := make(chan struct{})
	var during bool
	var s Store
	s = WithCommitHook(NewMem(), []string{"journal"}, func(n int, _ []string) {
		if n != 1 {
			return
		}
		go func() {
			_ = s.Update(func(tx Tx) error { return tx.Put("leases", "b", nil) })
			close(wrote)
		}()
		select {
		case <-wrote:
			during = true
		case <-time.After(300 * time.Millisecond):
		}
	})
	if err := s.Update(func(tx Tx) error { return tx.Put("journal", "a", nil) }); err != nil {
		t.Fatal(err)
	}
	if during {
		t.Fatal("another write committed while the hook ran")
	}
	<-wrote // and it commits once the hook is over
}
