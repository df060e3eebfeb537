package kube

import (
	"bytes"
	"crypto/x509"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"airlock.dev/airlock/installer/seed"
)

// fixtureKubeVIP is a fixed kube-vip client certificate
// (testdata/test-kube-vip.json) so that golden seeds stay stable.
func fixtureKubeVIP(t testing.TB, p *PKI) *CertKey {
	t.Helper()
	return fixture(t, "test-kube-vip.json", func() (*CertKey, error) {
		ck, err := p.IssueClient(KubeVIPUserPrefix+"cp", []string{KubeVIPGroup}, KubeVIPCertTTL, t0)
		return &ck, err
	})
}

func nodeSeedOf(t testing.TB, kc kubeadmCase) NodeSeed {
	t.Helper()
	p := fixturePKI(t)
	s := Secrets{PKI: p, Token: testToken, TokenTTL: 2 * time.Hour, KubeVIP: fixtureKubeVIP(t, p)}
	ns, err := Kubeadm{}.NodeSeed(kc.c, kc.n, s, kc.firstCP, t0)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// fullSeed renders a whole seed around the Kubernetes part, as the engine
// will: the mirrors for the upstream names, then the node's files and
// commands.
func fullSeed(t testing.TB, kc kubeadmCase, ns NodeSeed) seed.Files {
	t.Helper()
	f, err := seed.Render(seed.Config{
		InstanceID: "airlock-" + kc.n.Hostname + "-1",
		Hostname:   kc.n.Hostname,
		Mirror:     &seed.Mirror{Endpoint: "http://10.40.0.1:5000"},
		WriteFiles: ns.Files,
		RunCmd:     ns.RunCmd,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func fileOf(ns NodeSeed, path string) *seed.File {
	for i := range ns.Files {
		if ns.Files[i].Path == path {
			return &ns.Files[i]
		}
	}
	return nil
}

func TestNodeSeedGolden(t *testing.T) {
	for name, kc := range kubeadmCases() {
		t.Run(name, func(t *testing.T) {
			f := fullSeed(t, kc, nodeSeedOf(t, kc))
			checkGolden(t, filepath.Join("testdata", "seed", name, "user-data"), f.UserData)
		})
	}
}

// Every golden seed passes Debian's `cloud-init schema`, as the seed
// package's own golden seeds do.
func TestNodeSeedCloudInitSchema(t *testing.T) {
	if _, err := exec.LookPath("cloud-init"); err != nil {
		t.Fatal("cloud-init is not installed: apt-get install cloud-init (run .ci/deps)")
	}
	files, err := filepath.Glob(filepath.Join("testdata", "seed", "*", "user-data"))
	if err != nil || len(files) < len(kubeadmCases()) {
		t.Fatalf("golden seeds: %v %v", files, err)
	}
	for _, f := range files {
		out, err := exec.Command("cloud-init", "schema", "--config-file", f).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
			t.Errorf("cloud-init schema %s: %v\n%s", f, err, out)
		}
	}
}

func TestNodeSeedContent(t *testing.T) {
	cases := kubeadmCases()

	cp := nodeSeedOf(t, cases["init-ha"])
	p := fixturePKI(t)
	for _, name := range []string{"ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key", "sa.key", "sa.pub"} {
		f := fileOf(cp, PKIDir+"/"+name)
		if f == nil || f.Permissions != 0o600 {
			t.Errorf("control plane: %s missing or not 0600: %+v", name, f)
		}
	}
	if f := fileOf(cp, PKIDir+"/ca.key"); f == nil || !bytes.Equal(f.Content, p.CA.KeyPEM) {
		t.Error("control plane: ca.key is not the cluster CA's key")
	}
	for _, path := range []string{KubeadmConfig, KubeVIPKubeconfig, KubeVIPManifest, KubeVIPElectManifest, KubeVIPRBAC} {
		if f := fileOf(cp, path); f == nil || f.Permissions != 0o600 {
			t.Errorf("first control plane: %s missing or not 0600", path)
		}
	}
	wantCmds := [][]string{
		{"kubeadm", "init", "--config", KubeadmConfig},
		{"kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "apply", "-f", KubeVIPRBAC},
		{"install", "-m", "0600", KubeVIPElectManifest, KubeVIPManifest},
	}
	if got := cp.RunCmd[len(cp.RunCmd)-3:]; !slices.EqualFunc(got, wantCmds, slices.Equal) {
		t.Errorf("first control plane commands end %q", got)
	}

	// kube-vip: alone during init, then electing; its credential is its
	// own narrow identity, never admin.conf.
	pod := func(b []byte) corev1.Pod {
		var p corev1.Pod
		if err := yaml.UnmarshalStrict(b, &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	envOf := func(p corev1.Pod, name string) string {
		for _, e := range p.Spec.Containers[0].Env {
			if e.Name == name {
				return e.Value
			}
		}
		return ""
	}
	alone, elect := pod(fileOf(cp, KubeVIPManifest).Content), pod(fileOf(cp, KubeVIPElectManifest).Content)
	if envOf(alone, "vip_leaderelection") != "false" || envOf(elect, "vip_leaderelection") != "true" ||
		envOf(elect, "address") != "10.40.0.10" || envOf(elect, "vip_interface") != "eth0" {
		t.Errorf("kube-vip env: alone %v elect %v", alone.Spec.Containers[0].Env, elect.Spec.Containers[0].Env)
	}
	if hp := elect.Spec.Volumes[0].HostPath; hp == nil || hp.Path != KubeVIPKubeconfig || !elect.Spec.HostNetwork {
		t.Errorf("kube-vip volume %+v", elect.Spec.Volumes)
	}
	kc := fileOf(cp, KubeVIPKubeconfig).Content
	for _, bad := range []string{"admin.conf", "super-admin"} {
		if bytes.Contains(kc, []byte(bad)) {
			t.Errorf("kube-vip kubeconfig mentions %s", bad)
		}
	}
	ck := fixtureKubeVIP(t, p)
	cert, _, err := ck.parse()
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != KubeVIPGroup || slices.Contains(cert.Subject.Organization, "system:masters") {
		t.Errorf("kube-vip identity %v", cert.Subject)
	}
	var role rbacv1.Role
	rbac := fileOf(cp, KubeVIPRBAC).Content
	if err := yaml.UnmarshalStrict([]byte(strings.Split(string(rbac), "\n---\n")[0]), &role); err != nil {
		t.Fatal(err)
	}
	for _, r := range role.Rules {
		if !slices.Equal(r.Resources, []string{"leases"}) || slices.Contains(r.Verbs, "*") || slices.Contains(r.Verbs, "delete") {
			t.Errorf("kube-vip rule beyond its lease: %+v", r)
		}
		if !slices.Equal(r.Verbs, []string{"create"}) && !slices.Equal(r.ResourceNames, []string{KubeVIPLease}) {
			t.Errorf("kube-vip rule not bound to its lease: %+v", r)
		}
	}

	// A later control plane: the CAs and an electing kube-vip from the start.
	cp2 := nodeSeedOf(t, cases["join-control-plane"])
	if fileOf(cp2, PKIDir+"/etcd/ca.key") == nil || fileOf(cp2, KubeVIPElectManifest) != nil {
		t.Error("joining control plane: CAs missing or a swap manifest present")
	}
	if envOf(pod(fileOf(cp2, KubeVIPManifest).Content), "vip_leaderelection") != "true" {
		t.Error("joining control plane's kube-vip does not elect")
	}
	if last := cp2.RunCmd[len(cp2.RunCmd)-1]; !slices.Equal(last, []string{"kubeadm", "join", "--config", KubeadmConfig}) {
		t.Errorf("joining control plane's last command %q", last)
	}

	// Workers: no key material, no kube-vip.
	for _, name := range []string{"join-worker", "join-gpu-worker"} {
		w := nodeSeedOf(t, cases[name])
		for _, f := range w.Files {
			if strings.HasPrefix(f.Path, PKIDir) || strings.Contains(f.Path, "kube-vip") {
				t.Errorf("%s gets %s", name, f.Path)
			}
			if bytes.Contains(f.Content, []byte("PRIVATE KEY")) {
				t.Errorf("%s: %s holds a private key", name, f.Path)
			}
		}
	}

	// A single control plane without a VIP: no kube-vip at all.
	single := nodeSeedOf(t, cases["init-single"])
	if fileOf(single, KubeVIPManifest) != nil || fileOf(single, PKIDir+"/ca.key") == nil {
		t.Error("single control plane: kube-vip present or CAs missing")
	}
	if last := single.RunCmd[len(single.RunCmd)-1]; !slices.Equal(last, []string{"kubeadm", "init", "--config", KubeadmConfig}) {
		t.Errorf("single control plane's last command %q", last)
	}

	// An endpoint port kube-vip cannot serve is refused.
	bad := cases["init-ha"]
	bad.c.ControlPlaneEndpoint = "10.40.0.10:8443"
	if _, err := (Kubeadm{}).NodeSeed(bad.c, bad.n, Secrets{PKI: p, Token: testToken}, netip.Addr{}, t0); err == nil {
		t.Error("a VIP endpoint on port 8443 accepted")
	}
}

// Without a fixture, NodeSeed issues kube-vip's certificate itself: signed
// by the cluster CA, client auth, its own node's name in its group.
func TestNodeSeedIssuesKubeVIPCert(t *testing.T) {
	p := fixturePKI(t)
	kc := kubeadmCases()["join-control-plane"]
	now := t0.Add(time.Hour)
	ns, err := Kubeadm{}.NodeSeed(kc.c, kc.n, Secrets{PKI: p, Token: testToken}, netip.Addr{}, now)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(fileOf(ns, KubeVIPKubeconfig).Content)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := parseCert(cfg.AuthInfos[KubeVIPUserPrefix+"cp2"].ClientCertificateData)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.CA.CertPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Error(err)
	}
	if cert.Subject.CommonName != "airlock:kube-vip:cp2" || !cert.NotAfter.Equal(now.Add(KubeVIPCertTTL)) {
		t.Errorf("kube-vip cert %v until %v", cert.Subject, cert.NotAfter)
	}
	if s := cfg.Clusters[cfg.Contexts[cfg.CurrentContext].Cluster].Server; s != "https://kubernetes:6443" {
		t.Errorf("kube-vip talks to %s, want its own node's API server", s)
	}
}

// Debian's containerd reads the configuration and keeps what matters.
func TestContainerdConfigReadByContainerd(t *testing.T) {
	if _, err := exec.LookPath("containerd"); err != nil {
		t.Fatal("containerd is not installed: apt-get install containerd")
	}
	for _, driver := range []string{"systemd", "cgroupfs"} {
		c := testCluster()
		c.CgroupDriver = driver
		b, err := ContainerdConfig(c)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("containerd", "--config", path, "config", "dump").CombinedOutput()
		if err != nil {
			t.Fatalf("containerd config dump: %v\n%s", err, out)
		}
		for _, want := range []string{
			`sandbox_image = "registry.k8s.io/pause:3.10.1"`,
			`config_path = "/etc/containerd/certs.d"`,
			`SystemdCgroup = ` + map[string]string{"systemd": "true", "cgroupfs": "false"}[driver],
			`bin_dir = "/opt/cni/bin"`,
			`default_runtime_name = "runc"`,
		} {
			if !bytes.Contains(out, []byte(want)) {
				t.Errorf("%s: containerd's view lacks %q:\n%s", driver, want, out)
			}
		}
	}
}

// kubeadm itself takes the seed's CAs: `kubeadm init phase certs all`
// with them in place makes every other certificate from them (it would
// stop at an incomplete or foreign CA) and keeps them unchanged.
func TestKubeadmUsesSeedCAs(t *testing.T) {
	kubeadm := kubeadmBin(t)
	kc := kubeadmCases()["init-ha"]
	ns := nodeSeedOf(t, kc)
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	for _, f := range ns.Files {
		if rel, ok := strings.CutPrefix(f.Path, PKIDir+"/"); ok {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(pki, rel)), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(pki, rel), f.Content, os.FileMode(f.Permissions)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg := bytes.Replace(fileOf(ns, KubeadmConfig).Content, []byte("certificatesDir: "+PKIDir), []byte("certificatesDir: "+pki), 1)
	cfgPath := filepath.Join(dir, "kubeadm.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kubeadm, "init", "phase", "certs", "all", "--config", cfgPath).CombinedOutput()
	if err != nil {
		t.Fatalf("kubeadm init phase certs all: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	p := fixturePKI(t)
	for name, want := range map[string][]byte{"ca.crt": p.CA.CertPEM, "ca.key": p.CA.KeyPEM, "etcd/ca.key": p.EtcdCA.KeyPEM, "sa.pub": p.ServiceAccountPubPEM} {
		got, err := os.ReadFile(filepath.Join(pki, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("kubeadm changed or removed %s: %v", name, err)
		}
	}
	roots := func(pem []byte) *x509.CertPool { r := x509.NewCertPool(); r.AppendCertsFromPEM(pem); return r }
	for name, ca := range map[string][]byte{"apiserver.crt": p.CA.CertPEM, "apiserver-kubelet-client.crt": p.CA.CertPEM,
		"front-proxy-client.crt": p.FrontProxyCA.CertPEM, "etcd/server.crt": p.EtcdCA.CertPEM, "apiserver-etcd-client.crt": p.EtcdCA.CertPEM} {
		raw, err := os.ReadFile(filepath.Join(pki, name))
		if err != nil {
			t.Fatalf("kubeadm made no %s: %v", name, err)
		}
		cert, err := parseCert(raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s is not signed by the seed's CA: %v", name, err)
		}
		if name == "apiserver.crt" {
			if !slices.ContainsFunc(cert.IPAddresses, func(ip net.IP) bool { return ip.String() == "10.40.0.10" }) ||
				!slices.Contains(cert.DNSNames, "api.lab.example") || !slices.Contains(cert.DNSNames, "kubernetes") {
				t.Errorf("apiserver.crt SANs %v %v: want the VIP, the extra name and kubernetes", cert.IPAddresses, cert.DNSNames)
			}
		}
	}
}

// A node name of the full 63 characters still gets its kube-vip identity.
func TestNodeSeedLongHostname(t *testing.T) {
	kc := kubeadmCases()["join-control-plane"]
	kc.n.Hostname = strings.Repeat("c", 63)
	ns, err := Kubeadm{}.NodeSeed(kc.c, kc.n, Secrets{PKI: fixturePKI(t), Token: testToken}, netip.Addr{}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if f := fileOf(ns, KubeVIPKubeconfig); f == nil || !bytes.Contains(f.Content, []byte(KubeVIPUserPrefix+kc.n.Hostname)) {
		t.Error("no kube-vip credential for a 63-character node name")
	}
}
