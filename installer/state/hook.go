package state

import (
	"slices"
	"sync"
)

// CommitHook is called after a write transaction that wrote to one of the
// watched buckets has committed (durably, for the bbolt store): n counts
// such commits from 1, buckets are the watched ones it wrote, sorted.
type CommitHook func(n int, buckets []string)

// WithCommitHook returns s with hook called after every committed write
// transaction that put, deleted or took a sequence number in one of the
// watched buckets. Write transactions are serialised through the hook: no
// other write commits between a commit and the end of its hook call, so a
// hook that stops the process stops it exactly after the nth such write.
// It is meant for tests (the crash tests kill airlock at each of its
// durable state changes in turn); writes to other buckets are not counted.
func WithCommitHook(s Store, watched []string, hook CommitHook) Store {
	return &hookedStore{Store: s, watched: slices.Clone(watched), hook: hook}
}

type hookedStore struct {
	Store
	watched []string
	hook    CommitHook

	mu sync.Mutex // serialises writes with their hook
	n  int
}

func (s *hookedStore) Update(fn func(Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var touched []string
	err := s.Store.Update(func(tx Tx) error {
		touched = touched[:0] // a retried transaction starts afresh
		return fn(&hookedTx{Tx: tx, watched: s.watched, touched: &touched})
	})
	if err != nil || len(touched) == 0 {
		return err
	}
	slices.Sort(touched)
	s.n++
	s.hook(s.n, slices.Compact(touched))
	return nil
}

type hookedTx struct {
	Tx
	watched []string
	touched *[]string
}

func (t *hookedTx) mark(bucket string) {
	if slices.Contains(t.watched, bucket) {
		*t.touched = append(*t.touched, bucket)
	}
}

func (t *hookedTx) Put(bucket, key string, value []byte) error {
	err := t.Tx.Put(bucket, key, value)
	if err == nil {
		t.mark(bucket)
	}
	return err
}

func (t *hookedTx) Delete(bucket, key string) error {
	err := t.Tx.Delete(bucket, key)
	if err == nil {
		t.mark(bucket)
	}
	return err
}

func (t *hookedTx) NextSequence(bucket string) (uint64, error) {
	n, err := t.Tx.NextSequence(bucket)
	if err == nil {
		t.mark(bucket)
	}
	return n, err
}
