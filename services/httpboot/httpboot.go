// Package httpboot is airlock's HTTP boot service: per-machine iPXE scripts
// (discover, install, or boot the local disk), the iPXE binaries for UEFI
// HTTP boot, and kernels, initramfs and images served with Range support
// (http.ServeContent, which uses sendfile for files on disk), all in clear:
// firmware and iPXE cannot check a certificate. Other handlers (the OS
// image, checked against a digest by whoever fetches it) may be mounted
// beside them; what carries a token or a secret does not belong here.
package httpboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"airlock.dev/airlock/services/sendbuf"
)

// State is what a machine should do when it network-boots.
type State string

// States.
const (
	StateDiscover State = "discover"
	StateInstall  State = "install"
	StateLocal    State = "local"
)

// BootSpec is what one machine boots: a kernel and initramfs paths under
// /files/ and extra kernel arguments. Local boot needs neither.
type BootSpec struct {
	State   State
	Kernel  string
	Initrds []string
	Cmdline string
}

// Backend answers which BootSpec a machine gets, by MAC. The installer
// implements it over its inventory; MemBackend is the in-memory twin.
type Backend interface {
	BootSpec(ctx context.Context, mac net.HardwareAddr) (BootSpec, error)
}

// Config tunes the service; Defaults fills it.
type Config struct {
	// BaseURL is how machines reach this service, e.g.
	// "http://10.0.0.1:8080" (used in scripts and kernel arguments).
	BaseURL string
	// Timeouts. There is no whole-response write timeout: images are
	// large; IdleTimeout and ReadHeaderTimeout bound slow clients.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration
	// MaxHeaderBytes and MaxBodyBytes bound requests (bodies only reach
	// mounted handlers).
	MaxHeaderBytes int
	MaxBodyBytes   int64
	// DrainTimeout bounds the graceful shutdown.
	DrainTimeout time.Duration
}

// Defaults returns the default configuration.
func Defaults() Config {
	return Config{
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		MaxBodyBytes:      4 << 20,
		DrainTimeout:      15 * time.Second,
	}
}

// Server is the HTTP boot service.
type Server struct {
	cfg     Config
	ln      net.Listener
	backend Backend
	log     *slog.Logger
	mux     *http.ServeMux
	caches  []*openFiles // serveFS's open files, closed when Run returns
}

// New returns the service on ln. ipxeFS holds the iPXE binaries (may be nil
// when none are available), files the kernels, initramfs and images.
// Run closes ln.
func New(cfg Config, ln net.Listener, backend Backend, ipxeFS, files fs.FS, log *slog.Logger) (*Server, error) {
	if ln == nil || backend == nil || files == nil {
		return nil, errors.New("httpboot: listener, backend and files are required")
	}
	if !strings.HasPrefix(cfg.BaseURL, "http://") && !strings.HasPrefix(cfg.BaseURL, "https://") {
		return nil, fmt.Errorf("httpboot: BaseURL %q is not an http:// URL", cfg.BaseURL)
	}
	cfg.BaseURL = strings.TrimSuffix(cfg.BaseURL, "/")
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, ln: ln, backend: backend, log: log, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /ipxe/boot.ipxe", s.script)
	s.mux.HandleFunc("GET /ipxe/{name...}", s.serveFS(ipxeFS, "/ipxe/"))
	s.mux.HandleFunc("GET /files/{path...}", s.serveFS(files, "/files/"))
	return s, nil
}

// Mount serves h under prefix (e.g. "/api/v1/agent/"), with the request
// body limited to MaxBodyBytes. Call before Run.
func (s *Server) Mount(prefix string, h http.Handler) {
	s.mux.Handle(prefix, http.MaxBytesHandler(h, s.cfg.MaxBodyBytes))
}

// Handler returns the whole service as an http.Handler (for tests).
func (s *Server) Handler() http.Handler { return s.mux }

// Run serves until ctx is cancelled, then drains in-flight requests for up
// to DrainTimeout. It returns nil after a cancel.
func (s *Server) Run(ctx context.Context) error {
	srv := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// A mounted handler streaming something large (an OS image) may
		// enlarge its connection's send buffer: sendbuf.Enlarge.
		ConnContext: sendbuf.ConnContext,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sendbuf.Listener(s.ln, sendbuf.Boot)) }()
	s.log.Info("httpboot: serving", "addr", s.ln.Addr(), "base", s.cfg.BaseURL)
	select {
	case err := <-done:
		return fmt.Errorf("httpboot: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("httpboot: requests still running after the drain timeout; closing", "err", err)
		srv.Close()
	}
	<-done
	for _, c := range s.caches {
		c.close()
	}
	return nil
}

// serveFS serves files from fsys with Range support, keeping them open
// between requests. A nil fsys answers 404 (a build without iPXE binaries).
func (s *Server) serveFS(fsys fs.FS, prefix string) http.HandlerFunc {
	files := newOpenFiles(time.Second, 256)
	s.caches = append(s.caches, files)
	return func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, prefix)
		if fsys == nil {
			http.Error(w, "no iPXE binaries in this airlock build", http.StatusNotFound)
			return
		}
		if name == "" || strings.ContainsAny(name, "\\\x00") || !fs.ValidPath(name) {
			http.Error(w, "bad path", http.StatusBadRequest)
			return
		}
		content, st, done, err := files.open(fsys, name)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				http.NotFound(w, r)
			} else {
				s.log.Error("httpboot: open", "path", r.URL.Path, "err", err)
				http.Error(w, "cannot read the file", http.StatusInternalServerError)
			}
			return
		}
		defer done()
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", st.ModTime(), content)
	}
}

// script renders the iPXE script for the machine named by ?mac=.
func (s *Server) script(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	macStr := r.URL.Query().Get("mac")
	if macStr == "" {
		// Reached without the MAC (e.g. typed by hand): ask iPXE for it.
		_ = renderChainSelf(w, s.cfg.BaseURL)
		return
	}
	mac, err := net.ParseMAC(macStr)
	if err != nil || len(mac) != 6 {
		http.Error(w, "bad mac", http.StatusBadRequest)
		return
	}
	spec, err := s.backend.BootSpec(r.Context(), mac)
	if err != nil {
		s.log.Error("httpboot: boot spec", "mac", mac.String(), "err", err)
		_ = renderRetry(w, s.cfg.BaseURL, mac, err)
		return
	}
	if err := renderScript(w, s.cfg.BaseURL, mac, spec); err != nil {
		s.log.Error("httpboot: render script", "mac", mac.String(), "err", err)
		return
	}
	s.log.Info("httpboot: script", "mac", mac.String(), "state", spec.State)
}
