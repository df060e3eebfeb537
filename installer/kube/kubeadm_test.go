package kube

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite golden files")

// fixturePKI is a fixed PKI (testdata/test-pki.json, test keys only) so
// that golden files holding the CA hash or the CAs stay stable.
func fixturePKI(t testing.TB) *PKI {
	t.Helper()
	p := fixture(t, "test-pki.json", func() (*PKI, error) { return NewPKI("lab", t0) })
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	return p
}

// fixture reads the JSON of testdata/NAME into a T, made with create and
// written there first under -update when the file is missing.
func fixture[T any](t testing.TB, name string, create func() (*T, error)) *T {
	t.Helper()
	path := filepath.Join("testdata", name)
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) && *update {
		v, err := create()
		if err != nil {
			t.Fatal(err)
		}
		if raw, err = json.MarshalIndent(v, "", "  "); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatalf("%v (run go test ./installer/kube -update to create it)", err)
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

const testToken = "abcdef.0123456789abcdef"

var (
	cp1 = netip.MustParseAddr("10.40.0.11")
	cp2 = netip.MustParseAddr("10.40.0.12")
	w1  = netip.MustParseAddr("10.40.0.21")
	g1  = netip.MustParseAddr("10.40.0.31")
)

func testCluster() ClusterSpec {
	return ClusterSpec{
		Name:                 "lab",
		Version:              "v1.35.4",
		ControlPlaneEndpoint: "10.40.0.10:6443",
		PodCIDR:              netip.MustParsePrefix("10.244.0.0/16"),
		ServiceCIDR:          netip.MustParsePrefix("10.96.0.0/12"),
		ExtraSANs:            []string{"api.lab.example", "10.40.0.10"},
		EtcdImageTag:         "3.6.6-0",
	}
}

type kubeadmCase struct {
	c       ClusterSpec
	n       NodeSpec
	firstCP netip.Addr
}

func kubeadmCases() map[string]kubeadmCase {
	single := testCluster()
	single.ControlPlaneEndpoint, single.ExtraSANs, single.EtcdImageTag = "", nil, ""
	single.ControlPlaneSchedulable = true
	single.CgroupDriver = "cgroupfs"
	single.IgnorePreflightErrors = []string{"NumCPU", "Mem"}
	return map[string]kubeadmCase{
		"init-single":        {c: single, n: NodeSpec{Hostname: "cp1", Address: cp1, Role: RoleControlPlane, Init: true}},
		"init-ha":            {c: testCluster(), n: NodeSpec{Hostname: "cp1", Address: cp1, Role: RoleControlPlane, Init: true, Interface: "eth0"}},
		"join-control-plane": {c: testCluster(), n: NodeSpec{Hostname: "cp2", Address: cp2, Role: RoleControlPlane}},
		"join-worker":        {c: single, n: NodeSpec{Hostname: "w1", Address: w1, Role: RoleWorker}, firstCP: cp1},
		"join-gpu-worker": {c: testCluster(), n: NodeSpec{Hostname: "gpu1", Address: g1, Role: RoleGPUWorker,
			Labels: map[string]string{"rack": "r2"},
			Taints: []corev1.Taint{{Key: "nvidia.com/gpu", Value: "present", Effect: corev1.TaintEffectNoSchedule}}}},
	}
}

func renderCase(t testing.TB, kc kubeadmCase) []byte {
	t.Helper()
	s := Secrets{PKI: fixturePKI(t), Token: testToken, TokenTTL: 2 * time.Hour}
	var out []byte
	var err error
	if kc.n.Init {
		out, err = InitConfig(kc.c, kc.n, s)
	} else {
		out, err = JoinConfig(kc.c, kc.n, s, kc.firstCP)
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./installer/kube -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\ngot:\n%s\nwant:\n%s", golden, got, want)
	}
}

func TestKubeadmGolden(t *testing.T) {
	for name, kc := range kubeadmCases() {
		t.Run(name, func(t *testing.T) {
			checkGolden(t, filepath.Join("testdata", "kubeadm", name+".yaml"), renderCase(t, kc))
		})
	}
}

// What the golden files must say, read back as data.
func TestKubeadmContent(t *testing.T) {
	docs := func(b []byte) []map[string]any {
		var out []map[string]any
		for _, d := range strings.Split(string(b), "\n---\n") {
			var m map[string]any
			if err := yaml.Unmarshal([]byte(d), &m); err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
		}
		return out
	}
	cases := kubeadmCases()
	ha := docs(renderCase(t, cases["init-ha"]))
	if len(ha) != 3 || ha[0]["kind"] != "InitConfiguration" || ha[1]["kind"] != "ClusterConfiguration" || ha[2]["kind"] != "KubeletConfiguration" {
		t.Fatalf("init documents: %v", ha)
	}
	cc := ha[1]
	if cc["controlPlaneEndpoint"] != "10.40.0.10:6443" || cc["imageRepository"] != "registry.k8s.io" || cc["kubernetesVersion"] != "v1.35.4" {
		t.Errorf("cluster configuration: %v", cc)
	}
	sans := cc["apiServer"].(map[string]any)["certSANs"].([]any)
	if !slices.Equal(sans, []any{"10.40.0.10", "api.lab.example"}) {
		t.Errorf("certSANs %v: want the VIP (once) and the extra name", sans)
	}
	if ha[2]["cgroupDriver"] != "systemd" {
		t.Errorf("cgroup driver %v", ha[2]["cgroupDriver"])
	}
	nr := ha[0]["nodeRegistration"].(map[string]any)
	if nr["name"] != "cp1" || len(nr["taints"].([]any)) != 1 {
		t.Errorf("init node registration: %v", nr)
	}
	single := docs(renderCase(t, cases["init-single"]))
	if single[1]["controlPlaneEndpoint"] != "10.40.0.11:6443" {
		t.Errorf("single control plane endpoint %v: want its own address", single[1]["controlPlaneEndpoint"])
	}
	if taints, ok := single[0]["nodeRegistration"].(map[string]any)["taints"].([]any); !ok || len(taints) != 0 {
		t.Errorf("schedulable control plane taints %v: want an empty list (a missing one means kubeadm's default taint)", taints)
	}
	hash, _ := fixturePKI(t).CAHash()
	gpu := docs(renderCase(t, cases["join-gpu-worker"]))[0]
	bt := gpu["discovery"].(map[string]any)["bootstrapToken"].(map[string]any)
	if bt["apiServerEndpoint"] != "10.40.0.10:6443" || bt["token"] != testToken || bt["caCertHashes"].([]any)[0] != hash {
		t.Errorf("worker discovery: %v", bt)
	}
	if gpu["controlPlane"] != nil {
		t.Error("a worker joins as control plane")
	}
	args := gpu["nodeRegistration"].(map[string]any)["kubeletExtraArgs"].([]any)
	want := []any{map[string]any{"name": "node-ip", "value": "10.40.0.31"},
		map[string]any{"name": "node-labels", "value": "airlock.dev/gpu=true,airlock.dev/role=gpu-worker,rack=r2"}}
	if !slices.EqualFunc(args, want, func(a, b any) bool { x, _ := json.Marshal(a); y, _ := json.Marshal(b); return bytes.Equal(x, y) }) {
		t.Errorf("gpu worker kubelet args %v", args)
	}
	cpj := docs(renderCase(t, cases["join-control-plane"]))[0]
	if ep := cpj["controlPlane"].(map[string]any)["localAPIEndpoint"].(map[string]any); ep["advertiseAddress"] != "10.40.0.12" {
		t.Errorf("control plane join endpoint %v", ep)
	}
	if _, ok := cpj["controlPlane"].(map[string]any)["certificateKey"]; ok {
		t.Error("control plane join carries a certificate key: the CAs come from the seed")
	}
}

func TestKubeadmRejects(t *testing.T) {
	p := fixturePKI(t)
	s := Secrets{PKI: p, Token: testToken}
	good := kubeadmCases()["init-ha"]
	for name, mut := range map[string]func(*ClusterSpec, *NodeSpec, *Secrets){
		"bad token":         func(c *ClusterSpec, n *NodeSpec, s *Secrets) { s.Token = "ABCDEF.0123456789abcdef" },
		"no PKI":            func(c *ClusterSpec, n *NodeSpec, s *Secrets) { s.PKI = nil },
		"bad version":       func(c *ClusterSpec, n *NodeSpec, s *Secrets) { c.Version = "1.34" },
		"bad endpoint":      func(c *ClusterSpec, n *NodeSpec, s *Secrets) { c.ControlPlaneEndpoint = "10.0.0.1" },
		"overlapping CIDRs": func(c *ClusterSpec, n *NodeSpec, s *Secrets) { c.ServiceCIDR = netip.MustParsePrefix("10.244.1.0/24") },
		"unmasked CIDR":     func(c *ClusterSpec, n *NodeSpec, s *Secrets) { c.PodCIDR = netip.MustParsePrefix("10.244.0.1/16") },
		"bad cgroup driver": func(c *ClusterSpec, n *NodeSpec, s *Secrets) { c.CgroupDriver = "none" },
		"bad node name":     func(c *ClusterSpec, n *NodeSpec, s *Secrets) { n.Hostname = "CP_1" },
		"no address":        func(c *ClusterSpec, n *NodeSpec, s *Secrets) { n.Address = netip.Addr{} },
		"address in pods":   func(c *ClusterSpec, n *NodeSpec, s *Secrets) { n.Address = netip.MustParseAddr("10.244.3.3") },
		"worker init":       func(c *ClusterSpec, n *NodeSpec, s *Secrets) { n.Role = RoleWorker },
		"unknown role":      func(c *ClusterSpec, n *NodeSpec, s *Secrets) { n.Role = "etcd" },
		"kubernetes.io label": func(c *ClusterSpec, n *NodeSpec, s *Secrets) {
			n.Labels = map[string]string{"node-role.kubernetes.io/worker": ""}
		},
		"label with comma": func(c *ClusterSpec, n *NodeSpec, s *Secrets) { n.Labels = map[string]string{"a": "b,c=d"} },
		"bad taint effect": func(c *ClusterSpec, n *NodeSpec, s *Secrets) {
			n.Taints = []corev1.Taint{{Key: "a", Effect: "Never"}}
		},
		"bad SAN":       func(c *ClusterSpec, n *NodeSpec, s *Secrets) { c.ExtraSANs = []string{"a b"} },
		"bad preflight": func(c *ClusterSpec, n *NodeSpec, s *Secrets) { c.IgnorePreflightErrors = []string{"x\ny"} },
	} {
		c, n, s := good.c, good.n, s
		mut(&c, &n, &s)
		if _, err := InitConfig(c, n, s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := InitConfig(good.c, good.n, s); err != nil {
		t.Fatalf("the good case itself fails: %v", err)
	}
	if _, err := JoinConfig(good.c, good.n, s, netip.Addr{}); err == nil {
		t.Error("join configuration for the init node accepted")
	}
	n := good.n
	n.Init = false
	c := good.c
	c.ControlPlaneEndpoint = ""
	if _, err := JoinConfig(c, n, s, cp1); err == nil {
		t.Error("a second control plane without a VIP accepted")
	}
	n.Role = RoleWorker
	if _, err := JoinConfig(c, n, s, netip.Addr{}); err == nil {
		t.Error("a join with no endpoint at all accepted")
	}
}

// kubeadmBin finds kubeadm v1.35.4 built from Go modules by `make
// k8s-bins` (e2e/k8s/build.sh): $AIRLOCK_K8S_BIN, else its cache.
func kubeadmBin(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("AIRLOCK_K8S_BIN"); dir != "" {
		p := filepath.Join(dir, "kubeadm")
		if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
			t.Fatalf("AIRLOCK_K8S_BIN=%s holds no kubeadm: run `make k8s-bins`, which builds it and prints the directory", dir)
		}
		return p
	}
	found, _ := filepath.Glob("/var/cache/airlock/k8s-v1.35.4*/kubeadm")
	for _, p := range found {
		if !strings.Contains(p, ".tmp.") {
			return p
		}
	}
	t.Fatal("kubeadm v1.35.4 not found (AIRLOCK_K8S_BIN unset, nothing in /var/cache/airlock/k8s-v1.35.4-*): run `make k8s-bins`, which builds it from Go modules")
	return ""
}

// Every golden kubeadm configuration passes the real kubeadm's strict
// validation.
func TestKubeadmValidatesGolden(t *testing.T) {
	kubeadm := kubeadmBin(t)
	files, err := filepath.Glob(filepath.Join("testdata", "kubeadm", "*.yaml"))
	if err != nil || len(files) < len(kubeadmCases()) {
		t.Fatalf("golden kubeadm files: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			out, err := exec.Command(kubeadm, "config", "validate", "--config", f).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "ok") {
				t.Errorf("kubeadm config validate %s: %v\n%s", f, err, out)
			}
			t.Logf("%s", out)
		})
	}
	// It is not a rubber stamp: an unknown field is refused.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	raw, _ := os.ReadFile(files[0])
	if err := os.WriteFile(bad, bytes.Replace(raw, []byte("nodeRegistration:"), []byte("nodeRegistraton:"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(kubeadm, "config", "validate", "--config", bad).CombinedOutput(); err == nil {
		t.Errorf("kubeadm accepted a misspelt field:\n%s", out)
	}
}
