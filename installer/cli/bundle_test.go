package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/config"
)

// runBundle runs `airlock bundle ARGS` and returns stdout, stderr and the error.
func runBundle(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	g := &globals{streams: Streams{In: strings.NewReader(""), Out: &out, Err: &errOut}}
	cmd := newBundleCommand(g)
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func TestBundleCommands(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "site")
	if out, _, err := runBundle(t, "keygen", "--out", key); err != nil || !strings.Contains(out, "site.pub") {
		t.Fatalf("keygen: %s %v", out, err)
	}
	if _, _, err := runBundle(t, "keygen", "--out", key); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("keygen over an existing key: %v", err)
	}
	kernel := []byte("a kernel")
	os.WriteFile(filepath.Join(dir, "vmlinuz"), kernel, 0o644)
	sum := sha256.Sum256(kernel)
	chartDir := filepath.Join(dir, "mychart")
	os.MkdirAll(filepath.Join(chartDir, "templates"), 0o755)
	os.WriteFile(filepath.Join(chartDir, "Chart.yaml"), []byte("apiVersion: v2\nname: mychart\nversion: 0.1.0\n"), 0o644)
	os.WriteFile(filepath.Join(chartDir, "templates", "cm.yaml"), []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"), 0o644)
	spec := "apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nmetadata: {name: cli}\ncharts:\n  - name: mychart\n    path: mychart\nfiles:\n  - name: vmlinuz\n    url: vmlinuz\n    sha256: " + hex.EncodeToString(sum[:]) + "\n"
	specPath := filepath.Join(dir, "bundle.yaml")
	os.WriteFile(specPath, []byte(spec), 0o644)

	// check: a broken spec lists every problem with its position.
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nimagez: []\nfiles:\n  - name: ../x\n    url: x\n    sha256: nope\n"), 0o644)
	out, _, err := runBundle(t, "check", "-f", bad)
	if err == nil || !strings.Contains(out, "bad.yaml:3:1: imagez:") || !strings.Contains(out, "files[0].sha256") || !strings.Contains(out, "files[0].name") {
		t.Fatalf("check of a broken spec: %v\n%s", err, out)
	}
	if out, _, err := runBundle(t, "check", "-f", specPath); err != nil || !strings.Contains(out, "valid") {
		t.Fatalf("check: %v %s", err, out)
	}

	bpath := filepath.Join(dir, "site.bundle")
	if _, errOut, err := runBundle(t, "build", "-f", specPath, "-o", bpath, "--key", key+".key"); err != nil {
		t.Fatalf("build: %v\n%s", err, errOut)
	}
	out, _, err = runBundle(t, "verify", "--key", key+".pub", bpath)
	if err != nil || !strings.Contains(out, "OK: signature by key") || !strings.Contains(out, "/s)") {
		t.Fatalf("verify: %v %s", err, out)
	}
	// Without --key: intact, but authenticity NOT checked, and that fails
	// unless --insecure-no-key accepts it.
	out, _, err = runBundle(t, "verify", bpath)
	if err == nil || !strings.Contains(err.Error(), "authenticity NOT checked") || !strings.Contains(out, "authenticity NOT checked") || strings.Contains(out, "OK") {
		t.Fatalf("verify without --key: %v %s", err, out)
	}
	out, _, err = runBundle(t, "verify", "-o", "json", bpath)
	var rep verifyReport
	if err == nil || json.Unmarshal([]byte(out), &rep) != nil || !rep.Verified || rep.Trusted || !strings.Contains(rep.Authenticity, "NOT checked") {
		t.Fatalf("verify -o json without --key: %v %s", err, out)
	}
	out, _, err = runBundle(t, "verify", "--insecure-no-key", bpath)
	if err != nil || !strings.Contains(out, "authenticity NOT checked") {
		t.Fatalf("verify --insecure-no-key: %v %s", err, out)
	}
	if _, _, err := runBundle(t, "verify", "--insecure-no-key", "--key", key+".pub", bpath); err == nil {
		t.Fatal("verify --insecure-no-key --key: accepted")
	}
	out, _, err = runBundle(t, "inspect", bpath)
	if err != nil || !strings.Contains(out, "mychart") || !strings.Contains(out, "vmlinuz") || !strings.Contains(out, "authenticity NOT checked") {
		t.Fatalf("inspect: %v %s", err, out)
	}
	out, _, err = runBundle(t, "inspect", "--key", key+".pub", bpath)
	if err != nil || !strings.Contains(out, "signed by the given key") {
		t.Fatalf("inspect --key: %v %s", err, out)
	}
	// A wrong key is refused.
	other := filepath.Join(dir, "other")
	runBundle(t, "keygen", "--out", other)
	if _, _, err := runBundle(t, "verify", "--key", other+".pub", bpath); err == nil || !strings.Contains(err.Error(), "not by the given key") {
		t.Fatalf("verify with another key: %v", err)
	}
	// With no bundle named, this (test) executable carries none.
	if _, err := openBundle("", ""); !errors.Is(err, bundle.ErrNotBundle) {
		t.Fatalf("openBundle of an executable without a bundle: %v", err)
	}
	// serve refuses a bundle whose key nobody named.
	if _, _, err := runBundle(t, "serve", "--listen", "127.0.0.1:0", bpath); !errors.Is(err, bundle.ErrUntrusted) {
		t.Fatalf("serve without --key: %v", err)
	}
	// serve answers the registry API until cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	serveOut := &syncBuffer{}
	g := &globals{streams: Streams{Out: serveOut, Err: serveOut}}
	serve := newBundleCommand(g)
	serve.SetArgs([]string{"serve", "--listen", "127.0.0.1:0", "--key", key + ".pub", bpath})
	done := make(chan error, 1)
	go func() { done <- serve.ExecuteContext(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(serveOut.String(), "serving") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	addr := strings.TrimSpace(serveOut.String()[strings.LastIndex(serveOut.String(), " ")+1:])
	resp, err := http.Get("http://" + addr + "/v2/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("serve: GET /v2/: %v %v (output %q)", resp, err, serveOut.String())
	}
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve returned %v after cancel", err)
	}
	// Split and embedded forms.
	if _, errOut, err := runBundle(t, "build", "-f", specPath, "-o", filepath.Join(dir, "split.bundle"), "--key", key+".key", "--split", "1Mi"); err != nil {
		t.Fatalf("build --split: %v\n%s", err, errOut)
	}
	if _, _, err := runBundle(t, "verify", "--key", key+".pub", filepath.Join(dir, "split.bundle")); err != nil {
		t.Fatalf("verify split: %v", err)
	}
	exe := filepath.Join(dir, "airlock-site")
	if _, errOut, err := runBundle(t, "build", "-f", specPath, "-o", exe, "--key", key+".key", "--embed", "--airlock-binary", "/bin/true"); err != nil {
		t.Fatalf("build --embed: %v\n%s", err, errOut)
	}
	out, _, err = runBundle(t, "verify", "-o", "json", "--key", key+".pub", exe)
	if err != nil || !strings.Contains(out, `"selfContained": true`) {
		t.Fatalf("verify embedded: %v %s", err, out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// buildCLIBundle makes a key pair and a small bundle signed with it, as an
// operator would, and returns the bundle and the public key.
func buildCLIBundle(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	key := filepath.Join(dir, name)
	if _, _, err := runBundle(t, "keygen", "--out", key); err != nil {
		t.Fatal(err)
	}
	kernel := []byte("a kernel for " + name)
	os.WriteFile(filepath.Join(dir, name+".vmlinuz"), kernel, 0o644)
	sum := sha256.Sum256(kernel)
	spec := filepath.Join(dir, name+".yaml")
	os.WriteFile(spec, []byte("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nmetadata: {name: "+name+"}\nfiles:\n  - name: vmlinuz\n    url: "+name+".vmlinuz\n    sha256: "+hex.EncodeToString(sum[:])+"\n"), 0o644)
	out := filepath.Join(dir, name+".bundle")
	if _, errOut, err := runBundle(t, "build", "-f", spec, "-o", out, "--key", key+".key"); err != nil {
		t.Fatalf("build: %v\n%s", err, errOut)
	}
	return out, key + ".pub"
}

// serve opens the answer file's bundle only with its key or with trust on
// first use, which records the key in the state directory and refuses
// another one later.
func TestServeBundleTrust(t *testing.T) {
	dir := t.TempDir()
	site, sitePub := buildCLIBundle(t, dir, "site")
	other, otherPub := buildCLIBundle(t, dir, "other")
	var logs syncBuffer
	g := &globals{stateDir: filepath.Join(dir, "state"), log: slog.New(slog.NewTextHandler(&logs, nil))}

	if _, err := serveBundle(config.Bundle{Path: site}, g); !errors.Is(err, bundle.ErrUntrusted) || !strings.Contains(err.Error(), "bundle.publicKey") {
		t.Fatalf("no key, no trust on first use: %v", err)
	}
	if _, err := serveBundle(config.Bundle{Path: site, PublicKey: otherPub}, g); !errors.Is(err, bundle.ErrSignature) {
		t.Fatalf("another key: %v", err)
	}
	if _, err := serveBundle(config.Bundle{Path: site, PublicKey: "/dev/zero"}, g); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("key /dev/zero: %v", err)
	}
	b, err := serveBundle(config.Bundle{Path: site, PublicKey: sitePub}, g)
	if err != nil || b.Authenticity() != bundle.KeyGiven {
		t.Fatalf("its key: %v", err)
	}
	b.Close()
	if _, err := os.Stat(filepath.Join(g.stateDir, bundle.PinFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a named key was recorded as trusted on first use: %v", err)
	}

	b, err = serveBundle(config.Bundle{Path: site, TrustOnFirstUse: true}, g)
	if err != nil || b.Authenticity() != bundle.FirstUse {
		t.Fatalf("first use: %v", err)
	}
	b.Close()
	if !strings.Contains(logs.String(), "trusted on first use") || !strings.Contains(logs.String(), b.Metadata().KeyID) {
		t.Errorf("first use is not logged with the key ID:\n%s", logs.String())
	}
	if _, err := serveBundle(config.Bundle{Path: other, TrustOnFirstUse: true}, g); !errors.Is(err, bundle.ErrSignature) || !strings.Contains(err.Error(), "trusted at first use") {
		t.Fatalf("another key after first use: %v", err)
	}
	// bundle serve shares the state directory's record.
	if _, _, err := runBundleState(t, g.stateDir, "serve", "--trust-on-first-use", "--listen", "127.0.0.1:0", other); !errors.Is(err, bundle.ErrSignature) {
		t.Fatalf("bundle serve of another key after first use: %v", err)
	}
}

// runBundleState is runBundle with a state directory.
func runBundleState(t *testing.T, stateDir string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	g := &globals{streams: Streams{In: strings.NewReader(""), Out: &out, Err: &errOut}, stateDir: stateDir}
	cmd := newBundleCommand(g)
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// -f /dev/zero and --key /dev/zero fail at once with a clear message.
func TestBundleRefusesDevZero(t *testing.T) {
	dir := t.TempDir()
	site, _ := buildCLIBundle(t, dir, "site")
	for _, args := range [][]string{
		{"build", "-f", "/dev/zero", "-o", filepath.Join(dir, "x.bundle"), "--key", filepath.Join(dir, "site.key")},
		{"check", "-f", "/dev/zero"},
		{"build", "-f", filepath.Join(dir, "site.yaml"), "-o", filepath.Join(dir, "x.bundle"), "--key", "/dev/zero"},
		{"verify", "--key", "/dev/zero", site},
		{"inspect", "--key", "/dev/zero", site},
		{"serve", "--key", "/dev/zero", site},
	} {
		start := time.Now()
		_, _, err := runBundle(t, args...)
		if err == nil || !strings.Contains(err.Error(), "/dev/zero: is a character device, not a regular file") {
			t.Errorf("bundle %s: %v", strings.Join(args, " "), err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("bundle %s took %s", strings.Join(args, " "), d)
		}
	}
}

// bundle check, build, inspect and verify with an OS image: check reads
// the image and prints its format and raw digest, and names the entry and
// both digests when bundle.yaml's rawSHA256 is not the image's; build
// records it, inspect shows it, verify checks its raw digest.
func TestBundleOSImageCommands(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "site")
	if _, _, err := runBundle(t, "keygen", "--out", key); err != nil {
		t.Fatal(err)
	}
	raw := bytes.Repeat([]byte("a disk image "), 100000)
	var z bytes.Buffer
	zw, _ := zstd.NewWriter(&z)
	zw.Write(raw)
	zw.Close()
	os.WriteFile(filepath.Join(dir, "node.img"), z.Bytes(), 0o644)
	sum := sha256.Sum256(raw)
	rawSum := hex.EncodeToString(sum[:])
	wrong := strings.Repeat("1", 64)
	badSpec := filepath.Join(dir, "bad.yaml")
	os.WriteFile(badSpec, []byte("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nosImages:\n  - {name: node, path: node.img, rawSHA256: "+wrong+"}\n"), 0o644)
	out, _, err := runBundle(t, "check", "-f", badSpec)
	if ExitCode(err) != 1 || !strings.Contains(out, "osImages[0] node") || !strings.Contains(out, wrong) || !strings.Contains(out, rawSum) {
		t.Fatalf("check with a wrong rawSHA256: %v\n%s", err, out)
	}
	spec := filepath.Join(dir, "bundle.yaml")
	os.WriteFile(spec, []byte("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nosImages:\n  - {name: node, path: node.img, rawSHA256: "+rawSum+"}\n"), 0o644)
	out, _, err = runBundle(t, "check", "-f", spec)
	if err != nil || !strings.Contains(out, "zstd") || !strings.Contains(out, rawSum) || !strings.Contains(out, "1 OS images") {
		t.Fatalf("check: %v\n%s", err, out)
	}
	bpath := filepath.Join(dir, "site.bundle")
	if _, errOut, err := runBundle(t, "build", "-f", spec, "-o", bpath, "--key", key+".key"); err != nil {
		t.Fatalf("build: %v\n%s", err, errOut)
	}
	out, _, err = runBundle(t, "inspect", "--key", key+".pub", bpath)
	if err != nil || !strings.Contains(out, "OS IMAGES (1)") || !strings.Contains(out, rawSum) {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	out, _, err = runBundle(t, "inspect", "--key", key+".pub", "-o", "json", bpath)
	if err != nil || !strings.Contains(out, `"rawSHA256": "`+rawSum) && !strings.Contains(out, `"rawSHA256":"`+rawSum) {
		t.Fatalf("inspect -o json: %v\n%s", err, out)
	}
	if out, _, err := runBundle(t, "verify", "--key", key+".pub", bpath); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
}
