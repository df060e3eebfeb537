// Package kube is airlock's Kubernetes driver: airlock as the cluster's
// certificate authority (the CAs and service-account keys kubeadm finds in
// place, kept in the state store), the credentials airlock mints from
// them, and the node configuration a driver renders into each machine's
// seed (kubeadm first, behind the Driver interface).
//
// Everything here is pure Go and data: nothing runs on a node or reaches
// the network.
package kube

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"time"
	"unicode/utf8"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Common names of the CAs, as kubeadm names its own.
const (
	CACommonName           = "kubernetes"
	FrontProxyCACommonName = "front-proxy-ca"
	EtcdCACommonName       = "etcd-ca"
)

// CAValidity is how long the CAs are valid, as kubeadm makes them.
const CAValidity = 10 * 365 * 24 * time.Hour

// Backdate is how far before "now" a certificate starts to be valid, so
// that a node whose clock runs behind the laptop's still accepts it.
const Backdate = time.Hour

// AdminGroup is the organisation of the admin credentials airlock mints.
// kubeadm binds it to cluster-admin (ClusterRoleBinding
// kubeadm:cluster-admins) during init; unlike system:masters it can be
// revoked by deleting that binding.
const AdminGroup = "kubeadm:cluster-admins"

// AdminUser is the common name of airlock's admin credentials.
const AdminUser = "airlock-admin"

// MaxClientTTL bounds the lifetime of a client certificate.
const MaxClientTTL = 366 * 24 * time.Hour

// ErrBadPKI means a stored or given PKI does not hold together.
var ErrBadPKI = errors.New("invalid cluster PKI")

// CertKey is a PEM certificate and its PEM private key.
type CertKey struct{ CertPEM, KeyPEM []byte }

// PKI is the cluster's certificate authorities and service-account key
// pair. Keys are ECDSA P-256 ("EC PRIVATE KEY" PEM, as kubeadm writes its
// own ECDSA keys); the service-account public key is PKIX ("PUBLIC KEY").
type PKI struct {
	CA, FrontProxyCA, EtcdCA CertKey
	ServiceAccountKeyPEM     []byte
	ServiceAccountPubPEM     []byte
}

var clusterNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// NewPKI generates the cluster's CAs (kubernetes, front-proxy-ca,
// etcd-ca, valid ten years from now, backdated by Backdate) and the
// service-account key pair. clusterName goes into each CA's subject as its
// organisational unit, so that CAs of different clusters tell apart.
func NewPKI(clusterName string, now time.Time) (*PKI, error) {
	if !clusterNameRE.MatchString(clusterName) {
		return nil, fmt.Errorf("new cluster PKI: cluster name %q: want a DNS name of at most 63 characters", clusterName)
	}
	p := &PKI{}
	for _, ca := range []struct {
		cn  string
		dst *CertKey
	}{{CACommonName, &p.CA}, {FrontProxyCACommonName, &p.FrontProxyCA}, {EtcdCACommonName, &p.EtcdCA}} {
		ck, err := newCA(ca.cn, clusterName, now)
		if err != nil {
			return nil, fmt.Errorf("new cluster PKI: CA %s: %w", ca.cn, err)
		}
		*ca.dst = ck
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new cluster PKI: service-account key: %w", err)
	}
	if p.ServiceAccountKeyPEM, err = encodeKey(key); err != nil {
		return nil, fmt.Errorf("new cluster PKI: service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("new cluster PKI: service-account public key: %w", err)
	}
	p.ServiceAccountPubPEM = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	return p, nil
}

func newCA(cn, clusterName string, now time.Time) (CertKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return CertKey{}, fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return CertKey{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, OrganizationalUnit: []string{clusterName}},
		DNSNames:              []string{cn}, // as client-go's certutil.NewSelfSignedCACert
		NotBefore:             now.Add(-Backdate).UTC(),
		NotAfter:              now.Add(CAValidity).UTC(),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return CertKey{}, fmt.Errorf("sign: %w", err)
	}
	kp, err := encodeKey(key)
	if err != nil {
		return CertKey{}, err
	}
	return CertKey{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: kp}, nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// parse returns the certificate and private key of ck, checking that they
// belong together.
func (ck CertKey) parse() (*x509.Certificate, crypto.Signer, error) {
	cert, err := parseCert(ck.CertPEM)
	if err != nil {
		return nil, nil, err
	}
	key, err := parseKey(ck.KeyPEM)
	if err != nil {
		return nil, nil, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%w: the key of %q does not match its certificate", ErrBadPKI, cert.Subject.CommonName)
	}
	return cert, key, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: want one PEM CERTIFICATE", ErrBadPKI)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPKI, err)
	}
	return cert, nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(b)
	if block == nil || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: want one PEM private key", ErrBadPKI)
	}
	var key any
	var err error
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: PEM block %q is no private key", ErrBadPKI, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPKI, err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case crypto.Signer:
		if _, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool }); ok {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: unsupported private key type %T", ErrBadPKI, key)
}

