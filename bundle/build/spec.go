// Package build gathers what a site needs into a signed airlock bundle, on
// the connected side: container images (go-containerregistry, multi-arch
// indexes kept, blobs de-duplicated), Helm charts (chart repositories, OCI
// chart references and local directories, through the Helm SDK, with every
// image the rendered chart references), files checked against their
// SHA-256, and OS images (raw, gzip, xz, zstd, or qcow2 converted to raw
// zstd), recorded with their raw size and SHA-256. Downloads go into a
// cache directory so that a second run reuses what the first fetched.
package build

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/manifests"
)

// APIVersion and Kind of bundle.yaml.
const (
	APIVersion = "airlock.dev/v1alpha1"
	Kind       = "Bundle"
)

// Spec is bundle.yaml: what goes into a bundle.
type Spec struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	// Platforms are the default platforms kept from multi-arch images
	// (os/arch[/variant]); empty keeps every platform.
	Platforms []string `yaml:"platforms" json:"platforms,omitempty"`
	// Components are the platform catalog components (manifests) this
	// bundle carries the charts and images for.
	Components []string    `yaml:"components" json:"components,omitempty"`
	Images     []ImageSpec `yaml:"images" json:"images,omitempty"`
	Charts     []ChartSpec `yaml:"charts" json:"charts,omitempty"`
	Files      []FileSpec  `yaml:"files" json:"files,omitempty"`
	// OSImages are the operating system images installs write to disks.
	OSImages []OSImageSpec `yaml:"osImages" json:"osImages,omitempty"`
	// Kubernetes, when set, carries the binaries and images the nodes need
	// to form a cluster of that Kubernetes version (see KubernetesSpec).
	Kubernetes *KubernetesSpec `yaml:"kubernetes" json:"kubernetes,omitempty"`
	// RegistryMirrors sends the build's pulls of a registry's images
	// (key: registry host as in image references, e.g. registry.k8s.io,
	// docker.io) to another registry (value: http://HOST[:PORT] or
	// https://HOST[:PORT]). Only where the bytes come from changes: the
	// bundle records the original names, and digests are checked as
	// always. http is for tests and pull-through caches on the connected
	// side.
	RegistryMirrors map[string]string `yaml:"registryMirrors" json:"registryMirrors,omitempty"`
}

// KubernetesSpec is the kubernetes: section of bundle.yaml.
type KubernetesSpec struct {
	// Version is the Kubernetes release, vX.Y.Z (default
	// manifests.DefaultKubernetesVersion); airlock must have its image
	// table (manifests.KubernetesImages).
	Version string `yaml:"version" json:"version,omitempty"`
	// Binaries is where kubelet, kubeadm and kubectl come from: a base URL
	// (http or https) or a local directory (relative to bundle.yaml) laid
	// out as upstream's: BASE/VERSION/bin/linux/ARCH/NAME, each checked
	// against BASE/VERSION/bin/linux/ARCH/NAME.sha256. Default
	// DefaultKubernetesBinaries.
	Binaries string `yaml:"binaries" json:"binaries,omitempty"`
	// KubeVIP adds manifests.KubeVIPImage (the control-plane VIP's
	// holder); default true.
	KubeVIP *bool `yaml:"kubeVIP" json:"kubeVIP,omitempty"`
}

// DefaultKubernetesBinaries is upstream's release download site.
const DefaultKubernetesBinaries = "https://dl.k8s.io/release"

// withDefaults returns k with its defaults filled in.
func (k KubernetesSpec) withDefaults() KubernetesSpec {
	if k.Version == "" {
		k.Version = manifests.DefaultKubernetesVersion
	}
	if k.Binaries == "" {
		k.Binaries = DefaultKubernetesBinaries
	}
	if k.KubeVIP == nil {
		t := true
		k.KubeVIP = &t
	}
	return k
}

