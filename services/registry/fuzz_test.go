package registry

import (
	"io"
	"net/http/httptest"
	"net/url"
	"testing"
)

// FuzzHandler sends arbitrary paths, queries and Range headers: the
// handler must answer without panicking, with a status from the spec.
func FuzzHandler(f *testing.F) {
	m, man, layer := testBackend()
	h := NewHandler(m, nil)
	f.Add("GET", "/v2/library/busybox/manifests/1.36", "ns=docker.io", "")
	f.Add("HEAD", "/v2/library/busybox/blobs/"+layer, "", "bytes=5-")
	f.Add("GET", "/v2/library/busybox/manifests/"+man, "", "bytes=0-0,3-4")
	f.Add("GET", "/v2/_catalog", "n=1&last=a", "")
	f.Add("GET", "/v2/a/b/c/tags/list", "n=-1", "")
	f.Add("PUT", "/v2/x/blobs/uploads/", "", "")
	f.Add("GET", "/v2//manifests/", "", "")
	f.Fuzz(func(t *testing.T, method, path, query, rng string) {
		switch method {
		case "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH":
		default:
			return
		}
		u := &url.URL{Path: path, RawQuery: query}
		req := httptest.NewRequest("GET", "/", nil)
		req.Method, req.URL = method, u
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		io.Copy(io.Discard, rec.Result().Body)
		switch rec.Code {
		case 200, 206, 400, 404, 405, 416:
		default:
			t.Fatalf("%s %s?%s: status %d", method, path, query, rec.Code)
		}
	})
}
