package engine

import (
	"errors"
	"path/filepath"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/config"
)

// BundleTrust turns the answer file's bundle section into the trust a
// bundle is opened with: the key named by bundle.publicKey, or trust on
// first use recorded in stateDir. Neither means no trust at all, and
// bundle.Open then refuses the bundle.
func BundleTrust(cfg config.Bundle, stateDir string) (bundle.Trust, error) {
	var t bundle.Trust
	if cfg.PublicKey != "" {
		pub, err := bundle.ReadPublicKey(cfg.PublicKey)
		if err != nil {
			return t, err
		}
		t.PublicKey = pub
		return t, nil
	}
	if cfg.TrustOnFirstUse {
		if stateDir == "" {
			return t, errors.New("bundle.trustOnFirstUse: the key is recorded in the state directory, and none is set (--state)")
		}
		t.FirstUse = true
		t.PinFile = filepath.Join(stateDir, bundle.PinFileName)
	}
	return t, nil
}

// OpenBundle opens the bundle the answers name (cfg.Path, or the bundle
// appended to this executable when it is empty) with the trust they
// choose. serve, install, lab and the wizard all open their bundle here.
func OpenBundle(cfg config.Bundle, stateDir string) (*bundle.Bundle, error) {
	t, err := BundleTrust(cfg, stateDir)
	if err != nil {
		return nil, err
	}
	return bundle.Open(cfg.Path, t)
}
