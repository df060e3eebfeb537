package build

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseSpecProblems(t *testing.T) {
	data := `apiVersion: airlock.dev/v1alpha1
kind: Bundel
components: [cni, warp-drive]
images:
  - ref: nginx:1.25
  - ref: docker.io/library/nginx:1.25
  - ref: "Not A Ref"
  - ref: busybox
    platforms: [linux]
charts:
  - name: x
    repo: ftp://charts
  - name: y
    path: ./y
    oci: oci://ghcr.io/a/y
    version: 1
files:
  - name: ../etc/passwd
    url: gopher://x
    sha256: ABC
  - name: a
    url: a
    sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    color: red
`
	_, problems := ParseSpec("bundle.yaml", []byte(data))
	got := problems.Error()
	for _, want := range []string{
		"bundle.yaml:2:7: kind: must be Bundle",
		`bundle.yaml:3:19: components[1]: "warp-drive" is not a platform component`,
		"bundle.yaml:6:10: images[1].ref: docker.io/library/nginx:1.25 is listed twice (also images[0])",
		`bundle.yaml:7:10: images[2].ref: "Not A Ref" is not an image reference`,
		`bundle.yaml:9:17: images[3].platforms[0]: "linux" is not a platform`,
		`bundle.yaml:12:11: charts[0].repo: "ftp://charts" is not an http(s) chart repository URL`,
		"bundle.yaml:11:5: charts[0].version: required",
		"bundle.yaml:13:5: charts[1]: give exactly one of repo",
		`bundle.yaml:18:11: files[0].name: "../etc/passwd" is not a clean relative name`,
		`bundle.yaml:19:10: files[0].url: scheme "gopher" is not supported`,
		"bundle.yaml:20:13: files[0].sha256: required: the file's SHA-256",
		"bundle.yaml:24:5: files[1].color:",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing problem %q in:\n%s", want, got)
		}
	}
}

func TestParseImageRef(t *testing.T) {
	for in, want := range map[string]string{
		"nginx":                      "docker.io/library/nginx:latest",
		"nginx:1.25":                 "docker.io/library/nginx:1.25",
		"index.docker.io/a/b:1":      "docker.io/a/b:1",
		"registry.k8s.io/pause:3.10": "registry.k8s.io/pause:3.10",
		"localhost:5000/x/y:z":       "localhost:5000/x/y:z",
		"nvcr.io/nvidia/x@sha256:" + strings.Repeat("a", 64): "nvcr.io/nvidia/x@sha256:" + strings.Repeat("a", 64),
		"quay.io/x/y:1.0@sha256:" + strings.Repeat("b", 64):  "quay.io/x/y:1.0@sha256:" + strings.Repeat("b", 64),
	} {
		r, err := ParseImageRef(in)
		if err != nil || r.String() != want {
			t.Errorf("%s: %v %v, want %s", in, r, err, want)
		}
	}
}

// A bundle spec, a local file or a local chart archive that is not a
// regular file is refused at once, and a spec is bounded before it is read.
func TestRefusesSpecialInputs(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.yaml")
	os.WriteFile(big, []byte(strings.Repeat("# a comment line\n", MaxSpecSize/17+1)), 0o644)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, p := range []string{"/dev/zero", fifo, dir, big} {
			_, _, err := LoadSpec(p)
			if err == nil || !(strings.Contains(err.Error(), "not a regular file") || strings.Contains(err.Error(), "more than")) {
				t.Errorf("LoadSpec(%s): %v", p, err)
			} else {
				t.Logf("LoadSpec(%s): %v", p, err)
			}
		}
		b := &builder{opts: Options{SpecDir: dir}}
		for _, src := range []string{"fifo", "file://" + fifo, "/dev/zero"} {
			if _, err := b.open(context.Background(), src); err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("open %s: %v", src, err)
			}
		}
		if _, err := hashFile(fifo); err == nil {
			t.Error("hashFile of a FIFO: no error")
		}
		if _, err := b.chartFromPath(ChartSpec{Path: "fifo"}, dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a FIFO as a chart archive: %v", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("still blocked after 10 s on a special file")
	}
}

func TestParseSpecKubernetesProblems(t *testing.T) {
	data := `apiVersion: airlock.dev/v1alpha1
kind: Bundle
kubernetes:
  version: v1.99.0
  binaries: ftp://mirror/release
  kubeVIP: "no"
  kubelet: true
registryMirrors:
  registry.k8s.io: http://127.0.0.1:5001/k8s
  Bad_Host: http://x
  docker.io: https://hub-cache.example
  index.docker.io: http://y
  ghcr.io: gopher://z
files:
  - name: kubernetes/v1.99.0/linux-amd64/kubelet
    url: x
    sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
`
	_, problems := ParseSpec("bundle.yaml", []byte(data))
	got := problems.Error()
	for _, want := range []string{
		"bundle.yaml:4:12: kubernetes.version: airlock has no image table for Kubernetes v1.99.0 (it knows v1.34.2, v1.35.4)",
		`bundle.yaml:5:13: kubernetes.binaries: "ftp://mirror/release": give an http(s) base URL`,
		`bundle.yaml:6:12: kubernetes.kubeVIP: expected true or false`,
		"bundle.yaml:7:3: kubernetes.kubelet: unknown field",
		`bundle.yaml:9:20: registryMirrors.registry.k8s.io: "http://127.0.0.1:5001/k8s": a mirror is a registry's root`,
		`bundle.yaml:10:13: registryMirrors.Bad_Host: "Bad_Host" is not a registry host`,
		`bundle.yaml:12:20: registryMirrors.index.docker.io: "index.docker.io" is the same registry as "docker.io"`,
		`bundle.yaml:13:12: registryMirrors.ghcr.io: "gopher://z": give the mirror as http://HOST[:PORT] or https://HOST[:PORT]`,
		`bundle.yaml:15:11: files[0].name: "kubernetes/v1.99.0/linux-amd64/kubelet" is where the kubernetes section puts kubelet`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing problem %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "registryMirrors.docker.io") {
		t.Errorf("a valid mirror refused:\n%s", got)
	}

	// kubernetes: {} alone is a bundle: every default, nothing else needed.
	s, problems := ParseSpec("bundle.yaml", []byte("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nkubernetes: {}\n"))
	if err := problems.Err(); err != nil || s.Kubernetes == nil {
		t.Fatalf("kubernetes: {}: %v", err)
	}
	k := s.Kubernetes.withDefaults()
	if k.Version != "v1.35.4" || k.Binaries != DefaultKubernetesBinaries || !*k.KubeVIP || !slices.Equal(s.KubernetesArches(), []string{"amd64"}) {
		t.Errorf("defaults: %+v arches %v", k, s.KubernetesArches())
	}
	s, _ = ParseSpec("bundle.yaml", []byte("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nplatforms: [linux/arm64/v8, windows/amd64, linux/amd64]\nkubernetes: {}\n"))
	if !slices.Equal(s.KubernetesArches(), []string{"arm64", "amd64"}) {
		t.Errorf("arches of linux/arm64/v8, windows/amd64, linux/amd64: %v", s.KubernetesArches())
	}
}
