package bundle

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// KeyID names a public key: the first 16 hex digits of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// KeygenOptions says where Keygen writes the key pair.
type KeygenOptions struct {
	// PrivatePath gets the private key (PKCS#8 PEM, mode 0600);
	// PublicPath the public key (PKIX PEM). Existing files are not
	// overwritten unless Force is set.
	PrivatePath, PublicPath string
	Force                   bool
}

// Keygen makes an ed25519 signing key pair and returns its key ID.
func Keygen(opts KeygenOptions) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("encode private key: %w", err)
	}
	pder, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode public key: %w", err)
	}
	flag := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if opts.Force {
		// Not blocking, and no truncation before the file is known to be
		// regular: a FIFO or device under the name is refused, not written.
		flag = os.O_WRONLY | os.O_CREATE | openNonblock
	}
	write := func(path string, mode os.FileMode, typ string, b []byte) error {
		if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
			return fmt.Errorf("write key %s: %w", path, notRegular(st.Mode()))
		}
		f, err := os.OpenFile(path, flag, mode)
		if err != nil {
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("write key %s: the file exists (remove it or use --force)", path)
			}
			return fmt.Errorf("write key: %w", err)
		}
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			f.Close()
			if err == nil {
				err = notRegular(st.Mode())
			}
			return fmt.Errorf("write key %s: %w", path, err)
		}
		if err := errors.Join(clearNonblock(f), f.Truncate(0), f.Chmod(mode)); err != nil {
			f.Close()
			return fmt.Errorf("write key %s: %w", path, err)
		}
		err = pem.Encode(f, &pem.Block{Type: typ, Bytes: b})
		return errors.Join(err, f.Close())
	}
	if err := write(opts.PrivatePath, 0o600, "PRIVATE KEY", der); err != nil {
		return "", err
	}
	if err := write(opts.PublicPath, 0o644, "PUBLIC KEY", pder); err != nil {
		return "", err
	}
	return KeyID(pub), nil
}

// EncodePublicKey renders a public key as Keygen writes it (PKIX PEM).
func EncodePublicKey(pub ed25519.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err) // an ed25519 key always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// ReadPrivateKey reads an ed25519 private key written by Keygen.
func ReadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := ReadRegularFile(path, maxKeyFileSize, "signing key")
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("read signing key %s: not a PEM \"PRIVATE KEY\" (make one with airlock bundle keygen)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("read signing key %s: a %T, airlock signs with ed25519 keys (make one with airlock bundle keygen)", path, k)
	}
	return priv, nil
}

// ReadPublicKey reads an ed25519 public key written by Keygen.
func ReadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := ReadRegularFile(path, maxKeyFileSize, "public key")
	if err != nil {
		return nil, err
	}
	return ParsePublicKey(path, b)
}

// ParsePublicKey parses a PEM "PUBLIC KEY" holding an ed25519 key; name is
// used in errors.
func ParsePublicKey(name string, b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("read public key %s: not a PEM \"PUBLIC KEY\" (the .pub file from airlock bundle keygen)", name)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read public key %s: %w", name, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("read public key %s: a %T, airlock bundles are signed with ed25519", name, k)
	}
	return pub, nil
}
