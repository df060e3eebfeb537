package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the state store's file inside the state directory.
const FileName = "airlock.db"

// OwnerFile holds the PID of the process that owns the store for writing.
const OwnerFile = "owner.pid"

// lockWait is how long Open waits for another process's lock before
// giving up: short, so a second airlock fails at once.
const lockWait = 200 * time.Millisecond

// BoltStore is the bbolt-backed Store.
type BoltStore struct {
	db       *bolt.DB
	dir      string
	readOnly bool
}

// Open opens (creating if needed) the state store in dir for reading and
// writing, taking its lock, and migrates it to SchemaVersion.
func Open(dir string) (*BoltStore, error) {
	return openBolt(dir, migrations())
}

func openBolt(dir string, list []Migration) (*BoltStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	// The freelist is not written at each commit but rebuilt when the file
	// is opened: commits write fewer pages (DHCP leases are saved at
	// thousands per second), and a crash loses nothing (the crash test
	// kills writers mid-burst with these options).
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockWait, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, lockError(dir, path, err)
	}
	// bbolt keeps the mode of an existing file; the store may hold keys.
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, errors.Join(fmt.Errorf("restrict state file: %w", err), db.Close())
	}
	s := &BoltStore{db: db, dir: dir}
	if err := migrate(s, list); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	if err := os.WriteFile(filepath.Join(dir, OwnerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return nil, errors.Join(fmt.Errorf("record state owner: %w", err), db.Close())
	}
	return s, nil
}

// OpenReadOnly opens an existing state store for reading while no other
// process writes it. It returns ErrNoState when there is none.
func OpenReadOnly(dir string) (*BoltStore, error) {
	path := filepath.Join(dir, FileName)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s", ErrNoState, dir)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockWait, ReadOnly: true})
	if err != nil {
		return nil, lockError(dir, path, err)
	}
	s := &BoltStore{db: db, dir: dir, readOnly: true}
	err = s.View(func(tx Tx) error {
		raw := tx.Get(metaBucket, schemaKey)
		if v, convErr := strconv.Atoi(string(raw)); convErr == nil && v > SchemaVersion {
			return fmt.Errorf("%w (version %d, this airlock knows %d): use the newer airlock", ErrNewerSchema, v, SchemaVersion)
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(err, db.Close())
	}
	return s, nil
}

func lockError(dir, path string, err error) error {
	if !errors.Is(err, berrors.ErrTimeout) {
		return fmt.Errorf("open state store %s: %w", path, err)
	}
	owner := "another process"
	if raw, readErr := os.ReadFile(filepath.Join(dir, OwnerFile)); readErr == nil {
		owner = "process " + strings.TrimSpace(string(raw))
	}
	return fmt.Errorf("%w: %s is held by %s; stop it or use another --state directory", ErrLocked, path, owner)
}

// Dir returns the state directory.
func (s *BoltStore) Dir() string { return s.dir }

// View implements Store.
func (s *BoltStore) View(fn func(Tx) error) error {
	return s.db.View(func(btx *bolt.Tx) error { return fn(boltTx{btx}) })
}

// Update implements Store.
func (s *BoltStore) Update(fn func(Tx) error) error {
	if s.readOnly {
		return ErrReadOnly
	}
	return s.db.Update(func(btx *bolt.Tx) error { return fn(boltTx{btx}) })
}

// Check verifies the store file's internal consistency (bbolt's own check).
func (s *BoltStore) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
}

// Close implements Store.
func (s *BoltStore) Close() error {
	if !s.readOnly {
		if err := os.Remove(filepath.Join(s.dir, OwnerFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return errors.Join(fmt.Errorf("remove state owner file: %w", err), s.db.Close())
		}
	}
	return s.db.Close()
}

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) Get(bucket, key string) []byte {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	return b.Get([]byte(key))
}

func (t boltTx) bucket(name string) (*bolt.Bucket, error) {
	if err := checkBucket(name); err != nil {
		return nil, err
	}
	b, err := t.tx.CreateBucketIfNotExists([]byte(name))
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", name, err)
	}
	return b, nil
}

func (t boltTx) Put(bucket, key string, value []byte) error {
	if err := checkKey(key); err != nil {
		return err
	}
	b, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), value)
}

func (t boltTx) Delete(bucket, key string) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	return b.Delete([]byte(key))
}

func (t boltTx) ForEach(bucket string, fn func(string, []byte) error) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error { return fn(string(k), v) })
}

func (t boltTx) NextSequence(bucket string) (uint64, error) {
	b, err := t.bucket(bucket)
	if err != nil {
		return 0, err
	}
	return b.NextSequence()
}
