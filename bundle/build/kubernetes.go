package build

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/manifests"
)

// Bounds on what the Kubernetes binaries' sources may send: an upstream
// NAME.sha256 holds 64 hex digits (sha256sum's "HEX  NAME" line is taken
// too), and kubelet, kubeadm and kubectl are some 50-100 MiB each.
const (
	maxSHA256File        = 4 << 10
	MaxKubernetesBinary  = 1 << 30
	kubernetesImagesFrom = "kubernetes "
)

var sha256FileRE = regexp.MustCompile(`^[A-Fa-f0-9]{64}$`)

// kubernetesSet is what the kubernetes: section adds: the images (by the
// references nodes use) and, once fetched, the binaries.
type kubernetesSet struct {
	spec   KubernetesSpec // with defaults
	arches []string
	images []string
}

// kubernetesPlan works out the kubernetes: section's images and arches.
func kubernetesPlan(s *Spec) (*kubernetesSet, error) {
	if s.Kubernetes == nil {
		return nil, nil
	}
	k := s.Kubernetes.withDefaults()
	imgs, err := manifests.KubernetesImages(k.Version)
	if err != nil {
		return nil, err
	}
	if *k.KubeVIP {
		imgs = append(imgs, manifests.KubeVIPImage)
	}
	arches := s.KubernetesArches()
	// amd64 first when it is there: it is the Arch the metadata names.
	if i := slices.Index(arches, "amd64"); i > 0 {
		arches = append([]string{"amd64"}, slices.Delete(slices.Clone(arches), i, i+1)...)
	}
	return &kubernetesSet{spec: k, arches: arches, images: imgs}, nil
}

// kubernetesBinaries fetches kubelet, kubeadm and kubectl for every arch
// from BASE/VERSION/bin/linux/ARCH/NAME, each checked against the
// NAME.sha256 beside it, into the cache (a copy there with that digest is
// reused), and records them as bundle files.
func (b *builder) kubernetesBinaries(ctx context.Context, ks *kubernetesSet) (*bundle.Kubernetes, error) {
	k := ks.spec
	meta := &bundle.Kubernetes{Version: k.Version, Images: ks.images}
	base := strings.TrimSuffix(k.Binaries, "/")
	for _, arch := range ks.arches {
		bins := map[string]string{}
		for _, bin := range bundle.KubernetesBinaries {
			src := base + "/" + k.Version + "/bin/linux/" + arch + "/" + bin
			f, err := b.kubernetesBinary(ctx, src, KubernetesFileName(k.Version, arch, bin))
			if err != nil {
				return nil, fmt.Errorf("kubernetes %s %s for linux/%s: %w", k.Version, bin, arch, err)
			}
			bins[bin] = f.Name
		}
		if meta.Binaries == nil {
			meta.Arch, meta.Binaries = arch, bins
			continue
		}
		if meta.OtherArches == nil {
			meta.OtherArches = map[string]map[string]string{}
		}
		meta.OtherArches[arch] = bins
	}
	return meta, nil
}

