//go:build e2e && e2efull

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
)

// What the Kubernetes e2e test installs.
const (
	kubeVersion = "v1.35.4"
	testAppRef  = "docker.io/airlock/testapp:1.0" // e2e/k8s/images.sh builds it
)

// k8sInputs are the Kubernetes binaries (make k8s-bins, AIRLOCK_K8S_BIN)
// and the test images' OCI layout (make k8s-images, AIRLOCK_K8S_IMAGES).
func k8sInputs(t *testing.T) (bins, layout string) {
	t.Helper()
	bins, layout = os.Getenv("AIRLOCK_K8S_BIN"), os.Getenv("AIRLOCK_K8S_IMAGES")
	if bins == "" || layout == "" {
		t.Fatal("AIRLOCK_K8S_BIN and AIRLOCK_K8S_IMAGES must be set: `make k8s-images` builds both and `make e2e-full` passes them (e2e/k8s/build.sh and e2e/k8s/images.sh print the directories)")
	}
	for _, f := range []string{filepath.Join(bins, "kubectl"), filepath.Join(bins, "kubelet"), filepath.Join(bins, "kubeadm"), filepath.Join(layout, "index.json"), filepath.Join(layout, "..", "k8s-images")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v (make k8s-images)", err)
		}
	}
	return bins, layout
}

// k8sRelease lays the bundle's Kubernetes binaries out as dl.k8s.io does
// (DIR/VERSION/bin/linux/amd64/NAME and NAME.sha256) and returns DIR.
func k8sRelease(t *testing.T, dir, bins string) string {
	t.Helper()
	rel := filepath.Join(dir, "k8s-release")
	at := filepath.Join(rel, kubeVersion, "bin", "linux", "amd64")
	if err := os.MkdirAll(at, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"kubelet", "kubeadm", "kubectl"} {
		src, dst := filepath.Join(bins, b), filepath.Join(at, b)
		if err := os.Link(src, dst); err != nil {
			run(t, exec.Command("cp", src, dst))
		}
		sum, _, _ := strings.Cut(run(t, exec.Command("sha256sum", dst)), " ")
		writeFile(t, at, b+".sha256", sum+"\n")
	}
	return rel
}

