package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/kube"
	"airlock.dev/airlock/installer/state"
)

// checkAdminKubeconfig reads a kubeconfig as kubectl does and checks its
// credentials: airlock-admin, signed by the cluster CA, valid for ttl.
func checkAdminKubeconfig(t *testing.T, raw []byte, p *kube.PKI, server string, ttl time.Duration) {
	t.Helper()
	cfg, err := clientcmd.Load(raw)
	if err != nil {
		t.Fatalf("kubeconfig: %v\n%s", err, raw)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster].Server != server || ctx.Cluster != "lab" {
		t.Fatalf("kubeconfig context %v clusters %v", ctx, cfg.Clusters)
	}
	block, _ := pem.Decode(cfg.AuthInfos[ctx.AuthInfo].ClientCertificateData)
	if block == nil {
		t.Fatal("no client certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.CA.CertPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate not from the cluster CA: %v", err)
	}
	if d := time.Until(cert.NotAfter); cert.Subject.CommonName != kube.AdminUser || d > ttl || d < ttl-time.Minute {
		t.Errorf("client certificate %v valid for %v more, want %v", cert.Subject, d, ttl)
	}
}

func TestKubeconfigFromStore(t *testing.T) {
	dir := t.TempDir()
	_, errOut, code := run(t, "--state", dir, "kubeconfig")
	if code == 0 || !strings.Contains(errOut, "no state store") {
		t.Errorf("without a store: exit %d %q", code, errOut)
	}
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := kube.LoadOrCreatePKI(st, "lab", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = run(t, "--state", dir, "kubeconfig")
	if code == 0 || !strings.Contains(errOut, "--server") {
		t.Errorf("without a known API server: exit %d %q", code, errOut)
	}
	out, errOut, code := run(t, "--state", dir, "kubeconfig", "--server", "https://10.40.0.10:6443", "--ttl", "30m")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	checkAdminKubeconfig(t, []byte(out), p, "https://10.40.0.10:6443", 30*time.Minute)

	st, err = state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.SaveAPIServer(st, "https://10.40.0.10:6443"); err != nil {
		t.Fatal(err)
	}
	st.Close()
	file := filepath.Join(dir, "admin.conf")
	if err := os.WriteFile(file, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = run(t, "--state", dir, "kubeconfig", "-o", file)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig file mode %v, want 0600", fi.Mode().Perm())
	}
	checkAdminKubeconfig(t, raw, p, "https://10.40.0.10:6443", time.Hour)

	for _, bad := range [][]string{{"--ttl", "0s"}, {"--ttl", "720h"}, {"--server", "http://x:6443"}} {
		if _, errOut, code := run(t, append([]string{"--state", dir, "kubeconfig"}, bad...)...); code == 0 {
			t.Errorf("%v accepted: %s", bad, errOut)
		}
	}
}

// While an airlock owns the store, the command asks it over the control
// socket (the store cannot be opened then).
func TestKubeconfigFromRunningAirlock(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p, err := kube.LoadOrCreatePKI(st, "lab", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.SaveAPIServer(st, "https://10.40.0.10:6443"); err != nil {
		t.Fatal(err)
	}
	ln, err := control.Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() {
		done <- control.Serve(ctx, ln, control.Handler(control.EngineSource{Inventory: inventory.New(st, nil, log), Store: st}, log))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	out, errOut, code := run(t, "--state", dir, "kubeconfig", "--ttl", "10m")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	checkAdminKubeconfig(t, []byte(out), p, "https://10.40.0.10:6443", 10*time.Minute)
}
