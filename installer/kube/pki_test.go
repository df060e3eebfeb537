package kube

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

var t0 = time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)

func newTestPKI(t testing.TB) *PKI {
	t.Helper()
	p, err := NewPKI("lab", t0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewPKI(t *testing.T) {
	p := newTestPKI(t)
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ck CertKey
		cn string
	}{{p.CA, "kubernetes"}, {p.FrontProxyCA, "front-proxy-ca"}, {p.EtcdCA, "etcd-ca"}} {
		cert, _, err := c.ck.parse()
		if err != nil {
			t.Fatal(err)
		}
		if cert.Subject.CommonName != c.cn || !cert.IsCA || !cert.BasicConstraintsValid {
			t.Errorf("CA %q: CN %q, IsCA %v", c.cn, cert.Subject.CommonName, cert.IsCA)
		}
		if got := cert.Subject.OrganizationalUnit; len(got) != 1 || got[0] != "lab" {
			t.Errorf("CA %q: OU %v, want the cluster name", c.cn, got)
		}
		if !cert.NotBefore.Equal(t0.Add(-Backdate)) || !cert.NotAfter.Equal(t0.Add(CAValidity)) {
			t.Errorf("CA %q valid %v to %v", c.cn, cert.NotBefore, cert.NotAfter)
		}
		if err := cert.CheckSignatureFrom(cert); err != nil {
			t.Errorf("CA %q is not self-signed: %v", c.cn, err)
		}
		if !strings.HasPrefix(string(c.ck.KeyPEM), "-----BEGIN EC PRIVATE KEY-----") {
			t.Errorf("CA %q key is not an EC PRIVATE KEY PEM", c.cn)
		}
	}
	q := newTestPKI(t)
	if bytes.Equal(p.CA.KeyPEM, q.CA.KeyPEM) || bytes.Equal(p.ServiceAccountKeyPEM, q.ServiceAccountKeyPEM) ||
		bytes.Equal(p.CA.KeyPEM, p.EtcdCA.KeyPEM) {
		t.Error("two PKIs or two CAs share a key")
	}
	for _, bad := range []string{"", "Lab", "a_b", strings.Repeat("a", 64), "-lab"} {
		if _, err := NewPKI(bad, t0); err == nil {
			t.Errorf("NewPKI(%q) accepted", bad)
		}
	}
}

func TestCheckRejects(t *testing.T) {
	p := newTestPKI(t)
	swapped := *p
	swapped.CA.KeyPEM = p.EtcdCA.KeyPEM
	if err := swapped.Check(); !errors.Is(err, ErrBadPKI) {
		t.Errorf("a CA with another CA's key: %v", err)
	}
	sa := *p
	sa.ServiceAccountPubPEM = newTestPKI(t).ServiceAccountPubPEM
	if err := sa.Check(); !errors.Is(err, ErrBadPKI) {
		t.Errorf("service-account keys of two pairs: %v", err)
	}
	leaf, err := p.IssueClient("x", nil, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	notCA := *p
	notCA.FrontProxyCA = leaf
	if err := notCA.Check(); !errors.Is(err, ErrBadPKI) {
		t.Errorf("a client certificate as CA: %v", err)
	}
	junk := *p
	junk.EtcdCA.CertPEM = []byte("not pem")
	if err := junk.Check(); !errors.Is(err, ErrBadPKI) {
		t.Errorf("junk certificate: %v", err)
	}
}

// The hash is the one kubeadm's documentation computes with openssl for
// --discovery-token-ca-cert-hash.
func TestCAHashMatchesOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed: apt-get install openssl")
	}
	p := newTestPKI(t)
	got, err := p.CAHash()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -hex")
	cmd.Stdin = bytes.NewReader(p.CA.CertPEM)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	fields := strings.Fields(string(out))
	want := "sha256:" + fields[len(fields)-1]
	if got != want {
		t.Errorf("CAHash %s, openssl says %s", got, want)
	}
	if len(got) != len("sha256:")+64 {
		t.Errorf("CAHash %q has the wrong length", got)
	}
}