// The virtual rack forms a Kubernetes cluster: one control-plane VM (2
// vCPUs, 3 GiB) and one worker VM (1 vCPU, 1.5 GiB) go from power-on
// through PXE, disk install and reboot to a Ready two-node cluster that
// airlock's seeds form with kubeadm. Everything comes from a bundle that
// `airlock bundle build` made as a site's is made: the node image, the
// Kubernetes binaries, kubeadm's images and a test app, collected from
// registries on loopback standing in for registry.k8s.io and docker.io
// (registryMirrors). Then, with a kubeconfig from `airlock kubeconfig` and
// the real kubectl: both Nodes Ready, a pod of the test app by its
// original docker.io name runs on the worker with the digest the bundle
// carries, and the lab's uplink has sent nothing. Minutes from power-on to
// Ready (the Node's Ready condition) are logged per VM beside the floor:
// power-on to the same VM's installed disk booted with its seed applied,
// before its Kubernetes part (seen on its console).
func TestLabFormsACluster(t *testing.T) {
	bin := airlockBin(t)
	osImage := osImageDir(t)
	bins, layout := k8sInputs(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	if os.Getenv("AIRLOCK_E2E_KEEP") == "1" {
		stateDir, _ = os.MkdirTemp("", "airlock-e2e-kube-")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Minute)
	defer cancel()

	// The connected side: loopback registries playing registry.k8s.io
	// and docker.io (k8s-images serve, beside the layout), and a bundle
	// built from them.
	mirrors, stopRegistries := serveImages(t, ctx, layout)
	defer stopRegistries()
	appDigest := layoutDigest(t, layout, testAppRef)
	deb, debSum := kernelDeb(t, dir)
	if _, err := airlock(t, "bundle", "keygen", "--out", filepath.Join(dir, "site")); err != nil {
		t.Fatal(err)
	}
	rawSum, err := os.ReadFile(filepath.Join(osImage, "disk.raw.sha256"))
	if err != nil {
		t.Fatal(err)
	}
	spec := writeFile(t, dir, "bundle.yaml", fmt.Sprintf(`apiVersion: airlock.dev/v1alpha1
kind: Bundle
metadata: {name: e2e-kube}
files:
  - name: boot/kernel.deb
    url: %s
    sha256: %s
osImages:
  - name: debian-12
    path: %s
    rawSHA256: %s
kubernetes:
  version: %s
  binaries: %s
  kubeVIP: false   # kube-vip does not build here (the Go module proxy refuses it)
registryMirrors:
  registry.k8s.io: %s
  docker.io: %s
images:
  - ref: %s
`, deb, debSum, filepath.Join(osImage, "disk.raw.zst"), strings.TrimSpace(string(rawSum)), kubeVersion, k8sRelease(t, dir, bins),
		mirrors["registry.k8s.io"], mirrors["docker.io"], testAppRef))
	bundleFile := filepath.Join(dir, "site.bundle")
	began := time.Now()
	build := exec.CommandContext(ctx, bin, "bundle", "build", "-f", spec, "-o", bundleFile, "--key", filepath.Join(dir, "site.key"))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("airlock bundle build: %v\n%s", err, out)
	}
	t.Logf("bundle build took %.0f s", time.Since(began).Seconds())
	stopRegistries() // the site has no connection: nothing may reach them from now on
	if out, err := airlock(t, "bundle", "verify", "--key", filepath.Join(dir, "site.pub"), bundleFile); err != nil {
		t.Fatalf("bundle verify: %v\n%s", err, out)
	}
	if out, err := airlock(t, "bundle", "inspect", bundleFile); err != nil || !strings.Contains(out, testAppRef) || !strings.Contains(out, "registry.k8s.io/kube-apiserver:"+kubeVersion) {
		t.Fatalf("bundle inspect shows neither the test app nor the API server (%v):\n%s", err, out)
	}

	// The site: the rack, installed and formed into a cluster by the
	// lab's airlock.
	t.Cleanup(func() {
		if keep(t) {
			t.Logf("the lab is still up: airlock status --state %s; serial consoles in %s/lab; airlock lab down --state %s", stateDir, stateDir, stateDir)
			return
		}
		if _, err := airlock(t, "lab", "down", "--state", stateDir); err != nil {
			t.Error(err)
		}
	})
	up := exec.CommandContext(ctx, bin, "lab", "up", "--state", stateDir, "--nodes", "2", "--racks", "1", "--firmware", "bios",
		"--control-plane-cpus", "2", "--control-plane-memory", "3072", "--cpus", "1", "--memory", "1536",
		"--install", "--kubernetes", kubeVersion, "--bundle", bundleFile, "--bundle-key", filepath.Join(dir, "site.pub"),
		"--agent", filepath.Join(filepath.Dir(bin), "airlock-agent"))
	began = time.Now()
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("airlock lab up: %v\n%s", err, out)
	}
	t.Logf("lab up took %.0f s", time.Since(began).Seconds())
	var lab struct {
		Namespace     string
		VMs           []labVM
		Uplink        string
		UplinkPackets *uint64
	}
	out, err := airlock(t, "lab", "status", "-o", "json", "--state", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	readJSON(t, out, &lab)
	if lab.UplinkPackets == nil || lab.Namespace == "" {
		t.Fatalf("lab status shows no uplink counter or namespace: %s", out)
	}

	// Every machine ready (or failed), within the deadline.
	type status struct {
		Machines []struct {
			ID, State, Hostname, Serial, Failure string
			History                              []struct {
				To   string
				Time time.Time
			}
		}
	}
	var st status
	// The floor: when each VM's installed system has booted and applied
	// its seed, before its Kubernetes part (the lab's seeds print
	// airlock-lab-check then; phone-home, which makes a machine booted,
	// comes after kubeadm). Seen by polling, so up to one poll late.
	diskUp := map[string]time.Time{}
	deadline := time.Now().Add(75 * time.Minute)
	for {
		for _, vm := range lab.VMs {
			if _, ok := diskUp[vm.Name]; !ok {
				if console, err := os.ReadFile(filepath.Join(stateDir, "lab", vm.Name+".serial.log")); err == nil && labCheck(string(console)) != nil {
					diskUp[vm.Name] = time.Now()
				}
			}
		}
		out, err := airlock(t, "status", "-o", "json", "--state", stateDir)
		if err != nil {
			t.Fatal(err)
		}
		st = status{}
		readJSON(t, out, &st)
		done, failed := 0, 0
		for _, m := range st.Machines {
			switch m.State {
			case "ready":
				done++
			case "failed":
				failed++
			}
		}
		if failed > 0 {
			t.Fatalf("a machine failed: %s\nthe lab's log ends:\n%s", out, labLogTail(stateDir))
		}
		if done == len(lab.VMs) && len(st.Machines) == len(lab.VMs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every machine ready within 75 minutes: %s\nthe lab's log ends:\n%s", out, labLogTail(stateDir))
		}
		time.Sleep(5 * time.Second)
	}
	bySerial := map[string]int{}
	for i, m := range st.Machines {
		bySerial[m.Serial] = i
	}

	// The cluster through airlock's kubeconfig and the real kubectl,
	// from inside the lab's namespace (where the API server is).
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if out, err := airlock(t, "kubeconfig", "--state", stateDir, "--file", kubeconfig); err != nil {
		t.Fatalf("airlock kubeconfig: %v\n%s", err, out)
	}
	kubectl := func(args ...string) (string, error) {
		c, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		ns, err := netns.Open(lab.Namespace)
		if err != nil {
			return "", err
		}
		cmd := ns.Command(c, filepath.Join(bins, "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
		var errOut strings.Builder
		cmd.Stderr = &errOut
		o, err := cmd.Output()
		if err != nil {
			return string(o), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, errOut.String())
		}
		return string(o), nil
	}
	out, err = kubectl("get", "nodes", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var nodes struct {
		Items []struct {
			Metadata struct{ Name string }
			Status   struct {
				Conditions []struct {
					Type, Status       string
					LastTransitionTime time.Time
				}
				NodeInfo struct{ KubeletVersion string }
			}
		}
	}
	readJSON(t, out, &nodes)
	if len(nodes.Items) != 2 {
		t.Fatalf("kubectl get nodes: %d nodes, want 2: %s", len(nodes.Items), out)
	}
	nodeReady := map[string]time.Time{} // by node name (the hostname)
	for _, n := range nodes.Items {
		ready := false
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				ready = true
				nodeReady[n.Metadata.Name] = c.LastTransitionTime
			}
		}
		if !ready || n.Status.NodeInfo.KubeletVersion != kubeVersion {
			t.Errorf("node %s: Ready %v, kubelet %s (want Ready, %s)", n.Metadata.Name, ready, n.Status.NodeInfo.KubeletVersion, kubeVersion)
		}
	}

	worker := ""
	for i, vm := range lab.VMs {
		m := st.Machines[bySerial[vm.Serial]]
		at := map[string]time.Time{}
		var states []string
		for _, h := range m.History {
			states = append(states, h.To)
			at[h.To] = h.Time
		}
		if want := "admitted assigned installing installed booted joined ready"; strings.Join(states, " ") != want {
			t.Errorf("VM %s went through %v, want %s", vm.Name, states, want)
		}
		if i > 0 {
			worker = m.Hostname
		}
		min := func(a, b time.Time) string {
			if a.IsZero() || b.IsZero() {
				return "?"
			}
			return fmt.Sprintf("%.1f", b.Sub(a).Minutes())
		}
		t.Logf("%s (%s, %s): power-on to Ready %s min (its Node's Ready condition; airlock marked it ready at %s min, after the phone-home); the floor, power-on to its installed disk booted with its seed applied, before Kubernetes, %s min (of which installed to disk booted %s min); disk booted to Node Ready %s min",
			vm.Name, m.Hostname, vm.Firmware, min(vm.Started, nodeReady[m.Hostname]), min(vm.Started, at["ready"]), min(vm.Started, diskUp[vm.Name]),
			min(at["installed"], diskUp[vm.Name]), min(diskUp[vm.Name], nodeReady[m.Hostname]))
	}

	// The test app on the worker, pulled by its original name.
	pod := writeFile(t, dir, "pod.yaml", fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: testapp, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
  containers:
    - name: app
      image: %s
      imagePullPolicy: Always
      ports: [{containerPort: 8080}]
`, worker, testAppRef))
	if out, err := kubectl("apply", "-f", pod); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	began = time.Now()
	var p struct {
		Spec   struct{ NodeName string }
		Status struct {
			Phase             string
			ContainerStatuses []struct{ Image, ImageID string }
		}
	}
	for wait := time.Now().Add(10 * time.Minute); ; time.Sleep(3 * time.Second) {
		out, err := kubectl("get", "pod", "testapp", "-n", "default", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		p.Status.ContainerStatuses = nil
		readJSON(t, out, &p)
		if p.Status.Phase == "Running" {
			break
		}
		if time.Now().After(wait) {
			ev, _ := kubectl("get", "events", "-n", "default", "-o", "wide")
			t.Fatalf("the test app is not Running within 10 minutes: %s\nevents:\n%s", out, ev)
		}
	}
	t.Logf("the test app ran on %s %.0f s after it was applied", p.Spec.NodeName, time.Since(began).Seconds())
	if p.Spec.NodeName != worker {
		t.Errorf("the test app runs on %q, want the worker %q", p.Spec.NodeName, worker)
	}
	if len(p.Status.ContainerStatuses) != 1 || !strings.HasSuffix(p.Status.ContainerStatuses[0].ImageID, "@"+appDigest) ||
		!strings.Contains(p.Status.ContainerStatuses[0].ImageID, "docker.io/airlock/testapp") {
		t.Errorf("the test app's image: %+v, want %s@%s", p.Status.ContainerStatuses, testAppRef, appDigest)
	}

	// Nothing left the lab's namespace.
	out, err = airlock(t, "lab", "status", "-o", "json", "--state", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	lab.UplinkPackets = nil
	readJSON(t, out, &lab)
	if lab.UplinkPackets == nil || *lab.UplinkPackets != 0 {
		neigh, _ := exec.Command("ip", "-n", lab.Namespace, "neigh", "show", "dev", lab.Uplink).CombinedOutput()
		t.Errorf("packets out of the lab through its uplink %s: %v, want 0; the addresses the lab tried to reach through it:\n%s", lab.Uplink, jsonText(lab.UplinkPackets), neigh)
	} else {
		t.Logf("packets out of the lab through its uplink %s: 0", lab.Uplink)
	}
}

// serveImages runs `k8s-images serve` (e2e/k8s/images.sh keeps it beside
// the layout) and returns the loopback registry of each upstream it
// printed, and a function that stops it.
func serveImages(t *testing.T, ctx context.Context, layout string) (map[string]string, func()) {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(layout, "..", "k8s-images"), "serve", "-layout", layout)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut strings.Builder
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
		}
	}
	mirrors := map[string]string{}
	sc := bufio.NewScanner(out)
	for len(mirrors) < 2 && sc.Scan() {
		if up, url, ok := strings.Cut(strings.TrimSpace(sc.Text()), ": "); ok && strings.HasPrefix(url, "http://127.0.0.1:") {
			mirrors[up] = url
		}
	}
	if mirrors["registry.k8s.io"] == "" || mirrors["docker.io"] == "" {
		stop()
		t.Fatalf("k8s-images serve printed no mirrors for registry.k8s.io and docker.io: %v\n%s", mirrors, errOut.String())
	}
	return mirrors, stop
}

// layoutDigest returns the digest the OCI layout's index gives ref.
func layoutDigest(t *testing.T, layout, ref string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Manifests []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	readJSON(t, string(data), &idx)
	for _, m := range idx.Manifests {
		if m.Annotations["org.opencontainers.image.ref.name"] == ref {
			return m.Digest
		}
	}
	t.Fatalf("the layout %s has no %s (rebuild it: make k8s-images)", layout, ref)
	return ""
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
