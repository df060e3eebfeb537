package state

import (
	"maps"
	"slices"
	"sync"
)

// MemStore is the in-memory twin of BoltStore, for unit tests of logic
// that uses a Store. Transactions are serialised; Update works on a copy
// and commits it only when fn succeeds, like bbolt.
type MemStore struct {
	mu      sync.RWMutex
	buckets map[string]map[string][]byte
	seqs    map[string]uint64
}

// NewMem returns an empty, migrated in-memory store.
func NewMem() *MemStore {
	s := &MemStore{buckets: map[string]map[string][]byte{}, seqs: map[string]uint64{}}
	if err := migrate(s, migrations()); err != nil {
		panic("state: migrate empty in-memory store: " + err.Error())
	}
	return s
}

// View implements Store.
func (s *MemStore) View(fn func(Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return fn(&memTx{buckets: s.buckets, seqs: s.seqs, readOnly: true})
}

// Update implements Store.
func (s *MemStore) Update(fn func(Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx := &memTx{buckets: make(map[string]map[string][]byte, len(s.buckets)), seqs: maps.Clone(s.seqs)}
	for name, b := range s.buckets {
		tx.buckets[name] = maps.Clone(b)
	}
	if err := fn(tx); err != nil {
		return err
	}
	s.buckets, s.seqs = tx.buckets, tx.seqs
	return nil
}

// Close implements Store.
func (s *MemStore) Close() error { return nil }

type memTx struct {
	buckets  map[string]map[string][]byte
	seqs     map[string]uint64
	readOnly bool
}

func (t *memTx) Get(bucket, key string) []byte { return t.buckets[bucket][key] }

func (t *memTx) Put(bucket, key string, value []byte) error {
	if t.readOnly {
		return ErrReadOnly
	}
	if err := checkBucket(bucket); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	if t.buckets[bucket] == nil {
		t.buckets[bucket] = map[string][]byte{}
	}
	t.buckets[bucket][key] = slices.Clone(value)
	return nil
}

func (t *memTx) Delete(bucket, key string) error {
	if t.readOnly {
		return ErrReadOnly
	}
	delete(t.buckets[bucket], key)
	return nil
}

func (t *memTx) ForEach(bucket string, fn func(string, []byte) error) error {
	b := t.buckets[bucket]
	for _, k := range slices.Sorted(maps.Keys(b)) {
		if err := fn(k, b[k]); err != nil {
			return err
		}
	}
	return nil
}

func (t *memTx) NextSequence(bucket string) (uint64, error) {
	if t.readOnly {
		return 0, ErrReadOnly
	}
	if err := checkBucket(bucket); err != nil {
		return 0, err
	}
	t.seqs[bucket]++
	return t.seqs[bucket], nil
}
