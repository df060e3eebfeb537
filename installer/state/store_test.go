package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// stores runs a test against both implementations: the in-memory twin must
// behave like the real store.
func stores(t *testing.T, fn func(t *testing.T, s Store)) {
	t.Run("bolt", func(t *testing.T) {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		fn(t, s)
	})
	t.Run("mem", func(t *testing.T) { fn(t, NewMem()) })
}

func TestStoreContract(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		err := s.Update(func(tx Tx) error {
			if err := tx.Put("leases", "b", []byte("2")); err != nil {
				return err
			}
			return tx.Put("leases", "a", []byte("1"))
		})
		if err != nil {
			t.Fatal(err)
		}
		// A failing update leaves nothing behind.
		boom := errors.New("boom")
		err = s.Update(func(tx Tx) error {
			if err := tx.Put("leases", "c", []byte("3")); err != nil {
				return err
			}
			if err := tx.Delete("leases", "a"); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("update error = %v, want boom", err)
		}
		var keys []string
		err = s.View(func(tx Tx) error {
			if got := string(tx.Get("leases", "a")); got != "1" {
				t.Errorf("a = %q after rollback, want 1", got)
			}
			if tx.Get("missing", "x") != nil {
				t.Error("Get on a missing bucket returned a value")
			}
			if err := tx.Put("leases", "z", nil); err == nil {
				t.Error("Put inside View succeeded")
			}
			return tx.ForEach("leases", func(k string, _ []byte) error { keys = append(keys, k); return nil })
		})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(keys, ",") != "a,b" {
			t.Errorf("keys = %v, want [a b] in order", keys)
		}
		for _, bad := range []struct{ bucket, key string }{{"Bad Bucket", "k"}, {"../x", "k"}, {"ok", ""}, {"ok", strings.Repeat("k", 513)}} {
			if err := s.Update(func(tx Tx) error { return tx.Put(bad.bucket, bad.key, nil) }); err == nil {
				t.Errorf("Put(%q, %q) accepted", bad.bucket, bad.key)
			}
		}
		var seqs []uint64
		for range 3 {
			err := s.Update(func(tx Tx) error {
				n, err := tx.NextSequence("counter")
				seqs = append(seqs, n)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if fmt.Sprint(seqs) != "[1 2 3]" {
			t.Errorf("sequences = %v", seqs)
		}
	})
}

func TestJournalRunResumes(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		j := NewJournal(s)
		ctx := context.Background()
		runs := 0
		step := func(context.Context) error { runs++; return nil }
		if skipped, err := j.Run(ctx, "provision/node-1", step); err != nil || skipped {
			t.Fatalf("first run: skipped=%v err=%v", skipped, err)
		}
		if skipped, err := j.Run(ctx, "provision/node-1", step); err != nil || !skipped {
			t.Fatalf("second run: skipped=%v err=%v, want skipped", skipped, err)
		}
		if runs != 1 {
			t.Errorf("step ran %d times, want 1", runs)
		}
		failing := errors.New("disk not found")
		if _, err := j.Run(ctx, "provision/node-2", func(context.Context) error { return failing }); !errors.Is(err, failing) || !errors.Is(err, ErrStepFailed) {
			t.Fatalf("failing step error = %v", err)
		}
		last, found, err := j.Last("provision/node-2")
		if err != nil || !found || last.Status != StatusFailed || last.Error != "disk not found" {
			t.Fatalf("last = %+v found=%v err=%v", last, found, err)
		}
		// A failed step runs again.
		if skipped, err := j.Run(ctx, "provision/node-2", step); err != nil || skipped {
			t.Fatalf("retry: skipped=%v err=%v", skipped, err)
		}
		entries, err := j.Entries()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for i, e := range entries {
			if e.Seq != uint64(i+1) {
				t.Errorf("entry %d has seq %d", i, e.Seq)
			}
			got = append(got, e.Step+":"+e.Status)
		}
		want := "provision/node-1:started provision/node-1:done provision/node-2:started provision/node-2:failed provision/node-2:started provision/node-2:done"
		if strings.Join(got, " ") != want {
			t.Errorf("journal =\n%s\nwant\n%s", strings.Join(got, " "), want)
		}
		if _, err := j.Record("../../etc/passwd", StatusDone, "", nil); err == nil {
			t.Error("journal accepted a step name with a path in it")
		}
	})
}

func TestBoltLockFileModeAndReadOnly(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("state file mode = %o, want 600", perm)
	}
	// A second writer fails at once, naming the owner.
	_, err = Open(dir)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", os.Getpid())) {
		t.Fatalf("second Open error = %v, want ErrLocked naming pid %d", err, os.Getpid())
	}
	if _, err := OpenReadOnly(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-only open beside a writer = %v, want ErrLocked", err)
	}
	if _, err := NewJournal(s).Run(context.Background(), "serve", func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := OpenReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Update(func(Tx) error { return nil }); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Update on read-only store = %v", err)
	}
	if _, found, err := NewJournal(ro).Last("serve"); err != nil || !found {
		t.Errorf("read-only journal: found=%v err=%v", found, err)
	}
	if _, err := OpenReadOnly(t.TempDir()); !errors.Is(err, ErrNoState) {
		t.Errorf("OpenReadOnly on an empty dir = %v, want ErrNoState", err)
	}
}

func TestSchemaMigrations(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Pretend the store is at version 0 and must be migrated to 1.
	if err := s.Update(func(tx Tx) error { return tx.Put(metaBucket, schemaKey, []byte("0")) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	ran := false
	s, err = openBolt(dir, []Migration{{From: 0, Apply: func(tx Tx) error { ran = true; return tx.Put("leases", "migrated", []byte("yes")) }}})
	if err != nil {
		t.Fatal(err)
	}
	if !ran {
		t.Error("migration hook did not run")
	}
	s.View(func(tx Tx) error {
		if string(tx.Get(metaBucket, schemaKey)) != "1" || string(tx.Get("leases", "migrated")) != "yes" {
			t.Error("migration did not commit its changes and the new version")
		}
		return nil
	})
	// A store from the future is refused, untouched.
	if err := s.Update(func(tx Tx) error { return tx.Put(metaBucket, schemaKey, []byte("99")) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(dir); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("Open of a newer store = %v, want ErrNewerSchema", err)
	}
	if _, err := OpenReadOnly(dir); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("OpenReadOnly of a newer store = %v, want ErrNewerSchema", err)
	}
	// A missing migration is refused too.
	dir2 := t.TempDir()
	s, _ = Open(dir2)
	s.Update(func(tx Tx) error { return tx.Put(metaBucket, schemaKey, []byte("0")) })
	s.Close()
	if _, err := Open(dir2); err == nil || !strings.Contains(err.Error(), "no migration from schema version 0") {
		t.Fatalf("Open without a migration = %v", err)
	}
}
