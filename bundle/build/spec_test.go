package build

import (
	"strings"
	"testing"
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
