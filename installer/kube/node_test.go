package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"airlock.dev/airlock/installer/state"
)

const testReportToken = "rEpOrT-tOkEn_0123456789"

// testBoot is the NodeBoot of the golden seeds.
func testBoot(t testing.TB, subnet string) NodeBoot {
	t.Helper()
	var bins []Binary
	for i, name := range Binaries {
		bins = append(bins, Binary{Name: name, URL: "http://10.40.0.1:8080/bundle/files/kubernetes/v1.35.4/linux-amd64/" + name,
			SHA256: strings.Repeat(string(rune('a'+i)), 64)})
	}
	return NodeBoot{Binaries: bins, ReportURL: "https://10.40.0.1:8443/api/v1/kube-report/m-0123456789",
		ReportToken: testReportToken, CAPEM: fixturePKI(t).CA.CertPEM, PodSubnet: netip.MustParsePrefix(subnet)}
}

func TestNodeGolden(t *testing.T) {
	i := 0
	cases := kubeadmCases()
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range cases {
			if !yield(k) {
				return
			}
		}
	}) {
		kc := cases[name]
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24).String()
		i++
		t.Run(name, func(t *testing.T) {
			ns, err := WithNode(nodeSeedOf(t, kc), testBoot(t, subnet))
			if err != nil {
				t.Fatal(err)
			}
			f := fullSeed(t, kc, ns)
			checkGolden(t, filepath.Join("testdata", "node", name, "user-data"), f.UserData)
			// The kubeadm command is a named step, and the report ends it all.
			want := []string{"/bin/sh", NodeScriptFile, "step", "kubeadm-join"}
			if kc.n.Init {
				want[3] = "kubeadm-init"
			}
			if !slices.ContainsFunc(ns.RunCmd, func(c []string) bool { return slices.Equal(c[:4], want) }) {
				t.Errorf("no %q step in %q", want, ns.RunCmd)
			}
			if last := ns.RunCmd[len(ns.RunCmd)-1]; !slices.Equal(last, []string{"/bin/sh", NodeScriptFile, "report"}) {
				t.Errorf("last command %q", last)
			}
			if first := ns.RunCmd[0]; !slices.Equal(first, []string{"/bin/sh", NodeScriptFile, "fetch"}) {
				t.Errorf("first command %q", first)
			}
			if f := fileOf(ns, ReportHeaderFile); f == nil || f.Permissions != 0o600 || !strings.Contains(string(f.Content), testReportToken) {
				t.Errorf("report header %+v", f)
			}
		})
	}
}

// The node seeds pass Debian's `cloud-init schema`.
func TestNodeCloudInitSchema(t *testing.T) {
	if _, err := exec.LookPath("cloud-init"); err != nil {
		t.Fatal("cloud-init is not installed: apt-get install cloud-init (run .ci/deps)")
	}
	files, err := filepath.Glob(filepath.Join("testdata", "node", "*", "user-data"))
	if err != nil || len(files) < len(kubeadmCases()) {
		t.Fatalf("golden node seeds: %v %v (run go test ./installer/kube -run TestNodeGolden -update)", files, err)
	}
	for _, f := range files {
		out, err := exec.Command("cloud-init", "schema", "--config-file", f).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
			t.Errorf("cloud-init schema %s: %v\n%s", f, err, out)
		}
	}
}

