package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"time"

	"airlock.dev/airlock/services/agentapi"
)

// Client talks to airlock's agent API.
type Client struct {
	base  *url.URL
	token agentapi.Token
	hc    *http.Client
}

// NewClient returns a client for the agent API under base (airlock.api;
// the API prefix is added). hc should be TLSClient's, which trusts only
// airlock's CA.
func NewClient(base *url.URL, token agentapi.Token, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 15 * time.Second}
	}
	return &Client{base: base, token: token, hc: hc}
}

// ReadCA reads airlock's CA certificate (PEM, at most 64 KiB) from path,
// normally agentapi.CACertPath in the discovery image.
func ReadCA(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read airlock's CA certificate: %w (the boot image airlock assembles holds it at %s)", err, agentapi.CACertPath)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64<<10+1))
	if err != nil {
		return nil, fmt.Errorf("read airlock's CA certificate %s: %w", path, err)
	}
	if len(data) > 64<<10 {
		return nil, fmt.Errorf("read airlock's CA certificate %s: more than 64 KiB", path)
	}
	return data, nil
}

// TLSClient returns an HTTP client that speaks only TLS to servers whose
// certificate one of the CA certificates in caPEM (airlock's) signed: no
// system roots, no proxy from the environment, no plain HTTP. timeout 0
// means none (an image takes as long as it takes).
func TLSClient(caPEM []byte, timeout time.Duration) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("airlock's CA: no PEM certificate in it")
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &http.Client{Timeout: timeout, Transport: HTTPSOnly{tr}}, nil
}

// HTTPSOnly is TLSClient's transport: it refuses requests that are not
// https (a redirect to http included).
type HTTPSOnly struct{ *http.Transport }

// RoundTrip implements http.RoundTripper.
func (h HTTPSOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" {
		return nil, fmt.Errorf("refusing %s: the agent talks to airlock's API over TLS only", r.URL.Redacted())
	}
	return h.Transport.RoundTrip(r)
}

// StatusError is a non-200 answer from airlock.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("airlock answered %d: %s", e.Code, e.Message)
}

func (c *Client) post(ctx context.Context, endpoint string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode %s: %w", endpoint, err)
	}
	u := c.base.JoinPath(agentapi.Prefix, endpoint)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w", endpoint, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token.String())
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s: read reply: %w", endpoint, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		_ = json.Unmarshal(data, &e)
		return fmt.Errorf("%s: %w", endpoint, &StatusError{Code: resp.StatusCode, Message: e.Error})
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s: decode reply: %w", endpoint, err)
	}
	return nil
}

// Register sends the registration.
func (c *Client) Register(ctx context.Context, reg *agentapi.Registration) (agentapi.RegisterReply, error) {
	var out agentapi.RegisterReply
	return out, c.post(ctx, agentapi.PathRegister, reg, &out)
}

// UpdateInventory sends a new inventory.
func (c *Client) UpdateInventory(ctx context.Context, inv *agentapi.Inventory) (agentapi.InventoryReply, error) {
	var out agentapi.InventoryReply
	return out, c.post(ctx, agentapi.PathInventory, inv, &out)
}

// Heartbeat sends a heartbeat.
func (c *Client) Heartbeat(ctx context.Context, hb *agentapi.Heartbeat) (agentapi.HeartbeatReply, error) {
	var out agentapi.HeartbeatReply
	return out, c.post(ctx, agentapi.PathHeartbeat, hb, &out)
}

// Backoff is an exponential backoff with jitter.
type Backoff struct {
	Initial, Max time.Duration
}

// Retry calls fn until it succeeds or ctx ends, sleeping with exponential
// backoff between tries. It logs each failure.
func (b Backoff) Retry(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	delay := b.Initial
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var se *StatusError
		level := slog.LevelWarn
		if errors.As(err, &se) && (se.Code == http.StatusUnauthorized || se.Code == http.StatusForbidden) {
			level = slog.LevelError // airlock refuses our token: keep trying, loudly.
		}
		log.Log(ctx, level, what+" failed; will retry", "attempt", attempt, "in", delay, "err", err)
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, b.Max)
	}
}
