package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"airlock.dev/airlock/bundle"
)

func (b *builder) remoteOpts(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(b.client.Transport),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithUserAgent("airlock-bundle"),
	}
}

// image resolves an image's manifests (keeping an index whole, with the
// wanted platforms' manifests) and registers its blobs for download.
func (b *builder) image(ctx context.Context, r ImageRef, platforms []string, from string) error {
	ref, err := b.pullRef(r)
	if err != nil {
		return err
	}
	desc, err := remote.Get(ref, b.remoteOpts(ctx)...)
	if err != nil {
		return fmt.Errorf("fetch manifest: %w", err)
	}
	top := digestOf(desc.Manifest)
	if r.Digest != "" && top != r.Digest {
		return fmt.Errorf("the registry returned a manifest with digest %s for %s", top, r.Digest)
	}
	im := &bundle.Image{Repository: r.Repository, Tag: r.Tag, Digest: top, MediaType: string(desc.MediaType), From: strings.Split(from, ", ")}
	size, kept, err := b.manifest(ctx, ref.Context(), desc.Manifest, string(desc.MediaType), platforms, map[string]bool{})
	if err != nil {
		return err
	}
	im.Size = size
	im.Platforms = kept
	b.mu.Lock()
	b.images = append(b.images, im)
	b.byRef[r.String()] = im
	b.mu.Unlock()
	kind := "image"
	if isIndex(im.MediaType) {
		kind = fmt.Sprintf("index, %d platforms", len(kept))
	}
	via := ""
	if host, _, _ := strings.Cut(r.Repository, "/"); b.mirrors[host] != (mirror{}) {
		via = " via mirror " + b.mirrors[host].scheme + "://" + b.mirrors[host].host
	}
	b.prog.linef("image %s: %s, %s (%s)%s", r, kind, bundle.HumanSize(size), shortD(top), via)
	return nil
}

func isIndex(mt string) bool {
	return mt == string(types.OCIImageIndex) || mt == string(types.DockerManifestList)
}

func shortD(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// manifest registers a manifest (or index) and, recursively, what it
// references. It returns the bytes it accounts for and the platforms kept.
func (b *builder) manifest(ctx context.Context, repo name.Repository, raw []byte, mediaType string, platforms []string, seen map[string]bool) (int64, []string, error) {
	d := digestOf(raw)
	b.addBlob(&blob{digest: d, size: int64(len(raw)), mediaType: mediaType, data: raw})
	if seen[d] {
		return 0, nil, nil
	}
	seen[d] = true
	total := int64(len(raw))
	switch types.MediaType(mediaType) {
	case types.OCIImageIndex, types.DockerManifestList:
		idx, err := v1.ParseIndexManifest(strings.NewReader(string(raw)))
		if err != nil {
			return 0, nil, fmt.Errorf("parse index %s: %w", d, err)
		}
		var kept []string
		for _, m := range idx.Manifests {
			if !wantPlatform(m.Platform, platforms) {
				continue
			}
			child, err := remote.Get(repo.Digest(m.Digest.String()), b.remoteOpts(ctx)...)
			if err != nil {
				return 0, nil, fmt.Errorf("fetch manifest %s: %w", m.Digest, err)
			}
			if got := digestOf(child.Manifest); got != m.Digest.String() {
				return 0, nil, fmt.Errorf("manifest %s: the registry sent bytes with digest %s", m.Digest, got)
			}
			mt := string(m.MediaType)
			if mt == "" {
				mt = string(child.MediaType)
			}
			n, sub, err := b.manifest(ctx, repo, child.Manifest, mt, platforms, seen)
			if err != nil {
				return 0, nil, err
			}
			total += n
			switch {
			case isIndex(mt):
				kept = append(kept, sub...)
			case m.Platform != nil:
				kept = append(kept, platformString(m.Platform))
			}
		}
		if len(kept) == 0 && len(platforms) > 0 {
			return 0, nil, fmt.Errorf("the index %s has none of the platforms %s", d, strings.Join(platforms, ", "))
		}
		sort.Strings(kept)
		return total, kept, nil
	case types.DockerManifestSchema1, types.DockerManifestSchema1Signed:
		return 0, nil, fmt.Errorf("%s is a Docker schema 1 manifest, which containerd no longer pulls; use a newer tag", d)
	default:
		m, err := v1.ParseManifest(strings.NewReader(string(raw)))
		if err != nil {
			return 0, nil, fmt.Errorf("parse manifest %s (%s): %w", d, mediaType, err)
		}
		// The image config is small: fetch it now (it tells the platform).
		var platforms []string
		if m.Config.Size <= 4<<20 {
			raw, err := b.fetchSmall(ctx, repo, m.Config.Digest.String(), m.Config.Size)
			if err != nil {
				return 0, nil, fmt.Errorf("fetch config of %s: %w", d, err)
			}
			b.addBlob(&blob{digest: m.Config.Digest.String(), size: m.Config.Size, data: raw})
			total += m.Config.Size
			var cf struct{ OS, Architecture, Variant string }
			if json.Unmarshal(raw, &cf) == nil && cf.OS != "" && cf.Architecture != "" {
				platforms = []string{platformString(&v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant})}
			}
		}
		for i, l := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if i == 0 && m.Config.Size <= 4<<20 {
				continue
			}
			if len(l.URLs) > 0 && !l.MediaType.IsDistributable() {
				continue // foreign layer, fetched from its URL by the runtime
			}
			dg := l.Digest.String()
			size := l.Size
			b.addBlob(&blob{digest: dg, size: size, fetch: func(ctx context.Context, from int64) (io.ReadCloser, int64, error) {
				return b.getBlob(ctx, repo, dg, from, size)
			}})
			total += l.Size
		}
		return total, platforms, nil
	}
}

