package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"airlock.dev/airlock/installer/state"
)

// The PKI is born once, kept in the real bbolt store (a 0600 file) and
// read back unchanged after the store is closed and opened again.
func TestLoadOrCreatePKIBolt(t *testing.T) {
	dir := t.TempDir()
	s, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p, _, err := LoadPKI(s); err != nil || p != nil {
		t.Fatalf("empty store: %v %v", p, err)
	}
	p1, err := LoadOrCreatePKI(s, "lab", t0)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := LoadOrCreatePKI(s, "lab", t0.Add(24*3600e9))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p1.CA.KeyPEM, p2.CA.KeyPEM) || !bytes.Equal(p1.ServiceAccountKeyPEM, p2.ServiceAccountKeyPEM) {
		t.Error("a second call made a new PKI")
	}
	if _, err := LoadOrCreatePKI(s, "other", t0); !errors.Is(err, ErrOtherCluster) {
		t.Errorf("another cluster name: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, state.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600 (it holds the CA keys)", st.Mode().Perm())
	}
	ro, err := state.OpenReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	p3, name, err := LoadPKI(ro)
	if err != nil || name != "lab" {
		t.Fatalf("reopened: %q %v", name, err)
	}
	if !bytes.Equal(p1.CA.CertPEM, p3.CA.CertPEM) || !bytes.Equal(p1.EtcdCA.KeyPEM, p3.EtcdCA.KeyPEM) ||
		!bytes.Equal(p1.FrontProxyCA.KeyPEM, p3.FrontProxyCA.KeyPEM) || !bytes.Equal(p1.ServiceAccountPubPEM, p3.ServiceAccountPubPEM) {
		t.Error("the reopened store holds another PKI")
	}
}

func TestLoadPKIRejectsDamage(t *testing.T) {
	s := state.NewMem()
	p, err := LoadOrCreatePKI(s, "lab", t0)
	if err != nil {
		t.Fatal(err)
	}
	// Swap the CA's key for the etcd CA's: loading must notice.
	err = s.Update(func(tx state.Tx) error {
		raw := bytes.Replace(tx.Get(pkiBucket, pkiKey), b64(p.CA.KeyPEM), b64(p.EtcdCA.KeyPEM), 1)
		return tx.Put(pkiBucket, pkiKey, raw)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreatePKI(s, "lab", t0); !errors.Is(err, ErrBadPKI) {
		t.Errorf("damaged PKI loaded: %v", err)
	}
	if err := s.Update(func(tx state.Tx) error { return tx.Put(pkiBucket, pkiKey, []byte("{")) }); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreatePKI(s, "lab", t0); err == nil {
		t.Error("truncated record loaded")
	}
}

func b64(b []byte) []byte {
	out, _ := json.Marshal(b)
	return bytes.Trim(out, `"`)
}
