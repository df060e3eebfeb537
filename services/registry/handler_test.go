package registry

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"airlock.dev/airlock/services/sendbuf"
)

func testBackend() (*Memory, string, string) {
	m := NewMemory()
	layer := m.Add([]byte(strings.Repeat("layer-bytes-", 100)), "")
	man := m.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"digest":"`+layer+`"}]}`), "application/vnd.oci.image.manifest.v1+json")
	m.Tag("docker.io/library/busybox", "1.36", man)
	m.Tag("registry.k8s.io/pause", "3.10", man)
	m.Tag("quay.io/library/busybox", "1.36", man)
	return m, man, layer
}

func do(t *testing.T, h http.Handler, method, target string, hdr ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func TestManifestHeaders(t *testing.T) {
	m, man, _ := testBackend()
	h := NewHandler(m, nil)
	for _, method := range []string{"GET", "HEAD"} {
		for _, ref := range []string{"1.36", man} {
			res := do(t, h, method, "/v2/library/busybox/manifests/"+ref+"?ns=docker.io")
			if res.StatusCode != 200 || res.Header.Get("Docker-Content-Digest") != man ||
				res.Header.Get("Content-Type") != "application/vnd.oci.image.manifest.v1+json" || res.Header.Get("Content-Length") == "" {
				t.Errorf("%s %s: %d %v", method, ref, res.StatusCode, res.Header)
			}
			body, _ := io.ReadAll(res.Body)
			if (method == "HEAD") != (len(body) == 0) {
				t.Errorf("%s %s: body of %d bytes", method, ref, len(body))
			}
		}
	}
}

func TestNames(t *testing.T) {
	m, _, _ := testBackend()
	h := NewHandler(m, nil)
	cases := []struct {
		path string
		code int
	}{
		{"/v2/library/busybox/manifests/1.36?ns=docker.io", 200},
		{"/v2/busybox/manifests/1.36?ns=docker.io", 200},
		{"/v2/library/busybox/manifests/1.36?ns=quay.io", 200},
		{"/v2/library/busybox/manifests/1.36?ns=ghcr.io", 404},
		{"/v2/pause/manifests/3.10?ns=registry.k8s.io", 200},
		{"/v2/docker.io/library/busybox/manifests/1.36", 200},
		{"/v2/library/busybox/manifests/1.36", 200}, // docker.io preferred
		{"/v2/busybox/manifests/1.36", 200},
		{"/v2/pause/manifests/3.10", 200}, // unique path
		{"/v2/pause/manifests/3.11", 404},
		{"/v2/nothere/manifests/1", 404},
		{"/v2/Bad_Name/manifests/1", 400},
	}
	for _, c := range cases {
		if res := do(t, h, "GET", c.path); res.StatusCode != c.code {
			b, _ := io.ReadAll(res.Body)
			t.Errorf("%s: %d, want %d: %s", c.path, res.StatusCode, c.code, b)
		}
	}
}

func TestErrorsAndReadOnly(t *testing.T) {
	m, _, layer := testBackend()
	h := NewHandler(m, nil)
	code := func(res *http.Response) string {
		var e struct{ Errors []apiError }
		json.NewDecoder(res.Body).Decode(&e)
		if len(e.Errors) == 0 {
			return ""
		}
		return e.Errors[0].Code
	}
	if res := do(t, h, "GET", "/v2/library/busybox/blobs/sha256:"+strings.Repeat("0", 64)); res.StatusCode != 404 || code(res) != codeBlobUnknown {
		t.Errorf("unknown blob: %d", res.StatusCode)
	}
	if res := do(t, h, "GET", "/v2/library/busybox/manifests/"+layer); res.StatusCode != 404 || code(res) != codeManifestUnknown {
		t.Errorf("layer as manifest: %d", res.StatusCode)
	}
	if res := do(t, h, "GET", "/v2/library/busybox/blobs/sha256:xyz"); res.StatusCode != 400 || code(res) != codeDigestInvalid {
		t.Errorf("bad digest: %d", res.StatusCode)
	}
	if res := do(t, h, "GET", "/v2/nothere/tags/list"); res.StatusCode != 404 || code(res) != codeNameUnknown {
		t.Errorf("unknown name: %d", res.StatusCode)
	}
	for _, r := range []struct{ method, path string }{
		{"PUT", "/v2/library/busybox/manifests/1.36"},
		{"DELETE", "/v2/library/busybox/manifests/1.36"},
		{"POST", "/v2/library/busybox/blobs/uploads/"},
		{"PATCH", "/v2/library/busybox/blobs/uploads/abc"},
	} {
		if res := do(t, h, r.method, r.path); res.StatusCode != 405 || code(res) != codeUnsupported {
			t.Errorf("%s %s: %d", r.method, r.path, res.StatusCode)
		}
	}
}

func TestBlobRange(t *testing.T) {
	m, _, layer := testBackend()
	h := NewHandler(m, nil)
	res := do(t, h, "GET", "/v2/library/busybox/blobs/"+layer, "Range", "bytes=12-23")
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 206 || string(b) != "layer-bytes-" || res.Header.Get("Docker-Content-Digest") != layer {
		t.Fatalf("range: %d %q %v", res.StatusCode, b, res.Header)
	}
}

func TestTagsAndCatalogPagination(t *testing.T) {
	m, man, _ := testBackend()
	for _, tag := range []string{"a", "b", "c"} {
		m.Tag("docker.io/library/busybox", tag, man)
	}
	h := NewHandler(m, nil)
	res := do(t, h, "GET", "/v2/library/busybox/tags/list?n=2")
	var tl struct {
		Name string
		Tags []string
	}
	json.NewDecoder(res.Body).Decode(&tl)
	if strings.Join(tl.Tags, ",") != "1.36,a" || !strings.Contains(res.Header.Get("Link"), "last=a") {
		t.Fatalf("page 1: %+v %s", tl, res.Header.Get("Link"))
	}
	res = do(t, h, "GET", "/v2/library/busybox/tags/list?n=2&last=a")
	json.NewDecoder(res.Body).Decode(&tl)
	if strings.Join(tl.Tags, ",") != "b,c" {
		t.Fatalf("page 2: %+v", tl)
	}
	res = do(t, h, "GET", "/v2/_catalog")
	var cat struct{ Repositories []string }
	json.NewDecoder(res.Body).Decode(&cat)
	if len(cat.Repositories) != 3 {
		t.Fatalf("catalog %v", cat)
	}
}

// fileBackend serves a blob from a real file, to exercise the sendfile path.
type fileBackend struct {
	*Memory
	f      *os.File
	digest string
	size   int64
}

func (b fileBackend) Content(d string) (io.ReaderAt, int64, int64, string, error) {
	if d == b.digest {
		return b.f, 100, b.size, "", nil
	}
	return b.Memory.Content(d)
}

func TestSendfilePath(t *testing.T) {
	m, _, layer := testBackend()
	data := strings.Repeat("x", 100) + strings.Repeat("layer-bytes-", 100) + "trailing"
	p := filepath.Join(t.TempDir(), "bundle")
	os.WriteFile(p, []byte(data), 0o644)
	f, _ := os.Open(p)
	defer f.Close()
	srv := httptest.NewUnstartedServer(NewHandler(fileBackend{m, f, layer, 1200}, nil))
	srv.Listener = sendbuf.Listener(srv.Listener, sendbuf.Registry) // as Serve's
	srv.Start()
	defer srv.Close()
	for _, rng := range []string{"", "bytes=0-599", "bytes=1000-", "", "bytes=1000-"} {
		req, _ := http.NewRequest("GET", srv.URL+"/v2/library/busybox/blobs/"+layer, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		want := data[100:1300]
		switch rng {
		case "bytes=0-599":
			want = want[:600]
		case "bytes=1000-":
			want = want[1000:]
		}
		if string(b) != want {
			t.Fatalf("range %q: got %d bytes, want %d", rng, len(b), len(want))
		}
	}
	// The requests shared the bundle's descriptor without moving its
	// offset (the bundle reads it with ReadAt).
	if off, _ := f.Seek(0, io.SeekCurrent); off != 0 {
		t.Fatalf("the bundle file's offset moved to %d", off)
	}
}
