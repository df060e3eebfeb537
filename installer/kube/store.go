package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
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

// apiServerKey holds the URL of the cluster's API server for airlock's own
// credentials (the VIP endpoint, or the first control plane's address).
const apiServerKey = "api-server"

// SaveAPIServer records the URL (https://HOST:PORT) airlock's admin
// kubeconfigs point at.
func SaveAPIServer(store state.Store, server string) error {
	if err := checkServer(server); err != nil {
		return fmt.Errorf("save API server: %w", err)
	}
	if err := store.Update(func(tx state.Tx) error { return tx.Put(pkiBucket, apiServerKey, []byte(server)) }); err != nil {
		return fmt.Errorf("save API server: %w", err)
	}
	return nil
}

// LoadAPIServer returns the recorded API server URL, or "" if none is.
func LoadAPIServer(store state.Store) (string, error) {
	var server string
	err := store.View(func(tx state.Tx) error {
		server = string(tx.Get(pkiBucket, apiServerKey))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("load API server: %w", err)
	}
	return server, nil
}

func checkServer(server string) error {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("API server %q: want https://HOST:PORT", server)
	}
	return nil
}

// ErrNoPKI means the state store holds no cluster PKI yet.
var ErrNoPKI = errors.New("no cluster PKI in the state store yet (the Kubernetes phases of airlock install will make it; they are not built yet)")

// ErrNoServer means no API server URL is known.
var ErrNoServer = errors.New("no API server known yet")

// MintAdminKubeconfig makes a kubeconfig with fresh admin credentials (see
// AdminKubeconfig) valid for ttl, from the PKI in store. server defaults
// to the one SaveAPIServer recorded.
func MintAdminKubeconfig(store state.Store, server string, ttl time.Duration, now time.Time) ([]byte, error) {
	p, cluster, err := LoadPKI(store)
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, ErrNoPKI
	}
	if server == "" {
		if server, err = LoadAPIServer(store); err != nil {
			return nil, err
		}
		if server == "" {
			return nil, fmt.Errorf("%w: name it with --server https://HOST:6443", ErrNoServer)
		}
	}
	if err := checkServer(server); err != nil {
		return nil, err
	}
	return AdminKubeconfig(p, server, cluster, ttl, now)
}
