package engine

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"airlock.dev/airlock/installer/agent"
	"airlock.dev/airlock/installer/agent/provision"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/lab/testkit"
	"airlock.dev/airlock/installer/pki"
	"airlock.dev/airlock/services/agentapi"
)

func run(t *testing.T, stdin, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// copyTree copies the agent's captured host (sys and proc) to dir.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if d.Type()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The provision and boot phases with the real agent library carrying out
// the engine's orders from the machines' namespace, writing to a real loop
// device: the agent API and the seed over TLS (the agent's own client,
// trusting only airlock's CA from the state directory), the OS image over
// plain HTTP. The machine goes assigned -> installing -> installed, its
// disk holds the image and the seed (which carries airlock's CA and an
// https phone-home), it is told to reboot and then to boot its local disk,
// and the phone-home with the seed's token (as cloud-init posts it) makes
// it booted; the token works once. A client trusting another CA is
// refused, plain HTTP to the TLS port is refused, and nothing that carries
// a token is served on the plain-HTTP port.
func TestProvisionAndBootWithTheRealAgent(t *testing.T) {
	dir := t.TempDir()
	// The OS image: a 16 MiB GPT disk, zstd-compressed.
	raw, compressed := testkit.DiskImage(t, 16<<20)
	b, _ := osImageBundle(t, map[string][3]any{"node": {compressed, int64(len(raw)), hexSum(raw)}})
	defer b.Close()
	// The machine's disk: a 64 MiB loop device. The agent's host (the
	// captured one) reports it as vda, with the loop device's backing file
	// as its serial, as provision.Host{Loop: true} names loop devices.
	_, backing := testkit.LoopDevice(t, 64<<20)
	root := filepath.Join(dir, "host")
	copyTree(t, "../agent/testdata/host", root)
	for name, value := range map[string]string{"serial": backing, "size": strconv.Itoa(64 << 20 / 512)} {
		if err := os.WriteFile(filepath.Join(root, "sys/block/vda", name), []byte(value+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	stateDir := t.TempDir()
	var logs syncBuf
	defer func() {
		if t.Failed() {
			t.Logf("engine and agent log:\n%s", logs.String())
		}
	}()
	e, peer := testEngineWith(t, stateDir, `machines:
  - {name: cp, role: control-plane, hostname: "cp-{index}", installDisk: {policy: serial, serial: "`+backing+`"}}
admission: {policy: any}
`, func(o *Options) {
		o.Log = slog.New(slog.NewTextHandler(&logs, nil))
		o.OSImages = b
	})
	e.Inventory().SetHeartbeat(1)
	peer.MustAddr(t, "eth0", "10.78.0.2/24")
	hc, base, apiHC, api := machineClients(t, peer, stateDir)
	inv, err := agent.Collect(os.DirFS(root))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := agent.Registration(inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := e.Inventory().IssueBoot(reg.BootMAC)
	if err != nil {
		t.Fatal(err)
	}
	agentLog := slog.New(slog.NewTextHandler(&logs, nil)).With("part", "agent")
	installer := agent.Installer{Host: provision.Host{SysRoot: "/sys", DevRoot: "/dev", Loop: true}, Base: base, HTTP: hc,
		API: api, APIHTTP: apiHC, Token: tok, Log: agentLog}
	rebooted := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	go agent.Run(ctx, agent.Options{Root: os.DirFS(root), Client: agent.NewClient(api, tok, apiHC), Log: agentLog,
		OnOrder: func(ctx context.Context, o agentapi.Order, progress func(uint64, uint64)) error {
			switch o.Kind {
			case agentapi.OrderInstall:
				return installer.Run(ctx, o, progress)
			case agentapi.OrderReboot:
				close(rebooted)
				<-ctx.Done() // a machine that reboots says nothing more
				return ctx.Err()
			}
			return nil
		}})

	done := make(chan error, 1)
	go func() {
		res, err := e.Install(ctx, InstallOptions{Expect: 1})
		if err == nil {
			err = res.Err()
		}
		done <- err
	}()
	select {
	case <-rebooted:
	case err := <-done:
		t.Fatalf("install ended before the reboot: %v", err)
	}
	ms, err := e.Inventory().List()
	if err != nil || len(ms) != 1 {
		t.Fatalf("machines: %v %v", ms, err)
	}
	m := ms[0]
	if m.State != inventory.StateInstalled {
		t.Fatalf("at the reboot the machine is %s", m.State)
	}
	// The disk holds the image and the seed's partition.
	disk, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk[4<<20:4<<20+20], raw[4<<20:4<<20+20]) {
		t.Error("the image is not on the disk")
	}
	if dump := run(t, "", "sfdisk", "--dump", backing); !strings.Contains(dump, `name="cidata"`) {
		t.Errorf("no seed partition:\n%s", dump)
	}
	// Its next PXE visit boots the local disk, and is counted.
	script := get(t, hc, "http://10.78.0.1:18080/ipxe/boot.ipxe?mac="+m.BootMAC)
	if !strings.Contains(script, "local boot") {
		t.Errorf("the installed machine's boot script:\n%s", script)
	}
	if m, _ := e.Inventory().Get(m.ID); m.LocalBoots != 1 {
		t.Errorf("%d local boots counted, want 1", m.LocalBoots)
	}
	// The installed system phones home, as cloud-init does from the seed.
	seedImg, err := os.ReadFile(filepath.Join(stateDir, "seeds", m.ID+".img"))
	if err != nil {
		t.Fatal(err)
	}
	found := regexp.MustCompile(`(https://10\.78\.0\.1:8443/api/v1/phone-home/m-[0-9a-f]+)\?token=([A-Za-z0-9_-]+)`).FindSubmatch(seedImg)
	if found == nil {
		t.Fatal("no https phone-home URL in the seed")
	}
	// The seed puts airlock's CA into the installed system's trust store.
	caPEM, err := os.ReadFile(filepath.Join(stateDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caBody := strings.Split(strings.TrimSpace(string(caPEM)), "\n")[1]
	if !bytes.Contains(seedImg, []byte(caBody)) {
		t.Error("airlock's CA is not in the seed")
	}
	phone := string(found[1]) + "?token=" + string(found[2])
	if code := post(t, apiHC, string(found[1])+"?token=wrong"); code != http.StatusForbidden {
		t.Errorf("phone-home with a wrong token: %d", code)
	}
	// Nothing that carries a token is served in clear: not the agent API,
	// not the seed, not the phone-home.
	plainHTTP := strings.Replace(phone, "https://10.78.0.1:8443", "http://10.78.0.1:18080", 1)
	if code := post(t, hc, plainHTTP); code != http.StatusNotFound {
		t.Errorf("phone-home on the plain-HTTP port: %d, want 404", code)
	}
	for _, path := range []string{"/seeds/" + m.ID, agentapi.Prefix + agentapi.PathHeartbeat} {
		req, _ := http.NewRequest(http.MethodGet, "http://10.78.0.1:18080"+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok.String())
		if code := do(t, hc, req); code != http.StatusNotFound {
			t.Errorf("%s on the plain-HTTP port: %d, want 404", path, code)
		}
	}
	// Plain HTTP to the TLS port: refused before any handler runs (Go's
	// TLS server answers 400 to a request in clear), the token unspent.
	plainTLS := strings.Replace(phone, "https://", "http://", 1)
	if code := post(t, hc, plainTLS); code != http.StatusBadRequest {
		t.Errorf("plain HTTP to the TLS port: %d, want 400", code)
	}
	// The seed over TLS, but without the agent's token or with another
	// boot's: refused.
	for name, auth := range map[string]string{"no token": "", "a forged token": "Bearer " + tok.BootID + "." + strings.Repeat("x", 43)} {
		req, _ := http.NewRequest(http.MethodGet, "https://10.78.0.1:8443/seeds/"+m.ID, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if code := do(t, apiHC, req); code != http.StatusNotFound {
			t.Errorf("the seed with %s: %d, want 404", name, code)
		}
	}
	// A client that trusts another CA (a server it cannot tell from an
	// impostor) refuses airlock's certificate: the handshake fails.
	otherCA, err := pki.LoadOrCreate(t.TempDir(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	otherHC, err := agent.TLSClient(otherCA.CertPEM, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	otherHC.Transport.(agent.HTTPSOnly).DialContext = apiHC.Transport.(agent.HTTPSOnly).DialContext // from the machines' namespace
	var unknown x509.UnknownAuthorityError
	if _, err := otherHC.Post(phone, "text/plain", nil); !errors.As(err, &unknown) {
		t.Errorf("a client trusting another CA: %v, want an unknown-authority error", err)
	}
	if code := post(t, apiHC, phone); code != http.StatusOK {
		t.Fatalf("phone-home: %d", code)
	}
	if err := <-done; err != nil {
		t.Fatalf("install: %v", err)
	}
	if m, _ := e.Inventory().Get(m.ID); m.State != inventory.StateBooted || m.LocalBoots != 0 {
		t.Errorf("after the phone-home: %s, %d local boots counted", m.State, m.LocalBoots)
	}
	if code := post(t, apiHC, phone); code != http.StatusForbidden {
		t.Errorf("the token worked twice (%d)", code)
	}
}

func get(t *testing.T, hc *http.Client, u string) string {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func do(t *testing.T, hc *http.Client, req *http.Request) int {
	t.Helper()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func post(t *testing.T, hc *http.Client, u string) int {
	t.Helper()
	resp, err := hc.Post(u, "application/x-www-form-urlencoded", strings.NewReader("instance_id=x&hostname=cp-1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// syncBuf is a buffer the engine's and the agent's goroutines log into.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
