package build

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/manifests"
	"airlock.dev/airlock/services/registry"
)

// kubeMirror is a real registry (go-containerregistry's) on loopback
// holding small images under the paths of kubeadm's images and kube-vip,
// as a pull-through cache or a registry the site's images were copied to
// would: registry.k8s.io/kube-apiserver:v1.35.4 is HOST/kube-apiserver:v1.35.4.
// It is served over http and, from the same store, over https.
type kubeMirror struct {
	http, https *httptest.Server
	// digests of the images pushed, by original reference.
	digests map[string]string
	// requests counts the requests each server got, by "http" or "https".
	mu       sync.Mutex
	requests map[string]int
}

func newKubeMirror(t *testing.T, skip ...string) *kubeMirror {
	t.Helper()
	m := &kubeMirror{digests: map[string]string{}, requests: map[string]int{}}
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	count := func(kind string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			m.mu.Lock()
			m.requests[kind]++
			m.mu.Unlock()
			reg.ServeHTTP(w, r)
		})
	}
	m.http = httptest.NewServer(count("http"))
	m.https = httptest.NewTLSServer(count("https"))
	t.Cleanup(m.http.Close)
	t.Cleanup(m.https.Close)
	refs, err := manifests.KubernetesImages(manifests.DefaultKubernetesVersion)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(m.http.URL, "http://")
	for _, ref := range append(refs, manifests.KubeVIPImage) {
		if slices.Contains(skip, ref) {
			continue
		}
		img, err := random.Image(2<<10, 1)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", "amd64"
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		_, path, _ := strings.Cut(ref, "/")
		tag, err := name.NewTag(host + "/" + path)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(tag, img); err != nil {
			t.Fatalf("push %s to the mirror: %v", ref, err)
		}
		d, _ := img.Digest()
		m.digests[ref] = d.String()
	}
	m.requests = map[string]int{}
	return m
}

func (m *kubeMirror) count(kind string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests[kind]
}

// kubeBinaries lays out fake kubelet, kubeadm and kubectl the way
// dl.k8s.io does, under dir/release: VERSION/bin/linux/amd64/NAME with
// NAME.sha256 beside each (64 hex digits, as upstream writes them). It
// returns the binaries' contents by name.
func kubeBinaries(t *testing.T, dir string) map[string][]byte {
	return kubeBinariesFor(t, dir, "amd64")
}

