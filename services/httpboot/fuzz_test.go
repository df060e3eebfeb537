package httpboot

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

// FuzzRequest sends arbitrary paths and queries (what a machine on the
// provisioning network controls) to the handler: no panic, scripts only
// start with #!ipxe, and nothing outside the file systems is served.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		"/ipxe/boot.ipxe?mac=52:54:00:12:34:56", "/ipxe/boot.ipxe?mac=52-54-00-12-34-56", "/ipxe/boot.ipxe",
		"/ipxe/boot.ipxe?mac=%0a%24%7b", "/files/agent/vmlinuz", "/files/../secret", "/files/a%5c..%5csecret",
		"/ipxe/snponly.efi", "/ipxe/../../etc/passwd", "/files//agent/vmlinuz", "/api/v1/agent/x",
	} {
		f.Add(s)
	}
	cfg := Defaults()
	cfg.BaseURL = "http://10.0.0.1:8080"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	files := fstest.MapFS{"agent/vmlinuz": {Data: []byte("kernel")}, "secret": {Data: []byte("no")}}
	s, err := New(cfg, ln, NewMemBackend(discover), fstest.MapFS{"snponly.efi": {Data: []byte("MZ")}}, fstest.MapFS{"agent/vmlinuz": files["agent/vmlinuz"]}, nil)
	if err != nil {
		f.Fatal(err)
	}
	h := s.Handler()
	f.Fuzz(func(t *testing.T, target string) {
		if !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \r\n\t#") {
			return
		}
		req, err := http.NewRequest("GET", "http://x"+target, nil)
		if err != nil {
			return
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		body := w.Body.String()
		if w.Code == 200 && strings.HasPrefix(req.URL.Path, "/ipxe/boot.ipxe") && !strings.HasPrefix(body, "#!ipxe\n") {
			t.Fatalf("%s: script without #!ipxe: %q", target, body)
		}
		if w.Code == 200 && body == "no" {
			t.Fatalf("%s served a file outside the file system", target)
		}
		if strings.HasPrefix(body, "#!ipxe") && strings.Count(body, "${") > 1 {
			t.Fatalf("%s: request text expanded into the script: %q", target, body)
		}
	})
}
