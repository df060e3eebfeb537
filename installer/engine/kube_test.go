package engine

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/kube"
	"airlock.dev/airlock/installer/lab/kubetest"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/manifests"
)

// kubeBundle writes a real signed bundle that carries Kubernetes: its
// binaries are the given programs, under the names the bundle builder
// gives them, and opens it with its key.
func kubeBundle(t *testing.T, bins map[string][]byte) *bundle.Bundle {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "site.bundle")
	w, err := bundle.Create(path, bundle.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), "")
	meta := bundle.Metadata{Kubernetes: &bundle.Kubernetes{Version: "v1.35.4", Arch: "amd64", Binaries: map[string]string{}}}
	for _, name := range kube.Binaries {
		fname := "kubernetes/v1.35.4/linux-amd64/" + name
		d, err := w.AddBytes("files/"+fname, bins[name], "")
		if err != nil {
			t.Fatal(err)
		}
		meta.Files = append(meta.Files, bundle.File{Name: fname, Path: "files/" + fname, Size: int64(len(bins[name])), Digest: d})
		meta.Kubernetes.Binaries[name] = fname
	}
	// The images kubeadm of the version pulls, as the signed metadata
	// lists them (their blobs are not needed here: nothing pulls them).
	refs, err := manifests.KubernetesImages("v1.35.4")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		i := strings.LastIndexByte(ref, ':')
		meta.Images = append(meta.Images, bundle.Image{Repository: ref[:i], Tag: ref[i+1:], Digest: "sha256:" + strings.Repeat("0", 64),
			MediaType: "application/vnd.oci.image.index.v1+json"})
	}
	meta.Kubernetes.Images = refs
	if _, err := w.Finish(meta, priv); err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Open(path, bundle.Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// seedDoc reads back one document of machine id's seed image (with mtools,
// from the FAT filesystem the agent writes to the disk).
func seedDoc(t *testing.T, e *Engine, id, name string) []byte {
	t.Helper()
	if _, err := exec.LookPath("mtype"); err != nil {
		t.Fatal("mtools is not installed: apt-get install mtools")
	}
	raw, err := exec.Command("mtype", "-i", e.seedFile(id), "::"+name).Output()
	if err != nil {
		t.Fatalf("mtype %s of %s: %v", name, id, err)
	}
	return raw
}

// userData reads back the user-data of machine id's seed image (with
// mtools, from the FAT filesystem the agent writes to the disk).
func userData(t *testing.T, e *Engine, id string) (raw []byte, files map[string][]byte, runcmd [][]string) {
	t.Helper()
	raw = seedDoc(t, e, id, "user-data")
	var ud struct {
		WriteFiles []struct {
			Path     string `yaml:"path"`
			Content  string `yaml:"content"`
			Encoding string `yaml:"encoding"`
		} `yaml:"write_files"`
		RunCmd [][]string `yaml:"runcmd"`
	}
	if err := yaml.Unmarshal(raw, &ud); err != nil {
		t.Fatal(err)
	}
	files = map[string][]byte{}
	for _, f := range ud.WriteFiles {
		b := []byte(f.Content)
		if f.Encoding == "b64" {
			var err error
			if b, err = base64.StdEncoding.DecodeString(f.Content); err != nil {
				t.Fatal(err)
			}
		}
		files[f.Path] = b
	}
	return raw, files, ud.RunCmd
}

// The cluster's part of an install with the real engine, a real signed
// bundle carrying Kubernetes and the real node script:
//   - each machine's seed (read back from its FAT image) runs kubeadm
//     init on the control plane, join on the worker (through the first
//     control plane's address), carries the cluster's CAs to the control
//     plane only, its own pod subnet, and passes `cloud-init schema`;
//   - the worker's script, run inside the machines' namespace, downloads
//     the binaries from airlock's /bundle/files/ and checks them; the
//     bundle's kubeadm there fails as kubeadm does (preflight), and its
//     report reaches the agent API over TLS (airlock's CA only): the
//     worker's join step fails naming the machine, the kubeadm phase and
//     its error, escaped; the token does not work twice;
//   - the control plane's bootstrap step watches a real kube-apiserver
//     serving airlock's CA (the address of the first control plane, in
//     the machines' namespace) with airlock's minted credentials: the
//     machine is joined once its Node registers, ready once it is Ready.
func TestKubernetesSeedsReportsAndNodes(t *testing.T) {
	for _, tool := range []string{"curl", "sha256sum", "nsenter", "cloud-init"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: apt-get install curl coreutils util-linux cloud-init", tool)
		}
	}
	bin := kubetest.BinDir(t, "etcd", "kube-apiserver")
	dir := t.TempDir()
	img := []byte("not booted in this test")
	ob, _ := osImageBundle(t, map[string][3]any{"node": {img, int64(len(img)), hexSum(img)}})
	defer ob.Close()
	// The bundle's kubeadm fails its preflight as kubeadm v1.35 does, with
	// a terminal escape in its output (a node's output is untrusted).
	kubeadm := []byte("#!/bin/sh\necho '[preflight] Running pre-flight checks'\n" +
		"printf 'error execution phase preflight: [preflight] Some fatal errors occurred:\\n\\t[ERROR Mem]: the system RAM (512 MB) is less than the minimum 1700 MB \\033[31mred\\n'\nexit 1\n")
	b := kubeBundle(t, map[string][]byte{"kubeadm": kubeadm, "kubectl": []byte("#!/bin/sh\necho kubectl\n"), "kubelet": []byte("#!/bin/sh\necho kubelet\n")})
	stateDir := t.TempDir()
	e, peer := testEngineWith(t, stateDir, `machines:
  - {name: cp, match: {serials: [SN-1]}, role: control-plane, hostname: cp-1, address: 10.78.0.10/24}
  - {name: workers, match: {serials: [SN-2]}, role: worker, hostname: "w-{index}", address: 10.78.0.11/24}
  - {name: late, match: {serials: [SN-3]}, role: worker, hostname: late-1, address: 10.78.0.12/24}
admission: {policy: allowlist}
`, func(o *Options) {
		o.OSImages = ob
		o.BundleFiles = b
	})
	if e.Target() != inventory.StateReady {
		t.Fatalf("target %s with Kubernetes in the bundle", e.Target())
	}
	e.kubeDial, e.kubeTimeout, e.kubePoll = kubetest.Dialer(peer), 2*time.Minute, 200*time.Millisecond
	var evMu sync.Mutex
	var notices []string
	e.Events().Add(events.SinkFunc(func(ev events.Event) {
		if ev.Kind == events.Notice {
			evMu.Lock()
			notices = append(notices, ev.Machine+": "+ev.Message)
			evMu.Unlock()
		}
	}))
	peer.MustAddr(t, "eth0", "10.78.0.10/24")
	peer.MustAddr(t, "eth0", "10.78.0.11/24")
	inv := e.Inventory()
	cp := report(t, inv, "SN-1", "52:54:00:00:00:01", testDisks...)
	w := report(t, inv, "SN-2", "52:54:00:00:00:02", testDisks...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for _, id := range []string{cp, w} {
		if _, err := inv.Transition(id, inventory.StateAdmitted, "test"); err != nil {
			t.Fatal(err)
		}
		if err := e.assign(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
	}
	if first, err := e.firstControlPlane(); err != nil || first != cp {
		t.Fatalf("first control plane %q (%v), want %s", first, err, cp)
	}
	// The seeds, as provision renders them, and their records.
	seeds := map[string]map[string][]byte{}
	cmds := map[string][][]string{}
	for _, id := range []string{cp, w} {
		m, err := inv.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := e.newSeed(m)
		if err != nil {
			t.Fatal(err)
		}
		if rec.ReportHash == "" {
			t.Fatal("no report token in the record")
		}
		if err := e.store.Update(func(tx state.Tx) error { return putProvisionTx(tx, id, rec) }); err != nil {
			t.Fatal(err)
		}
		raw, files, runcmd := userData(t, e, id)
		seeds[id], cmds[id] = files, runcmd
		path := filepath.Join(dir, id+"-user-data")
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cloud-init", "schema", "--config-file", path).CombinedOutput(); err != nil || !strings.Contains(string(out), "Valid cloud-config") {
			t.Errorf("cloud-init schema of %s's seed: %v\n%s", id, err, out)
		}
		for _, s := range []inventory.Transition{{To: inventory.StateInstalling}, {To: inventory.StateInstalled}, {To: inventory.StateBooted}} {
			if _, err := inv.Transition(id, s.To, "test"); err != nil {
				t.Fatal(err)
			}
		}
	}
	hasStep := func(id, step string) bool {
		return slices.ContainsFunc(cmds[id], func(c []string) bool { return len(c) > 3 && c[3] == step })
	}
	if !hasStep(cp, "kubeadm-init") || hasStep(cp, "kubeadm-join") || !hasStep(w, "kubeadm-join") || hasStep(w, "kubeadm-init") {
		t.Errorf("commands: cp %q, worker %q", cmds[cp], cmds[w])
	}
	if _, ok := seeds[cp][kube.PKIDir+"/ca.key"]; !ok {
		t.Error("the control plane's seed has no cluster CA key")
	}
	if _, ok := seeds[w][kube.PKIDir+"/ca.key"]; ok {
		t.Error("the worker's seed has the cluster CA key")
	}
	if !strings.Contains(string(seeds[w][kube.KubeadmConfig]), "apiServerEndpoint: 10.78.0.10:6443") {
		t.Errorf("worker's join configuration:\n%s", seeds[w][kube.KubeadmConfig])
	}
	// Each node routes the other's pod subnet to it (one link).
	if nc := string(seedDoc(t, e, w, "network-config")); !regexp.MustCompile(`to: 10\.244\.0\.0/24\s+via: 10\.78\.0\.10`).MatchString(nc) {
		t.Errorf("worker's network-config has no route to the control plane's pods:\n%s", nc)
	}
	if nc := string(seedDoc(t, e, cp, "network-config")); !regexp.MustCompile(`to: 10\.244\.1\.0/24\s+via: 10\.78\.0\.11`).MatchString(nc) {
		t.Errorf("control plane's network-config has no route to the worker's pods:\n%s", nc)
	}
	cniCP, cniW := string(seeds[cp][kube.CNIConfFile]), string(seeds[w][kube.CNIConfFile])
	if !strings.Contains(cniCP, `"subnet": "10.244.0.0/24"`) || !strings.Contains(cniW, `"subnet": "10.244.1.0/24"`) {
		t.Errorf("pod subnets: cp %s worker %s", cniCP, cniW)
	}

	// /bundle/files/ serves only the bundle's files, and only to GET.
	hc, base, _, _ := machineClients(t, peer, stateDir)
	for path, want := range map[string]int{
		"kubernetes/v1.35.4/linux-amd64/kubeadm": http.StatusOK,
		"kubernetes/v1.35.4/linux-amd64/nope":    http.StatusNotFound,
		"../ca.pem":                              http.StatusNotFound,
		strings.Repeat("a/", 400):                http.StatusNotFound,
	} {
		resp, err := hc.Get(base.String() + bundleFilesPrefix + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || want == http.StatusOK && string(body) != string(kubeadm) {
			t.Errorf("GET %s: %s, want %d", path, resp.Status, want)
		}
	}
	if resp, err := hc.Post(base.String()+bundleFilesPrefix+"kubernetes/v1.35.4/linux-amd64/kubeadm", "text/plain", nil); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST to a bundle file: %v %v", resp, err)
	}

	// The worker's first boot, for real: its files under a root of their
	// own, its script run in the machines' namespace (the commands that
	// would change this host are left out).
	root := t.TempDir()
	for p, content := range seeds[w] {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "var/log"), 0o755); err != nil {
		t.Fatal(err)
	}
	runNode := func(argv []string) error {
		args := append([]string{"--net=" + filepath.Join(netns.RunDir, peer.Name), "--", argv[0], filepath.Join(root, argv[1])}, argv[2:]...)
		cmd := exec.Command("nsenter", args...)
		cmd.Env = []string{"AIRLOCK_NODE_ROOT=" + root, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		out, err := cmd.CombinedOutput()
		if len(out) > 0 {
			t.Logf("%q: %s", argv[2:], out)
		}
		return err
	}
	logOf := func() string {
		b, _ := os.ReadFile(filepath.Join(root, "var/log/airlock-kubernetes.log"))
		return string(b)
	}
	for _, argv := range cmds[w] {
		if len(argv) < 3 || argv[1] != kube.NodeScriptFile {
			continue // the lab's console check
		}
		if argv[2] == "step" && !strings.HasPrefix(argv[3], "kubeadm") {
			continue // systemctl, modprobe, sysctl: not on this host
		}
		err := runNode(argv)
		if argv[2] == "fetch" && err != nil {
			t.Fatalf("fetch: %v; log:\n%s", err, logOf())
		}
	}
	for _, name := range kube.Binaries {
		if _, err := os.Stat(filepath.Join(root, kube.BinDir, name)); err != nil {
			t.Errorf("%s not downloaded: %v; log:\n%s", name, err, logOf())
		}
	}
	// The join step fails at once with the node's report.
	start := time.Now()
	err := e.waitNode(ctx, w, nil)
	if err == nil {
		t.Fatal("the worker's join succeeded after kubeadm failed")
	}
	msg := err.Error()
	t.Logf("the join step failed: %s", msg)
	for _, want := range []string{w, "w-1", "kubeadm phase preflight", "kubeadm-join", "[ERROR Mem]: the system RAM"} {
		if !strings.Contains(msg, want) {
			t.Errorf("join failure %q does not name %q", msg, want)
		}
	}
	if strings.ContainsRune(msg, 0x1b) {
		t.Errorf("join failure carries a raw terminal escape: %q", msg)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the reported failure took %v to end the step", d)
	}
	evMu.Lock()
	if !slices.ContainsFunc(notices, func(n string) bool { return strings.HasPrefix(n, w+": the node reports: kubeadm phase preflight") }) {
		t.Errorf("no notice of the node's report among %q", notices)
	}
	evMu.Unlock()
	// The report's token works once.
	if err := runNode([]string{"/bin/sh", kube.NodeScriptFile, "report"}); err == nil {
		t.Error("a report after a failed step was sent")
	}
	if err := os.Remove(filepath.Join(root, kube.AirlockDir, "failed")); err != nil {
		t.Fatal(err)
	}
	if err := runNode([]string{"/bin/sh", kube.NodeScriptFile, "report"}); err == nil {
		t.Error("the report token worked twice")
	}
	if reps, err := kube.NodeReports(e.store); err != nil || reps[w].Result != kube.ReportFailed || reps[w].Phase != "preflight" {
		t.Errorf("stored report %+v %v", reps[w], err)
	}

	// The report endpoint, over TLS with the control plane's own token:
	// bounded, validated, single-use.
	_, _, apiHC, apiURL := machineClients(t, peer, stateDir)
	cpToken := strings.TrimSpace(strings.TrimPrefix(string(seeds[cp][kube.ReportHeaderFile]), "Authorization: Bearer "))
	post := func(method, query, token string, body []byte) int {
		t.Helper()
		req, err := http.NewRequest(method, apiURL.String()+kubeReportPath+cp+query, strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := apiHC.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		method, query, token string
		body                 []byte
		want                 int
	}{
		{http.MethodGet, "?result=ok&step=done", cpToken, nil, http.StatusMethodNotAllowed},
		{http.MethodPost, "?result=maybe&step=done", cpToken, nil, http.StatusBadRequest},
		{http.MethodPost, "?result=ok&step=$(reboot)", cpToken, nil, http.StatusBadRequest},
		{http.MethodPost, "?result=ok&step=done", cpToken, make([]byte, maxReportBody+1), http.StatusRequestEntityTooLarge},
		{http.MethodPost, "?result=ok&step=done", "not-" + cpToken, nil, http.StatusForbidden},
		{http.MethodPost, "?result=ok&step=done", cpToken, nil, http.StatusNoContent},
		{http.MethodPost, "?result=failed&step=kubeadm-init", cpToken, nil, http.StatusForbidden}, // spent
	} {
		if got := post(c.method, c.query, c.token, c.body); got != c.want {
			t.Errorf("%s %s (%d bytes): %d, want %d", c.method, c.query, len(c.body), got, c.want)
		}
	}
	if reps, err := kube.NodeReports(e.store); err != nil || reps[cp].Result != kube.ReportOK || reps[cp].Step != "done" {
		t.Errorf("control plane's report %+v %v", reps[cp], err)
	}

	// The control plane: a real kube-apiserver with airlock's CA at the
	// first control plane's address; airlock watches it with its own
	// credentials.
	pki, _, err := kube.LoadPKI(e.store)
	if err != nil || pki == nil {
		t.Fatalf("airlock's cluster PKI: %v", err)
	}
	if server, err := kube.LoadAPIServer(e.store); err != nil || server != "https://10.78.0.10:6443" {
		t.Fatalf("recorded API server %q %v", server, err)
	}
	api := kubetest.StartAPIServer(t, peer, bin, t.TempDir(), "10.78.0.10", kubetest.PKI{CACert: pki.CA.CertPEM, CAKey: pki.CA.KeyPEM,
		SAKey: pki.ServiceAccountKeyPEM, SAPub: pki.ServiceAccountPubPEM}, kube.AdminGroup, time.Now())
	done := make(chan error, 1)
	go func() { done <- e.waitNode(ctx, cp, nil) }()
	waitState := func(want string) {
		t.Helper()
		for {
			changed := inv.Changed()
			m, err := inv.Get(cp)
			if err != nil {
				t.Fatal(err)
			}
			if m.State == want {
				return
			}
			select {
			case <-changed:
			case err := <-done:
				t.Fatalf("bootstrap ended with the machine %s, before %s: %v", m.State, want, err)
			case <-ctx.Done():
				t.Fatalf("machine %s, never %s", m.State, want)
			}
		}
	}
	if _, err := api.Super.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cp-1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitState(inventory.StateJoined)
	select {
	case err := <-done:
		t.Fatalf("bootstrap ended before the Node was Ready: %v", err)
	default:
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := api.Super.CoreV1().Nodes().Get(ctx, "cp-1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		_, err = api.Super.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	m, err := inv.Get(cp)
	if err != nil || m.State != inventory.StateReady {
		t.Fatalf("control plane %s (%v)", m.State, err)
	}
	var path []string
	for _, h := range m.History {
		path = append(path, h.To)
	}
	if got := strings.Join(path[len(path)-3:], " "); got != "booted joined ready" {
		t.Errorf("history ends %q", got)
	}
	if err := e.waitNode(ctx, cp, nil); err != nil {
		t.Errorf("a second bootstrap of a ready machine: %v", err)
	}

	// A machine that comes once the cluster exists joins with a fresh
	// token, created through the API (its bootstrap-token-ID Secret), not
	// the first install's.
	late := report(t, inv, "SN-3", "52:54:00:00:00:03", testDisks...)
	if _, err := inv.Transition(late, inventory.StateAdmitted, "test"); err != nil {
		t.Fatal(err)
	}
	if err := e.assign(ctx, late, nil); err != nil {
		t.Fatal(err)
	}
	lm, err := inv.Get(late)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.newSeed(lm); err != nil {
		t.Fatal(err)
	}
	_, lateFiles, _ := userData(t, e, late)
	tm := regexp.MustCompile(`token: ([a-z0-9]{6})\.([a-z0-9]{16})`).FindStringSubmatch(string(lateFiles[kube.KubeadmConfig]))
	first, _, err := kube.LoadOrCreateBootstrapToken(e.store, time.Hour, time.Now())
	if err != nil || tm == nil {
		t.Fatalf("late join configuration (%v):\n%s", err, lateFiles[kube.KubeadmConfig])
	}
	if tm[1] == first.ID {
		t.Error("the late machine joins with the first install's token")
	}
	sec, err := api.Super.CoreV1().Secrets(kube.TokenNamespace).Get(ctx, kube.TokenSecretPrefix+tm[1], metav1.GetOptions{})
	if err != nil || string(sec.Data["token-secret"]) != tm[2] || sec.Type != corev1.SecretTypeBootstrapToken {
		t.Errorf("the late machine's token Secret: %v %+v", err, sec)
	}
	if !strings.Contains(string(lateFiles[kube.CNIConfFile]), `"subnet": "10.244.2.0/24"`) {
		t.Errorf("late machine's pod network: %s", lateFiles[kube.CNIConfFile])
	}
}

// With Kubernetes in the bundle, the install's steps of a control plane
// and a worker: provisioning waits for every assignment, the first
// control plane's bootstrap for its boot, the worker's join for its boot
// and the bootstrap; the first control plane is recorded once.
func TestInstallStepsWithKubernetes(t *testing.T) {
	ob, _ := osImageBundle(t, map[string][3]any{"node": {[]byte("x"), int64(1), hexSum([]byte("x"))}})
	defer ob.Close()
	b := kubeBundle(t, map[string][]byte{"kubeadm": []byte("a"), "kubectl": []byte("b"), "kubelet": []byte("c")})
	e, _ := testEngineWith(t, t.TempDir(), `machines:
  - {name: workers, match: {serials: [SN-2]}, role: worker, hostname: "w-{index}", address: 10.78.0.11/24}
  - {name: cp, match: {serials: [SN-1]}, role: control-plane, hostname: cp-1, address: 10.78.0.10/24}
admission: {policy: allowlist}
`, func(o *Options) {
		o.OSImages = ob
		o.BundleFiles = b
	})
	inv := e.Inventory()
	w := report(t, inv, "SN-2", "52:54:00:00:00:02", testDisks...)
	cp := report(t, inv, "SN-1", "52:54:00:00:00:01", testDisks...)
	for _, id := range []string{w, cp} {
		if _, err := inv.Transition(id, inventory.StateAdmitted, "test"); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := inv.List()
	if err != nil {
		t.Fatal(err)
	}
	steps, err := e.installSteps(ms)
	if err != nil {
		t.Fatal(err)
	}
	after := map[string][]string{}
	for _, s := range steps {
		after[s.ID] = slices.Sorted(slices.Values(s.After))
	}
	assigns := slices.Sorted(slices.Values([]string{"assign/" + cp, "assign/" + w}))
	want := map[string][]string{
		"assign/" + cp: nil, "assign/" + w: nil,
		"provision/" + cp: assigns, "provision/" + w: assigns,
		"boot/" + cp: {"provision/" + cp}, "boot/" + w: {"provision/" + w},
		"bootstrap/" + cp: {"boot/" + cp},
		"join/" + w:       slices.Sorted(slices.Values([]string{"boot/" + w, "bootstrap/" + cp})),
	}
	if len(after) != len(want) {
		t.Errorf("steps %v, want %v", after, want)
	}
	for id, deps := range want {
		if got, ok := after[id]; !ok || !slices.Equal(got, deps) {
			t.Errorf("%s after %v, want %v", id, got, deps)
		}
	}
	if first, err := kube.FirstControlPlane(e.store); err != nil || first != cp {
		t.Errorf("recorded first control plane %q %v", first, err)
	}
}

// fakeBundleFiles is an in-memory twin of a bundle's metadata, for the
// checks of what a bundle says about Kubernetes.
type fakeBundleFiles struct{ md bundle.Metadata }

func (f fakeBundleFiles) Metadata() bundle.Metadata { return f.md }
func (f fakeBundleFiles) FileContent(string) (bundle.File, io.ReaderAt, int64, int64, error) {
	return bundle.File{}, nil, 0, 0, errors.New("not in this twin")
}

// What the bundle says about Kubernetes is checked before anything
// serves: the version the answers ask for, each binary present among the
// files with a sha256 digest.
func TestKubeFromChecksTheBundle(t *testing.T) {
	good := func() bundle.Metadata {
		md := bundle.Metadata{Kubernetes: &bundle.Kubernetes{Version: "v1.35.4", Arch: "amd64", Binaries: map[string]string{}}}
		for _, n := range kube.Binaries {
			md.Kubernetes.Binaries[n] = "k/" + n
			md.Files = append(md.Files, bundle.File{Name: "k/" + n, Path: "files/k/" + n, Digest: "sha256:" + strings.Repeat("a", 64)})
		}
		return md
	}
	if k, files, err := kubeFrom(fakeBundleFiles{good()}, "v1.35.4"); err != nil || k == nil || len(files) != 3 {
		t.Fatalf("a good bundle: %v %v %v", k, files, err)
	}
	other := good()
	other.Kubernetes.Arch, other.Kubernetes.OtherArches = "arm64", map[string]map[string]string{"amd64": other.Kubernetes.Binaries}
	other.Kubernetes.Binaries = map[string]string{}
	if _, files, err := kubeFrom(fakeBundleFiles{other}, "v1.35.4"); err != nil || files["kubelet"].Name != "k/kubelet" {
		t.Errorf("amd64 among the other architectures: %v %v", files, err)
	}
	if k, _, err := kubeFrom(fakeBundleFiles{bundle.Metadata{}}, "v1.35.4"); err != nil || k != nil {
		t.Errorf("a bundle without Kubernetes: %v %v", k, err)
	}
	for name, c := range map[string]struct {
		change  func(*bundle.Metadata)
		version string
		want    string
	}{
		"version":      {func(*bundle.Metadata) {}, "v1.33.0", `set it to "v1.35.4"`},
		"no kubelet":   {func(md *bundle.Metadata) { delete(md.Kubernetes.Binaries, "kubelet") }, "v1.35.4", "no kubelet"},
		"missing file": {func(md *bundle.Metadata) { md.Files = md.Files[1:] }, "v1.35.4", "which the bundle does not have"},
		"sha512":       {func(md *bundle.Metadata) { md.Files[2].Digest = "sha512:" + strings.Repeat("a", 128) }, "v1.35.4", "not sha256"},
		"arm64 only":   {func(md *bundle.Metadata) { md.Kubernetes.Arch = "arm64" }, "v1.35.4", "not linux/amd64"},
	} {
		md := good()
		c.change(&md)
		if _, _, err := kubeFrom(fakeBundleFiles{md}, c.version); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}
