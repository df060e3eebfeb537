package build

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/repo"
)

// upstream is a loopback stand-in for the internet: one go-containerregistry
// registry answering for docker.io, registry.k8s.io, nvcr.io, quay.io and
// ghcr.io (through a rewriting transport), a chart repository and a file
// server, all with content the test makes itself.
type upstream struct {
	reg       *httptest.Server
	host      string // 127.0.0.1:port of the registry
	charts    *httptest.Server
	files     *httptest.Server
	transport http.RoundTripper
	// images by original reference: the top manifest digest.
	digests map[string]string
	// the multi-arch index pushed for docker.io/library/busybox:1.36
	index v1.ImageIndex
	file  []byte
}

var upstreamHosts = []string{"index.docker.io", "registry-1.docker.io", "registry.k8s.io", "nvcr.io", "quay.io", "ghcr.io"}

// rewrite sends requests for the upstream hosts to the loopback registry.
type rewrite struct {
	host string
	base http.RoundTripper
}

func (r rewrite) RoundTrip(req *http.Request) (*http.Response, error) {
	for _, h := range upstreamHosts {
		if req.URL.Host == h {
			req = req.Clone(req.Context())
			req.URL.Scheme, req.URL.Host, req.Host = "http", r.host, r.host
			break
		}
	}
	if h, _, _ := net.SplitHostPort(req.URL.Host); h != "127.0.0.1" {
		return nil, fmt.Errorf("test transport: refusing to leave loopback for %s", req.URL)
	}
	return r.base.RoundTrip(req)
}

