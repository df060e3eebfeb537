package build

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"airlock.dev/airlock/bundle"
)

// Options says how to build a bundle.
type Options struct {
	// Spec is the parsed bundle.yaml; SpecDir resolves its relative paths.
	Spec    *Spec
	SpecDir string
	// Output is the bundle's path (or the self-contained executable's).
	Output string
	// Key signs the bundle.
	Key ed25519.PrivateKey
	// CacheDir keeps downloaded blobs, charts and files between runs;
	// default Output + ".cache".
	CacheDir string
	// PartSize splits the bundle into parts of this size (0: one file).
	PartSize int64
	// Embed, when set, is the airlock executable to prepend: the output
	// is a self-contained executable.
	Embed string
	// Progress receives human-readable progress; nil discards it. When
	// ProgressTTY is set, the running totals rewrite one line.
	Progress    io.Writer
	ProgressTTY bool
	// Transport is used for registries, chart repositories and files;
	// nil means http.DefaultTransport.
	Transport http.RoundTripper
	// Concurrency bounds parallel downloads; 0 means 4.
	Concurrency int
	Log         *slog.Logger
	// Time is recorded in the bundle; zero means now.
	Time time.Time
}

// Result reports a build.
type Result struct {
	Paths    []string
	Size     int64
	Images   int
	Charts   int
	Files    int
	Blobs    int
	Fetched  int64 // bytes downloaded
	Reused   int64 // bytes found in the cache
	Duration time.Duration
	KeyID    string
}

// builder holds the state of one build.
type builder struct {
	opts   Options
	cache  string
	log    *slog.Logger
	client *http.Client
	prog   *progress

	mu        sync.Mutex
	blobs     map[string]*blob // digest -> blob
	images    []*bundle.Image
	byRef     map[string]*bundle.Image // normalized ref -> image
	charts    []bundle.Chart
	chartFile map[string]string // chart path in bundle -> cache path
	files     []bundle.File
	fileCache map[string]string // file path in bundle -> cache path
	// transports are authenticated per repository.
	transports map[string]http.RoundTripper
}

type blob struct {
	digest    string
	size      int64
	mediaType string // set for manifests and indexes
	data      []byte // manifests are kept in memory (small)
	fetch     func(ctx context.Context) (io.ReadCloser, error)
}

