// Package control is the control socket of a running airlock: while one
// process owns the state store (serve, install, wizard, lab up), other
// commands ask it over HTTP + JSON on a unix socket in the state directory,
// readable by its owner only. When no airlock runs, they open the store
// read-only instead.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/kube"
	"airlock.dev/airlock/installer/state"
)

// SocketName is the control socket's file in the state directory.
const SocketName = "airlock.sock"

// ErrNotRunning means no airlock process serves the state directory.
var ErrNotRunning = errors.New("no airlock is running on this state directory")

// ErrLost means the airlock's connection broke before it answered: it
// died (or stopped) while it served the request. Asked again, it is either
// running or ErrNotRunning.
var ErrLost = errors.New("the airlock stopped answering")

// lost reports whether err, from a request over a connection that was
// made, is that connection broken by the other end (reset, closed before
// or while it answered), not a timeout nor a cancelled request.
func lost(ctx context.Context, err error) bool {
	var op *net.OpError
	var ne net.Error
	switch {
	case ctx.Err() != nil, errors.As(err, &ne) && ne.Timeout(), errors.As(err, &op) && op.Op == "dial":
		return false
	}
	// net/http reports a connection closed before its answer as EOF,
	// reset, or "server closed idle connection" (an error it exports
	// nothing of): whatever else a made connection fails with.
	return true
}

// Source is what the control socket reports and acts on.
type Source interface {
	Machines() ([]inventory.Machine, error)
	Journal() ([]state.Entry, error)
	Rediscover(machineID string) error
	// Decide records an operator's approval (true) or denial of a machine.
	Decide(machineID string, approve bool) error
}

// EngineSource answers from the running engine's inventory and journal.
type EngineSource struct {
	Inventory *inventory.Store
	Store     state.Store
}

// Machines implements Source.
func (s EngineSource) Machines() ([]inventory.Machine, error) { return s.Inventory.List() }

// Journal implements Source.
func (s EngineSource) Journal() ([]state.Entry, error) { return state.NewJournal(s.Store).Entries() }

// Rediscover implements Source.
func (s EngineSource) Rediscover(id string) error { return s.Inventory.Rediscover(id) }

// Decide implements Source.
func (s EngineSource) Decide(id string, approve bool) error { return Decide(s.Inventory, id, approve) }

// Kubeconfig implements KubeconfigSource.
func (s EngineSource) Kubeconfig(server string, ttl time.Duration) ([]byte, error) {
	return kube.MintAdminKubeconfig(s.Store, server, ttl, time.Now())
}

// Cluster implements ClusterSource.
func (s EngineSource) Cluster() (kube.ClusterStatus, error) { return kube.LoadClusterStatus(s.Store) }

// ClusterSource is a Source that reports the cluster's status (`airlock
// status` while an airlock runs).
type ClusterSource interface {
	Cluster() (kube.ClusterStatus, error)
}

// KubeconfigSource is a Source that mints short-lived admin kubeconfigs
// from the cluster's PKI (`airlock kubeconfig` while an airlock runs).
type KubeconfigSource interface {
	Kubeconfig(server string, ttl time.Duration) ([]byte, error)
}

// Decide records an operator's decision about a machine in the inventory:
// approved machines become admitted, denied ones denied.
func Decide(inv *inventory.Store, id string, approve bool) error {
	to, why := inventory.StateAdmitted, "approved by an operator"
	if !approve {
		to, why = inventory.StateDenied, "denied by an operator"
	}
	_, err := inv.Transition(id, to, why)
	return err
}

// Listen creates the control socket in stateDir, owner-only. A stale socket
// left by a crashed airlock is replaced; a live one is an error.
func Listen(stateDir string) (net.Listener, error) {
	path := filepath.Join(stateDir, SocketName)
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("control socket %s is served by another airlock", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket: %w", err)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, errors.Join(fmt.Errorf("restrict control socket: %w", err), ln.Close())
	}
	return ln, nil
}

