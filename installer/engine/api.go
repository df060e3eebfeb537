package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"airlock.dev/airlock/installer/pki"
)

// apiServer serves what carries a token or a secret over TLS, on a port of
// its own: the agent API (registrations, inventories, heartbeats and the
// orders in their replies), the machines' seeds and the installed systems'
// phone-home. The plain-HTTP boot server keeps only what firmware and iPXE
// fetch (they cannot check airlock's CA) and the OS image, whose digest the
// agent checks against its order.
type apiServer struct {
	ln  net.Listener
	tls *tls.Config
	mux *http.ServeMux
	log *slog.Logger
	// maxBody bounds request bodies.
	maxBody int64
}

func newAPIServer(ln net.Listener, cert tls.Certificate, log *slog.Logger) *apiServer {
	return &apiServer{ln: ln, tls: pki.ServerConfig(cert), mux: http.NewServeMux(), log: log, maxBody: 4 << 20}
}

// Mount serves h under prefix, with request bodies bounded.
func (s *apiServer) Mount(prefix string, h http.Handler) {
	s.mux.Handle(prefix, http.MaxBytesHandler(h, s.maxBody))
}

// Run serves until ctx ends, then drains for up to 15 s; nil after a
// cancel. It closes the listener.
func (s *apiServer) Run(ctx context.Context) error {
	srv := &http.Server{
		Handler:           s.mux,
		TLSConfig:         s.tls,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(s.ln, "", "") }()
	s.log.Info("agent API: serving over TLS", "addr", s.ln.Addr())
	select {
	case err := <-done:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("agent API: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("agent API: requests still running after the drain timeout; closing", "err", err)
		srv.Close()
	}
	<-done
	return nil
}
