package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.yaml.in/yaml/v3"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/getter"
	"helm.sh/helm/v3/pkg/repo"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/manifests"
)

// DefaultKubeVersion is the Kubernetes version charts are rendered for
// when neither the chart's kubeVersion nor the bundle's kubernetes.version
// says otherwise.
const DefaultKubeVersion = manifests.DefaultKubernetesVersion

const helmChartLayer = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"

type chartImage struct {
	ref   ImageRef
	chart string
}

// chart fetches (or packages) a chart, stores its archive in the cache,
// renders it with the spec's values and returns the images it references.
// Helm runs with throwaway directories: it never reads ~/.config/helm or
// ~/.cache/helm, nor anything but the chart's own source.
func (b *builder) chart(ctx context.Context, c ChartSpec) ([]chartImage, error) {
	tmp, err := os.MkdirTemp(filepath.Join(b.cache, "tmp"), "helm-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var archive []byte
	source := chartLabel(c)
	switch {
	case c.Repo != "":
		archive, err = b.chartFromRepo(ctx, c, tmp)
	case c.OCI != "":
		archive, err = b.chartFromOCI(ctx, c)
	default:
		archive, err = b.chartFromPath(c, tmp)
	}
	if err != nil {
		return nil, err
	}
	ch, err := loader.LoadArchive(bytes.NewReader(archive))
	if err != nil {
		return nil, fmt.Errorf("load chart: %w", err)
	}
	md := ch.Metadata
	if c.Name != "" && md.Name != c.Name {
		return nil, fmt.Errorf("the chart is named %q, bundle.yaml says %q", md.Name, c.Name)
	}
	if c.Version != "" && md.Version != c.Version {
		return nil, fmt.Errorf("the chart has version %s, bundle.yaml says %s", md.Version, c.Version)
	}
	sum := sha256.Sum256(archive)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	cached := filepath.Join(b.cache, "charts", md.Name+"-"+md.Version+".tgz")
	if err := os.WriteFile(cached, archive, 0o644); err != nil {
		return nil, err
	}
	var images []string
	if !c.SkipImages {
		if k := b.opts.Spec.Kubernetes; c.KubeVersion == "" && k != nil && k.Version != "" {
			c.KubeVersion = k.Version // the cluster the bundle is for
		}
		images, err = renderImages(ctx, ch, c)
		if err != nil {
			return nil, err
		}
	}
	p := "charts/" + md.Name + "-" + md.Version + ".tgz"
	for _, old := range b.charts {
		if old.Path == p {
			return nil, fmt.Errorf("chart %s %s is listed twice", md.Name, md.Version)
		}
	}
	b.charts = append(b.charts, bundle.Chart{Name: md.Name, Version: md.Version, Path: p, Digest: digest, Source: source, Images: images})
	b.chartFile[p] = cached
	b.prog.linef("chart %s %s: %d images when rendered", md.Name, md.Version, len(images))
	var out []chartImage
	for _, s := range images {
		r, err := ParseImageRef(s)
		if err != nil {
			return nil, fmt.Errorf("rendered chart references %q: %w", s, err)
		}
		out = append(out, chartImage{ref: r, chart: md.Name})
	}
	return out, nil
}

func (b *builder) getters() getter.Providers {
	var opts []getter.Option
	if t, ok := b.client.Transport.(*http.Transport); ok {
		opts = append(opts, getter.WithTransport(t))
	}
	return getter.Providers{{
		Schemes: []string{"http", "https"},
		New: func(o ...getter.Option) (getter.Getter, error) {
			return getter.NewHTTPGetter(append(opts, o...)...)
		},
	}}
}

// chartFromRepo downloads a chart from a chart repository, or takes it
// from the cache when an earlier build fetched that version.
func (b *builder) chartFromRepo(ctx context.Context, c ChartSpec, tmp string) ([]byte, error) {
	cached := filepath.Join(b.cache, "charts", c.Name+"-"+c.Version+".tgz")
	if data, err := bundle.ReadRegularFile(cached, maxChartArchive, "cached chart"); err == nil {
		if _, err := loader.LoadArchive(bytes.NewReader(data)); err == nil {
			return data, nil
		}
	}
	providers := b.getters()
	r, err := repo.NewChartRepository(&repo.Entry{Name: "airlock", URL: c.Repo}, providers)
	if err != nil {
		return nil, fmt.Errorf("chart repository %s: %w", c.Repo, err)
	}
	r.CachePath = tmp
	idxPath, err := r.DownloadIndexFile()
	if err != nil {
		return nil, fmt.Errorf("chart repository %s: fetch index.yaml: %w", c.Repo, err)
	}
	idx, err := repo.LoadIndexFile(idxPath)
	if err != nil {
		return nil, fmt.Errorf("chart repository %s: %w", c.Repo, err)
	}
	cv, err := idx.Get(c.Name, c.Version)
	if err != nil || len(cv.URLs) == 0 {
		return nil, fmt.Errorf("chart %s version %s is not in %s", c.Name, c.Version, c.Repo)
	}
	u, err := repo.ResolveReferenceURL(c.Repo, cv.URLs[0])
	if err != nil {
		return nil, err
	}
	pu, err := url.Parse(u)
	if err != nil {
		return nil, err
	}
	g, err := providers.ByScheme(pu.Scheme)
	if err != nil {
		return nil, fmt.Errorf("chart %s: %w", u, err)
	}
	buf, err := g.Get(u, getter.WithURL(c.Repo))
	if err != nil {
		return nil, fmt.Errorf("download chart %s: %w", u, err)
	}
	data := buf.Bytes()
	if cv.Digest != "" {
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != strings.TrimPrefix(cv.Digest, "sha256:") {
			return nil, fmt.Errorf("chart %s has sha256 %s, the repository index says %s", u, got, cv.Digest)
		}
	}
	return data, nil
}

// chartFromOCI pulls a chart stored as an OCI artifact. The artifact is
// also carried as an image, so that the site's registry serves it.
func (b *builder) chartFromOCI(ctx context.Context, c ChartSpec) ([]byte, error) {
	r, err := ParseImageRef(strings.TrimPrefix(c.OCI, "oci://") + ":" + c.Version)
	if err != nil {
		return nil, err
	}
	ref, err := r.fetchRef()
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(ref, b.remoteOpts(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("pull chart %s: %w", r, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("pull chart %s: %w", r, err)
	}
	for _, l := range m.Layers {
		if string(l.MediaType) != helmChartLayer {
			continue
		}
		layer, err := img.LayerByDigest(l.Digest)
		if err != nil {
			return nil, err
		}
		rc, err := layer.Compressed()
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		data, err := io.ReadAll(io.LimitReader(rc, 256<<20))
		if err != nil {
			return nil, fmt.Errorf("pull chart %s: %w", r, err)
		}
		if err := b.image(ctx, r, nil, "chart "+c.OCI); err != nil {
			return nil, err
		}
		return data, nil
	}
	return nil, fmt.Errorf("%s is not a Helm chart: no %s layer", r, helmChartLayer)
}

// maxChartArchive bounds a local chart archive read into memory (Helm
// refuses charts that decompress past 100 MiB).
const maxChartArchive = 100 << 20

// chartFromPath packages a local chart directory (or reads a .tgz).
func (b *builder) chartFromPath(c ChartSpec, tmp string) ([]byte, error) {
	p := c.Path
	if !filepath.IsAbs(p) {
		p = filepath.Join(b.opts.SpecDir, p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("local chart: %w", err)
	}
	if !st.IsDir() {
		return bundle.ReadRegularFile(p, maxChartArchive, "chart archive")
	}
	ch, err := loader.Load(p)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", p, err)
	}
	if err := action.CheckDependencies(ch, ch.Metadata.Dependencies); err != nil {
		return nil, fmt.Errorf("chart %s: %w (run helm dependency build %s first)", p, err, p)
	}
	out, err := chartutil.Save(ch, tmp)
	if err != nil {
		return nil, fmt.Errorf("package chart %s: %w", p, err)
	}
	return os.ReadFile(out)
}

// renderImages renders the chart as `helm template` does (client only,
// no cluster) with the spec's values and lists the images it references.
func renderImages(ctx context.Context, ch *chart.Chart, c ChartSpec) ([]string, error) {
	cfg := &action.Configuration{Log: func(string, ...any) {}}
	inst := action.NewInstall(cfg)
	inst.ClientOnly = true
	inst.DryRun = true
	inst.Replace = true
	inst.IncludeCRDs = true
	inst.ReleaseName = ch.Metadata.Name
	inst.Namespace = orDefault(c.Namespace, "default")
	kv, err := chartutil.ParseKubeVersion(orDefault(c.KubeVersion, DefaultKubeVersion))
	if err != nil {
		return nil, err
	}
	inst.KubeVersion = kv
	vals := c.Values
	if vals == nil {
		vals = map[string]any{}
	}
	rel, err := inst.RunWithContext(ctx, ch, vals)
	if err != nil {
		return nil, fmt.Errorf("render chart %s with the values of bundle.yaml: %w", ch.Metadata.Name, err)
	}
	docs := []string{rel.Manifest}
	for _, h := range rel.Hooks {
		docs = append(docs, h.Manifest)
	}
	set := map[string]bool{}
	for _, d := range docs {
		if err := scanImages(d, set); err != nil {
			return nil, fmt.Errorf("render chart %s: %w", ch.Metadata.Name, err)
		}
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return out, nil
}

// scanImages adds every string value of an "image" key in a stream of
// YAML documents (containers, initContainers, ephemeralContainers, and
// the image fields of custom resources alike).
func scanImages(manifest string, set map[string]bool) error {
	dec := yaml.NewDecoder(strings.NewReader(manifest))
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("parse rendered manifest: %w", err)
		}
		walkImages(doc, set)
	}
}

func walkImages(v any, set map[string]bool) {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if s, ok := x.(string); ok && k == "image" && strings.TrimSpace(s) != "" {
				set[strings.TrimSpace(s)] = true
				continue
			}
			walkImages(x, set)
		}
	case []any:
		for _, x := range t {
			walkImages(x, set)
		}
	}
}