// KubernetesArches are the architectures the Kubernetes binaries are
// carried for: those of the spec's linux platforms (linux/arm64/v8 is
// arm64), amd64 when it names none.
func (s *Spec) KubernetesArches() []string {
	var out []string
	for _, p := range s.Platforms {
		parts := strings.Split(p, "/")
		if len(parts) >= 2 && parts[0] == "linux" && !slices.Contains(out, parts[1]) {
			out = append(out, parts[1])
		}
	}
	if len(out) == 0 {
		out = []string{"amd64"}
	}
	return out
}

// KubernetesFileName is the bundle file (a bundle.File Name, under files/
// in the archive) holding a Kubernetes binary.
func KubernetesFileName(version, arch, binary string) string {
	return "kubernetes/" + version + "/linux-" + arch + "/" + binary
}

// Metadata names the bundle.
type Metadata struct {
	Name string `yaml:"name" json:"name"`
}

// ImageSpec is one image to carry.
type ImageSpec struct {
	// Ref is the image reference as the cluster will ask for it
	// (nginx:1.25, registry.k8s.io/pause:3.10, nvcr.io/nvidia/x@sha256:...).
	Ref string `yaml:"ref" json:"ref"`
	// Platforms overrides the bundle's default platforms for this image.
	Platforms []string `yaml:"platforms" json:"platforms,omitempty"`
}

// ChartSpec is one Helm chart to carry. Exactly one of Repo, OCI and Path
// says where it comes from.
type ChartSpec struct {
	// Name of the chart (in the repository, or the name to give a local chart).
	Name string `yaml:"name" json:"name"`
	// Repo is a chart repository URL (http or https, serving index.yaml).
	Repo string `yaml:"repo" json:"repo,omitempty"`
	// OCI is an OCI chart reference: oci://registry/path/name.
	OCI string `yaml:"oci" json:"oci,omitempty"`
	// Path is a local chart directory or .tgz, relative to bundle.yaml.
	Path string `yaml:"path" json:"path,omitempty"`
	// Version of the chart; required for Repo and OCI.
	Version string `yaml:"version" json:"version,omitempty"`
	// Namespace and Values are used to render the chart, so that the
	// images it references with the site's values are carried too.
	Namespace string         `yaml:"namespace" json:"namespace,omitempty"`
	Values    map[string]any `yaml:"values" json:"values,omitempty"`
	// KubeVersion is the Kubernetes version to render for (default the
	// bundle's kubernetes.version, else manifests.DefaultKubernetesVersion).
	KubeVersion string `yaml:"kubeVersion" json:"kubeVersion,omitempty"`
	// SkipImages leaves out the images the chart references.
	SkipImages bool `yaml:"skipImages" json:"skipImages,omitempty"`
}

// FileSpec is one file to carry.
type FileSpec struct {
	// Name is the file's path in the bundle, under files/.
	Name string `yaml:"name" json:"name"`
	// URL is an http(s) URL or a local path (relative to bundle.yaml).
	URL string `yaml:"url" json:"url"`
	// SHA256 is the file's required digest (64 hex digits).
	SHA256 string `yaml:"sha256" json:"sha256"`
}

// OSImageSpec is one operating system image to carry: a local raw disk
// image, compressed (gzip, xz, zstd) or not, or a qcow2 image, which the
// build converts to a raw image compressed with zstd. The format is found
// from the file's first bytes, never from its name.
type OSImageSpec struct {
	// Name is what the answer file's machine rules name (osImage:), e.g.
	// debian-12.
	Name string `yaml:"name" json:"name"`
	// Path is the image file, relative to bundle.yaml.
	Path string `yaml:"path" json:"path"`
	// RawSHA256, if given, is the SHA-256 the raw disk image must have
	// (64 hex digits); the build and bundle check compare it.
	RawSHA256 string `yaml:"rawSHA256" json:"rawSHA256,omitempty"`
}