// kubernetesBinary fetches one binary from src, checked against
// src.sha256, and records it as the bundle file fname.
func (b *builder) kubernetesBinary(ctx context.Context, src, fname string) (bundle.File, error) {
	sumSrc := src + ".sha256"
	raw, err := b.readSmall(ctx, sumSrc, maxSHA256File)
	if err != nil {
		return bundle.File{}, err
	}
	fields := strings.Fields(string(raw))
	if len(fields) == 0 || !sha256FileRE.MatchString(fields[0]) || len(fields) > 2 {
		return bundle.File{}, fmt.Errorf("%s holds no SHA-256 (64 hex digits, as upstream's .sha256 files do): %q", sumSrc, truncate(string(raw), 100))
	}
	sum := strings.ToLower(fields[0])
	want := "sha256:" + sum
	cached := filepath.Join(b.cache, "files", sum)
	have, err := hashFile(cached)
	if err == nil && have.digest == want {
		b.prog.linef("kubernetes %s: in the cache (%s)", fname, bundle.HumanSize(have.n))
	} else {
		n, err := b.download(ctx, src, cached, want, MaxKubernetesBinary, sumSrc)
		if err != nil {
			return bundle.File{}, err
		}
		have.n = n
		b.prog.linef("kubernetes %s: %s, sha256 ok (%s)", fname, bundle.HumanSize(n), sumSrc)
	}
	f := bundle.File{Name: fname, Path: "files/" + fname, Size: have.n, Digest: want, Source: src}
	b.files = append(b.files, f)
	b.fileCache[f.Path] = cached
	return f, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// pullRef is the reference to pull r from: r itself, or, when
// registryMirrors names r's registry, the same repository path, tag and
// digest at the mirror.
func (b *builder) pullRef(r ImageRef) (name.Reference, error) {
	host, path, _ := strings.Cut(r.Repository, "/")
	m, ok := b.mirrors[host]
	if !ok {
		return r.fetchRef()
	}
	var opts []name.Option
	if m.scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	return ImageRef{Repository: m.host + "/" + path, Tag: r.Tag, Digest: r.Digest}.fetchRef(opts...)
}

// mirrorTransport makes every request to a mirror use the scheme its
// endpoint gives: go-containerregistry picks http by itself for loopback
// and private addresses, which would turn an https mirror there into an
// http one.
type mirrorTransport struct {
	base    http.RoundTripper
	schemes map[string]string // HOST[:PORT] -> http or https
}

func (t *mirrorTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if s, ok := t.schemes[req.URL.Host]; ok && req.URL.Scheme != s {
		req = req.Clone(req.Context())
		req.URL.Scheme = s
	}
	return t.base.RoundTrip(req)
}

// parseMirrors turns registryMirrors into mirrors by registry (docker.io
// for Docker Hub), and the schemes the transport must keep.
func parseMirrors(spec map[string]string) (map[string]mirror, map[string]string, error) {
	mirrors := map[string]mirror{}
	schemes := map[string]string{}
	for k, v := range spec {
		m, err := parseMirror(v)
		if err != nil {
			return nil, nil, fmt.Errorf("registryMirrors.%s: %w", k, err)
		}
		if s, ok := schemes[m.host]; ok && s != m.scheme {
			return nil, nil, fmt.Errorf("registryMirrors.%s: %s is given as both http and https", k, m.host)
		}
		mirrors[mirrorKey(k)] = m
		schemes[m.host] = m.scheme
	}
	return mirrors, schemes, nil
}

// KubernetesBinaryCheck is what CheckKubernetesBinaries found of one
// binary in a local directory.
type KubernetesBinaryCheck struct {
	Arch, Name string
	// Source is the binary's path as bundle.yaml's base gives it.
	Source string
	// SHA256 is the binary's digest (hex), once it matched its .sha256.
	SHA256 string
	Size   int64
	// Err says what is missing or wrong, naming the file.
	Err error
}

// KubernetesImageRefs are the images the kubernetes: section adds (kubeadm's
// of its version, and kube-vip unless kubeVIP is false), nil without one.
func (s *Spec) KubernetesImageRefs() ([]string, error) {
	ks, err := kubernetesPlan(s)
	if ks == nil || err != nil {
		return nil, err
	}
	return ks.images, nil
}

// CheckKubernetesBinaries checks, as build would, every binary of the
// kubernetes: section when its base is a local directory: that it and its
// .sha256 are there and agree. A base URL is not fetched (bundle check
// stays offline): remote is then true and nothing is checked.
func CheckKubernetesBinaries(ctx context.Context, s *Spec, specDir string) (checks []KubernetesBinaryCheck, remote bool) {
	ks, err := kubernetesPlan(s)
	if ks == nil || err != nil {
		return nil, false
	}
	if u, err := url.Parse(ks.spec.Binaries); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		return nil, true
	}
	b := &builder{opts: Options{SpecDir: specDir}}
	base := strings.TrimSuffix(ks.spec.Binaries, "/")
	for _, arch := range ks.arches {
		for _, bin := range bundle.KubernetesBinaries {
			c := KubernetesBinaryCheck{Arch: arch, Name: bin, Source: base + "/" + ks.spec.Version + "/bin/linux/" + arch + "/" + bin}
			c.SHA256, c.Size, c.Err = b.checkLocalBinary(ctx, c.Source)
			checks = append(checks, c)
		}
	}
	return checks, false
}

// checkLocalBinary hashes the local binary src and compares it with
// src.sha256.
func (b *builder) checkLocalBinary(ctx context.Context, src string) (string, int64, error) {
	raw, err := b.readSmall(ctx, src+".sha256", maxSHA256File)
	if err != nil {
		return "", 0, err
	}
	fields := strings.Fields(string(raw))
	if len(fields) == 0 || !sha256FileRE.MatchString(fields[0]) || len(fields) > 2 {
		return "", 0, fmt.Errorf("%s.sha256 holds no SHA-256 (64 hex digits)", src)
	}
	want := strings.ToLower(fields[0])
	p := src
	if !filepath.IsAbs(p) {
		p = filepath.Join(b.opts.SpecDir, p)
	}
	if st, err := os.Stat(p); err == nil && st.Size() > MaxKubernetesBinary {
		return "", 0, fmt.Errorf("%s: %d bytes, more than a Kubernetes binary has (%d)", src, st.Size(), int64(MaxKubernetesBinary))
	}
	got, err := hashFile(p)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", src, err)
	}
	if got.digest != "sha256:"+want {
		return "", 0, fmt.Errorf("%s has sha256 %s, %s.sha256 says %s", src, strings.TrimPrefix(got.digest, "sha256:"), src, want)
	}
	return want, got.n, nil
}
