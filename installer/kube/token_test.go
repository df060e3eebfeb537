package kube

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
)

var testNow = time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)

func TestNewTokenFormatAndRandomness(t *testing.T) {
	seen := map[string]bool{}
	chars := map[rune]bool{}
	for range 200 {
		tok, err := NewToken("node m-1", time.Hour, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if !tokenPartsRE.MatchString(tok.Value()) {
			t.Fatalf("token %q does not match [a-z0-9]{6}.[a-z0-9]{16}", tok.Value())
		}
		if seen[tok.ID] {
			t.Fatalf("token ID %s drawn twice in 200 tokens", tok.ID)
		}
		seen[tok.ID] = true
		for _, c := range tok.Secret {
			chars[c] = true
		}
		if want := testNow.Add(time.Hour); !tok.Expires.Equal(want) {
			t.Fatalf("expires %v, want %v", tok.Expires, want)
		}
		back, err := ParseToken(tok.Value())
		if err != nil || back.ID != tok.ID || back.Secret != tok.Secret {
			t.Fatalf("ParseToken(Value()) = %+v, %v", back, err)
		}
	}
	// 3200 draws from 36 characters: every one should have come up.
	if len(chars) != len(tokenAlphabet) {
		t.Errorf("secrets used %d distinct characters, want all %d", len(chars), len(tokenAlphabet))
	}
}

func TestNewTokenRefusesBadLifetimes(t *testing.T) {
	for _, ttl := range []time.Duration{0, -time.Second, MaxTokenTTL + time.Second} {
		if _, err := NewToken("", ttl, testNow); err == nil {
			t.Errorf("NewToken with lifetime %v succeeded", ttl)
		}
	}
	if _, err := NewToken(strings.Repeat("x", 257), time.Hour, testNow); err == nil {
		t.Error("a 257-byte description was accepted")
	}
}

func TestParseTokenRejectsAndNeverEchoes(t *testing.T) {
	for _, s := range []string{
		"", "abcdef.0123456789abcdef0", "ABCDEF.0123456789abcdef", "abcdef-0123456789abcdef",
		"abcde.0123456789abcdefg", "abcdef.0123456789abcde!", "abcdef.0123456789abcdeé",
		" bcdef.0123456789abcdef", strings.Repeat("a", 1<<20),
	} {
		_, err := ParseToken(s)
		if !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%.40q) = %v, want ErrBadToken", s, err)
			continue
		}
		if len(s) > 3 && strings.Contains(err.Error(), s) {
			t.Errorf("error %q repeats the input", err)
		}
	}
}

func TestTokenStringHidesSecret(t *testing.T) {
	tok := Token{ID: "abcdef", Secret: "0123456789abcdef"}
	for _, s := range []string{tok.String(), fmt.Sprintf("%v", tok), fmt.Sprint(tok)} {
		if strings.Contains(s, tok.Secret) {
			t.Errorf("%q shows the secret", s)
		}
	}
	if tok.Value() != "abcdef.0123456789abcdef" {
		t.Errorf("Value() = %q", tok.Value())
	}
}

func TestTokenSecretObject(t *testing.T) {
	tok := Token{ID: "abcdef", Secret: "0123456789abcdef", Expires: time.Date(2026, 12, 7, 22, 0, 0, 0, time.FixedZone("x", 3600)), Description: "join m-1"}
	s, err := tok.SecretObject()
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "bootstrap-token-abcdef" || s.Namespace != "kube-system" || s.Type != corev1.SecretType("bootstrap.kubernetes.io/token") {
		t.Errorf("secret %s/%s of type %s", s.Namespace, s.Name, s.Type)
	}
	want := map[string]string{
		"token-id":                       "abcdef",
		"token-secret":                   "0123456789abcdef",
		"expiration":                     "2026-12-07T21:00:00Z",
		"usage-bootstrap-authentication": "true",
		"usage-bootstrap-signing":        "true",
		"auth-extra-groups":              "system:bootstrappers:kubeadm:default-node-token",
		"description":                    "join m-1",
	}
	if len(s.Data) != len(want) {
		t.Errorf("data has %d keys, want %d", len(s.Data), len(want))
	}
	for k, v := range want {
		if got := string(s.Data[k]); got != v {
			t.Errorf("data[%s] = %q, want %q", k, got, v)
		}
	}
	if _, err := (Token{ID: "abcdef", Secret: "0123456789abcdef"}).SecretObject(); err == nil {
		t.Error("a token without expiry made a Secret")
	}
	if _, err := (Token{ID: "abc", Secret: "0123456789abcdef", Expires: testNow}).SecretObject(); err == nil {
		t.Error("a malformed token made a Secret")
	}
}

