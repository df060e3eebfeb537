// Package state is airlock's state store: a small transactional key-value
// interface with a bbolt implementation (one file under the state
// directory, the default) and an in-memory twin for tests, a schema
// version with migrations, and the install journal built on top.
//
// Only one process may own a state directory for writing (bbolt allows
// one writer); a second one fails at once with ErrLocked.
package state

import (
	"errors"
	"fmt"
	"regexp"
)

// Sentinel errors.
var (
	// ErrLocked means another airlock process holds the state store.
	ErrLocked = errors.New("state store is in use by another airlock process")
	// ErrNewerSchema means the store was written by a newer airlock.
	ErrNewerSchema = errors.New("state store was written by a newer airlock")
	// ErrReadOnly means a write was attempted on a read-only store.
	ErrReadOnly = errors.New("state store is open read-only")
	// ErrNoState means a read-only open found no state store.
	ErrNoState = errors.New("no state store")
)

// Store is a transactional key-value store of named buckets.
type Store interface {
	// View runs fn in a read-only transaction.
	View(fn func(Tx) error) error
	// Update runs fn in a read-write transaction, committed (durably) when
	// fn returns nil and rolled back otherwise.
	Update(fn func(Tx) error) error
	Close() error
}

// Tx is one transaction. Byte slices it returns are valid only inside the
// transaction; copy them to keep them.
type Tx interface {
	// Get returns the value of key in bucket, or nil.
	Get(bucket, key string) []byte
	// Put stores value under key in bucket, creating the bucket.
	Put(bucket, key string, value []byte) error
	// Delete removes key from bucket; a missing key is no error.
	Delete(bucket, key string) error
	// ForEach calls fn for every key of bucket in byte order.
	ForEach(bucket string, fn func(key string, value []byte) error) error
	// NextSequence returns the bucket's next sequence number (from 1).
	NextSequence(bucket string) (uint64, error)
}

// SchemaVersion is the layout version this airlock writes.
const SchemaVersion = 1

// Migration upgrades a store from version From to From+1.
type Migration struct {
	From  int
	Apply func(Tx) error
}

// migrations lists every upgrade, in order. Version 1 is the first layout,
// so there are none yet; the next layout change adds {From: 1, ...}.
func migrations() []Migration { return nil }

const metaBucket = "meta"
const schemaKey = "schema-version"

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

func checkBucket(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid bucket name %q", name)
	}
	return nil
}

func checkKey(key string) error {
	if key == "" || len(key) > 512 {
		return fmt.Errorf("invalid key of %d bytes (want 1-512)", len(key))
	}
	return nil
}

// migrate brings a store to SchemaVersion inside one transaction.
func migrate(s Store, list []Migration) error {
	return s.Update(func(tx Tx) error {
		raw := tx.Get(metaBucket, schemaKey)
		if raw == nil {
			return tx.Put(metaBucket, schemaKey, fmt.Appendf(nil, "%d", SchemaVersion))
		}
		var v int
		if _, err := fmt.Sscanf(string(raw), "%d", &v); err != nil {
			return fmt.Errorf("read schema version %q: %w", raw, err)
		}
		if v > SchemaVersion {
			return fmt.Errorf("%w (version %d, this airlock knows %d): use the newer airlock", ErrNewerSchema, v, SchemaVersion)
		}
		for _, m := range list {
			if m.From < v {
				continue
			}
			if m.From != v {
				return fmt.Errorf("no migration from schema version %d", v)
			}
			if err := m.Apply(tx); err != nil {
				return fmt.Errorf("migrate state from version %d: %w", v, err)
			}
			v++
		}
		if v != SchemaVersion {
			return fmt.Errorf("no migration from schema version %d to %d", v, SchemaVersion)
		}
		return tx.Put(metaBucket, schemaKey, fmt.Appendf(nil, "%d", v))
	})
}