// ParseSpec strictly decodes bundle.yaml and validates it. Problems are
// FILE:LINE:COL: field.path: message.
func ParseSpec(file string, data []byte) (*Spec, config.Problems) {
	var s Spec
	pos, problems := config.Decode(file, data, &s)
	failed := map[string]bool{}
	for _, p := range problems {
		failed[p.Path] = true
	}
	if _, parsed := pos[""]; parsed {
		problems = append(problems, s.validate(file, pos, failed)...)
	}
	problems.Sort()
	return &s, problems
}

// LoadSpec reads and parses a bundle.yaml.
func LoadSpec(path string) (*Spec, config.Problems, error) {
	data, err := bundle.ReadRegularFile(path, MaxSpecSize, "bundle spec")
	if err != nil {
		return nil, nil, err
	}
	s, p := ParseSpec(path, data)
	return s, p, nil
}

// MaxSpecSize bounds a bundle.yaml: thousands of images take well under 1 MiB.
const MaxSpecSize = 4 << 20

var (
	platformRE = regexp.MustCompile(`^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$`)
	sha256RE   = regexp.MustCompile(`^[a-f0-9]{64}$`)
	chartRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`)
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$`)
)

func (s *Spec) validate(file string, pos config.Positions, failed map[string]bool) config.Problems {
	var ps config.Problems
	add := func(path, format string, args ...any) {
		if failed[path] {
			return
		}
		p := config.Problem{File: file, Path: path, Message: fmt.Sprintf(format, args...)}
		if at, ok := pos.Lookup(path); ok {
			p.Line, p.Col = at.Line, at.Col
		}
		ps = append(ps, p)
	}
	if s.APIVersion != APIVersion {
		add("apiVersion", "must be %s (got %q)", APIVersion, s.APIVersion)
	}
	if s.Kind != Kind {
		add("kind", "must be %s (got %q)", Kind, s.Kind)
	}
	checkPlatforms := func(path string, list []string) {
		for i, p := range list {
			if !platformRE.MatchString(p) {
				add(fmt.Sprintf("%s[%d]", path, i), "%q is not a platform; write os/arch or os/arch/variant, like linux/amd64 or linux/arm64/v8", p)
			}
		}
	}
	checkPlatforms("platforms", s.Platforms)
	catalog := manifests.Default()
	seenComp := map[string]bool{}
	for i, c := range s.Components {
		path := fmt.Sprintf("components[%d]", i)
		if _, ok := catalog.Component(c); !ok {
			add(path, "%q is not a platform component; the catalog has %s", c, strings.Join(catalog.Names(), ", "))
		} else if seenComp[c] {
			add(path, "%q is listed twice", c)
		}
		seenComp[c] = true
	}
	seenImg := map[string]int{}
	for i, im := range s.Images {
		path := fmt.Sprintf("images[%d]", i)
		if im.Ref == "" {
			add(path+".ref", "required: the image reference, like registry.k8s.io/pause:3.10")
			continue
		}
		r, err := ParseImageRef(im.Ref)
		if err != nil {
			add(path+".ref", "%v", err)
			continue
		}
		if j, dup := seenImg[r.String()]; dup {
			add(path+".ref", "%s is listed twice (also images[%d])", r, j)
		}
		seenImg[r.String()] = i
		checkPlatforms(path+".platforms", im.Platforms)
	}
	seenChart := map[string]int{}
	for i, c := range s.Charts {
		path := fmt.Sprintf("charts[%d]", i)
		n := 0
		for _, v := range []string{c.Repo, c.OCI, c.Path} {
			if v != "" {
				n++
			}
		}
		if n != 1 {
			add(path, "give exactly one of repo (a chart repository URL), oci (oci://registry/path/name) or path (a local chart)")
		}
		if c.Name == "" && c.OCI == "" {
			add(path+".name", "required: the chart's name")
		} else if c.Name != "" && !chartRE.MatchString(c.Name) {
			add(path+".name", "%q is not a chart name (lower-case letters, digits, '-', '_', '.')", c.Name)
		}
		if c.Repo != "" {
			if u, err := url.Parse(c.Repo); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				add(path+".repo", "%q is not an http(s) chart repository URL", c.Repo)
			}
		}
		if c.OCI != "" {
			if !strings.HasPrefix(c.OCI, "oci://") {
				add(path+".oci", "%q must start with oci://", c.OCI)
			} else if _, err := ParseImageRef(strings.TrimPrefix(c.OCI, "oci://") + ":" + orDefault(c.Version, "0")); err != nil {
				add(path+".oci", "%v", err)
			}
		}
		if (c.Repo != "" || c.OCI != "") && c.Version == "" {
			add(path+".version", "required for a chart from a repository: pin the exact version")
		}
		if c.KubeVersion != "" && !regexp.MustCompile(`^v?\d+\.\d+(\.\d+)?$`).MatchString(c.KubeVersion) {
			add(path+".kubeVersion", "%q is not a Kubernetes version like v1.35.4", c.KubeVersion)
		}
		key := c.Name + "@" + c.Version
		if j, dup := seenChart[key]; dup && c.Name != "" {
			add(path+".name", "chart %s %s is listed twice (also charts[%d])", c.Name, c.Version, j)
		}
		seenChart[key] = i
	}
	seenFile := map[string]int{}
	for i, f := range s.Files {
		path := fmt.Sprintf("files[%d]", i)
		switch {
		case f.Name == "":
			add(path+".name", "required: the file's name in the bundle, like vmlinuz or ipxe/undionly.kpxe")
		case !fileNameRE.MatchString(f.Name) || strings.Contains("/"+f.Name+"/", "/../") || strings.Contains("/"+f.Name+"/", "/./"):
			add(path+".name", "%q is not a clean relative name (letters, digits, '.', '_', '-', and '/' between parts)", f.Name)
		default:
			if j, dup := seenFile[f.Name]; dup {
				add(path+".name", "%q is listed twice (also files[%d])", f.Name, j)
			}
			seenFile[f.Name] = i
		}
		if f.URL == "" {
			add(path+".url", "required: an http(s) URL or a local path")
		} else if u, err := url.Parse(f.URL); err == nil && u.Scheme != "" && u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file" {
			add(path+".url", "scheme %q is not supported: use http, https or a local path", u.Scheme)
		}
		if !sha256RE.MatchString(f.SHA256) {
			add(path+".sha256", "required: the file's SHA-256 as 64 lower-case hex digits (sha256sum prints it)")
		}
	}
	seenOS := map[string]int{}
	for i, im := range s.OSImages {
		path := fmt.Sprintf("osImages[%d]", i)
		switch {
		case im.Name == "":
			add(path+".name", "required: the name machine rules give as osImage, like debian-12")
		case !bundle.ValidOSImageName(im.Name):
			add(path+".name", "%q is not an OS image name (1 to 63 lower-case letters, digits, '.', '_', '-', starting and ending with a letter or digit)", im.Name)
		default:
			if j, dup := seenOS[im.Name]; dup {
				add(path+".name", "%q is listed twice (also osImages[%d])", im.Name, j)
			}
			seenOS[im.Name] = i
		}
		if im.Path == "" {
			add(path+".path", "required: the image file (raw, gzip, xz, zstd or qcow2), relative to bundle.yaml")
		} else if u, err := url.Parse(im.Path); err == nil && u.Scheme != "" && len(u.Scheme) > 1 {
			add(path+".path", "%q is a URL: give a local file (download it first, and check it against its publisher's checksum)", im.Path)
		}
		if im.RawSHA256 != "" && !sha256RE.MatchString(im.RawSHA256) {
			add(path+".rawSHA256", "%q is not a SHA-256: 64 lower-case hex digits", im.RawSHA256)
		}
	}
	s.validateKubernetes(add, seenFile)
	s.validateMirrors(add)
	if len(s.Images)+len(s.Charts)+len(s.Files)+len(s.OSImages) == 0 && s.Kubernetes == nil {
		add("", "the bundle is empty: list images, charts, files or OS images, or give kubernetes")
	}
	return ps
}

var kubeVersionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)

// validateKubernetes checks the kubernetes: section. seenFile holds the
// files: names, which may not take a Kubernetes binary's place.
func (s *Spec) validateKubernetes(add func(path, format string, args ...any), seenFile map[string]int) {
	if s.Kubernetes == nil {
		return
	}
	k := s.Kubernetes.withDefaults()
	switch {
	case !kubeVersionRE.MatchString(k.Version):
		add("kubernetes.version", "%q is not a Kubernetes version like %s", k.Version, manifests.DefaultKubernetesVersion)
	default:
		if _, err := manifests.KubernetesImages(k.Version); err != nil {
			add("kubernetes.version", "airlock has no image table for Kubernetes %s (it knows %s); see manifests/kubernetes.go for how to add one",
				k.Version, strings.Join(manifests.KubernetesVersions(), ", "))
		}
		for _, arch := range s.KubernetesArches() {
			for _, bin := range bundle.KubernetesBinaries {
				n := KubernetesFileName(k.Version, arch, bin)
				if j, dup := seenFile[n]; dup {
					add(fmt.Sprintf("files[%d].name", j), "%q is where the kubernetes section puts %s for linux/%s: choose another name", n, bin, arch)
				}
			}
		}
	}
	if u, err := url.Parse(k.Binaries); err == nil && u.Scheme != "" && len(u.Scheme) > 1 {
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("kubernetes.binaries", "%q: give an http(s) base URL (like %s) or a local directory", k.Binaries, DefaultKubernetesBinaries)
		} else if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			add("kubernetes.binaries", "%q: a base URL has no query, fragment or credentials", k.Binaries)
		}
	}
}

var mirrorHostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$`)

// validateMirrors checks registryMirrors: registry hosts mapped to
// http(s)://HOST[:PORT] endpoints, one per registry.
func (s *Spec) validateMirrors(add func(path, format string, args ...any)) {
	keys := make([]string, 0, len(s.RegistryMirrors))
	for k := range s.RegistryMirrors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	seen := map[string]string{}
	for _, k := range keys {
		path := "registryMirrors." + k
		if !mirrorHostRE.MatchString(k) {
			add(path, "%q is not a registry host as image references name it (like registry.k8s.io, docker.io or localhost:5000)", k)
			continue
		}
		reg := mirrorKey(k)
		if other, dup := seen[reg]; dup {
			add(path, "%q is the same registry as %q", k, other)
		}
		seen[reg] = k
		if _, err := parseMirror(s.RegistryMirrors[k]); err != nil {
			add(path, "%v", err)
		}
	}
}

// mirrorKey names a registry as ImageRef does: docker.io for Docker Hub.
func mirrorKey(host string) string {
	if r, err := name.NewRegistry(host); err == nil && r.RegistryStr() == name.DefaultRegistry {
		return "docker.io"
	}
	return host
}

// mirror is a registryMirrors endpoint.
type mirror struct {
	scheme, host string // http or https; HOST[:PORT]
}

// parseMirror parses http(s)://HOST[:PORT] (a trailing slash allowed).
func parseMirror(endpoint string) (mirror, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return mirror{}, fmt.Errorf("%q: give the mirror as http://HOST[:PORT] or https://HOST[:PORT]", endpoint)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return mirror{}, fmt.Errorf("%q: a mirror is a registry's root: http(s)://HOST[:PORT] with no path, query or credentials", endpoint)
	}
	if _, err := name.NewRegistry(u.Host); err != nil {
		return mirror{}, fmt.Errorf("%q: %v", endpoint, err)
	}
	return mirror{scheme: u.Scheme, host: u.Host}, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
