// Package kubetest runs real Kubernetes parts for tests in several
// packages: etcd and kube-apiserver (built by `make k8s-bins`) inside a
// network namespace the test made, set up as kubeadm init leaves a
// cluster, and the processes a test starts there, each stopped by its
// PID when the test ends. Nothing listens on the host's interfaces.
package kubetest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"airlock.dev/airlock/installer/lab/netns"
)

// BinDir finds the binaries of `make k8s-bins`: $AIRLOCK_K8S_BIN (make
// test sets it), else the cache e2e/k8s/build.sh --cached names. A missing
// binary of names fails the test: it is never a reason to skip.
func BinDir(t testing.TB, names ...string) string {
	t.Helper()
	dir := os.Getenv("AIRLOCK_K8S_BIN")
	if dir == "" {
		out, err := exec.Command("bash", filepath.Join(repoRoot(t), "e2e/k8s/build.sh"), "--cached").Output()
		if err != nil {
			t.Fatalf("the Kubernetes binaries are not built: run `make k8s-bins` (it builds them from Go modules and prints their directory; set AIRLOCK_K8S_BIN to it): %v", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, b := range names {
		if st, err := os.Stat(filepath.Join(dir, b)); err != nil || st.Mode()&0o111 == 0 {
			t.Fatalf("AIRLOCK_K8S_BIN=%s has no %s: run `make k8s-bins` and set AIRLOCK_K8S_BIN to the directory it prints", dir, b)
		}
	}
	return dir
}

// repoRoot is the directory of go.mod above the test's directory.
func repoRoot(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// Proc is a process the test started inside its namespace, in a process
// group of its own, stopped by its PID when the test ends.
type Proc struct {
	Name, Log string
	PID       int
	done      chan struct{}
	err       error
}

// StartIn runs bin inside ns with nsenter (network namespace only: `ip
// netns exec` would remount /sys and hide the cgroup hierarchy from a
// kubelet), logging to dir/NAME.log.
func StartIn(t testing.TB, ns *netns.NS, dir, name, bin string, args ...string) *Proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + filepath.Join(netns.RunDir, ns.Name), "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "KUBECONFIG=")
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true, Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, Log: logPath, PID: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("last lines of %s:\n%s", p.Name, Tail(p.Log, 25))
		}
	})
	return p
}

// Stop sends SIGTERM to the process group the test made for p, and SIGKILL
// if it has not exited 20 s later.
func (p *Proc) Stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = unix.Kill(-p.PID, unix.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Logf("%s (pid %d) ignored SIGTERM for 20 s: SIGKILL", p.Name, p.PID)
		_ = unix.Kill(-p.PID, unix.SIGKILL)
		<-p.done
	}
}

// Exited is an error describing p's exit, or nil while it runs.
func (p *Proc) Exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s (pid %d) exited: %v; its log ends:\n%s", p.Name, p.PID, p.err, Tail(p.Log, 40))
	default:
		return nil
	}
}

