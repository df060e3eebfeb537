package kube

// The real-parts check of issue 15 that runs in `make test`: etcd,
// kube-apiserver and kube-controller-manager (v1.35.4 built from Go modules
// by `make k8s-bins`), Debian's containerd and a real kubelet, all inside a
// network namespace this test makes (nothing listens on the host's
// interfaces, nothing leaves the machine). airlock's code creates the
// bootstrap token through the API and renders the bootstrap kubeconfig; the
// kubelet TLS-bootstraps with it, its CSR is approved by the
// controller-manager through kubeadm's bindings, and its Node becomes Ready.
// An expired, a wrong and an unknown token are refused (401).

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"airlock.dev/airlock/installer/lab/kubetest"
	"airlock.dev/airlock/installer/lab/netns"
)

// k8sBinaries are what `make k8s-bins` builds and this test runs.
var k8sBinaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubelet"}

// The real parts come from package kubetest, which the engine's tests
// share; these are its names here.
type proc = kubetest.Proc

func k8sBinDir(t *testing.T) string { return kubetest.BinDir(t, k8sBinaries...) }

func startIn(t *testing.T, ns *netns.NS, dir, name, bin string, args ...string) *proc {
	t.Helper()
	return kubetest.StartIn(t, ns, dir, name, bin, args...)
}

func waitFor(t *testing.T, what string, timeout time.Duration, procs []*proc, cond func(ctx context.Context) (bool, error)) time.Duration {
	t.Helper()
	return kubetest.WaitFor(t, what, timeout, procs, cond)
}

func nsClient(t *testing.T, ns *netns.NS, kubeconfig []byte) *kubernetes.Clientset {
	t.Helper()
	return kubetest.NSClient(t, ns, kubeconfig)
}

// startAPIServer starts etcd and kube-apiserver in ns with p's CA and
// service-account keys, airlock's AdminGroup bound to cluster-admin.
func startAPIServer(t *testing.T, ns *netns.NS, bin, dir, nodeIP string, p *PKI, now time.Time, extra ...string) kubetest.APIServer {
	t.Helper()
	return kubetest.StartAPIServer(t, ns, bin, dir, nodeIP, kubetest.PKI{CACert: p.CA.CertPEM, CAKey: p.CA.KeyPEM,
		SAKey: p.ServiceAccountKeyPEM, SAPub: p.ServiceAccountPubPEM}, AdminGroup, now, extra...)
}

// apiserverCert signs the API server's serving certificate with the
// cluster CA, for the names and addresses kubeadm gives it.
func apiserverCert(t *testing.T, p *PKI, ip net.IP, now time.Time) CertKey {
	t.Helper()
	cert, key := kubetest.ServingCert(t, p.CA.CertPEM, p.CA.KeyPEM, ip, now)
	return CertKey{CertPEM: cert, KeyPEM: key}
}

// nodeCSR is a CSR as a kubelet makes it for its client certificate.
func nodeCSR(t *testing.T, node string) *certv1.CertificateSigningRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + node, Organization: []string{NodesGroup}},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "airlock-probe-"},
		Spec: certv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: certv1.KubeAPIServerClientKubeletSignerName,
			Usages:     []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth},
		},
	}
}

// hostPaths are the fixed host paths a kubelet and containerd may write to
// whatever their configuration says; the test removes those it made.
var hostPaths = []string{"/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd", "/etc/cni", "/opt/cni", "/opt/containerd", "/etc/kubernetes"}

// kernelTunables are the sysctls a kubelet sets at start (protectKernelDefaults
// false); the test puts back the values it found.
var kernelTunables = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