// Nothing that could act in a shell reaches the files the script reads.
func TestNodeBootRejects(t *testing.T) {
	for name, change := range map[string]func(*NodeBoot){
		"command in URL":     func(b *NodeBoot) { b.Binaries[0].URL = "http://10.0.0.1/$(reboot)" },
		"space in URL":       func(b *NodeBoot) { b.Binaries[0].URL = "http://10.0.0.1/a b" },
		"quote in URL":       func(b *NodeBoot) { b.Binaries[1].URL = "http://10.0.0.1/a'b" },
		"newline in URL":     func(b *NodeBoot) { b.Binaries[1].URL = "http://10.0.0.1/a\nkubelet x http://evil" },
		"query in URL":       func(b *NodeBoot) { b.ReportURL += "?x=1" },
		"plain report URL":   func(b *NodeBoot) { b.ReportURL = "http://10.40.0.1:8443/api" },
		"bad digest":         func(b *NodeBoot) { b.Binaries[2].SHA256 = "abc" },
		"unknown binary":     func(b *NodeBoot) { b.Binaries[2].Name = "../../bin/sh" },
		"missing binary":     func(b *NodeBoot) { b.Binaries = b.Binaries[:2] },
		"twice":              func(b *NodeBoot) { b.Binaries[2] = b.Binaries[1] },
		"token with newline": func(b *NodeBoot) { b.ReportToken = "abcdefghijklmnop\nX-Evil: 1" },
		"no CA":              func(b *NodeBoot) { b.CAPEM = nil },
		"no subnet":          func(b *NodeBoot) { b.PodSubnet = netip.Prefix{} },
		"unmasked subnet":    func(b *NodeBoot) { b.PodSubnet = netip.MustParsePrefix("10.244.1.7/24") },
	} {
		b := testBoot(t, "10.244.1.0/24")
		change(&b)
		if _, err := WithNode(NodeSeed{}, b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCNIConfig(t *testing.T) {
	for subnet, dst := range map[string]string{"10.244.3.0/24": "0.0.0.0/0", "fd00:244:0:3::/64": "::/0"} {
		b, err := CNIConfig(netip.MustParsePrefix(subnet))
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			CNIVersion string `json:"cniVersion"`
			Plugins    []struct {
				Type string `json:"type"`
				IPAM struct {
					Type   string                `json:"type"`
					Ranges [][]map[string]string `json:"ranges"`
					Routes []map[string]string   `json:"routes"`
				} `json:"ipam"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		p := c.Plugins[0]
		if c.CNIVersion != "1.0.0" || p.Type != "bridge" || p.IPAM.Type != "host-local" ||
			p.IPAM.Ranges[0][0]["subnet"] != subnet || p.IPAM.Routes[0]["dst"] != dst {
			t.Errorf("%s: %s", subnet, b)
		}
	}
}

// Subnets are carved once per machine, lowest free first, and never shift.
func TestAllocatePodSubnets(t *testing.T) {
	st := state.NewMem()
	pod := netip.MustParsePrefix("10.244.0.0/22")
	m, err := AllocatePodSubnets(st, pod, []string{"m-b", "m-a"})
	if err != nil {
		t.Fatal(err)
	}
	if m["m-b"].String() != "10.244.0.0/24" || m["m-a"].String() != "10.244.1.0/24" {
		t.Errorf("first allocation %v", m)
	}
	m, err = AllocatePodSubnets(st, pod, []string{"m-a", "m-c", "m-d", "m-b"})
	if err != nil {
		t.Fatal(err)
	}
	if m["m-a"].String() != "10.244.1.0/24" || m["m-b"].String() != "10.244.0.0/24" || m["m-c"].String() != "10.244.2.0/24" || m["m-d"].String() != "10.244.3.0/24" {
		t.Errorf("second allocation %v", m)
	}
	if _, err := AllocatePodSubnets(st, pod, []string{"m-e"}); err == nil || !strings.Contains(err.Error(), "no node pod subnet left") {
		t.Errorf("a fifth /24 of a /22: %v", err)
	}
	if _, err := AllocatePodSubnets(state.NewMem(), netip.MustParsePrefix("10.244.0.0/25"), []string{"m-a"}); err == nil {
		t.Error("a /25 pod CIDR accepted")
	}
	v6, err := AllocatePodSubnets(state.NewMem(), netip.MustParsePrefix("fd00:244::/56"), []string{"m-a", "m-b"})
	if err != nil || v6["m-b"].String() != "fd00:244:0:1::/64" {
		t.Errorf("IPv6: %v %v", v6, err)
	}
	got, err := PodSubnets(st)
	if err != nil || len(got) != 4 {
		t.Errorf("recorded %v %v", got, err)
	}
}

func TestBootstrapTokenAndFirstCPKept(t *testing.T) {
	st := state.NewMem()
	t1, ttl, err := LoadOrCreateBootstrapToken(st, 24*time.Hour, t0)
	if err != nil || ttl != 24*time.Hour || !t1.Expires.Equal(t0.Add(24*time.Hour)) {
		t.Fatalf("%v %v %v", t1, ttl, err)
	}
	t2, _, err := LoadOrCreateBootstrapToken(st, time.Hour, t0.Add(time.Hour))
	if err != nil || t2.Value() != t1.Value() || !t2.Expires.Equal(t1.Expires) {
		t.Errorf("token not kept: %v %v", t2, err)
	}
	a, err := ChooseFirstControlPlane(st, "m-1")
	if err != nil || a != "m-1" {
		t.Fatal(a, err)
	}
	if b, err := ChooseFirstControlPlane(st, "m-2"); err != nil || b != "m-1" {
		t.Errorf("first control plane shifted to %q (%v)", b, err)
	}
}

// Error output of kubeadm v1.34 and v1.35 (cmd/kubeadm/app/cmd/phases/workflow).
func TestKubeadmPhase(t *testing.T) {
	for out, want := range map[string]string{
		"[preflight] Running pre-flight checks\nerror execution phase preflight: [preflight] Some fatal errors occurred:\n\t[ERROR NumCPU]: the number of available CPUs 1 is less than the required 2\n[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`\nTo see the stack trace of this error execute with --v=5 or higher\n": "preflight",
		"error: error execution phase wait-control-plane: could not initialize a Kubernetes cluster\n":                                            "wait-control-plane",
		"error execution phase kubelet-start: error uploading crisocket: timed out waiting for the condition\n":                                   "kubelet-start",
		"error execution phase control-plane-prepare/download-certs: error downloading certs\n":                                                   "control-plane-prepare/download-certs",
		"couldn't validate the identity of the API Server: Get \"https://10.40.0.10:6443/api/v1/namespaces/kube-public/configmaps/cluster-info\"": "",
	} {
		if got := KubeadmPhase(out); got != want {
			t.Errorf("KubeadmPhase(%q) = %q, want %q", out, got, want)
		}
	}
}

func TestNodeScriptSyntax(t *testing.T) {
	if out, err := exec.Command("sh", "-n", "node.sh").CombinedOutput(); err != nil {
		t.Fatalf("sh -n node.sh: %v\n%s", err, out)
	}
}

// The node script for real (dash, curl, sha256sum) under a root of its
// own: it downloads each binary from an HTTP server, checks its sha256 and
// moves it into place; a step that fails is reported over TLS checked
// against the CA file alone, with its name and output, and every later
// step is skipped; a binary whose digest differs is never moved into
// place and the download is reported failed.
func TestNodeScriptRuns(t *testing.T) {
	for _, tool := range []string{"curl", "sha256sum", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: apt-get install curl coreutils dash", tool)
		}
	}
	blobs := map[string][]byte{}
	for _, name := range Binaries {
		blobs[name] = []byte("#!/bin/sh\necho I am " + name + "\n")
	}
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := blobs[filepath.Base(r.URL.Path)]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	defer files.Close()
	type report struct{ query, auth, body string }
	var mu sync.Mutex
	var reports []report
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		mu.Lock()
		reports = append(reports, report{r.URL.RawQuery, r.Header.Get("Authorization"), string(body)})
		mu.Unlock()
	}))
	defer api.Close()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})

	setup := func(t *testing.T, wrong string) (string, NodeSeed) {
		root := t.TempDir()
		var bins []Binary
		for _, name := range Binaries {
			sum := sha256.Sum256(blobs[name])
			if name == wrong {
				sum[0] ^= 1
			}
			bins = append(bins, Binary{Name: name, URL: files.URL + "/bundle/files/k8s/" + name, SHA256: hex.EncodeToString(sum[:])})
		}
		ns, err := WithNode(NodeSeed{RunCmd: [][]string{
			{"kubeadm", "init", "--config", KubeadmConfig},
			{"sh", "-c", "echo error execution phase preflight: the number of CPUs is 1; exit 1"},
			{"touch", filepath.Join(root, "not-reached")},
		}}, NodeBoot{Binaries: bins, ReportURL: api.URL + "/api/v1/kube-report/m-1", ReportToken: testReportToken, CAPEM: caPEM,
			PodSubnet: netip.MustParsePrefix("10.244.0.0/24")})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range ns.Files {
			p := filepath.Join(root, f.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, f.Content, os.FileMode(f.Permissions)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Join(root, "var/log"), 0o755); err != nil {
			t.Fatal(err)
		}
		return root, ns
	}
	run := func(t *testing.T, root string, argv []string) error {
		argv = slices.Clone(argv)
		argv[1] = filepath.Join(root, argv[1])
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = []string{"AIRLOCK_NODE_ROOT=" + root, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		return cmd.Run()
	}
	logOf := func(root string) string {
		b, _ := os.ReadFile(filepath.Join(root, "var/log/airlock-kubernetes.log"))
		return string(b)
	}

	t.Run("a step fails", func(t *testing.T) {
		mu.Lock()
		reports = nil
		mu.Unlock()
		root, ns := setup(t, "")
		var errs []error
		for _, argv := range ns.RunCmd {
			if argv[2] == "step" && argv[3] == "kubelet-unit" || argv[2] == "step" && argv[3] == "kubelet-enable" {
				continue // no systemd for a test root
			}
			errs = append(errs, run(t, root, argv))
		}
		for _, name := range Binaries {
			got, err := os.ReadFile(filepath.Join(root, "usr/local/bin", name))
			if err != nil || string(got) != string(blobs[name]) {
				t.Errorf("%s not in place: %v", name, err)
			}
		}
		// kubeadm (the downloaded one, found on the script's PATH) ran.
		if !strings.Contains(logOf(root), "I am kubeadm") {
			t.Errorf("the downloaded kubeadm did not run; log:\n%s", logOf(root))
		}
		if _, err := os.Stat(filepath.Join(root, "not-reached")); err == nil {
			t.Error("a step after the failed one ran")
		}
		if errs[len(errs)-1] == nil || errs[len(errs)-2] == nil || errs[len(errs)-3] == nil || errs[1] != nil {
			t.Errorf("exit statuses %v", errs)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(reports) != 1 {
			t.Fatalf("%d reports, want 1: %+v; log:\n%s", len(reports), reports, logOf(root))
		}
		r := reports[0]
		if r.query != "result=failed&step=sh" || r.auth != "Bearer "+testReportToken || KubeadmPhase(r.body) != "preflight" {
			t.Errorf("report %+v", r)
		}
	})

	t.Run("a wrong digest", func(t *testing.T) {
		mu.Lock()
		reports = nil
		mu.Unlock()
		root, ns := setup(t, "kubelet")
		if err := run(t, root, ns.RunCmd[0]); err == nil {
			t.Error("fetch with a wrong digest succeeded")
		}
		if _, err := os.Stat(filepath.Join(root, "usr/local/bin/kubelet")); err == nil {
			t.Error("a kubelet with the wrong digest was moved into place")
		}
		if err := run(t, root, ns.RunCmd[len(ns.RunCmd)-1]); err == nil {
			t.Error("report after a failed download succeeded")
		}
		mu.Lock()
		defer mu.Unlock()
		if len(reports) != 1 || reports[0].query != "result=failed&step=download" || !strings.Contains(reports[0].body, "FAILED") {
			t.Errorf("reports %+v; log:\n%s", reports, logOf(root))
		}
	})

	t.Run("all goes well", func(t *testing.T) {
		mu.Lock()
		reports = nil
		mu.Unlock()
		root, ns := setup(t, "")
		if err := run(t, root, ns.RunCmd[0]); err != nil {
			t.Fatalf("fetch: %v; log:\n%s", err, logOf(root))
		}
		if err := run(t, root, ns.RunCmd[3]); err != nil {
			t.Fatalf("kubeadm step: %v; log:\n%s", err, logOf(root))
		}
		if err := run(t, root, ns.RunCmd[len(ns.RunCmd)-1]); err != nil {
			t.Fatalf("report: %v; log:\n%s", err, logOf(root))
		}
		mu.Lock()
		defer mu.Unlock()
		if len(reports) != 1 || reports[0].query != "result=ok&step=done" {
			t.Errorf("reports %+v", reports)
		}
	})
}
