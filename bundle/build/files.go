package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"airlock.dev/airlock/bundle"
)

// file fetches one file into the cache (unless a copy with the right
// digest is there) and records it.
func (b *builder) file(ctx context.Context, f FileSpec) error {
	want := "sha256:" + f.SHA256
	cached := filepath.Join(b.cache, "files", f.SHA256)
	size, err := hashFile(cached)
	if err == nil && size.digest == want {
		b.prog.linef("file %s: in the cache (%s)", f.Name, bundle.HumanSize(size.n))
	} else {
		n, err := b.download(ctx, f.URL, cached, want, 0, "bundle.yaml")
		if err != nil {
			return err
		}
		size.n = n
		b.prog.linef("file %s: %s, sha256 ok", f.Name, bundle.HumanSize(n))
	}
	p := "files/" + f.Name
	b.files = append(b.files, bundle.File{Name: f.Name, Path: p, Size: size.n, Digest: want, Source: f.URL})
	b.fileCache[p] = cached
	return nil
}

type fileSum struct {
	n      int64
	digest string
}

func hashFile(path string) (fileSum, error) {
	f, err := bundle.OpenRegular(path)
	if err != nil {
		return fileSum{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fileSum{}, err
	}
	return fileSum{n, "sha256:" + hex.EncodeToString(h.Sum(nil))}, nil
}

// open opens an http(s) URL or a local path (relative to bundle.yaml).
func (b *builder) open(ctx context.Context, src string) (io.ReadCloser, error) {
	u, err := url.Parse(src)
	if err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			return nil, err
		}
		resp, err := b.client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("download %s: %w", src, err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("download %s: %s", src, resp.Status)
		}
		return resp.Body, nil
	}
	p := src
	if err == nil && u.Scheme == "file" {
		p = u.Path
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(b.opts.SpecDir, p)
	}
	f, err := bundle.OpenRegular(p)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", src, err)
	}
	return f, nil
}

// readSmall reads all of src (an http(s) URL or a local path), refusing
// more than max bytes.
func (b *builder) readSmall(ctx context.Context, src string, max int64) ([]byte, error) {
	rc, err := b.open(ctx, src)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", src, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("read %s: more than the %d bytes it can have", src, max)
	}
	return data, nil
}

// download copies src into dst (atomically) and checks its digest against
// want, which wantFrom says where it comes from. With max > 0, a source of
// more than max bytes is refused once max+1 bytes are read.
func (b *builder) download(ctx context.Context, src, dst, want string, max int64, wantFrom string) (int64, error) {
	rc, err := b.open(ctx, src)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Join(b.cache, "tmp"), "file-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	var r io.Reader = rc
	if max > 0 {
		r = io.LimitReader(rc, max+1)
	}
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", src, err)
	}
	if max > 0 && n > max {
		return 0, fmt.Errorf("download %s: more than %d bytes", src, max)
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if want != "" && got != want {
		return 0, fmt.Errorf("%s has sha256 %s, %s says %s: the source changed or the sha256 is wrong", src, strings.TrimPrefix(got, "sha256:"), wantFrom, strings.TrimPrefix(want, "sha256:"))
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return 0, err
	}
	return n, nil
}