func TestIssueClient(t *testing.T) {
	p := newTestPKI(t)
	ck, err := p.IssueClient("system:kube-vip", []string{"airlock:kube-vip", "b"}, 2*time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ck.parse()
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "system:kube-vip" || !sameSet(cert.Subject.Organization, []string{"airlock:kube-vip", "b"}) {
		t.Errorf("subject %v", cert.Subject)
	}
	if !cert.NotAfter.Equal(t0.Add(2*time.Hour)) || cert.IsCA {
		t.Errorf("NotAfter %v IsCA %v", cert.NotAfter, cert.IsCA)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.CA.CertPEM)
	verify := func(at time.Time, usage x509.ExtKeyUsage) error {
		_, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{usage}})
		return err
	}
	if err := verify(t0.Add(time.Hour), x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("client cert does not verify against the CA: %v", err)
	}
	if verify(t0.Add(3*time.Hour), x509.ExtKeyUsageClientAuth) == nil {
		t.Error("client cert still valid after its lifetime")
	}
	if verify(t0.Add(time.Hour), x509.ExtKeyUsageServerAuth) == nil {
		t.Error("client cert usable as a server cert")
	}
	other := x509.NewCertPool()
	other.AppendCertsFromPEM(p.FrontProxyCA.CertPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: other, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("client cert verifies against the front-proxy CA")
	}

	for name, c := range map[string]struct {
		cn   string
		orgs []string
		ttl  time.Duration
		now  time.Time
	}{
		"no ttl":          {"a", nil, 0, t0},
		"negative ttl":    {"a", nil, -time.Hour, t0},
		"too long":        {"a", nil, MaxClientTTL + time.Second, t0},
		"outlives the CA": {"a", nil, time.Hour, t0.Add(CAValidity)},
		"before the CA":   {"a", nil, time.Hour, t0.Add(-2 * Backdate)},
		"empty CN":        {"", nil, time.Hour, t0},
		"empty org":       {"a", []string{""}, time.Hour, t0},
	} {
		if _, err := p.IssueClient(c.cn, c.orgs, c.ttl, c.now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// serverCert is the API server's serving certificate (apiserverCert,
// 127.0.0.1 among its addresses) as a tls.Certificate.
func serverCert(t *testing.T, p *PKI) tls.Certificate {
	t.Helper()
	ck := apiserverCert(t, p, net.IPv4(127, 0, 0, 1), time.Now())
	c, err := tls.X509KeyPair(ck.CertPEM, ck.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The admin kubeconfig, read by client-go as kubectl reads it, talks TLS
// to a server that trusts only the cluster CA for clients, and presents
// airlock-admin in kubeadm:cluster-admins.
func TestAdminKubeconfigAuthenticates(t *testing.T) {
	p := newTestPKI(t)
	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(p.CA.CertPEM)
	var seen *x509.Certificate
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.TLS.PeerCertificates[0]
		io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Success"}`)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert(t, p)}, ClientCAs: caPool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below is expected
	srv.StartTLS()
	defer srv.Close()

	now := time.Now()
	raw, err := AdminKubeconfig(p, srv.URL, "lab", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(raw)
	if err != nil {
		t.Fatalf("client-go cannot read the kubeconfig: %v\n%s", err, raw)
	}
	if cfg.CurrentContext != "airlock-admin@lab" || cfg.Clusters["lab"].Server != srv.URL {
		t.Errorf("kubeconfig context %q clusters %v", cfg.CurrentContext, cfg.Clusters)
	}
	rc, err := clientcmd.RESTConfigFromKubeConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(srv.URL + "/version")
	if err != nil {
		t.Fatalf("TLS with the admin kubeconfig: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || seen == nil {
		t.Fatalf("status %d, peer %v", resp.StatusCode, seen)
	}
	if seen.Subject.CommonName != AdminUser || len(seen.Subject.Organization) != 1 || seen.Subject.Organization[0] != AdminGroup {
		t.Errorf("server saw %v", seen.Subject)
	}
	if d := seen.NotAfter.Sub(now); d < 59*time.Minute || d > time.Hour {
		t.Errorf("admin cert valid for %v, want 1h", d)
	}

	// A kubeconfig minted by another cluster's CA is refused.
	q := newTestPKI(t)
	bad, err := AdminKubeconfig(q, srv.URL, "lab", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	rcBad, err := clientcmd.RESTConfigFromKubeConfig(bad)
	if err != nil {
		t.Fatal(err)
	}
	rcBad.TLSClientConfig.CAData = p.CA.CertPEM // trust the server, present q's client cert
	hcBad, err := rest.HTTPClientFor(rcBad)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := hcBad.Get(srv.URL + "/version"); err == nil {
		resp.Body.Close()
		t.Error("a client cert of another CA was accepted")
	}
}

func TestKubeconfigRejectsEmpty(t *testing.T) {
	if _, err := Kubeconfig("", "lab", "u", nil, CertKey{}); err == nil {
		t.Error("empty server accepted")
	}
	if _, err := AdminKubeconfig(&PKI{}, "https://x:6443", "lab", time.Hour, t0); err == nil {
		t.Error("empty PKI accepted")
	}
}

// The service-account key pair is what kube-apiserver and
// kube-controller-manager load: EC PRIVATE KEY and PKIX PUBLIC KEY.
func TestServiceAccountKeyPEM(t *testing.T) {
	p := newTestPKI(t)
	kb, _ := pem.Decode(p.ServiceAccountKeyPEM)
	pb, _ := pem.Decode(p.ServiceAccountPubPEM)
	if kb == nil || kb.Type != "EC PRIVATE KEY" || pb == nil || pb.Type != "PUBLIC KEY" {
		t.Fatalf("service-account PEM types: %v %v", kb, pb)
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed: apt-get install openssl")
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "sa.key")
	if err := os.WriteFile(key, p.ServiceAccountKeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "pkey", "-in", key, "-pubout").CombinedOutput()
	if err != nil || !bytes.Equal(bytes.TrimSpace(out), bytes.TrimSpace(p.ServiceAccountPubPEM)) {
		t.Errorf("openssl's public key of sa.key differs from sa.pub: %v\n%s", err, out)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
