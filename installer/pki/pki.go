// Package pki is airlock's own certificate authority. An ECDSA P-256 CA is
// made the first time airlock starts with a state directory and kept there
// (the key 0600); the discovery image airlock assembles carries its
// certificate, and so do the seeds of installed systems, so everything they
// fetch after the boot image (orders, seeds, phone-home) travels over TLS to
// a server that proves it holds a certificate this CA signed. The serving
// certificate names airlock's addresses (IP SANs) and is made again when
// they change or it nears its end.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Files in the state directory.
const (
	// CACertFile is the CA certificate (PEM): what the boot image and the
	// seeds carry, and what an operator inspects.
	CACertFile = "ca.pem"
	// CAKeyFile is the CA's private key (PEM, 0600).
	CAKeyFile = "ca-key.pem"
	// ServingCertFile and ServingKeyFile are the agent API's certificate
	// and key (the key 0600).
	ServingCertFile = "tls.pem"
	ServingKeyFile  = "tls-key.pem"
)

// Lifetimes.
const (
	CAValidity      = 20 * 365 * 24 * time.Hour
	ServingValidity = 397 * 24 * time.Hour
	// RenewBefore: a serving certificate this close to its end is made
	// again at the next start.
	RenewBefore = 30 * 24 * time.Hour
)

// maxPEM bounds what is read from the state directory.
const maxPEM = 64 << 10

// CA is airlock's certificate authority.
type CA struct {
	// Cert is the CA certificate, CertPEM the same in PEM.
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// ErrHalfCA means the state directory holds one of the CA's two files but
// not the other.
var ErrHalfCA = errors.New("the state directory holds only half of airlock's CA")

// LoadOrCreate returns the CA kept in dir, making it first when dir holds
// none. now is the clock (the CA is valid from an hour before it).
func LoadOrCreate(dir string, now time.Time) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	ca, err := load(certPath, keyPath)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return ca, err
	}
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	if certErr == nil || keyErr == nil {
		return nil, fmt.Errorf("%w (%s, %s): restore the missing file, or remove both to make a new CA (machines booted with the old one must boot again)", ErrHalfCA, certPath, keyPath)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make airlock's CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make airlock's CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "airlock provisioning CA " + hex.EncodeToString(serial.Bytes()[:4]), Organization: []string{"airlock"}, OrganizationalUnit: []string{host}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("make airlock's CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode airlock's CA key: %w", err)
	}
	// The key first: a crash between the two leaves a key without a
	// certificate, which the next start refuses (ErrHalfCA) rather than
	// silently making a second CA.
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return nil, err
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		return nil, err
	}
	return load(certPath, keyPath)
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// writeNew writes data to path (0600) through a temporary file and a
// link, so that path never holds half a file and an existing one is never
// replaced.
func writeNew(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	err = errors.Join(err, tmp.Sync(), tmp.Close())
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// replace writes data to path (0600) through a temporary file and a
// rename.
func replace(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	err = errors.Join(err, tmp.Sync(), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readPEM reads one PEM block of the given type from a regular file of at
// most maxPEM bytes.
func readPEM(path, typ string) (*pem.Block, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > maxPEM {
		return nil, nil, fmt.Errorf("%s is not a regular file of at most %d bytes", path, maxPEM)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != typ {
		return nil, nil, fmt.Errorf("%s holds no PEM %s", path, typ)
	}
	return b, raw, nil
}

func load(certPath, keyPath string) (*CA, error) {
	cb, certPEM, err := readPEM(certPath, "CERTIFICATE")
	if err != nil {
		return nil, fmt.Errorf("load airlock's CA: %w", err)
	}
	kb, _, err := readPEM(keyPath, "PRIVATE KEY")
	if err != nil {
		return nil, fmt.Errorf("load airlock's CA: %w", err)
	}
	if st, err := os.Stat(keyPath); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load airlock's CA: %s is readable by others (%v): chmod 600 it", keyPath, st.Mode().Perm())
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load airlock's CA: %s: %w", certPath, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load airlock's CA: %s: %w", keyPath, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load airlock's CA: the key in %s does not belong to the certificate in %s", keyPath, certPath)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load airlock's CA: %s is not a CA certificate", certPath)
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: key}, nil
}

// Fingerprint is the SHA-256 of the CA certificate, as `openssl x509
// -noout -fingerprint -sha256` prints it (hex pairs with colons).
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint is the SHA-256 of a certificate, hex pairs with colons.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = strings.ToUpper(hex.EncodeToString([]byte{b}))
	}
	return strings.Join(parts, ":")
}

// Pool is a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Serving returns the serving certificate for ips kept in dir: the one
// there when this CA signed it, it names exactly ips and it is valid for at
// least RenewBefore more; otherwise a new one, kept for the next start.
// renewed says which.
func (ca *CA) Serving(dir string, ips []netip.Addr, now time.Time) (_ tls.Certificate, renewed bool, err error) {
	if len(ips) == 0 {
		return tls.Certificate{}, false, errors.New("serving certificate: no address to name")
	}
	certPath, keyPath := filepath.Join(dir, ServingCertFile), filepath.Join(dir, ServingKeyFile)
	if c, err := ca.loadServing(certPath, keyPath, ips, now); err == nil {
		return c, false, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("make the serving key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return tls.Certificate{}, false, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "airlock", Organization: []string{"airlock"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(ServingValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.Unmap().AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("sign the serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	// The key first: a certificate whose key is not there is made again.
	if err := replace(keyPath, keyPEM); err != nil {
		return tls.Certificate{}, false, err
	}
	if err := replace(certPath, certPEM); err != nil {
		return tls.Certificate{}, false, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	return c, true, err
}

func (ca *CA) loadServing(certPath, keyPath string, ips []netip.Addr, now time.Time) (tls.Certificate, error) {
	_, certPEM, err := readPEM(certPath, "CERTIFICATE")
	if err != nil {
		return tls.Certificate{}, err
	}
	_, keyPEM, err := readPEM(keyPath, "PRIVATE KEY")
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf := c.Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return tls.Certificate{}, err
	}
	if leaf.NotAfter.Sub(now) < RenewBefore {
		return tls.Certificate{}, errors.New("near its end")
	}
	if !sameIPs(leaf.IPAddresses, ips) || len(leaf.DNSNames) > 0 {
		return tls.Certificate{}, errors.New("other addresses")
	}
	return c, nil
}

func sameIPs(have []net.IP, want []netip.Addr) bool {
	norm := func(a netip.Addr) string { return a.Unmap().String() }
	var h, w []string
	for _, ip := range have {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return false
		}
		h = append(h, norm(a))
	}
	for _, a := range want {
		w = append(w, norm(a))
	}
	slices.Sort(h)
	slices.Sort(w)
	return slices.Equal(slices.Compact(h), slices.Compact(w))
}

// ServerConfig is the TLS configuration of a server presenting cert: TLS
// 1.2 at least (cloud-init's Python and curl speak 1.3 too).
func ServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}
