// Package registry serves a read-only OCI distribution (v2) API over a
// content backend, typically an airlock bundle.
//
// It answers /v2/, manifests by tag and digest, blobs (with Range), tag
// lists and the catalog, and refuses every write with the spec's
// UNSUPPORTED code. Blobs that live in a plain file are sent with sendfile;
// nothing is held whole in memory.
//
// Repository names are the full upstream names (docker.io/library/nginx,
// registry.k8s.io/pause). A client may name a repository three ways:
//
//   - by its full name: GET /v2/docker.io/library/nginx/manifests/1.25
//   - as a containerd mirror does, by the path on its upstream host plus the
//     ns query parameter that containerd adds for mirrors:
//     GET /v2/library/nginx/manifests/1.25?ns=docker.io
//   - by the path alone when exactly one upstream host has it:
//     GET /v2/library/nginx/manifests/1.25 (docker.io is preferred when
//     several hosts have the same path; a bare "nginx" means library/nginx).
package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"time"

	"airlock.dev/airlock/services/sendbuf"
)

// Backend is the content the registry serves. It uses only standard types
// so that a bundle can satisfy it without importing this package.
type Backend interface {
	// Repositories lists the full repository names, sorted.
	Repositories() []string
	// Tags lists the tags of a repository, sorted; nil if it is unknown.
	Tags(repository string) []string
	// ResolveTag returns the digest of the manifest a tag names.
	ResolveTag(repository, tag string) (digest string, ok bool)
	// Content returns where the bytes with this digest are: size bytes at
	// off in r, and the media type (non-empty for manifests). It returns an
	// error wrapping fs.ErrNotExist for an unknown digest, and another error
	// if the content fails its digest check. When r is an *os.File the
	// registry sends the bytes with sendfile.
	Content(digest string) (r io.ReaderAt, off, size int64, mediaType string, err error)
}

// Server is the registry's HTTP service.
type Server struct {
	handler http.Handler
	log     *slog.Logger
}

// New returns a registry over backend. log may be nil.
func New(backend Backend, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{handler: NewHandler(backend, log), log: log}
}

// Handler returns the HTTP handler, for composing with other handlers.
func (s *Server) Handler() http.Handler { return s.handler }

// Run serves on l until ctx is cancelled, then drains in-flight requests
// for up to 10 seconds. It returns nil after a cancellation.
func (s *Server) Run(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(sendbuf.Listener(l, sendbuf.Registry)) }()
	select {
	case err := <-errc:
		return fmt.Errorf("registry: serve on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if e := <-errc; e != nil && !errors.Is(e, http.ErrServerClosed) {
		err = errors.Join(err, e)
	}
	if err != nil {
		return fmt.Errorf("registry: shut down: %w", err)
	}
	return nil
}

// isNotExist reports whether a backend error means "no such content".
func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