func TestKubeletTLSBootstrapsWithAirlocksToken(t *testing.T) {
	bin := k8sBinDir(t)
	if os.Geteuid() != 0 {
		t.Fatal("this test runs a kubelet and containerd: run it as root")
	}
	for _, tool := range [][2]string{{"nsenter", "util-linux"}, {"containerd", "containerd"}, {"runc", "runc"}, {"ip", "iproute2"}} {
		netns.RequireTool(t, tool[0], tool[1])
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", plugin)); err != nil {
			t.Fatalf("CNI plugin %s missing: apt-get install containernetworking-plugins", plugin)
		}
	}
	t0 := time.Now()
	var timings []string
	mark := func(what string, d time.Duration) {
		timings = append(timings, fmt.Sprintf("%-44s %6.1f s  (at %5.1f s)", what, d.Seconds(), time.Since(t0).Seconds()))
	}
	t.Cleanup(func() {
		t.Logf("durations:\n  %s\n  total %.1f s", strings.Join(timings, "\n  "), time.Since(t0).Seconds())
	})

	// Host state the kubelet touches, put back in the end (cleanups run
	// last-registered first: these run after every process has stopped).
	existed := map[string]bool{}
	for _, p := range hostPaths {
		_, err := os.Lstat(p)
		existed[p] = err == nil
	}
	t.Cleanup(func() {
		for _, p := range hostPaths {
			if existed[p] {
				continue
			}
			if _, err := os.Lstat(p); err == nil {
				t.Logf("removing %s (the kubelet or containerd made it)", p)
				if err := os.RemoveAll(p); err != nil {
					t.Errorf("remove %s: %v", p, err)
				}
			}
		}
	})
	tunables := map[string]string{}
	for _, k := range kernelTunables {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			t.Fatalf("read sysctl %s: %v", k, err)
		}
		tunables[k] = strings.TrimSpace(string(b))
	}
	t.Cleanup(func() {
		for k, v := range tunables {
			b, err := os.ReadFile("/proc/sys/" + k)
			if err == nil && strings.TrimSpace(string(b)) == v {
				continue
			}
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				t.Errorf("restore sysctl %s=%s: %v", k, v, err)
			}
		}
	})

	// The namespace: an address for the API server and the node on a veth
	// pair whose both ends are inside, and no route out.
	ns := netns.NewTest(t, "kt")
	netns.MustVeth(t, ns, "kt0", ns, "kt1")
	const nodeIP = "192.0.2.10"
	ns.MustAddr(t, "kt0", nodeIP+"/24")
	server := "https://" + nodeIP + ":6443"
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// airlock's PKI; the API server's serving certificate from its CA.
	now := time.Now()
	pki, err := NewPKI("airlock-test", now)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	api := startAPIServer(t, ns, bin, dir, nodeIP, pki, now,
		"--enable-bootstrap-token-auth=true", "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true")
	mark("etcd and kube-apiserver ready", api.Ready)
	cp, caCrt, saKey := api.Procs, api.CACrt, api.SAKey
	caKey := write("pki/ca.key", pki.CA.KeyPEM)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// airlock's part, with airlock's own admin credential: kubeadm's
	// bootstrap bindings (twice: a re-run finds them done), a token for the
	// node and one that expired an hour ago.
	adminKC, err := AdminKubeconfig(pki, server, "airlock-test", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	admin := nsClient(t, ns, adminKC)
	for range 2 {
		if err := EnsureBootstrapRBAC(ctx, admin); err != nil {
			t.Fatalf("EnsureBootstrapRBAC: %v", err)
		}
	}
	tok, err := NewToken("kubelet TLS bootstrap test", 10*time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := NewToken("expired", time.Hour, now.Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []Token{tok, expired} {
		if err := CreateToken(ctx, admin, x); err != nil {
			t.Fatalf("CreateToken: %v", err)
		}
	}
	if err := CreateToken(ctx, admin, tok); !apierrors.IsAlreadyExists(err) {
		t.Errorf("creating token %s a second time: %v, want AlreadyExists", tok, err)
	}
	bootKC, err := BootstrapKubeconfig(server, pki.CA.CertPEM, tok.Value())
	if err != nil {
		t.Fatal(err)
	}
	node := fmt.Sprintf("airlock-kt-%d", os.Getpid())

	// A CSR for a kubelet's client certificate, made with a bootstrap
	// kubeconfig as the kubelet makes it: accepted with the token airlock
	// created, refused (401) with the expired one (its Secret still there:
	// kube-controller-manager's tokencleaner is not running yet), with a
	// wrong secret and with an unknown ID.
	probe := func(token string) error {
		kc, err := BootstrapKubeconfig(server, pki.CA.CertPEM, token)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := nsClient(t, ns, kc).CertificatesV1().CertificateSigningRequests().Create(ctx, nodeCSR(t, node), metav1.CreateOptions{})
		if err == nil {
			if err := admin.CertificatesV1().CertificateSigningRequests().Delete(ctx, csr.Name, metav1.DeleteOptions{}); err != nil {
				t.Errorf("delete probe CSR %s: %v", csr.Name, err)
			}
		}
		return err
	}
	if err := probe(tok.Value()); err != nil {
		t.Fatalf("a CSR with the token airlock created: %v", err)
	}
	wrongSecret := Token{ID: tok.ID, Secret: strings.Repeat("0", 16)}
	unknown, err := NewToken("never created", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what  string
		token Token
	}{{"expired", expired}, {"wrong secret", wrongSecret}, {"unknown ID", unknown}} {
		err := probe(c.token.Value())
		if !apierrors.IsUnauthorized(err) {
			t.Errorf("a CSR with the %s token %s: %v, want 401 Unauthorized", c.what, c.token, err)
		} else {
			t.Logf("%s token refused: %v", c.what, err)
		}
	}
	if _, err := admin.CoreV1().Secrets(TokenNamespace).Get(ctx, TokenSecretPrefix+expired.ID, metav1.GetOptions{}); err != nil {
		t.Fatalf("the expired token's Secret should still exist (its 401 must come from the expiry): %v", err)
	}

	// kube-controller-manager as kubeadm runs it: CSRs signed with the
	// cluster CA, approved by csrapproving, expired tokens cleaned up.
	kcmCK, err := pki.IssueClient("system:kube-controller-manager", nil, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	kcmKC, err := Kubeconfig(server, "airlock-test", "system:kube-controller-manager", pki.CA.CertPEM, kcmCK)
	if err != nil {
		t.Fatal(err)
	}
	kcmConf := write("controller-manager.conf", kcmKC)
	cp = append(cp, startIn(t, ns, dir, "kube-controller-manager", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig="+kcmConf, "--authentication-kubeconfig="+kcmConf, "--authorization-kubeconfig="+kcmConf,
		"--bind-address=127.0.0.1", "--secure-port=10257", "--leader-elect=false",
		"--controllers=csrapproving,csrsigning,csrcleaner,tokencleaner,bootstrapsigner",
		"--cluster-signing-cert-file="+caCrt, "--cluster-signing-key-file="+caKey,
		"--use-service-account-credentials=true", "--service-account-private-key-file="+saKey,
		"--root-ca-file="+caCrt, "--profiling=false"))

	// containerd with its own root, state and sockets under dir; a CNI
	// bridge with no host address, gateway or masquerade.
	cd := filepath.Join(dir, "containerd")
	cniConf := filepath.Join(dir, "cni", "net.d")
	write("cni/net.d/10-airlock-test.conflist", []byte(`{"cniVersion":"0.4.0","name":"airlock-test","plugins":[{"type":"bridge","bridge":"cni0","isGateway":false,"ipMasq":false,`+
		`"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.0.0/24"}]],"dataDir":"`+filepath.Join(dir, "cni", "ipam")+`"}}]}`))
	sock := filepath.Join(cd, "containerd.sock")
	cdConf := write("containerd.toml", fmt.Appendf(nil, `version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "registry.k8s.io/pause:3.10"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
`, filepath.Join(cd, "root"), filepath.Join(cd, "state"), sock, sock+".ttrpc", cniConf))
	containerd := startIn(t, ns, dir, "containerd", "containerd", "--config="+cdConf)
	mark("kube-controller-manager and containerd started", waitFor(t, "containerd's socket", time.Minute, append(cp, containerd), func(context.Context) (bool, error) {
		st, err := os.Stat(sock)
		return err == nil && st.Mode()&os.ModeSocket != 0, err
	}))

	// The kubelet, with the bootstrap kubeconfig exactly as airlock renders
	// it for the seed.
	bootPath := write("bootstrap-kubelet.conf", bootKC)
	kl := filepath.Join(dir, "kubelet")
	kubeletConf := write("kubelet.yaml", fmt.Appendf(nil, `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %q}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://%s
podLogsDir: %q
rotateCertificates: true
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
`, nodeIP, caCrt, sock, filepath.Join(dir, "pod-logs")))
	// The kubelet bind-mounts its root directory onto itself (shared
	// propagation): unmounted once it has stopped (cleanups run in reverse).
	t.Cleanup(func() { unmountUnder(t, dir) })
	kubeletStart := time.Now()
	kubelet := startIn(t, ns, dir, "kubelet", filepath.Join(bin, "kubelet"),
		"--config="+kubeletConf, "--bootstrap-kubeconfig="+bootPath, "--kubeconfig="+filepath.Join(kl, "kubelet.conf"),
		"--root-dir="+kl, "--cert-dir="+filepath.Join(kl, "pki"),
		"--hostname-override="+node, "--node-ip="+nodeIP, "--v=2")
	all := append(cp, containerd, kubelet)

	// Its CSR, made as system:bootstrap:<token ID>, approved and signed.
	var csr certv1.CertificateSigningRequest
	mark("kubelet's CSR approved and issued", waitFor(t, "the kubelet's CSR approved and issued", 3*time.Minute, all, func(ctx context.Context) (bool, error) {
		l, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range l.Items {
			if c.Spec.Username != "system:bootstrap:"+tok.ID || strings.HasPrefix(c.Name, "airlock-probe-") {
				continue
			}
			for _, cond := range c.Status.Conditions {
				if cond.Type == certv1.CertificateApproved && cond.Status == corev1.ConditionTrue && len(c.Status.Certificate) > 0 {
					csr = c
					return true, nil
				}
			}
			return false, fmt.Errorf("CSR %s not approved and issued yet: %+v", c.Name, c.Status.Conditions)
		}
		return false, errors.New("no CSR from the kubelet yet")
	}))
	if !slices.Contains(csr.Spec.Groups, NodeBootstrapGroup) || csr.Spec.SignerName != certv1.KubeAPIServerClientKubeletSignerName {
		t.Errorf("CSR %s: groups %v, signer %s", csr.Name, csr.Spec.Groups, csr.Spec.SignerName)
	}
	for _, cond := range csr.Status.Conditions {
		if cond.Type == certv1.CertificateApproved && cond.Reason != "AutoApproved" {
			t.Errorf("CSR %s approved by %q, want kube-controller-manager's AutoApproved", csr.Name, cond.Reason)
		}
	}

	// airlock's own watch (the bootstrap and join steps' NodeWait, with
	// its admin credentials) sees the real kubelet's Node join and become
	// Ready, and labels it with its role on the way.
	readyStart := time.Now()
	err = NodeWait{Client: admin, Name: node, Timeout: 3 * time.Minute, Interval: 200 * time.Millisecond,
		Check: func() error {
			for _, p := range all {
				if err := p.Exited(); err != nil {
					return err
				}
			}
			return nil
		},
		Joined: func(ctx context.Context, n *corev1.Node) error {
			return ApplyRoleLabels(ctx, admin, n.Name, RoleWorker)
		},
	}.Wait(ctx)
	if err != nil {
		t.Fatalf("Node %s Ready: %v", node, err)
	}
	mark("Node Ready", time.Since(readyStart))
	if n, err := admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if _, ok := n.Labels["node-role.kubernetes.io/worker"]; !ok {
		t.Errorf("the Node's labels %v lack its role", n.Labels)
	}
	t.Logf("kubelet start to Node Ready: %.1f s", time.Since(kubeletStart).Seconds())

	// The kubelet now talks with a client certificate from airlock's CA in
	// the node's identity.
	cur, err := os.ReadFile(filepath.Join(kl, "pki", "kubelet-client-current.pem"))
	if err != nil {
		t.Fatalf("the kubelet's client certificate: %v", err)
	}
	blk, _ := pem.Decode(cur)
	if blk == nil {
		t.Fatal("kubelet-client-current.pem holds no PEM")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pki.CA.CertPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the kubelet's client certificate does not chain to airlock's CA: %v", err)
	}
	if cert.Subject.CommonName != "system:node:"+node || !slices.Contains(cert.Subject.Organization, NodesGroup) {
		t.Errorf("the kubelet's client certificate is for %s %v", cert.Subject.CommonName, cert.Subject.Organization)
	}
	if kc, err := os.ReadFile(filepath.Join(kl, "kubelet.conf")); err != nil || bytes.Contains(kc, []byte(tok.Secret)) {
		t.Errorf("the kubelet's kubeconfig after bootstrap (err %v) still holds the bootstrap token", err)
	}

	// kube-controller-manager's tokencleaner removes the expired token.
	mark("expired token's Secret cleaned up", waitFor(t, "tokencleaner to delete the expired token", 2*time.Minute, cp, func(ctx context.Context) (bool, error) {
		_, err := admin.CoreV1().Secrets(TokenNamespace).Get(ctx, TokenSecretPrefix+expired.ID, metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	}))
	mark("control plane start to checks done", time.Since(start))
}

// unmountUnder unmounts every mount point below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("read mountinfo: %v", err)
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		// Field 5 is the mount point, with space, tab, newline and
		// backslash as octal escapes.
		mp := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(f[4])
		if strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, mp := range slices.Compact(points) {
		if err := unix.Unmount(mp, 0); err != nil {
			t.Errorf("unmount %s (left by the kubelet): %v", mp, err)
		}
	}
}