func newUpstream(t testing.TB) *upstream {
	t.Helper()
	u := &upstream{digests: map[string]string{}}
	u.reg = httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(u.reg.Close)
	u.host = strings.TrimPrefix(u.reg.URL, "http://")
	u.transport = rewrite{host: u.host, base: http.DefaultTransport}

	push := func(ref string, idx v1.ImageIndex, img v1.Image) {
		t.Helper()
		r, err := ParseImageRef(ref)
		if err != nil {
			t.Fatal(err)
		}
		nr, err := r.fetchRef()
		if err != nil {
			t.Fatal(err)
		}
		opt := remote.WithTransport(u.transport)
		if idx != nil {
			err = remote.WriteIndex(nr, idx, opt)
			d, _ := idx.Digest()
			u.digests[r.String()] = d.String()
		} else {
			err = remote.Write(nr, img, opt)
			d, _ := img.Digest()
			u.digests[r.String()] = d.String()
		}
		if err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
	}
	image := func(layers int, platform string) v1.Image {
		img, err := random.Image(64<<10, int64(layers))
		if err != nil {
			t.Fatal(err)
		}
		os, arch, _ := strings.Cut(platform, "/")
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = os, arch
		img, err = mutate.ConfigFile(img, cf)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	// A multi-arch index that shares a layer between platforms.
	amd, arm := image(3, "linux/amd64"), image(2, "linux/arm64")
	shared, _ := amd.Layers()
	arm, _ = mutate.AppendLayers(arm, shared[0])
	u.index = mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	push("busybox:1.36", u.index, nil)
	// One image with OCI media types (the others use Docker's).
	oci := mutate.ConfigMediaType(mutate.MediaType(image(1, "linux/amd64"), types.OCIManifestSchema1), types.OCIConfigJSON)
	push("registry.k8s.io/pause:3.10", nil, oci)
	push("nvcr.io/nvidia/k8s-device-plugin:v0.17.0", nil, image(2, "linux/amd64"))
	push("quay.io/prometheus/node-exporter:v1.8.2", nil, image(2, "linux/amd64"))
	push("ghcr.io/airlock-test/hook:1.0", nil, image(1, "linux/amd64"))

	// A chart repository with a chart whose rendered manifests reference
	// two of the images, one through values the bundle spec overrides.
	chartDir := t.TempDir()
	ch := &chart.Chart{
		Metadata: &chart.Metadata{APIVersion: "v2", Name: "exporter", Version: "1.2.3", AppVersion: "1.8.2"},
		Values:   map[string]any{"image": map[string]any{"repository": "quay.io/prometheus/node-exporter", "tag": "v1.0.0"}},
		Raw:      []*chart.File{{Name: "values.yaml", Data: []byte("image:\n  repository: quay.io/prometheus/node-exporter\n  tag: v1.0.0\n")}},
		Templates: []*chart.File{
			{Name: "templates/ds.yaml", Data: []byte(`apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {matchLabels: {app: exporter}}
  template:
    metadata: {labels: {app: exporter}}
    spec:
      initContainers:
        - name: init
          image: "registry.k8s.io/pause:3.10"
      containers:
        - name: exporter
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
`)},
			{Name: "templates/hook.yaml", Data: []byte(`apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-hook
  annotations: {"helm.sh/hook": post-install}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: hook
          image: ghcr.io/airlock-test/hook:1.0
`)},
		},
	}
	if _, err := chartutil.Save(ch, chartDir); err != nil {
		t.Fatal(err)
	}
	// A second chart, pushed as an OCI artifact the way helm push does.
	ociChart := &chart.Chart{
		Metadata:  &chart.Metadata{APIVersion: "v2", Name: "ocichart", Version: "0.1.0"},
		Templates: []*chart.File{{Name: "templates/pod.yaml", Data: []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: c\n      image: nvcr.io/nvidia/k8s-device-plugin:v0.17.0\n")}},
	}
	ociDir := t.TempDir()
	tgzPath, err := chartutil.Save(ociChart, ociDir)
	if err != nil {
		t.Fatal(err)
	}
	tgz, err := os.ReadFile(tgzPath)
	if err != nil {
		t.Fatal(err)
	}
	art, err := mutate.AppendLayers(empty.Image, static.NewLayer(tgz, helmChartLayer))
	if err != nil {
		t.Fatal(err)
	}
	art = mutate.ConfigMediaType(mutate.MediaType(art, types.OCIManifestSchema1), "application/vnd.cncf.helm.config.v1+json")
	push("ghcr.io/airlock-test/charts/ocichart:0.1.0", nil, art)

	u.charts = httptest.NewServer(http.FileServer(http.Dir(chartDir)))
	t.Cleanup(u.charts.Close)
	idx, err := repo.IndexDirectory(chartDir, u.charts.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := idx.WriteFile(filepath.Join(chartDir, "index.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}

	u.file = make([]byte, 300<<10)
	rand.Read(u.file)
	u.files = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/vmlinuz" {
			w.Write(u.file)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(u.files.Close)
	return u
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// specFor returns a bundle.yaml using the upstream.
func (u *upstream) specFor(t testing.TB, dir string) []byte {
	t.Helper()
	local := filepath.Join(dir, "ipxe.efi")
	if err := os.WriteFile(local, []byte("not really ipxe"), 0o644); err != nil {
		t.Fatal(err)
	}
	return []byte(fmt.Sprintf(`apiVersion: airlock.dev/v1alpha1
kind: Bundle
metadata:
  name: test-site
components: [cni, gpu-operator]
images:
  - ref: busybox:1.36
  - ref: nvcr.io/nvidia/k8s-device-plugin:v0.17.0
    platforms: [linux/amd64]
  - ref: quay.io/prometheus/node-exporter@%s
charts:
  - name: exporter
    repo: %s
    version: 1.2.3
    namespace: monitoring
    values:
      image:
        tag: v1.8.2
  - oci: oci://ghcr.io/airlock-test/charts/ocichart
    version: 0.1.0
files:
  - name: vmlinuz
    url: %s/vmlinuz
    sha256: %s
  - name: ipxe/ipxe.efi
    url: ipxe.efi
    sha256: %s
`, u.digests["quay.io/prometheus/node-exporter:v1.8.2"], u.charts.URL, u.files.URL, sha256hex(u.file), sha256hex([]byte("not really ipxe"))))
}

func testKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

var _ = name.DefaultRegistry
var _ = url.Parse