// Tail returns the last n lines of a file.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitFor polls cond every 200 ms until it holds, failing the test when
// timeout passes or one of procs dies first. It returns how long it took.
func WaitFor(t testing.TB, what string, timeout time.Duration, procs []*Proc, cond func(ctx context.Context) (bool, error)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	var last error
	for {
		for _, p := range procs {
			if err := p.Exited(); err != nil {
				t.Fatalf("waiting for %s: %v", what, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ok, err := cond(ctx)
		cancel()
		if ok {
			return time.Since(start)
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v (last error: %v)", what, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Dialer dials inside ns (where the test's API server listens).
func Dialer(ns *netns.NS) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// NSClient is a clientset from kubeconfig bytes whose connections are made
// inside ns.
func NSClient(t testing.TB, ns *netns.NS, kubeconfig []byte) *kubernetes.Clientset {
	t.Helper()
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	cfg.Dial = Dialer(ns)
	cfg.Timeout = 15 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return cs
}

// PKI is what the API server needs of the cluster's PKI (PEM).
type PKI struct {
	CACert, CAKey []byte
	SAKey, SAPub  []byte
}

// APIServer is etcd and kube-apiserver as the tests run them inside their
// namespace, serving https://NODEIP:6443 with a PKI's CA and
// service-account keys, and set up as kubeadm init leaves a cluster: the
// admin group is bound to cluster-admin (with a system:masters
// credential, as kubeadm does with super-admin.conf).
type APIServer struct {
	Procs []*Proc               // etcd and kube-apiserver
	Super *kubernetes.Clientset // a system:masters client
	CACrt string                // the CA certificate's file (for the controller-manager)
	SAKey string                // the service-account signing key's file
	Ready time.Duration         // from etcd's start to the binding
}

// StartAPIServer starts an APIServer in ns with its files under dir/pki;
// adminGroup is bound to cluster-admin; extra are more kube-apiserver
// flags.
func StartAPIServer(t testing.TB, ns *netns.NS, bin, dir, nodeIP string, p PKI, adminGroup string, now time.Time, extra ...string) APIServer {
	t.Helper()
	write := func(name string, b []byte) string {
		t.Helper()
		path := filepath.Join(dir, "pki", name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	a := APIServer{CACrt: write("ca.crt", p.CACert), SAKey: write("sa.key", p.SAKey)}
	srvCert, srvKey := ServingCert(t, p.CACert, p.CAKey, net.ParseIP(nodeIP), now)
	start := time.Now()
	etcd := StartIn(t, ns, dir, "etcd", filepath.Join(bin, "etcd"),
		"--name=t", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=t=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level=warn")
	apiserver := StartIn(t, ns, dir, "kube-apiserver", filepath.Join(bin, "kube-apiserver"), append([]string{
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=" + nodeIP, "--advertise-address=" + nodeIP, "--secure-port=6443",
		"--tls-cert-file=" + write("apiserver.crt", srvCert), "--tls-private-key-file=" + write("apiserver.key", srvKey),
		"--client-ca-file=" + a.CACrt,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + write("sa.pub", p.SAPub), "--service-account-signing-key-file=" + a.SAKey,
		"--service-cluster-ip-range=10.96.0.0/12", "--profiling=false",
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
	}, extra...)...)
	a.Procs = []*Proc{etcd, apiserver}

	cert, key := ClientCert(t, p.CACert, p.CAKey, "airlock-test-super-admin", []string{"system:masters"}, now)
	a.Super = NSClient(t, ns, kubeconfig(t, "https://"+nodeIP+":6443", p.CACert, cert, key))
	WaitFor(t, "kube-apiserver /readyz", 3*time.Minute, a.Procs, func(ctx context.Context) (bool, error) {
		b, err := a.Super.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(b) == "ok", err
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := a.Super.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:cluster-admins"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: adminGroup}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("bind %s: %v", adminGroup, err)
	}
	a.Ready = time.Since(start)
	return a
}

func kubeconfig(t testing.TB, server string, ca, cert, key []byte) []byte {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "c"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ServingCert signs the API server's serving certificate with the CA, for
// the names and addresses kubeadm gives it (PEM certificate and key).
func ServingCert(t testing.TB, caCert, caKey []byte, ip net.IP, now time.Time) ([]byte, []byte) {
	t.Helper()
	return sign(t, caCert, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{ip, net.ParseIP("10.96.0.1"), net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, now)
}

// ClientCert signs a client certificate for user cn in groups orgs.
func ClientCert(t testing.TB, caCert, caKey []byte, cn string, orgs []string, now time.Time) ([]byte, []byte) {
	t.Helper()
	return sign(t, caCert, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, now)
}

func sign(t testing.TB, caCertPEM, caKeyPEM []byte, tmpl *x509.Certificate, now time.Time) ([]byte, []byte) {
	t.Helper()
	cb, _ := pem.Decode(caCertPEM)
	kb, _ := pem.Decode(caKeyPEM)
	if cb == nil || kb == nil {
		t.Fatal("CA: want PEM certificate and key")
	}
	caCert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	var caKey any
	if kb.Type == "EC PRIVATE KEY" {
		caKey, err = x509.ParseECPrivateKey(kb.Bytes)
	} else {
		caKey, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	}
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(24*time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
}