// kubeBinariesFor is kubeBinaries for linux/arch.
func kubeBinariesFor(t *testing.T, dir, arch string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	bin := filepath.Join(dir, "release", manifests.DefaultKubernetesVersion, "bin", "linux", arch)
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range bundle.KubernetesBinaries {
		data := make([]byte, 32<<10)
		rand.Read(data)
		data = append([]byte("\x7fELF fake "+name+" "+arch+"\n"), data...)
		out[name] = data
		if err := os.WriteFile(filepath.Join(bin, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bin, name+".sha256"), []byte(sha256hex(data)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// loopbackOnly is the test's transport: it refuses to leave loopback, and
// counts the requests for each path.
type loopbackOnly struct {
	base  http.RoundTripper
	mu    sync.Mutex
	paths map[string]int
}

func (l *loopbackOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if h, _, _ := net.SplitHostPort(req.URL.Host); h != "127.0.0.1" {
		return nil, fmt.Errorf("test transport: refusing to leave loopback for %s", req.URL)
	}
	l.mu.Lock()
	if l.paths == nil {
		l.paths = map[string]int{}
	}
	l.paths[req.URL.Path]++
	l.mu.Unlock()
	return l.base.RoundTrip(req)
}

func (l *loopbackOnly) hits(suffix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for p, c := range l.paths {
		if strings.HasSuffix(p, suffix) {
			n += c
		}
	}
	return n
}

// buildKube parses spec (a bundle.yaml) in dir and builds it.
func buildKube(t *testing.T, dir, spec string, tr http.RoundTripper) (string, ed25519PublicKey, string, error) {
	t.Helper()
	specPath := filepath.Join(dir, "bundle.yaml")
	if err := os.WriteFile(specPath, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	s, problems := ParseSpec(specPath, []byte(spec))
	if err := problems.Err(); err != nil {
		t.Fatalf("spec: %v", err)
	}
	pub, priv := testKey(t)
	var progress bytes.Buffer
	out := filepath.Join(dir, "site.bundle")
	_, err := Build(context.Background(), Options{Spec: s, SpecDir: dir, Output: out, Key: priv, Transport: tr, Progress: &progress})
	t.Logf("progress:\n%s", progress.String())
	return out, pub, progress.String(), err
}

type ed25519PublicKey = []byte

// checkKubeBundle opens and verifies the bundle with the real bundle code
// and checks its Kubernetes set: the binaries byte for byte, every image
// under its original name with the digest the mirror holds.
func checkKubeBundle(t *testing.T, out string, pub ed25519PublicKey, m *kubeMirror, bins map[string][]byte, kubeVIP bool) {
	t.Helper()
	b, err := bundle.Open(out, bundle.Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Verify(context.Background(), bundle.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	meta := b.Metadata()
	k := meta.Kubernetes
	if k == nil || k.Version != "v1.35.4" || k.Arch != "amd64" || len(k.OtherArches) != 0 {
		t.Fatalf("metadata's Kubernetes: %+v", k)
	}
	want, _ := manifests.KubernetesImages(k.Version)
	if kubeVIP {
		want = append(want, manifests.KubeVIPImage)
	}
	if !slices.Equal(k.Images, want) {
		t.Errorf("Kubernetes images %q, want %q", k.Images, want)
	}
	var refs []string
	for _, im := range meta.Images {
		refs = append(refs, im.Ref())
		if d := m.digests[im.Ref()]; d != im.Digest {
			t.Errorf("%s: digest %s in the bundle, the mirror holds %s", im.Ref(), im.Digest, d)
		}
		if !slices.Equal(im.From, []string{"kubernetes v1.35.4"}) {
			t.Errorf("%s: from %q", im.Ref(), im.From)
		}
	}
	slices.Sort(refs)
	slices.Sort(want)
	if !slices.Equal(refs, want) {
		t.Errorf("bundle images %q, want exactly %q", refs, want)
	}
	for name, data := range bins {
		f, ok := b.KubernetesBinary("amd64", name)
		if !ok || k.Binaries[name] != "kubernetes/v1.35.4/linux-amd64/"+name || f.Digest != "sha256:"+sha256hex(data) {
			t.Errorf("%s: %+v %v (binaries %v)", name, f, ok, k.Binaries)
			continue
		}
		got, err := b.ReadFile(f.Path)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %d bytes read, %v", name, len(got), err)
		}
	}
	var text bytes.Buffer
	b.Inspect().WriteText(&text)
	for _, s := range []string{"KUBERNETES v1.35.4", "kubernetes/v1.35.4/linux-amd64/kubectl", "registry.k8s.io/kube-apiserver:v1.35.4"} {
		if !strings.Contains(text.String(), s) {
			t.Errorf("inspect lacks %q:\n%s", s, text.String())
		}
	}
}

// Binaries from a local directory, images from an http mirror standing in
// for registry.k8s.io and ghcr.io: the bundle holds exactly kubeadm's
// images and kube-vip under their original names and digests, and the
// binaries checked against their .sha256 files; nothing is asked of any
// host but the mirror.
func TestBuildKubernetesFromLocalDirAndHTTPMirror(t *testing.T) {
	m := newKubeMirror(t)
	dir := t.TempDir()
	bins := kubeBinaries(t, dir)
	tr := &loopbackOnly{base: http.DefaultTransport}
	out, pub, _, err := buildKube(t, dir, fmt.Sprintf(`apiVersion: airlock.dev/v1alpha1
kind: Bundle
metadata: {name: k8s}
platforms: [linux/amd64]
kubernetes:
  binaries: release
registryMirrors:
  registry.k8s.io: %s
  ghcr.io: %s/
`, m.http.URL, m.http.URL), tr)
	if err != nil {
		t.Fatal(err)
	}
	checkKubeBundle(t, out, pub, m, bins, true)
	if m.count("http") == 0 || m.count("https") != 0 {
		t.Errorf("mirror requests: %v", m.requests)
	}
}

// Binaries from an http base URL, images from an https mirror on a
// loopback address (where go-containerregistry by itself would speak
// http): the pull keeps to https. A second build takes the binaries from
// the cache and fetches only their .sha256 files again.
func TestBuildKubernetesFromHTTPBaseAndHTTPSMirror(t *testing.T) {
	m := newKubeMirror(t)
	dir := t.TempDir()
	bins := kubeBinaries(t, dir)
	files := httptest.NewServer(http.FileServer(http.Dir(filepath.Join(dir, "release"))))
	defer files.Close()
	tr := &loopbackOnly{base: m.https.Client().Transport}
	spec := fmt.Sprintf(`apiVersion: airlock.dev/v1alpha1
kind: Bundle
kubernetes:
  version: v1.35.4
  binaries: %s
  kubeVIP: false
registryMirrors:
  registry.k8s.io: %s
`, files.URL, m.https.URL)
	out, pub, _, err := buildKube(t, dir, spec, tr)
	if err != nil {
		t.Fatal(err)
	}
	checkKubeBundle(t, out, pub, m, bins, false)
	if m.count("https") == 0 || m.count("http") != 0 {
		t.Errorf("mirror requests: %v", m.requests)
	}
	if n := tr.hits("/linux/amd64/kubelet"); n != 1 {
		t.Errorf("kubelet fetched %d times", n)
	}
	_, _, progress, err := buildKube(t, dir, spec, tr)
	if err != nil {
		t.Fatal(err)
	}
	if n := tr.hits("/linux/amd64/kubelet"); n != 1 {
		t.Errorf("kubelet fetched %d times after the second build: the cache was not used", n)
	}
	if n := tr.hits("/linux/amd64/kubelet.sha256"); n != 2 {
		t.Errorf("kubelet.sha256 fetched %d times in two builds", n)
	}
	if !strings.Contains(progress, "kubernetes/v1.35.4/linux-amd64/kubeadm: in the cache") {
		t.Errorf("second build's progress says nothing of the cache")
	}
}

// A .sha256 that does not match its binary fails the build, naming the
// .sha256 file and both digests; so do a .sha256 that holds no digest, a
// missing binary and an image the mirror lacks.
func TestBuildKubernetesRefuses(t *testing.T) {
	spec := func(m *kubeMirror) string {
		return fmt.Sprintf(`apiVersion: airlock.dev/v1alpha1
kind: Bundle
kubernetes: {binaries: release}
registryMirrors: {registry.k8s.io: %s, ghcr.io: %s}
`, m.http.URL, m.http.URL)
	}
	full, noEtcd := newKubeMirror(t), newKubeMirror(t, "registry.k8s.io/etcd:3.6.6-0")
	bin := filepath.Join("release", "v1.35.4", "bin", "linux", "amd64")
	for name, c := range map[string]struct {
		edit func(dir string)
		want []string
	}{
		"wrong sha256": {func(dir string) {
			os.WriteFile(filepath.Join(dir, bin, "kubeadm.sha256"), []byte(strings.Repeat("ab", 32)+"  kubeadm\n"), 0o644)
		}, []string{"kubeadm has sha256 ", filepath.Join(bin, "kubeadm.sha256") + " says " + strings.Repeat("ab", 32)}},
		"no digest in sha256": {func(dir string) {
			os.WriteFile(filepath.Join(dir, bin, "kubectl.sha256"), []byte("<html>not found</html>"), 0o644)
		}, []string{"kubectl.sha256 holds no SHA-256"}},
		"huge sha256": {func(dir string) {
			os.WriteFile(filepath.Join(dir, bin, "kubelet.sha256"), bytes.Repeat([]byte("a"), 1<<20), 0o644)
		}, []string{"kubelet.sha256: more than the 4096 bytes"}},
		"missing binary": {func(dir string) { os.Remove(filepath.Join(dir, bin, "kubelet")) }, []string{"kubernetes v1.35.4 kubelet for linux/amd64", "kubelet: no such file"}},
		"image missing":  {nil, []string{"registry.k8s.io/etcd:3.6.6-0"}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			bins := kubeBinaries(t, dir)
			if c.edit != nil {
				c.edit(dir)
			}
			m := full
			if name == "image missing" {
				m = noEtcd
			}
			_, _, _, err := buildKube(t, dir, spec(m), &loopbackOnly{base: http.DefaultTransport})
			if err == nil {
				t.Fatal("built")
			}
			t.Logf("refused: %v", err)
			if name == "wrong sha256" {
				c.want = append(c.want, sha256hex(bins["kubeadm"]))
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
			if _, serr := os.Stat(filepath.Join(dir, "site.bundle")); serr == nil {
				t.Error("a bundle was written")
			}
		})
	}
}

// A spec whose platforms name two linux architectures carries the binaries
// of both: amd64 as the set's Arch, arm64 among its OtherArches, each
// found by KubernetesBinary.
func TestBuildKubernetesTwoArches(t *testing.T) {
	m := newKubeMirror(t)
	dir := t.TempDir()
	arm := kubeBinariesFor(t, dir, "arm64")
	amd := kubeBinariesFor(t, dir, "amd64")
	out, pub, _, err := buildKube(t, dir, fmt.Sprintf(`apiVersion: airlock.dev/v1alpha1
kind: Bundle
platforms: [linux/arm64/v8, linux/amd64]
kubernetes: {binaries: release, kubeVIP: false}
registryMirrors: {registry.k8s.io: %s}
`, m.http.URL), &loopbackOnly{base: http.DefaultTransport})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Open(out, bundle.Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	k := b.Metadata().Kubernetes
	if k.Arch != "amd64" || len(k.OtherArches) != 1 || len(k.OtherArches["arm64"]) != 3 {
		t.Fatalf("set: %+v", k)
	}
	for arch, bins := range map[string]map[string][]byte{"amd64": amd, "arm64": arm} {
		for name, data := range bins {
			f, ok := b.KubernetesBinary(arch, name)
			if !ok || f.Name != "kubernetes/v1.35.4/linux-"+arch+"/"+name {
				t.Fatalf("%s/%s: %+v %v", arch, name, f, ok)
			}
			if got, err := b.ReadFile(f.Path); err != nil || !bytes.Equal(got, data) {
				t.Errorf("%s/%s: %v", arch, name, err)
			}
		}
	}
}

// pullRef sends a registry's images to its mirror, keeping path, tag and
// digest; Docker Hub is docker.io however the key spells it; the mirror's
// scheme is kept by mirrorTransport whatever go-containerregistry picks.
func TestPullRefThroughMirrors(t *testing.T) {
	mirrors, schemes, err := parseMirrors(map[string]string{"index.docker.io": "https://hub.example:8443", "registry.k8s.io": "http://10.1.2.3:5001/"})
	if err != nil {
		t.Fatal(err)
	}
	b := &builder{mirrors: mirrors}
	d := "sha256:" + strings.Repeat("c", 64)
	for in, want := range map[string]string{
		"nginx:1.25": "hub.example:8443/library/nginx:1.25",
		"registry.k8s.io/coredns/coredns:v1.13.1": "10.1.2.3:5001/coredns/coredns:v1.13.1",
		"registry.k8s.io/pause@" + d:              "10.1.2.3:5001/pause@" + d,
		"quay.io/x/y:1":                           "quay.io/x/y:1",
	} {
		r, err := ParseImageRef(in)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := b.pullRef(r)
		if err != nil || ref.String() != want {
			t.Errorf("pullRef(%s) = %v, %v; want %s", in, ref, err, want)
		}
	}
	if schemes["hub.example:8443"] != "https" || schemes["10.1.2.3:5001"] != "http" {
		t.Errorf("schemes %v", schemes)
	}
	// go-containerregistry speaks http to a private address; the transport
	// puts back the https the mirror was given with.
	var seen string
	tr := &mirrorTransport{schemes: map[string]string{"10.1.2.3:5001": "https"}, base: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		seen = r.URL.String()
		return nil, fmt.Errorf("stop")
	})}
	req, _ := http.NewRequest(http.MethodGet, "http://10.1.2.3:5001/v2/", nil)
	tr.RoundTrip(req)
	if seen != "https://10.1.2.3:5001/v2/" {
		t.Errorf("request went to %s", seen)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// The Kubernetes images of a built bundle, served by airlock's registry,
// answer a node that asks the way containerd does through its
// registry.k8s.io and ghcr.io mirrors (/v2/NAME/manifests/TAG?ns=UPSTREAM)
// with the very manifests the mirror the bundle was built from holds.
func TestKubernetesImagesServedByOriginalName(t *testing.T) {
	m := newKubeMirror(t)
	dir := t.TempDir()
	kubeBinaries(t, dir)
	out, pub, _, err := buildKube(t, dir, fmt.Sprintf(`apiVersion: airlock.dev/v1alpha1
kind: Bundle
kubernetes: {binaries: release}
registryMirrors: {registry.k8s.io: %s, ghcr.io: %s}
`, m.http.URL, m.http.URL), &loopbackOnly{base: http.DefaultTransport})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Open(out, bundle.Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- registry.New(b, slog.New(slog.DiscardHandler)).Run(ctx, l) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("registry: %v", err)
		}
	}()
	for _, ref := range b.Metadata().Kubernetes.Images {
		host, rest, _ := strings.Cut(ref, "/")
		repo, tag, _ := strings.Cut(rest, ":")
		u := fmt.Sprintf("http://%s/v2/%s/manifests/%s?ns=%s", l.Addr(), repo, tag, host)
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || "sha256:"+sha256hex(body) != m.digests[ref] || resp.Header.Get("Docker-Content-Digest") != m.digests[ref] {
			t.Errorf("GET %s: %s, digest %s (header %s), the mirror's %s", u, resp.Status, sha256hex(body), resp.Header.Get("Docker-Content-Digest"), m.digests[ref])
		}
	}
}
