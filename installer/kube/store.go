package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"airlock.dev/airlock/installer/state"
)

// The PKI lives in the state store (a 0600 file): one record under
// pkiBucket/pkiKey. A new bucket needs no schema migration: buckets are
// created on first write.
const (
	pkiBucket = "kube-pki"
	pkiKey    = "cluster"
)

// maxPKIRecord bounds the stored record read back (it is a few KiB).
const maxPKIRecord = 1 << 20

// ErrOtherCluster means the state store holds the PKI of another cluster.
var ErrOtherCluster = errors.New("the state store holds another cluster's PKI")

type pkiRecord struct {
	ClusterName string    `json:"clusterName"`
	Created     time.Time `json:"created"`
	PKI         PKI       `json:"pki"`
}

// LoadPKI returns the PKI kept in the store and the cluster it was made
// for, or (nil, "", nil) when the store holds none.
func LoadPKI(store state.Store) (*PKI, string, error) {
	var rec *pkiRecord
	err := store.View(func(tx state.Tx) error {
		raw := tx.Get(pkiBucket, pkiKey)
		if raw == nil {
			return nil
		}
		if len(raw) > maxPKIRecord {
			return fmt.Errorf("%w: stored record of %d bytes", ErrBadPKI, len(raw))
		}
		rec = &pkiRecord{}
		return json.Unmarshal(raw, rec)
	})
	if err != nil {
		return nil, "", fmt.Errorf("load cluster PKI: %w", err)
	}
	if rec == nil {
		return nil, "", nil
	}
	if err := rec.PKI.Check(); err != nil {
		return nil, "", fmt.Errorf("load cluster PKI: %w", err)
	}
	return &rec.PKI, rec.ClusterName, nil
}

// LoadOrCreatePKI returns the PKI of clusterName kept in the store, making
// and storing one first when there is none. It is the only place the
// cluster's CAs are born: once stored they are never replaced. A store
// holding another cluster's PKI is an error (ErrOtherCluster).
func LoadOrCreatePKI(store state.Store, clusterName string, now time.Time) (*PKI, error) {
	p, name, err := LoadPKI(store)
	if err != nil {
		return nil, err
	}
	if p != nil {
		if name != clusterName {
			return nil, fmt.Errorf("%w: it was made for %q, not %q; use that cluster name or another --state directory", ErrOtherCluster, name, clusterName)
		}
		return p, nil
	}
	// Keys are made outside the write transaction (the store's one
	// writer is not held while they are generated); a PKI another writer
	// stored meanwhile wins.
	fresh, err := NewPKI(clusterName, now)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(pkiRecord{ClusterName: clusterName, Created: now.UTC(), PKI: *fresh})
	if err != nil {
		return nil, fmt.Errorf("store cluster PKI: %w", err)
	}
	stored := false
	err = store.Update(func(tx state.Tx) error {
		if tx.Get(pkiBucket, pkiKey) != nil {
			return nil
		}
		stored = true
		return tx.Put(pkiBucket, pkiKey, raw)
	})
	if err != nil {
		return nil, fmt.Errorf("store cluster PKI: %w", err)
	}
	if !stored {
		return LoadOrCreatePKI(store, clusterName, now)
	}
	return fresh, nil
}
