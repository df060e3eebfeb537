package manifests

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// kubeadmBin finds the kubeadm `make k8s-bins` builds from Go modules:
// $AIRLOCK_K8S_BIN (make test sets it), else the cache e2e/k8s/build.sh
// --cached names. A missing kubeadm fails the test, saying how to build it.
func kubeadmBin(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("AIRLOCK_K8S_BIN")
	if dir == "" {
		out, err := exec.Command("bash", "../e2e/k8s/build.sh", "--cached").Output()
		if err != nil {
			t.Fatalf("kubeadm is not built: run `make k8s-bins` (it builds the Kubernetes binaries from Go modules and prints their directory; set AIRLOCK_K8S_BIN to it): %v", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	p := filepath.Join(dir, "kubeadm")
	if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("AIRLOCK_K8S_BIN=%s has no kubeadm: run `make k8s-bins` and set AIRLOCK_K8S_BIN to the directory it prints", dir)
	}
	return p
}

// The table says exactly what the real kubeadm lists for the version it
// was built as (e2e/k8s/build.sh builds DefaultKubernetesVersion).
func TestKubernetesImagesMatchKubeadm(t *testing.T) {
	kubeadm := kubeadmBin(t)
	out, err := exec.Command(kubeadm, "version", "-o", "short").Output()
	if err != nil {
		t.Fatalf("kubeadm version: %v", err)
	}
	version := strings.TrimSpace(string(out))
	if version != DefaultKubernetesVersion {
		t.Fatalf("kubeadm of make k8s-bins is %s, DefaultKubernetesVersion %s: build the default (e2e/k8s/build.sh) or change the default", version, DefaultKubernetesVersion)
	}
	for _, v := range []string{DefaultKubernetesVersion} {
		out, err := exec.Command(kubeadm, "config", "images", "list", "--kubernetes-version", v).Output()
		if err != nil {
			t.Fatalf("kubeadm config images list --kubernetes-version %s: %v", v, err)
		}
		want := strings.Fields(string(out))
		got, err := KubernetesImages(v)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("KubernetesImages(%s)\n got %q\nkubeadm %q", v, got, want)
		}
		pause, err := PauseImage(v)
		if err != nil || !slices.Contains(want, pause) || !strings.Contains(pause, "/pause:") {
			t.Errorf("PauseImage(%s) = %q, %v; kubeadm lists %q", v, pause, err, want)
		}
	}
}

func TestKubernetesImagesUnknownVersion(t *testing.T) {
	for _, v := range []string{"v1.0.0", "1.34.2", "", "v1.35.4 "} {
		if imgs, err := KubernetesImages(v); err == nil || !strings.Contains(err.Error(), DefaultKubernetesVersion) {
			t.Errorf("KubernetesImages(%q) = %q, %v; want an error naming the known versions", v, imgs, err)
		}
		if _, err := PauseImage(v); err == nil {
			t.Errorf("PauseImage(%q) accepted", v)
		}
	}
	if !slices.Contains(KubernetesVersions(), DefaultKubernetesVersion) {
		t.Errorf("the default %s has no table row (%q)", DefaultKubernetesVersion, KubernetesVersions())
	}
}