// fetchSmall reads a small blob into memory and checks its digest.
func (b *builder) fetchSmall(ctx context.Context, repo name.Repository, digest string, size int64) ([]byte, error) {
	rc, _, err := b.getBlob(ctx, repo, digest, 0, size)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	raw, err := io.ReadAll(io.LimitReader(rc, size+1))
	if err != nil {
		return nil, err
	}
	if got := digestOf(raw); got != digest || int64(len(raw)) != size {
		return nil, fmt.Errorf("blob %s: got %d bytes with digest %s, want %d bytes", digest, len(raw), got, size)
	}
	return raw, nil
}

// getBlob streams a blob of size bytes from the registry, from byte from
// on when the registry honours a Range request (it returns where the body
// starts: from, or 0 when the registry sent the whole blob). Unlike
// remote.Layer it does not hash the bytes: the caller hashes them once
// while writing them into the bundle.
func (b *builder) getBlob(ctx context.Context, repo name.Repository, digest string, from, size int64) (io.ReadCloser, int64, error) {
	rt, err := b.repoTransport(ctx, repo)
	if err != nil {
		return nil, 0, err
	}
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Registry.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, err
	}
	if from > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, size-1))
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, 0, err
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return resp.Body, 0, nil
	case resp.StatusCode == http.StatusPartialContent && from > 0 &&
		strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", from)):
		return resp.Body, from, nil
	}
	resp.Body.Close()
	return nil, 0, &statusError{url: u, status: resp.Status, code: resp.StatusCode}
}

// statusError is an HTTP reply other than the content asked for.
type statusError struct {
	url, status string
	code        int
}

func (e *statusError) Error() string { return fmt.Sprintf("GET %s: %s", e.url, e.status) }

// retryable tells whether trying again may succeed: a dropped connection
// or a server error, not a missing blob or a refusal.
func retryable(err error) bool {
	var se *statusError
	if errors.As(err, &se) {
		return se.code >= 500 || se.code == http.StatusTooManyRequests
	}
	return true
}

// repoTransport returns an authenticated transport for pulling from repo,
// made once per repository.
func (b *builder) repoTransport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rt, ok := b.transports[repo.String()]; ok {
		return rt, nil
	}
	auth, err := authn.DefaultKeychain.Resolve(repo)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", repo, err)
	}
	// The transport outlives this call's context: it is reused by every
	// blob of the repository.
	rt, err := transport.NewWithContext(context.WithoutCancel(ctx), repo.Registry, auth, b.client.Transport, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", repo.Registry, err)
	}
	b.transports[repo.String()] = rt
	return rt, nil
}

func platformString(p *v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

func wantPlatform(p *v1.Platform, want []string) bool {
	if len(want) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, w := range want {
		parts := strings.Split(w, "/")
		if parts[0] == p.OS && parts[1] == p.Architecture && (len(parts) < 3 || parts[2] == p.Variant) {
			return true
		}
	}
	return false
}

func (b *builder) addBlob(bl *blob) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.blobs[bl.digest]; ok {
		if old.mediaType == "" {
			old.mediaType = bl.mediaType
		}
		if old.data == nil && bl.data != nil {
			old.data = bl.data
		}
		return
	}
	b.blobs[bl.digest] = bl
}
