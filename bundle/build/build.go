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
	// CacheDir keeps downloaded charts and files between runs; default
	// Output + ".cache". Image blobs go straight into the bundle: an
	// interrupted build resumes from its partial output, and a rebuild
	// reuses the blobs of the bundle it replaces.
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

	// checkpointEvery is how often (bytes) a download's progress goes
	// into the resume journal; retryWait the first pause before a dropped
	// download is taken up again. Tests shorten them.
	checkpointEvery int64
	retryWait       time.Duration
}

// Result reports a build.
type Result struct {
	Paths    []string
	Size     int64
	Images   int
	Charts   int
	Files    int
	OSImages int
	Blobs    int
	Fetched  int64 // blob bytes downloaded
	Reused   int64 // blob bytes reused from an interrupted build or the bundle replaced
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
	fileCache map[string]string // file and OS image path in bundle -> cache path
	osImages  []bundle.OSImage
	// transports are authenticated per repository.
	transports map[string]http.RoundTripper
	// mirrors are registryMirrors by registry (docker.io for Docker Hub).
	mirrors map[string]mirror
	// kube is the Kubernetes set, once its binaries are fetched.
	kube *bundle.Kubernetes
}

type blob struct {
	digest    string
	size      int64
	mediaType string // set for manifests and indexes
	data      []byte // manifests are kept in memory (small)
	// fetch streams the blob from byte from on; it returns where the body
	// starts (0 when the source cannot start elsewhere).
	fetch func(ctx context.Context, from int64) (io.ReadCloser, int64, error)
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
	if opts.checkpointEvery <= 0 {
		opts.checkpointEvery = 64 << 20
	}
	if opts.retryWait <= 0 {
		opts.retryWait = time.Second
	}
	tr := opts.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	mirrors, schemes, err := parseMirrors(opts.Spec.RegistryMirrors)
	if err != nil {
		return nil, fmt.Errorf("build bundle: %w", err)
	}
	if len(schemes) > 0 {
		tr = &mirrorTransport{base: tr, schemes: schemes}
	}
	kube, err := kubernetesPlan(opts.Spec)
	if err != nil {
		return nil, fmt.Errorf("build bundle: kubernetes: %w", err)
	}
	b := &builder{
		opts: opts, cache: opts.CacheDir, log: opts.Log, mirrors: mirrors,
		client: &http.Client{Transport: tr, Timeout: 0},
		prog:   newProgress(opts.Progress, opts.ProgressTTY),
		blobs:  map[string]*blob{}, byRef: map[string]*bundle.Image{},
		chartFile: map[string]string{}, fileCache: map[string]string{},
		transports: map[string]http.RoundTripper{},
	}
	for _, d := range []string{"charts", "files", "tmp"} {
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
	if kube != nil {
		for _, ref := range kube.images {
			r, err := ParseImageRef(ref)
			if err != nil {
				return nil, fmt.Errorf("build bundle: kubernetes image %s: %w", ref, err)
			}
			addWant(r, spec.Platforms, kubernetesImagesFrom+kube.spec.Version)
		}
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
	for i, im := range spec.OSImages {
		if err := b.osImage(ctx, im); err != nil {
			return nil, fmt.Errorf("build bundle: osImages[%d] %s: %w", i, im.Name, err)
		}
	}
	if kube != nil {
		if b.kube, err = b.kubernetesBinaries(ctx, kube); err != nil {
			return nil, fmt.Errorf("build bundle: %w", err)
		}
	}
	res := &Result{
		Images: len(b.images), Charts: len(b.charts), Files: len(b.files), OSImages: len(b.osImages), Blobs: len(b.blobs),
		KeyID: bundle.KeyID(opts.Key.Public().(ed25519.PublicKey)),
	}
	if err := b.write(ctx, res); err != nil {
		return nil, fmt.Errorf("build bundle: %w", err)
	}
	res.Duration = time.Since(start)
	b.prog.linef("wrote %s: %s, %d images, %d charts, %d files, %d OS images, %d blobs (%s downloaded, %s reused) in %s, key %s",
		strings.Join(res.Paths, ", "), bundle.HumanSize(res.Size), res.Images, res.Charts, res.Files, res.OSImages, res.Blobs,
		bundle.HumanSize(res.Fetched), bundle.HumanSize(res.Reused), res.Duration.Round(time.Millisecond), res.KeyID)
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

// write lays the bundle out, puts every blob in place (see blobs.go),
// signs it and moves it to its final name.
func (b *builder) write(ctx context.Context, res *Result) error {
	wopts := bundle.WriterOptions{PartSize: b.opts.PartSize, Executable: b.opts.Embed, Time: b.opts.Time, Resumable: true}
	w, err := bundle.Create(b.opts.Output, wopts)
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			w.Abort() // the partial output stays for the next run
		}
	}()
	if _, err := w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), ""); err != nil {
		return err
	}
	digests := make([]string, 0, len(b.blobs))
	for d := range b.blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	var slots []slot
	for _, d := range digests {
		bl := b.blobs[d]
		algo, hex, _ := strings.Cut(d, ":")
		p := "blobs/" + algo + "/" + hex
		if bl.data != nil {
			if _, err := w.AddBytes(p, bl.data, bl.mediaType); err != nil {
				return err
			}
			continue
		}
		r, err := w.Reserve(p, bl.size, d, bl.mediaType)
		if err != nil {
			return err
		}
		slots = append(slots, slot{bl, r})
	}
	for _, c := range b.charts {
		if err := addCached(w, c.Path, b.chartFile[c.Path], -1, c.Digest, ""); err != nil {
			return err
		}
	}
	for _, f := range b.files {
		if err := addCached(w, f.Path, b.fileCache[f.Path], f.Size, f.Digest, ""); err != nil {
			return err
		}
	}
	for _, im := range b.osImages {
		if err := addCached(w, im.Path, b.fileCache[im.Path], im.Size, im.Digest, ""); err != nil {
			return err
		}
	}
	index, err := b.layoutIndex()
	if err != nil {
		return err
	}
	if _, err := w.AddBytes("index.json", index, "application/vnd.oci.image.index.v1+json"); err != nil {
		return err
	}

	// Reuse what an interrupted run of this same layout wrote, and the
	// blobs of the bundle being replaced.
	layout := layoutID(w.Entries(), wopts.PartSize, w.Prefix())
	jpath := resumePath(b.opts.Output)
	prevLayout, resumed := readJournal(jpath)
	same := prevLayout == layout
	if !same {
		resumed = resumeState{}
	}
	j, err := startJournal(jpath, layout, same)
	if err != nil {
		return err
	}
	defer j.close()
	// The earlier output's blobs are hashed again as they are reused
	// (Unchecked), so its signer does not matter.
	old, err := bundle.Open(b.opts.Output, bundle.Trust{IntegrityOnly: true})
	if err != nil {
		old = nil // nothing to reuse: no earlier bundle, or not a readable one
	}
	stats, err := b.fill(ctx, slots, resumed, old, j)
	if old != nil {
		old.Close()
	}
	res.Fetched, res.Reused = stats.fetched.Load(), stats.reused.Load()
	if err != nil {
		return fmt.Errorf("%w (the partial bundle is kept: run the build again to resume)", err)
	}

	meta := bundle.Metadata{Name: b.opts.Spec.Metadata.Name, Charts: b.charts, Files: b.files, OSImages: b.osImages, Components: b.opts.Spec.Components, Kubernetes: b.kube}
	for _, im := range b.images {
		meta.Images = append(meta.Images, *im)
	}
	sort.Slice(meta.Images, func(i, j int) bool { return meta.Images[i].Ref() < meta.Images[j].Ref() })
	paths, err := w.Finish(meta, b.opts.Key)
	committed = true // Finish aborts by itself when it fails
	if err != nil {
		return err
	}
	os.Remove(jpath)
	res.Paths = paths
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil {
			res.Size += st.Size()
		}
	}
	return nil
}

func addCached(w *bundle.Writer, path, cached string, size int64, digest, mediaType string) error {
	f, err := bundle.OpenRegular(cached)
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