// Handler serves the control API.
func Handler(src Source, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			log.Error("control request failed", "err", err)
			w.WriteHeader(http.StatusInternalServerError)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /v1/inventory", func(w http.ResponseWriter, _ *http.Request) {
		m, err := src.Machines()
		reply(w, m, err)
	})
	mux.HandleFunc("GET /v1/journal", func(w http.ResponseWriter, _ *http.Request) {
		j, err := src.Journal()
		reply(w, j, err)
	})
	mux.HandleFunc("POST /v1/machines/{id}/rediscover", func(w http.ResponseWriter, r *http.Request) {
		err := src.Rediscover(r.PathValue("id"))
		if errors.Is(err, inventory.ErrNoMachine) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		reply(w, map[string]string{"machine": r.PathValue("id"), "order": "reboot into discovery"}, err)
	})
	decide := func(approve bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			err := src.Decide(r.PathValue("id"), approve)
			code := http.StatusOK
			switch {
			case errors.Is(err, inventory.ErrNoMachine):
				code = http.StatusNotFound
			case errors.Is(err, inventory.ErrTransition):
				code = http.StatusConflict
			}
			if code != http.StatusOK {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
				return
			}
			reply(w, map[string]string{"machine": r.PathValue("id")}, err)
		}
	}
	if ks, ok := src.(KubeconfigSource); ok {
		mux.HandleFunc("POST /v1/kubeconfig", func(w http.ResponseWriter, r *http.Request) {
			ttl, err := time.ParseDuration(r.URL.Query().Get("ttl"))
			if err != nil {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				json.NewEncoder(w).Encode(map[string]string{"error": "ttl: want a duration such as 1h"})
				return
			}
			kc, err := ks.Kubeconfig(r.URL.Query().Get("server"), ttl)
			reply(w, map[string][]byte{"kubeconfig": kc}, err)
		})
	}
	if cs, ok := src.(ClusterSource); ok {
		mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, _ *http.Request) {
			c, err := cs.Cluster()
			reply(w, c, err)
		})
	}
	mux.HandleFunc("POST /v1/machines/{id}/approve", decide(true))
	mux.HandleFunc("POST /v1/machines/{id}/deny", decide(false))
	return mux
}

// Serve answers on ln until ctx is cancelled, then drains for up to 5 s.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("control socket: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("control socket shutdown: %w", err)
	}
	return nil
}

// Client talks to the airlock that owns a state directory.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the control socket in stateDir.
func NewClient(stateDir string) *Client {
	path := filepath.Join(stateDir, SocketName)
	return &Client{http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

func (c *Client) do(ctx context.Context, method, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://airlock"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return ErrNotRunning
		}
		if lost(ctx, err) {
			return fmt.Errorf("control socket: %w: %w", ErrLost, err)
		}
		return fmt.Errorf("control socket: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		if lost(ctx, err) {
			return fmt.Errorf("control socket: %w: %w", ErrLost, err)
		}
		return fmt.Errorf("control socket: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("control socket: %s: %s", resp.Status, body)
	}
	return json.Unmarshal(body, v)
}

// Machines asks the running airlock for its inventory.
func (c *Client) Machines(ctx context.Context) ([]inventory.Machine, error) {
	var out []inventory.Machine
	return out, c.do(ctx, http.MethodGet, "/v1/inventory", &out)
}

// Journal asks the running airlock for its journal.
func (c *Client) Journal(ctx context.Context) ([]state.Entry, error) {
	var out []state.Entry
	return out, c.do(ctx, http.MethodGet, "/v1/journal", &out)
}

// Decide asks the running airlock to approve or deny a machine.
func (c *Client) Decide(ctx context.Context, machineID string, approve bool) error {
	verb := "deny"
	if approve {
		verb = "approve"
	}
	var out map[string]string
	return c.do(ctx, http.MethodPost, "/v1/machines/"+url.PathEscape(machineID)+"/"+verb, &out)
}

// Kubeconfig asks the running airlock for an admin kubeconfig valid for
// ttl, pointing at server (empty: the recorded API server).
func (c *Client) Kubeconfig(ctx context.Context, server string, ttl time.Duration) ([]byte, error) {
	q := url.Values{"ttl": {ttl.String()}}
	if server != "" {
		q.Set("server", server)
	}
	var out struct{ Kubeconfig []byte }
	if err := c.do(ctx, http.MethodPost, "/v1/kubeconfig?"+q.Encode(), &out); err != nil {
		return nil, err
	}
	return out.Kubeconfig, nil
}

// Cluster asks the running airlock for the cluster's status.
func (c *Client) Cluster(ctx context.Context) (kube.ClusterStatus, error) {
	var out kube.ClusterStatus
	return out, c.do(ctx, http.MethodGet, "/v1/cluster", &out)
}

// Rediscover asks the running airlock to reboot a machine into discovery.
func (c *Client) Rediscover(ctx context.Context, machineID string) error {
	var out map[string]string
	return c.do(ctx, http.MethodPost, "/v1/machines/"+url.PathEscape(machineID)+"/rediscover", &out)
}
