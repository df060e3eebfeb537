package bundle

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Trust says how the key that signed a bundle is trusted. Open refuses a
// bundle unless one way is chosen: a bundle signed by a key nobody named
// is never used silently.
type Trust struct {
	// PublicKey, when set, is the key the bundle must be signed with: the
	// builder's public key, handed to the site out of band.
	PublicKey ed25519.PublicKey
	// FirstUse trusts the key of the first bundle opened and records it in
	// PinFile (a file in the state directory); from then on a bundle must
	// be signed by that key. It is ignored when PublicKey is set.
	FirstUse bool
	PinFile  string
	// IntegrityOnly checks the signature against the key the bundle
	// carries and trusts nothing: for `bundle verify --insecure-no-key`
	// and `bundle inspect`, which say so, and for a build reusing the
	// blobs of its earlier output (hashed again as they are read).
	IntegrityOnly bool
}

// Authenticity says what opening a bundle established about its signer.
type Authenticity int

const (
	// NotChecked: the signature matches the key the bundle carries, but
	// nobody vouched for that key (Trust.IntegrityOnly).
	NotChecked Authenticity = iota
	// KeyGiven: signed by the key the operator named.
	KeyGiven
	// KeyPinned: signed by the key recorded at first use.
	KeyPinned
	// FirstUse: no key was recorded yet; this bundle's key now is.
	FirstUse
)

func (a Authenticity) String() string {
	switch a {
	case KeyGiven:
		return "signed by the given key"
	case KeyPinned:
		return "signed by the key trusted at first use"
	case FirstUse:
		return "key trusted on first use (compare its ID with the builder's)"
	default:
		return "authenticity NOT checked (no key given)"
	}
}

// ErrUntrusted: the bundle is intact but nobody said its key is to be trusted.
var ErrUntrusted = errors.New("bundle signing key is not trusted")

// PinFileName is the file in the state directory where trust on first use
// records the bundle key (a PEM public key, as keygen writes it).
const PinFileName = "bundle-key.pub"

// maxKeyFileSize bounds a key file read (a PEM ed25519 key is ~120 bytes).
const maxKeyFileSize = 64 << 10

// decide checks the bundle's key pub against the trust asked for and
// returns the authenticity established; a key to pin at first use is
// written by pin once the whole bundle opened.
func (t Trust) decide(pub ed25519.PublicKey) (Authenticity, error) {
	switch {
	case t.PublicKey != nil:
		if !pub.Equal(t.PublicKey) {
			return NotChecked, fmt.Errorf("%w: signed by key %s, not by the given key %s; use the public key of the key that signed it, or rebuild the bundle with yours", ErrSignature, KeyID(pub), KeyID(t.PublicKey))
		}
		return KeyGiven, nil
	case t.FirstUse:
		if t.PinFile == "" {
			return NotChecked, errors.New("trust on first use needs a file to record the key in (a bug)")
		}
		pinned, err := ReadPublicKey(t.PinFile)
		if errors.Is(err, os.ErrNotExist) {
			return FirstUse, nil
		}
		if err != nil {
			return NotChecked, fmt.Errorf("read the bundle key trusted at first use: %w", err)
		}
		if !pub.Equal(pinned) {
			return NotChecked, fmt.Errorf("%w: signed by key %s, but key %s was trusted at first use (recorded in %s); if the site's signing key really changed, check the new key with its builder, then remove %s or name the new key with bundle.publicKey", ErrSignature, KeyID(pub), KeyID(pinned), t.PinFile, t.PinFile)
		}
		return KeyPinned, nil
	case t.IntegrityOnly:
		return NotChecked, nil
	}
	return NotChecked, fmt.Errorf("%w: signed by key %s, which nobody named: set bundle.publicKey in the answer file (or --key) to the .pub file the bundle's builder gave you, or choose trust on first use (bundle.trustOnFirstUse: true) and compare the key ID with the builder's", ErrUntrusted, KeyID(pub))
}

// pin records pub as the key trusted at first use. When another process
// recorded a key meanwhile, that key must be pub.
func (t Trust) pin(pub ed25519.PublicKey) error {
	dir := filepath.Dir(t.PinFile)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("record the bundle key trusted at first use: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".bundle-key-*")
	if err != nil {
		return fmt.Errorf("record the bundle key trusted at first use: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(EncodePublicKey(pub))
	err = errors.Join(err, tmp.Sync(), tmp.Close())
	if err == nil {
		// A link does not replace an existing file: the first key recorded wins.
		err = os.Link(tmp.Name(), t.PinFile)
	}
	if errors.Is(err, os.ErrExist) {
		_, err = t.decide(pub)
		return err
	}
	if err != nil {
		return fmt.Errorf("record the bundle key trusted at first use: %w", err)
	}
	return nil
}