// selfSignedPEM is a throwaway CA certificate.
func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: testNow, NotAfter: testNow.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestBootstrapKubeconfig(t *testing.T) {
	ca := selfSignedPEM(t)
	if err := checkCertsPEM(ca); err != nil {
		t.Fatalf("test CA: %v", err)
	}
	out, err := BootstrapKubeconfig("https://10.0.0.100:6443", ca, "abcdef.0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(out)
	if err != nil {
		t.Fatalf("the rendered kubeconfig does not load: %v\n%s", err, out)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil {
		t.Fatalf("no current context in\n%s", out)
	}
	cl, user := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
	if cl == nil || user == nil {
		t.Fatalf("context %+v names a missing cluster or user", ctx)
	}
	if cl.Server != "https://10.0.0.100:6443" || !bytes.Equal(cl.CertificateAuthorityData, ca) || cl.InsecureSkipTLSVerify {
		t.Errorf("cluster %+v", cl)
	}
	if user.Token != "abcdef.0123456789abcdef" || user.ClientCertificateData != nil || user.Username != "" {
		t.Errorf("user %+v", user)
	}
	for _, tc := range []struct {
		server, token string
		ca            []byte
	}{
		{"http://10.0.0.100:6443", "abcdef.0123456789abcdef", ca},
		{"https://", "abcdef.0123456789abcdef", ca},
		{"https://u:p@10.0.0.100:6443", "abcdef.0123456789abcdef", ca},
		{"https://10.0.0.100:6443/x", "abcdef.0123456789abcdef", ca},
		{"https://10.0.0.100:6443", "abcdef.0123456789abcde", ca},
		{"https://10.0.0.100:6443", "abcdef.0123456789abcdef", nil},
		{"https://10.0.0.100:6443", "abcdef.0123456789abcdef", []byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")},
		{"https://10.0.0.100:6443", "abcdef.0123456789abcdef", append(append([]byte{}, ca...), "junk"...)},
	} {
		if _, err := BootstrapKubeconfig(tc.server, tc.ca, tc.token); err == nil {
			t.Errorf("BootstrapKubeconfig(%q, %d bytes of CA, token of %d) succeeded", tc.server, len(tc.ca), len(tc.token))
		}
	}
}

func TestBootstrapRBACIsKubeadms(t *testing.T) {
	want := map[string]string{
		"kubeadm:kubelet-bootstrap":                     "system:node-bootstrapper/Group:system:bootstrappers:kubeadm:default-node-token",
		"kubeadm:node-autoapprove-bootstrap":            "system:certificates.k8s.io:certificatesigningrequests:nodeclient/Group:system:bootstrappers:kubeadm:default-node-token",
		"kubeadm:node-autoapprove-certificate-rotation": "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient/Group:system:nodes",
	}
	got := BootstrapRBAC()
	if len(got) != len(want) {
		t.Fatalf("%d bindings, want %d", len(got), len(want))
	}
	for _, b := range got {
		if len(b.Subjects) != 1 || b.RoleRef.Kind != "ClusterRole" || b.RoleRef.APIGroup != "rbac.authorization.k8s.io" {
			t.Errorf("binding %s: %+v", b.Name, b)
			continue
		}
		s := b.Subjects[0]
		if g := b.RoleRef.Name + "/" + s.Kind + ":" + s.Name; g != want[b.Name] {
			t.Errorf("binding %s = %s, want %s", b.Name, g, want[b.Name])
		}
	}
}
