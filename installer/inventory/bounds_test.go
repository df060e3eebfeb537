package inventory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// countingStore is the real bbolt store, counting what each write
// transaction touches: keys read, written and deleted, and keys visited
// by ForEach.
type countingStore struct {
	state.Store
	ops int
}

func (c *countingStore) Update(fn func(state.Tx) error) error {
	return c.Store.Update(func(tx state.Tx) error { return fn(&countingTx{Tx: tx, n: &c.ops}) })
}

type countingTx struct {
	state.Tx
	n *int
}

func (t *countingTx) Get(b, k string) []byte { *t.n++; return t.Tx.Get(b, k) }

func (t *countingTx) Put(b, k string, v []byte) error { *t.n++; return t.Tx.Put(b, k, v) }

func (t *countingTx) Delete(b, k string) error { *t.n++; return t.Tx.Delete(b, k) }

func (t *countingTx) ForEach(b string, fn func(string, []byte) error) error {
	return t.Tx.ForEach(b, func(k string, v []byte) error { *t.n++; return fn(k, v) })
}

// memDir is a directory on tmpfs (/dev/shm) when there is one, so that a
// test making many bbolt commits does not wait for the disk at each
// (bbolt runs the same; fsync is free); else t.TempDir().
func memDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "airlock-inventory-test-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// 100,000 script fetches from as many MACs (a stranger on the network
// asking for boot scripts): issuing stays a bounded number of key
// operations each, whatever was issued before, and the store keeps at most
// maxPending tokens.
func TestIssuingIsConstantAndBounded(t *testing.T) {
	dir := memDir(t)
	bolt, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	st := &countingStore{Store: bolt}
	s := New(st, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	clock := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	s.now = func() time.Time { clock = clock.Add(time.Millisecond); return clock }
	// Five times the cap is past eviction; AIRLOCK_TEST_LONG=1 runs
	// 100,000 (minutes under the race detector on 2 cores).
	n := 20_000
	if os.Getenv("AIRLOCK_TEST_LONG") == "1" {
		n = 100_000
	}
	worst, worstAt := 0, 0
	start := time.Now()
	var early, late time.Duration
	for i := range n {
		st.ops = 0
		t0 := time.Now()
		if _, err := s.IssueBoot(fmt.Sprintf("02:00:00:%02x:%02x:%02x", i>>16, (i>>8)&0xff, i&0xff)); err != nil {
			t.Fatalf("issue %d: %v", i, err)
		}
		d := time.Since(t0)
		if i < 10_000 {
			early += d
		} else if i >= n-10_000 {
			late += d
		}
		if st.ops > worst {
			worst, worstAt = st.ops, i
		}
	}
	t.Logf("%d tokens in %v; worst issue %d key operations (call %d); first 10k %v, last 10k %v", n, time.Since(start), worst, worstAt, early, late)
	// Read the pending counter, the replaced token, up to four evictions
	// (each a first key, a record and three index entries) and the writes.
	if worst > 40 {
		t.Errorf("an issue took %d key operations, want a constant under 40", worst)
	}
	counts := map[string]int{}
	err = bolt.View(func(tx state.Tx) error {
		for _, b := range []string{bootsBucket, bootsPendingBucket, bootsByMACBucket} {
			if err := tx.ForEach(b, func(string, []byte) error { counts[b]++; return nil }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for b, c := range counts {
		if c != maxPending {
			t.Errorf("%s holds %d keys, want the cap %d", b, c, maxPending)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, state.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 32<<20 {
		t.Errorf("the store grew to %d bytes for %d pending tokens", fi.Size(), maxPending)
	}
}

// Agents with valid tokens cannot make the inventory hold more machines
// than its cap; machines it knows keep registering.
func TestMachineRecordsAreCapped(t *testing.T) {
	s, st := newStore(t, nil)
	s.maxMachines = 3
	clock := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	ctx := context.Background()
	var regs []*agentapi.Registration
	for i := range 5 {
		reg := registration(t, fmt.Sprintf("SN-%d", i), "", fmt.Sprintf("52:54:00:40:00:%02x", i))
		tok, err := s.IssueBoot(reg.BootMAC)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Register(ctx, tok.BootID, agentapi.Identity(reg), reg)
		if i < 3 && err != nil {
			t.Fatalf("machine %d: %v", i, err)
		}
		if i >= 3 && !errors.Is(err, agentapi.ErrTooMany) {
			t.Fatalf("machine %d past the cap: %v", i, err)
		}
		regs = append(regs, reg)
	}
	clock = clock.Add(time.Hour)
	if _, id := register(t, s, regs[1]); id == "" {
		t.Fatal("a known machine could not register again at the cap")
	}
	if ms, err := List(st); err != nil || len(ms) != 3 {
		t.Fatalf("%d machines, want 3: %v", len(ms), err)
	}
}
