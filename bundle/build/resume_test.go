package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"airlock.dev/airlock/bundle"
)

// failLayers lets the first ok layer downloads through and fails the rest,
// as a network that drops mid-build would. Layers are the blobs of more
// than 32 KiB (configs and manifests are smaller).
type failLayers struct {
	base http.RoundTripper
	ok   int64
	seen atomic.Int64
}

var errDropped = errors.New("test: connection dropped")

func (f *failLayers) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.base.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/blobs/") || resp.ContentLength <= 32<<10 {
		return resp, err
	}
	if f.seen.Add(1) > f.ok {
		resp.Body.Close()
		return nil, errDropped
	}
	return resp, nil
}

func verifyBundle(t *testing.T, path string) *bundle.Bundle {
	t.Helper()
	b, err := bundle.Open(path, bundle.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if _, err := b.Verify(context.Background(), bundle.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	return b
}

// blobOffset finds where a blob's bytes lie in a (partial) archive: after
// the tar header that names it.
func blobOffset(t *testing.T, data []byte, digest string) int {
	t.Helper()
	i := bytes.Index(data, []byte("blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")+"\x00"))
	if i < 0 || i%512 != 0 {
		t.Fatalf("no tar header for %s", digest)
	}
	return i + 512
}

func TestBuildResumesAfterInterruption(t *testing.T) {
	u := newUpstream(t)
	dir := t.TempDir()
	specData := u.specFor(t, dir)
	spec, problems := ParseSpec(filepath.Join(dir, "bundle.yaml"), specData)
	if err := problems.Err(); err != nil {
		t.Fatal(err)
	}
	_, priv := testKey(t)
	out := filepath.Join(dir, "site.bundle")
	opts := Options{Spec: spec, SpecDir: dir, Output: out, Key: priv, Concurrency: 1}

	// The network drops after three layers.
	opts.Transport = &failLayers{base: u.transport, ok: 3}
	_, err := Build(context.Background(), opts)
	if !errors.Is(err, errDropped) || !strings.Contains(err.Error(), "run the build again to resume") {
		t.Fatalf("interrupted build: %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an interrupted build published %s: %v", out, err)
	}
	partial, err := os.ReadFile(out + ".partial")
	if err != nil {
		t.Fatalf("the partial output was not kept: %v", err)
	}
	_, done := readJournal(resumePath(out))
	if len(done) != 3 {
		t.Fatalf("journal lists %d blobs, want the 3 written", len(done))
	}
	// A power cut lost part of one of them.
	var damaged string
	for d := range done {
		damaged = d
		break
	}
	off := blobOffset(t, partial, damaged)
	partial[off+100] ^= 0xff
	if err := os.WriteFile(out+".partial", partial, 0o644); err != nil {
		t.Fatal(err)
	}

	// Run again with the network back: the two intact blobs are reused,
	// the damaged one and the rest downloaded.
	opts.Transport = u.transport
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	b := verifyBundle(t, out)
	sizes := map[string]int64{}
	for _, e := range b.Metadata().Entries {
		sizes[e.Digest] = e.Size
	}
	var intact int64
	for d := range done {
		if d != damaged {
			intact += sizes[d]
		}
	}
	if res.Reused != intact {
		t.Errorf("reused %d bytes, want the %d of the two intact blobs", res.Reused, intact)
	}
	if res.Fetched == 0 {
		t.Error("nothing downloaded after the interruption")
	}
	for _, p := range []string{out + ".partial", resumePath(out)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}

// A rebuild takes blobs from the bundle it replaces, but never a damaged one.
func TestRebuildReusesTheBundleItReplaces(t *testing.T) {
	u := newUpstream(t)
	dir := t.TempDir()
	out, first := buildTestBundle(t, u, dir, func(o *Options) { o.PartSize = 1 << 20 })
	if first.Reused != 0 || first.Fetched == 0 {
		t.Fatalf("first build fetched %d reused %d", first.Fetched, first.Reused)
	}
	b := verifyBundle(t, out)
	// Flip a byte of a layer where it lies in the parts: the first layer
	// whose header and first bytes fall within one part.
	var layer bundle.Entry
	var part string
	var partData []byte
	var off int
	for _, e := range b.Metadata().Entries {
		if !strings.HasPrefix(e.Path, "blobs/") || e.Size <= 32<<10 {
			continue
		}
		for i := 1; ; i++ {
			p := fmt.Sprintf("%s.%03d", out, i)
			data, err := os.ReadFile(p)
			if err != nil {
				break
			}
			if h := bytes.Index(data, []byte(e.Path+"\x00")); h >= 0 && h+512+2 <= len(data) {
				layer, part, partData, off = e, p, data, h+512
				break
			}
		}
		if partData != nil {
			break
		}
	}
	b.Close()
	if partData == nil {
		t.Fatal("no layer lies whole enough in one part to damage")
	}
	partData[off+1] ^= 0x01
	if err := os.WriteFile(part, partData, 0o644); err != nil {
		t.Fatal(err)
	}

	_, second := buildTestBundle(t, u, dir, func(o *Options) { o.PartSize = 1 << 20 })
	if second.Fetched != layer.Size {
		t.Errorf("rebuild fetched %d bytes, want only the damaged layer's %d", second.Fetched, layer.Size)
	}
	if second.Reused != first.Fetched-layer.Size {
		t.Errorf("rebuild reused %d bytes, want %d", second.Reused, first.Fetched-layer.Size)
	}
	verifyBundle(t, out)
}
