package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	b, err := bundle.Open(path, bundle.Trust{IntegrityOnly: true})
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
	opts := Options{Spec: spec, SpecDir: dir, Output: out, Key: priv, Concurrency: 1, retryWait: time.Millisecond}

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
	_, rs := readJournal(resumePath(out))
	done := rs.done
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

// cutBodies cuts the body of the first download of each layer after cut
// bytes, as a connection dropped mid-transfer does; with always set, every
// download of the layer named only is cut. It counts Range requests.
type cutBodies struct {
	base   http.RoundTripper
	cut    int64
	only   string // a blob digest (sha256:...); "" for every layer
	always bool

	mu     sync.Mutex
	cutOne map[string]bool
	ranges int
	served map[string]*atomic.Int64 // body bytes read, by digest
}

func (c *cutBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/blobs/") || resp.ContentLength <= 32<<10 && req.Header.Get("Range") == "" {
		return resp, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if req.Header.Get("Range") != "" {
		c.ranges++
	}
	d := req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]
	if c.served == nil {
		c.cutOne, c.served = map[string]bool{}, map[string]*atomic.Int64{}
	}
	if c.served[d] == nil {
		c.served[d] = new(atomic.Int64)
	}
	body := &cutBody{rc: resp.Body, left: 1 << 62, served: c.served[d]}
	resp.Body = body
	if c.only != "" && d != c.only || c.cutOne[d] && !c.always {
		return resp, nil
	}
	c.cutOne[d] = true
	body.left = c.cut
	return resp, nil
}

type cutBody struct {
	rc     io.ReadCloser
	left   int64
	served *atomic.Int64
}

func (b *cutBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n, err := b.rc.Read(p[:min(int64(len(p)), b.left)])
	b.left -= int64(n)
	b.served.Add(int64(n))
	return n, err
}

func (b *cutBody) Close() error { return b.rc.Close() }

func specForTest(t *testing.T, u *upstream, dir string) *Spec {
	t.Helper()
	specData := u.specFor(t, dir)
	spec, problems := ParseSpec(filepath.Join(dir, "bundle.yaml"), specData)
	if err := problems.Err(); err != nil {
		t.Fatal(err)
	}
	return spec
}

// A connection dropped mid-blob is taken up again where it stopped, within
// the same run: nothing is downloaded twice.
func TestBuildTakesUpDroppedDownloads(t *testing.T) {
	u := newUpstream(t)
	dir := t.TempDir()
	_, priv := testKey(t)
	spec := specForTest(t, u, dir)
	whole, err := Build(context.Background(), Options{Spec: spec, SpecDir: dir, Output: filepath.Join(dir, "whole.bundle"), Key: priv, Transport: u.transport})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "site.bundle")
	cut := &cutBodies{base: u.transport, cut: 20000}
	res, err := Build(context.Background(), Options{Spec: spec, SpecDir: dir, Output: out, Key: priv, Transport: cut, retryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	b := verifyBundle(t, out)
	var layers int
	for _, e := range b.Metadata().Entries {
		if strings.HasPrefix(e.Path, "blobs/") && e.Size > 32<<10 {
			layers++
		}
	}
	if cut.ranges != layers {
		t.Errorf("%d Range requests, want one per layer (%d)", cut.ranges, layers)
	}
	if res.Fetched != whole.Fetched || res.Reused != 0 {
		t.Errorf("fetched %d reused %d, want every byte (%d) once", res.Fetched, res.Reused, whole.Fetched)
	}
}

// A blob whose download keeps dropping fails the build; the next run
// starts it where the last one stopped, or, when what was kept turns out
// damaged, downloads it whole again.
func TestBuildResumesInsideABlob(t *testing.T) {
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged=%v", damaged), func(t *testing.T) { testResumeInsideABlob(t, damaged) })
	}
}

func testResumeInsideABlob(t *testing.T, damaged bool) {
	u := newUpstream(t)
	dir := t.TempDir()
	_, priv := testKey(t)
	out := filepath.Join(dir, "site.bundle")
	spec := specForTest(t, u, dir)
	opts := Options{Spec: spec, SpecDir: dir, Output: out, Key: priv, Concurrency: 1, retryWait: time.Millisecond, checkpointEvery: 8 << 10}
	opts.Transport = u.transport
	first, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	// Pick a layer, then build into a new output with its downloads cut.
	b := verifyBundle(t, out)
	var layer bundle.Entry
	for _, e := range b.Metadata().Entries {
		if strings.HasPrefix(e.Path, "blobs/") && e.Size > 32<<10 {
			layer = e
		}
	}
	b.Close()
	opts.Output = filepath.Join(dir, "second.bundle")
	// Each of the 4 attempts gets 10,000 bytes further: not far enough.
	opts.Transport = &cutBodies{base: u.transport, cut: 10000, only: layer.Digest, always: true}
	if _, err := Build(context.Background(), opts); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("build with a blob that always drops: %v", err)
	}
	_, rs := readJournal(resumePath(opts.Output))
	at := rs.at[layer.Digest]
	if at < 8<<10 || at >= layer.Size {
		t.Fatalf("journal: %s at %d, want the bytes written before the drops", layer.Digest, at)
	}
	if damaged {
		partial, err := os.ReadFile(opts.Output + ".partial")
		if err != nil {
			t.Fatal(err)
		}
		partial[blobOffset(t, partial, layer.Digest)+100] ^= 0xff
		if err := os.WriteFile(opts.Output+".partial", partial, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cut := &cutBodies{base: u.transport, cut: 1 << 62}
	opts.Transport = cut
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	verifyBundle(t, opts.Output)
	// One Range request, for the rest of the blob; when that does not add
	// up to the digest, the whole blob again.
	if cut.ranges != 1 {
		t.Errorf("%d Range requests, want 1", cut.ranges)
	}
	want := layer.Size - at
	if damaged {
		want += layer.Size
	}
	if got := cut.served[layer.Digest].Load(); got != want {
		t.Errorf("downloaded %d bytes of the layer, want %d", got, want)
	}
	if !damaged && res.Fetched+res.Reused != first.Fetched {
		t.Errorf("fetched %d + reused %d, want the %d of the whole", res.Fetched, res.Reused, first.Fetched)
	}
}
