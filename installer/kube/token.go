package kube

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"regexp"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Bootstrap tokens, as the API server's bootstrap-token authenticator and
// kubeadm know them (k8s.io/cluster-bootstrap/token/api).
const (
	// TokenNamespace holds the token Secrets.
	TokenNamespace = "kube-system"
	// TokenSecretPrefix followed by the token's ID names its Secret.
	TokenSecretPrefix = "bootstrap-token-"
	// NodeBootstrapGroup is the extra group a node's token authenticates
	// into; kubeadm binds it to node-bootstrapper and to CSR auto-approval.
	NodeBootstrapGroup = "system:bootstrappers:kubeadm:default-node-token"
	// NodesGroup is the group of every node's client certificate.
	NodesGroup = "system:nodes"
	// MaxTokenTTL bounds a bootstrap token's lifetime.
	MaxTokenTTL = 7 * 24 * time.Hour
	// BootstrapUser is the user name in a bootstrap kubeconfig (kubeadm's).
	BootstrapUser = "tls-bootstrap-token-user"
	// BootstrapClusterName is the cluster's name in a bootstrap kubeconfig.
	BootstrapClusterName = "kubernetes"
)

// ErrBadToken means a string is not a bootstrap token.
var ErrBadToken = errors.New("not a bootstrap token: want [a-z0-9]{6}.[a-z0-9]{16}")

var tokenPartsRE = regexp.MustCompile(`^([a-z0-9]{6})\.([a-z0-9]{16})$`)

// Token is a bootstrap token "ID.Secret". Expires is zero for a token read
// back with ParseToken (the expiry lives in its Secret, not in the string).
type Token struct {
	ID, Secret  string
	Expires     time.Time
	Description string
}

// Value is the token as a node presents it: "ID.Secret". It is a
// credential: never log it.
func (t Token) Value() string { return t.ID + "." + t.Secret }

// String shows the ID only, so that a token printed by accident (%v in a
// log line) does not leak its secret.
func (t Token) String() string { return t.ID + ".<secret>" }

// NewToken makes a token from crypto/rand that expires ttl after now.
func NewToken(description string, ttl time.Duration, now time.Time) (Token, error) {
	if ttl <= 0 || ttl > MaxTokenTTL {
		return Token{}, fmt.Errorf("new bootstrap token: lifetime %v: want more than 0 and at most %v", ttl, MaxTokenTTL)
	}
	if len(description) > 256 {
		return Token{}, fmt.Errorf("new bootstrap token: description of %d bytes: want at most 256", len(description))
	}
	id, err := randomToken(6)
	if err != nil {
		return Token{}, fmt.Errorf("new bootstrap token: %w", err)
	}
	secret, err := randomToken(16)
	if err != nil {
		return Token{}, fmt.Errorf("new bootstrap token: %w", err)
	}
	return Token{ID: id, Secret: secret, Expires: now.Add(ttl).UTC().Truncate(time.Second), Description: description}, nil
}

const tokenAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// randomToken draws n characters of tokenAlphabet uniformly.
func randomToken(n int) (string, error) {
	b := make([]byte, n)
	max := big.NewInt(int64(len(tokenAlphabet)))
	for i := range b {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", fmt.Errorf("random: %w", err)
		}
		b[i] = tokenAlphabet[v.Int64()]
	}
	return string(b), nil
}

// ParseToken reads "ID.Secret". The error never contains the input (it
// may be a credential).
func ParseToken(s string) (Token, error) {
	if len(s) != 23 {
		return Token{}, fmt.Errorf("parse bootstrap token (%d characters): %w", len(s), ErrBadToken)
	}
	m := tokenPartsRE.FindStringSubmatch(s)
	if m == nil {
		return Token{}, fmt.Errorf("parse bootstrap token: %w", ErrBadToken)
	}
	return Token{ID: m[1], Secret: m[2]}, nil
}

// SecretObject is the token's Secret as the API server's authenticator and
// kubeadm read it: kube-system/bootstrap-token-ID of type
// bootstrap.kubernetes.io/token, usable for authentication and for signing
// the cluster-info ConfigMap, authenticating into NodeBootstrapGroup, and
// expiring at t.Expires (after which kube-controller-manager's tokencleaner
// deletes it).
func (t Token) SecretObject() (*corev1.Secret, error) {
	if _, err := ParseToken(t.Value()); err != nil {
		return nil, fmt.Errorf("bootstrap token Secret: %w", err)
	}
	if t.Expires.IsZero() {
		return nil, fmt.Errorf("bootstrap token Secret %s: no expiry", t.ID)
	}
	data := map[string][]byte{
		"token-id":                       []byte(t.ID),
		"token-secret":                   []byte(t.Secret),
		"expiration":                     []byte(t.Expires.UTC().Format(time.RFC3339)),
		"usage-bootstrap-authentication": []byte("true"),
		"usage-bootstrap-signing":        []byte("true"),
		"auth-extra-groups":              []byte(NodeBootstrapGroup),
	}
	if t.Description != "" {
		data["description"] = []byte(t.Description)
	}
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: TokenSecretPrefix + t.ID, Namespace: TokenNamespace},
		Type:       corev1.SecretTypeBootstrapToken,
		Data:       data,
	}, nil
}

