package agentapi

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// A Token is issued by airlock for one boot of one machine and put on the
// kernel command line of the discovery image as airlock.token=BOOTID.SECRET.
// The boot ID names the boot in the backend; the secret proves the report
// comes from that boot. airlock stores only the SHA-256 of the secret.
type Token struct {
	BootID string
	Secret string
}

var (
	reBootID = regexp.MustCompile(`^[a-z0-9]{8,32}$`)
	reSecret = regexp.MustCompile(`^[A-Za-z0-9_-]{32,64}$`)
)

// ErrBadToken is returned for a token that is absent or not of the form
// BOOTID.SECRET.
var ErrBadToken = errors.New("malformed agent token")

// NewToken makes a fresh token from rnd (crypto/rand.Reader when nil).
func NewToken(rnd io.Reader) (Token, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	var id [8]byte
	var secret [32]byte
	if _, err := io.ReadFull(rnd, id[:]); err != nil {
		return Token{}, fmt.Errorf("make boot ID: %w", err)
	}
	if _, err := io.ReadFull(rnd, secret[:]); err != nil {
		return Token{}, fmt.Errorf("make token secret: %w", err)
	}
	return Token{BootID: hex.EncodeToString(id[:]), Secret: base64.RawURLEncoding.EncodeToString(secret[:])}, nil
}

// String is the token as it goes on the kernel command line and in the
// Authorization header.
func (t Token) String() string { return t.BootID + "." + t.Secret }

// SecretHash is what the backend stores for the token.
func (t Token) SecretHash() [32]byte { return sha256.Sum256([]byte(t.Secret)) }

// ParseToken splits and checks a token's form. It says nothing about
// whether the token is valid for any boot.
func ParseToken(s string) (Token, error) {
	id, secret, ok := strings.Cut(s, ".")
	if !ok || !reBootID.MatchString(id) || !reSecret.MatchString(secret) {
		return Token{}, ErrBadToken
	}
	return Token{BootID: id, Secret: secret}, nil
}

// Matches reports, in constant time, whether the token's secret hashes to
// want.
func (t Token) Matches(want [32]byte) bool {
	got := t.SecretHash()
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}