// Build gathers everything opts.Spec lists and writes the signed bundle.
func Build(ctx context.Context, opts Options) (*Result, error) {
	start := time.Now()
	if opts.Spec == nil {
		return nil, errors.New("build bundle: no spec")
	}
	if len(opts.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("build bundle: no ed25519 signing key (make one with airlock bundle keygen)")
	}
	if opts.CacheDir == "" {
		opts.CacheDir = opts.Output + ".cache"
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	tr := opts.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	b := &builder{
		opts: opts, cache: opts.CacheDir, log: opts.Log,
		client: &http.Client{Transport: tr, Timeout: 0},
		prog:   newProgress(opts.Progress, opts.ProgressTTY),
		blobs:  map[string]*blob{}, byRef: map[string]*bundle.Image{},
		chartFile: map[string]string{}, fileCache: map[string]string{},
		transports: map[string]http.RoundTripper{},
	}
	for _, d := range []string{"blobs/sha256", "charts", "files", "tmp"} {
		if err := os.MkdirAll(filepath.Join(b.cache, d), 0o755); err != nil {
			return nil, fmt.Errorf("build bundle: cache: %w", err)
		}
	}
	spec := opts.Spec
	// Charts first: the images they reference join the image list.
	var chartImages []chartImage
	for i, c := range spec.Charts {
		imgs, err := b.chart(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("build bundle: charts[%d] %s: %w", i, chartLabel(c), err)
		}
		chartImages = append(chartImages, imgs...)
	}
	type want struct {
		ref       ImageRef
		platforms []string
		from      string
	}
	var wants []want
	seen := map[string]int{}
	addWant := func(r ImageRef, platforms []string, from string) {
		if i, ok := seen[r.String()]; ok {
			wants[i].from += ", " + from
			return
		}
		seen[r.String()] = len(wants)
		wants = append(wants, want{r, platforms, from})
	}
	for i, im := range spec.Images {
		r, err := ParseImageRef(im.Ref)
		if err != nil {
			return nil, fmt.Errorf("build bundle: images[%d]: %w", i, err)
		}
		p := im.Platforms
		if len(p) == 0 {
			p = spec.Platforms
		}
		addWant(r, p, "bundle.yaml")
	}
	for _, ci := range chartImages {
		addWant(ci.ref, spec.Platforms, "chart "+ci.chart)
	}
	for _, w := range wants {
		if err := b.image(ctx, w.ref, w.platforms, w.from); err != nil {
			return nil, fmt.Errorf("build bundle: image %s (from %s): %w", w.ref, w.from, err)
		}
	}
	for i, f := range spec.Files {
		if err := b.file(ctx, f); err != nil {
			return nil, fmt.Errorf("build bundle: files[%d] %s: %w", i, f.Name, err)
		}
	}
	fetched, reused, err := b.fetchBlobs(ctx)
	if err != nil {
		return nil, fmt.Errorf("build bundle: %w", err)
	}
	fetchDone := time.Now()
	paths, size, err := b.write()
	if err != nil {
		return nil, fmt.Errorf("build bundle: %w", err)
	}
	res := &Result{
		Paths: paths, Size: size, Images: len(b.images), Charts: len(b.charts), Files: len(b.files),
		Blobs: len(b.blobs), Fetched: fetched, Reused: reused, Duration: time.Since(start),
		KeyID: bundle.KeyID(opts.Key.Public().(ed25519.PublicKey)),
	}
	b.prog.linef("wrote %s: %s, %d images, %d charts, %d files, %d blobs (%s downloaded, %s reused from %s) in %s (writing %s), key %s",
		strings.Join(paths, ", "), bundle.HumanSize(size), res.Images, res.Charts, res.Files, res.Blobs,
		bundle.HumanSize(fetched), bundle.HumanSize(reused), b.cache, res.Duration.Round(time.Millisecond),
		time.Since(fetchDone).Round(time.Millisecond), res.KeyID)
	return res, nil
}

func chartLabel(c ChartSpec) string {
	switch {
	case c.OCI != "":
		return c.OCI
	case c.Path != "":
		return c.Path
	}
	return c.Name + " " + c.Version
}

func (b *builder) blobPath(digest string) string {
	algo, hex, _ := strings.Cut(digest, ":")
	return filepath.Join(b.cache, "blobs", algo, hex)
}

// write assembles the bundle from the cache.
func (b *builder) write() ([]string, int64, error) {
	w, err := bundle.Create(b.opts.Output, bundle.WriterOptions{PartSize: b.opts.PartSize, Executable: b.opts.Embed, Time: b.opts.Time})
	if err != nil {
		return nil, 0, err
	}
	fail := func(err error) ([]string, int64, error) {
		w.Abort()
		return nil, 0, err
	}
	if _, err := w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), ""); err != nil {
		return fail(err)
	}
	digests := make([]string, 0, len(b.blobs))
	for d := range b.blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	for _, d := range digests {
		bl := b.blobs[d]
		algo, hex, _ := strings.Cut(d, ":")
		p := "blobs/" + algo + "/" + hex
		if bl.data != nil {
			if _, err := w.AddBytes(p, bl.data, bl.mediaType); err != nil {
				return fail(err)
			}
			continue
		}
		if err := addCached(w, p, b.blobPath(d), bl.size, d, bl.mediaType); err != nil {
			return fail(err)
		}
	}
	for _, c := range b.charts {
		if err := addCached(w, c.Path, b.chartFile[c.Path], -1, c.Digest, ""); err != nil {
			return fail(err)
		}
	}
	for _, f := range b.files {
		if err := addCached(w, f.Path, b.fileCache[f.Path], f.Size, f.Digest, ""); err != nil {
			return fail(err)
		}
	}
	index, err := b.layoutIndex()
	if err != nil {
		return fail(err)
	}
	if _, err := w.AddBytes("index.json", index, "application/vnd.oci.image.index.v1+json"); err != nil {
		return fail(err)
	}
	meta := bundle.Metadata{Name: b.opts.Spec.Metadata.Name, Charts: b.charts, Files: b.files, Components: b.opts.Spec.Components}
	for _, im := range b.images {
		meta.Images = append(meta.Images, *im)
	}
	sort.Slice(meta.Images, func(i, j int) bool { return meta.Images[i].Ref() < meta.Images[j].Ref() })
	paths, err := w.Finish(meta, b.opts.Key)
	if err != nil {
		return nil, 0, err
	}
	var size int64
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil {
			size += st.Size()
		}
	}
	return paths, size, nil
}

func addCached(w *bundle.Writer, path, cached string, size int64, digest, mediaType string) error {
	f, err := os.Open(cached)
	if err != nil {
		return fmt.Errorf("add %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if size >= 0 && st.Size() != size {
		return fmt.Errorf("add %s: cached %s has %d bytes, want %d (remove it and build again)", path, cached, st.Size(), size)
	}
	return w.AddFile(path, f, st.Size(), digest, mediaType)
}

// layoutIndex is the OCI layout's index.json: one descriptor per image,
// named by its full reference.
func (b *builder) layoutIndex() ([]byte, error) {
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	idx := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Manifests     []desc `json:"manifests"`
	}{2, "application/vnd.oci.image.index.v1+json", []desc{}}
	for _, im := range b.images {
		bl := b.blobs[im.Digest]
		idx.Manifests = append(idx.Manifests, desc{
			MediaType: im.MediaType, Digest: im.Digest, Size: bl.size,
			Annotations: map[string]string{
				"org.opencontainers.image.ref.name": im.Ref(),
				"io.containerd.image.name":          im.Ref(),
			},
		})
	}
	sort.Slice(idx.Manifests, func(i, j int) bool {
		return idx.Manifests[i].Annotations["io.containerd.image.name"] < idx.Manifests[j].Annotations["io.containerd.image.name"]
	})
	return json.MarshalIndent(idx, "", "  ")
}