// Check verifies that every CA is a CA with its own key and that the
// service-account keys are a pair.
func (p *PKI) Check() error {
	var errs []error
	for _, ca := range []struct {
		name string
		ck   CertKey
	}{{"CA", p.CA}, {"front-proxy CA", p.FrontProxyCA}, {"etcd CA", p.EtcdCA}} {
		cert, _, err := ca.ck.parse()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ca.name, err))
			continue
		}
		if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
			errs = append(errs, fmt.Errorf("%s: %w: the certificate is not a CA", ca.name, ErrBadPKI))
		}
	}
	key, err := parseKey(p.ServiceAccountKeyPEM)
	if err != nil {
		errs = append(errs, fmt.Errorf("service-account key: %w", err))
	} else {
		block, _ := pem.Decode(p.ServiceAccountPubPEM)
		var pub any
		if block != nil && block.Type == "PUBLIC KEY" {
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		}
		if k, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); pub == nil || err != nil || !ok || !k.Equal(pub) {
			errs = append(errs, fmt.Errorf("service-account public key: %w: want the PKIX PUBLIC KEY of the private key", ErrBadPKI))
		}
	}
	return errors.Join(errs...)
}

// CAHash is the cluster CA's public-key pin as kubeadm's
// discovery-token-ca-cert-hash takes it: "sha256:" and the hex SHA-256 of
// the CA certificate's SubjectPublicKeyInfo.
func (p *PKI) CAHash() (string, error) {
	cert, err := parseCert(p.CA.CertPEM)
	if err != nil {
		return "", fmt.Errorf("CA hash: %w", err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// IssueClient signs a client certificate (extended key usage client auth)
// with the cluster CA: cn becomes the Kubernetes user, orgs its groups. It
// is valid from now-Backdate to now+ttl, and never past the CA.
func (p *PKI) IssueClient(cn string, orgs []string, ttl time.Duration, now time.Time) (CertKey, error) {
	// Kubernetes names (users, nodes) run to 253 characters, beyond
	// X.509's suggested 64 for a common name; Go and the API server take them.
	if cn == "" || len(cn) > 300 || !utf8.ValidString(cn) {
		return CertKey{}, fmt.Errorf("issue client certificate: common name %q: want 1-300 bytes of UTF-8", cn)
	}
	for _, o := range orgs {
		if o == "" || len(o) > 300 || !utf8.ValidString(o) {
			return CertKey{}, fmt.Errorf("issue client certificate %q: organisation %q: want 1-300 bytes of UTF-8", cn, o)
		}
	}
	if ttl <= 0 || ttl > MaxClientTTL {
		return CertKey{}, fmt.Errorf("issue client certificate %q: lifetime %v: want more than 0 and at most %v", cn, ttl, MaxClientTTL)
	}
	caCert, caKey, err := p.CA.parse()
	if err != nil {
		return CertKey{}, fmt.Errorf("issue client certificate %q: CA: %w", cn, err)
	}
	notAfter := now.Add(ttl).UTC()
	if notAfter.After(caCert.NotAfter) {
		return CertKey{}, fmt.Errorf("issue client certificate %q: it would outlive the CA (valid until %s)", cn, caCert.NotAfter.Format(time.RFC3339))
	}
	if now.Before(caCert.NotBefore) {
		return CertKey{}, fmt.Errorf("issue client certificate %q: the CA is not valid before %s", cn, caCert.NotBefore.Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return CertKey{}, fmt.Errorf("issue client certificate %q: generate key: %w", cn, err)
	}
	serial, err := newSerial()
	if err != nil {
		return CertKey{}, fmt.Errorf("issue client certificate %q: %w", cn, err)
	}
	notBefore := now.Add(-Backdate).UTC()
	if notBefore.Before(caCert.NotBefore) {
		notBefore = caCert.NotBefore
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return CertKey{}, fmt.Errorf("issue client certificate %q: sign: %w", cn, err)
	}
	kp, err := encodeKey(key)
	if err != nil {
		return CertKey{}, fmt.Errorf("issue client certificate %q: %w", cn, err)
	}
	return CertKey{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: kp}, nil
}

// Kubeconfig renders a kubeconfig with one cluster (server, trusting
// caPEM), one user authenticated by the client certificate ck, and one
// current context joining them.
func Kubeconfig(server, clusterName, user string, caPEM []byte, ck CertKey) ([]byte, error) {
	if server == "" || clusterName == "" || user == "" {
		return nil, fmt.Errorf("render kubeconfig: server, cluster name and user are required")
	}
	ctx := user + "@" + clusterName
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: ck.CertPEM, ClientKeyData: ck.KeyPEM}
	cfg.Contexts[ctx] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: user}
	cfg.CurrentContext = ctx
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("render kubeconfig: %w", err)
	}
	return out, nil
}

// AdminKubeconfig mints a client certificate for AdminUser in AdminGroup
// valid for ttl and returns a kubeconfig for server that uses it.
func AdminKubeconfig(p *PKI, server, clusterName string, ttl time.Duration, now time.Time) ([]byte, error) {
	ck, err := p.IssueClient(AdminUser, []string{AdminGroup}, ttl, now)
	if err != nil {
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	return Kubeconfig(server, clusterName, AdminUser, p.CA.CertPEM, ck)
}
