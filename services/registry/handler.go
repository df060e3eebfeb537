package registry

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"airlock.dev/airlock/services/sendbuf"
)

// Error codes from the OCI distribution specification.
const (
	codeBlobUnknown     = "BLOB_UNKNOWN"
	codeManifestUnknown = "MANIFEST_UNKNOWN"
	codeNameUnknown     = "NAME_UNKNOWN"
	codeNameInvalid     = "NAME_INVALID"
	codeDigestInvalid   = "DIGEST_INVALID"
	codeUnsupported     = "UNSUPPORTED"
	codePaginationNum   = "PAGINATION_NUMBER_INVALID"
)

var (
	// nameRE is the repository name grammar of the distribution spec.
	nameRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	// digestRE accepts the registered algorithms with their exact lengths.
	digestRE = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`)
)

// handler is the registry's request handler; it holds no mutable state.
type handler struct {
	b   Backend
	log *slog.Logger
}

// NewHandler returns the registry's http.Handler over b.
func NewHandler(b Backend, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &handler{b: b, log: log}
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Docker-Content-Digest")
	h.Del("Content-Length")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	_ = json.NewEncoder(w).Encode(struct {
		Errors []apiError `json:"errors"`
	}{[]apiError{{Code: code, Message: msg}}})
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	h.route(sw, r)
	h.log.Debug("registry request", "method", r.Method, "path", r.URL.Path, "query", r.URL.RawQuery,
		"status", sw.status, "duration", time.Since(start))
}

func (h *handler) route(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if p == "/v2" || p == "/v2/" {
		if !readMethod(w, r) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, "{}")
		}
		return
	}
	if !strings.HasPrefix(p, "/v2/") {
		writeError(w, r, http.StatusNotFound, codeUnsupported, "not an OCI distribution API path")
		return
	}
	rest := strings.TrimPrefix(p, "/v2/")
	if rest == "_catalog" {
		if readMethod(w, r) {
			h.catalog(w, r)
		}
		return
	}
	name, kind, arg, ok := splitPath(rest)
	if !ok {
		writeError(w, r, http.StatusNotFound, codeUnsupported, "unknown API path "+p)
		return
	}
	if !readMethod(w, r) {
		return
	}
	if !nameRE.MatchString(name) {
		writeError(w, r, http.StatusBadRequest, codeNameInvalid, fmt.Sprintf("invalid repository name %q", name))
		return
	}
	repo, ok := h.resolveName(name, r.URL.Query().Get("ns"))
	if !ok {
		writeError(w, r, http.StatusNotFound, codeNameUnknown, fmt.Sprintf("repository %q is not in this bundle", name))
		return
	}
	switch kind {
	case "manifests":
		h.manifest(w, r, repo, arg)
	case "blobs":
		h.blob(w, r, arg)
	case "tags":
		h.tags(w, r, name, repo)
	case "referrers":
		h.referrers(w, r, arg)
	default:
		writeError(w, r, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "this registry is read-only: there are no uploads")
	}
}

// readMethod refuses every method but GET and HEAD: the registry is
// read-only. It reports whether the request may go on.
func readMethod(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	writeError(w, r, http.StatusMethodNotAllowed, codeUnsupported,
		"this registry is read-only (it serves an airlock bundle); "+r.Method+" is not supported")
	return false
}

// splitPath splits "<name>/<kind>/<arg>" where kind is manifests, blobs,
// tags (arg "list") or referrers. Uploads ("blobs/uploads/...") are reported
// as not ok.
func splitPath(rest string) (name, kind, arg string, ok bool) {
	if strings.HasSuffix(rest, "/tags/list") {
		return strings.TrimSuffix(rest, "/tags/list"), "tags", "list", true
	}
	for _, k := range []string{"manifests", "blobs", "referrers"} {
		i := strings.LastIndex(rest, "/"+k+"/")
		if i <= 0 {
			continue
		}
		arg = rest[i+len(k)+2:]
		if arg == "" || strings.Contains(arg, "/") {
			// blobs/uploads/<uuid> and the like: writes, which the method check refuses.
			return rest[:i], "uploads", arg, k == "blobs" && strings.HasPrefix(arg, "uploads")
		}
		return rest[:i], k, arg, true
	}
	return "", "", "", false
}

// resolveName maps a requested name and the containerd mirror namespace
// (the ns query parameter) to a repository of the backend.
func (h *handler) resolveName(name, ns string) (string, bool) {
	repos := h.b.Repositories()
	has := func(n string) bool {
		i := sort.SearchStrings(repos, n)
		return i < len(repos) && repos[i] == n
	}
	if ns != "" {
		host := normalizeHost(ns)
		for _, c := range candidates(host, name) {
			if has(c) {
				return c, true
			}
		}
		return "", false
	}
	if has(name) {
		return name, true
	}
	if !strings.Contains(name, "/") && has("docker.io/library/"+name) {
		return "docker.io/library/" + name, true
	}
	if has("docker.io/" + name) {
		return "docker.io/" + name, true
	}
	var found []string
	for _, r := range repos {
		if i := strings.IndexByte(r, '/'); i > 0 && r[i+1:] == name {
			found = append(found, r)
		}
	}
	if len(found) == 1 {
		return found[0], true
	}
	return "", false
}

// normalizeHost maps the names of Docker Hub to docker.io.
func normalizeHost(host string) string {
	switch host {
	case "index.docker.io", "registry-1.docker.io", "docker.io":
		return "docker.io"
	}
	return host
}

func candidates(host, name string) []string {
	c := []string{host + "/" + name}
	if host == "docker.io" && !strings.Contains(name, "/") {
		c = append(c, "docker.io/library/"+name)
	}
	return c
}

func (h *handler) manifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	digest := ref
	if !strings.Contains(ref, ":") {
		if !tagRE.MatchString(ref) {
			writeError(w, r, http.StatusBadRequest, codeManifestUnknown, fmt.Sprintf("invalid tag %q", ref))
			return
		}
		d, ok := h.b.ResolveTag(repo, ref)
		if !ok {
			writeError(w, r, http.StatusNotFound, codeManifestUnknown, fmt.Sprintf("no tag %q in %s", ref, repo))
			return
		}
		digest = d
	} else if !digestRE.MatchString(ref) {
		writeError(w, r, http.StatusBadRequest, codeDigestInvalid, fmt.Sprintf("invalid digest %q", ref))
		return
	}
	ra, off, size, mt, err := h.b.Content(digest)
	if err == nil && mt == "" {
		err = os.ErrNotExist // a layer, not a manifest
	}
	if err != nil {
		h.contentError(w, r, codeManifestUnknown, digest, err)
		return
	}
	h.serve(w, r, ra, off, size, mt, digest)
}

func (h *handler) blob(w http.ResponseWriter, r *http.Request, digest string) {
	if !digestRE.MatchString(digest) {
		writeError(w, r, http.StatusBadRequest, codeDigestInvalid, fmt.Sprintf("invalid digest %q", digest))
		return
	}
	ra, off, size, _, err := h.b.Content(digest)
	if err != nil {
		h.contentError(w, r, codeBlobUnknown, digest, err)
		return
	}
	h.serve(w, r, ra, off, size, "application/octet-stream", digest)
}

func (h *handler) contentError(w http.ResponseWriter, r *http.Request, code, digest string, err error) {
	if isNotExist(err) {
		writeError(w, r, http.StatusNotFound, code, fmt.Sprintf("%s is not in this bundle", digest))
		return
	}
	h.log.Error("registry: content unusable", "digest", digest, "err", err)
	writeError(w, r, http.StatusInternalServerError, code, err.Error())
}

// serve sends size bytes at off in ra, honouring Range and HEAD.
func (h *handler) serve(w http.ResponseWriter, r *http.Request, ra io.ReaderAt, off, size int64, mediaType, digest string) {
	hd := w.Header()
	hd.Set("Content-Type", mediaType)
	hd.Set("Docker-Content-Digest", digest)
	hd.Set("Etag", `"`+digest+`"`)
	hd.Set("Cache-Control", "max-age=31536000")
	var content io.ReadSeeker = io.NewSectionReader(ra, off, size)
	if f, ok := ra.(*os.File); ok {
		content = sendbuf.NewSection(f, off, size) // sent with sendfile
	}
	// ServeContent handles Range, If-None-Match and HEAD; the zero time
	// keeps Last-Modified out.
	http.ServeContent(w, r, "", time.Time{}, content)
}

func (h *handler) tags(w http.ResponseWriter, r *http.Request, name, repo string) {
	tags := h.b.Tags(repo)
	page, link, ok := paginate(w, r, tags)
	if !ok {
		return
	}
	if page == nil {
		page = []string{}
	}
	writeJSON(w, r, link, struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{name, page})
}

func (h *handler) catalog(w http.ResponseWriter, r *http.Request) {
	page, link, ok := paginate(w, r, h.b.Repositories())
	if !ok {
		return
	}
	if page == nil {
		page = []string{}
	}
	writeJSON(w, r, link, struct {
		Repositories []string `json:"repositories"`
	}{page})
}

// referrers answers the referrers API with an empty index: bundles do not
// carry referrer relations.
func (h *handler) referrers(w http.ResponseWriter, r *http.Request, digest string) {
	if !digestRE.MatchString(digest) {
		writeError(w, r, http.StatusBadRequest, codeDigestInvalid, fmt.Sprintf("invalid digest %q", digest))
		return
	}
	w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
	body := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		_, _ = io.WriteString(w, body)
	}
}

// paginate applies the n and last query parameters to a sorted list and
// returns the page and the Link header for the next one.
func paginate(w http.ResponseWriter, r *http.Request, all []string) (page []string, link string, ok bool) {
	q := r.URL.Query()
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(all, last)
		if i < len(all) && all[i] == last {
			i++
		}
		all = all[i:]
	}
	if ns := q.Get("n"); ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			writeError(w, r, http.StatusBadRequest, codePaginationNum, fmt.Sprintf("invalid page size n=%q", ns))
			return nil, "", false
		}
		if n < len(all) {
			all = all[:n]
			if n > 0 {
				u := url.URL{Path: r.URL.Path}
				v := url.Values{"n": {ns}, "last": {all[n-1]}}
				u.RawQuery = v.Encode()
				link = fmt.Sprintf(`<%s>; rel="next"`, u.String())
			}
		}
	}
	return all, link, true
}

func writeJSON(w http.ResponseWriter, r *http.Request, link string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, r, http.StatusInternalServerError, codeUnsupported, err.Error())
		return
	}
	if link != "" {
		w.Header().Set("Link", link)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if r.Method == http.MethodGet {
		_, _ = w.Write(b)
	}
}

// statusWriter records the status for the request log. It forwards
// ReadFrom so that sendfile still reaches the connection.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := s.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{s.ResponseWriter}, r)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