// CreateToken creates the token's Secret through the API. A Secret of the
// same ID that exists already is an error: IDs are random, and a token is
// never silently replaced.
func CreateToken(ctx context.Context, cs kubernetes.Interface, t Token) error {
	s, err := t.SecretObject()
	if err != nil {
		return fmt.Errorf("create bootstrap token: %w", err)
	}
	if _, err := cs.CoreV1().Secrets(TokenNamespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create bootstrap token %s: %w", t.ID, err)
	}
	return nil
}

// BootstrapKubeconfig renders the kubeconfig a kubelet TLS-bootstraps with
// (--bootstrap-kubeconfig), as kubeadm writes bootstrap-kubelet.conf: the
// API server at server trusting caPEM, authenticating with the token.
func BootstrapKubeconfig(server string, caPEM []byte, token string) ([]byte, error) {
	if _, err := ParseToken(token); err != nil {
		return nil, fmt.Errorf("render bootstrap kubeconfig: %w", err)
	}
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("render bootstrap kubeconfig: server %q: want https://HOST[:PORT]", server)
	}
	if err := checkCertsPEM(caPEM); err != nil {
		return nil, fmt.Errorf("render bootstrap kubeconfig: CA: %w", err)
	}
	ctx := BootstrapUser + "@" + BootstrapClusterName
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[BootstrapClusterName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[BootstrapUser] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[ctx] = &clientcmdapi.Context{Cluster: BootstrapClusterName, AuthInfo: BootstrapUser}
	cfg.CurrentContext = ctx
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("render bootstrap kubeconfig: %w", err)
	}
	return out, nil
}

// checkCertsPEM wants one or more PEM certificates and nothing else.
func checkCertsPEM(b []byte) error {
	n := 0
	for rest := b; ; n++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				return fmt.Errorf("trailing data after %d certificates", n)
			}
			break
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %d is %q, want CERTIFICATE", n+1, blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	return nil
}

// BootstrapRBAC is what kubeadm init binds for kubelet TLS bootstrap
// (phase bootstrap-token): holders of a node token may create CSRs
// (system:node-bootstrapper) whose client certificates
// kube-controller-manager's csrapproving controller approves on its own
// (certificatesigningrequests:nodeclient), and nodes may renew their own
// (selfnodeclient). airlock approves nothing itself: the controller does,
// with these bindings, exactly as on a kubeadm cluster.
func BootstrapRBAC() []*rbacv1.ClusterRoleBinding {
	bind := func(name, role, group string) *rbacv1.ClusterRoleBinding {
		return &rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: group}},
		}
	}
	return []*rbacv1.ClusterRoleBinding{
		bind("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", NodeBootstrapGroup),
		bind("kubeadm:node-autoapprove-bootstrap", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", NodeBootstrapGroup),
		bind("kubeadm:node-autoapprove-certificate-rotation", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", NodesGroup),
	}
}

// EnsureBootstrapRBAC creates the BootstrapRBAC bindings that are missing
// and adds a missing subject to one that exists (kubeadm init has made
// them already on a kubeadm cluster; a re-run finds its work done). A
// binding of that name to another role is an error: roleRef is immutable
// and someone else owns it.
func EnsureBootstrapRBAC(ctx context.Context, cs kubernetes.Interface) error {
	crbs := cs.RbacV1().ClusterRoleBindings()
	for _, want := range BootstrapRBAC() {
		got, err := crbs.Get(ctx, want.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			if _, err := crbs.Create(ctx, want, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create ClusterRoleBinding %s: %w", want.Name, err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("read ClusterRoleBinding %s: %w", want.Name, err)
		}
		if got.RoleRef != want.RoleRef {
			return fmt.Errorf("ClusterRoleBinding %s binds %s %q, want %q", want.Name, got.RoleRef.Kind, got.RoleRef.Name, want.RoleRef.Name)
		}
		if slices.Contains(got.Subjects, want.Subjects[0]) {
			continue
		}
		got.Subjects = append(got.Subjects, want.Subjects[0])
		if _, err := crbs.Update(ctx, got, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update ClusterRoleBinding %s: %w", want.Name, err)
		}
	}
	return nil
}
