package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"airlock.dev/airlock/manifests"
)

// bundle check, build, inspect and verify with kubernetes: the binaries
// from a local directory laid out as dl.k8s.io's, the images from a real
// registry on loopback given as the mirror of registry.k8s.io and
// ghcr.io. check names a binary whose .sha256 does not match (and both
// digests) or that is missing; build puts kubeadm's images and kube-vip in
// under their original names; inspect shows the set; verify checks it.
func TestBundleKubernetesCommands(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "site")
	if _, _, err := runBundle(t, "keygen", "--out", key); err != nil {
		t.Fatal(err)
	}
	reg := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	refs, _ := manifests.KubernetesImages(manifests.DefaultKubernetesVersion)
	for _, ref := range append(refs, manifests.KubeVIPImage) {
		img, err := random.Image(1<<10, 1)
		if err != nil {
			t.Fatal(err)
		}
		_, path, _ := strings.Cut(ref, "/")
		tag, err := name.NewTag(host + "/" + path)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(tag, img); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
	}
	bin := filepath.Join(dir, "k8s", "v1.35.4", "bin", "linux", "amd64")
	os.MkdirAll(bin, 0o755)
	sums := map[string]string{}
	for _, b := range []string{"kubelet", "kubeadm", "kubectl"} {
		data := []byte("fake " + b + " binary")
		s := sha256.Sum256(data)
		sums[b] = hex.EncodeToString(s[:])
		os.WriteFile(filepath.Join(bin, b), data, 0o755)
		os.WriteFile(filepath.Join(bin, b+".sha256"), []byte(sums[b]), 0o644)
	}
	spec := filepath.Join(dir, "bundle.yaml")
	os.WriteFile(spec, []byte(fmt.Sprintf(`apiVersion: airlock.dev/v1alpha1
kind: Bundle
metadata: {name: k8s}
kubernetes:
  version: v1.35.4
  binaries: k8s
registryMirrors:
  registry.k8s.io: %s
  ghcr.io: %s
`, reg.URL, reg.URL)), 0o644)

	out, _, err := runBundle(t, "check", "-f", spec)
	if err != nil || !strings.Contains(out, "kubelet for linux/amd64: k8s/v1.35.4/bin/linux/amd64/kubelet") || !strings.Contains(out, sums["kubeadm"]+" matches") ||
		!strings.Contains(out, "image registry.k8s.io/etcd:3.6.6-0") || !strings.Contains(out, "Kubernetes v1.35.4 (8 images, 3 binaries)") {
		t.Fatalf("check: %v\n%s", err, out)
	}

	wrong := strings.Repeat("0", 64)
	os.WriteFile(filepath.Join(bin, "kubeadm.sha256"), []byte(wrong+"  kubeadm\n"), 0o644)
	out, _, err = runBundle(t, "check", "-f", spec)
	if ExitCode(err) != 1 || !strings.Contains(out, "kubeadm.sha256 says "+wrong) || !strings.Contains(out, "has sha256 "+sums["kubeadm"]) {
		t.Fatalf("check with a wrong kubeadm.sha256: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(bin, "kubeadm.sha256"), []byte(sums["kubeadm"]+"\n"), 0o644)
	os.Rename(filepath.Join(bin, "kubectl"), filepath.Join(dir, "kubectl"))
	out, _, err = runBundle(t, "check", "-f", spec)
	if ExitCode(err) != 1 || !strings.Contains(out, "kubectl for linux/amd64: read k8s/v1.35.4/bin/linux/amd64/kubectl") || !strings.Contains(out, "1 of 3 Kubernetes binaries failed") {
		t.Fatalf("check with kubectl missing: %v\n%s", err, out)
	}
	os.Rename(filepath.Join(dir, "kubectl"), filepath.Join(bin, "kubectl"))

	bpath := filepath.Join(dir, "site.bundle")
	if _, errOut, err := runBundle(t, "build", "-f", spec, "-o", bpath, "--key", key+".key"); err != nil {
		t.Fatalf("build: %v\n%s", err, errOut)
	}
	out, _, err = runBundle(t, "inspect", "--key", key+".pub", bpath)
	if err != nil || !strings.Contains(out, "KUBERNETES v1.35.4") || !strings.Contains(out, "kubernetes/v1.35.4/linux-amd64/kubelet") ||
		!strings.Contains(out, "IMAGES (8)") || !strings.Contains(out, manifests.KubeVIPImage) {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	out, _, err = runBundle(t, "inspect", "--key", key+".pub", "-o", "json", bpath)
	if err != nil || !strings.Contains(out, `"kubernetes/v1.35.4/linux-amd64/kubeadm"`) || !strings.Contains(out, `"version": "v1.35.4"`) {
		t.Fatalf("inspect -o json: %v\n%s", err, out)
	}
	if out, _, err := runBundle(t, "verify", "--key", key+".pub", bpath); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
}
