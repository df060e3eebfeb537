package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/services/agentapi"
)

// An order the agent cannot accept (an unknown kind, an install order
// without a disk) is answered as failed, saying why, and does not keep the
// agent from the next one; an order seen before is not started again.
func TestOrderBookRefusesAndRunsOnce(t *testing.T) {
	b := newOrderBook()
	runs := map[string]int{}
	done := make(chan string, 4)
	opts := Options{Log: slog.New(slog.DiscardHandler), OnOrder: func(_ context.Context, o agentapi.Order, _ func(uint64, uint64)) error {
		runs[o.ID]++
		done <- o.ID
		return nil
	}}
	ctx := context.Background()
	b.take(ctx, agentapi.Order{ID: "o-1", Kind: "dance"}, opts)
	b.take(ctx, agentapi.Order{ID: "o-2", Kind: agentapi.OrderInstall, Install: &agentapi.InstallOrder{}}, opts)
	b.take(ctx, agentapi.Order{ID: "o-3", Kind: agentapi.OrderWait}, opts)
	if id := <-done; id != "o-3" {
		t.Fatalf("ran %s", id)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.state() != "waiting" { // the result is recorded after OnOrder returns
		if time.Now().After(deadline) {
			t.Fatal("o-3 still running 10 s after it returned")
		}
		time.Sleep(time.Millisecond)
	}
	b.take(ctx, agentapi.Order{ID: "o-3", Kind: agentapi.OrderWait}, opts) // re-sent
	// An order without an ID of airlock's form cannot be answered: its
	// result would make every later heartbeat invalid.
	b.take(ctx, agentapi.Order{Kind: agentapi.OrderReboot}, opts)
	if got := b.answers([]agentapi.Order{{ID: ""}}); len(got) != 0 {
		t.Fatalf("answered an order without an ID: %+v", got)
	}
	got := b.answers([]agentapi.Order{{ID: "o-1"}, {ID: "o-2"}, {ID: "o-3"}})
	if len(got) != 3 || got[0].Status != agentapi.ResultFailed || got[1].Status != agentapi.ResultFailed || got[2].Status != agentapi.ResultDone {
		t.Fatalf("answers %+v", got)
	}
	if runs["o-3"] != 1 || runs["o-1"]+runs["o-2"] != 0 {
		t.Fatalf("runs %v", runs)
	}
	for _, r := range got[:2] {
		if r.Error == "" {
			t.Errorf("refusal of %s says nothing", r.ID)
		}
	}
}

// The agent's TLS client trusts only the CA it is given: a server whose
// certificate another CA signed is refused, so is plain HTTP, and so is a
// redirect from https to http.
func TestTLSClientTrustsOnlyAirlocksCA(t *testing.T) {
	ok := func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }
	ours := httptest.NewTLSServer(http.HandlerFunc(ok))
	defer ours.Close()
	other := httptest.NewUnstartedServer(http.HandlerFunc(ok))
	// A certificate of its own, of another CA than ours.
	other.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	other.StartTLS()
	defer other.Close()
	plain := httptest.NewServer(http.HandlerFunc(ok))
	defer plain.Close()
	redirect := httptest.NewTLSServer(http.RedirectHandler(plain.URL, http.StatusFound))
	defer redirect.Close()

	hc, err := TLSClient(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ours.Certificate().Raw}), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(ours.URL)
	if err != nil {
		t.Fatalf("our server: %v", err)
	}
	resp.Body.Close()
	var unknown x509.UnknownAuthorityError
	if _, err := hc.Get(other.URL); !errors.As(err, &unknown) {
		t.Errorf("a server of another CA: %v, want an unknown-authority error", err)
	}
	if _, err := hc.Get(plain.URL); err == nil || !strings.Contains(err.Error(), "TLS only") {
		t.Errorf("plain HTTP: %v", err)
	}
	// The redirect server shares httptest's certificate with ours.
	if _, err := hc.Get(redirect.URL); err == nil || !strings.Contains(err.Error(), "TLS only") {
		t.Errorf("a redirect to plain HTTP: %v", err)
	}
	if _, err := TLSClient([]byte("not a certificate"), 0); err == nil {
		t.Error("a CA file without a certificate was accepted")
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not airlock"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
