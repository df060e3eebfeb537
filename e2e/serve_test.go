//go:build e2e

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
)

func answers(iface string) string {
	s := `apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: e2e, lab: true}
network:
  mode: full
  subnet: 10.77.0.0/24
  address: 10.77.0.1
  dynamicRange: {start: 10.77.0.100, end: 10.77.0.150}
  leaseTime: 1h
machines:
  - name: all
    role: control-plane
    hostname: cp-{index}
admission: {policy: any}
cluster: {name: e2e}
`
	if iface != "" {
		s = strings.Replace(s, "  mode: full\n", "  interface: "+iface+"\n  mode: full\n", 1)
	}
	return s
}

func TestServeRefusesWithoutInterface(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "answers.yaml", answers(""))
	_, err := airlock(t, "serve", "-f", file, "--state", filepath.Join(dir, "state"))
	if err == nil || !strings.Contains(err.Error(), "network.interface is not set") {
		t.Fatalf("serve without an interface: %v", err)
	}
}

var tokenRE = regexp.MustCompile(`airlock\.token=(\S+)`)

// A real DHCP client gets a lease from airlock serve, the machine's iPXE
// script carries a per-boot token and the agent API's https URL, an agent
// report with that token sent over TLS (curl trusting only airlock's CA
// from the state directory) lands in the inventory (read through the
// control socket while serve runs, and from the store after it stops), the
// same report in clear is refused on both ports, and the lease and the CA
// survive a restart.
func TestServeDiscoveryOverRealDHCP(t *testing.T) {
	busybox := netns.RequireTool(t, "busybox", "busybox-static")
	curl := netns.RequireTool(t, "curl", "curl")
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	srv := newNS(t, "alsv")
	cli := newNS(t, "alcl")
	if err := netns.AddVeth(srv, "prov0", cli, "eth0"); err != nil {
		t.Fatal(err)
	}
	for _, step := range []error{srv.AddAddr("prov0", "10.77.0.1/24"), srv.LinkUp("prov0"), cli.LinkUp("eth0")} {
		if step != nil {
			t.Fatal(step)
		}
	}
	file := writeFile(t, dir, "answers.yaml", answers("prov0"))
	boot := filepath.Join(dir, "boot")
	os.MkdirAll(boot, 0o755)
	writeFile(t, boot, "vmlinuz", "not really a kernel")
	writeFile(t, boot, "initramfs.img", "not really an initramfs")
	serveArgs := []string{"serve", "-f", file, "--state", stateDir, "--boot-files", boot}

	serve := start(t, srv.Command(context.Background(), airlockBin(t), serveArgs...))
	serve.waitFor(t, "airlock: serving on prov0 (DHCP full", 30*time.Second)

	// A DHCP client in the other namespace: udhcpc runs its script with the lease.
	script := writeFile(t, dir, "udhcpc.sh", "#!/bin/sh\n[ \"$1\" = bound ] && echo \"LEASE ip=$ip router=$router\"\nexit 0\n")
	os.Chmod(script, 0o755)
	lease := func() string {
		out := run(t, cli.Command(context.Background(), busybox, "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "2", "-s", script))
		m := regexp.MustCompile(`LEASE ip=(\S+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("udhcpc got no lease:\n%s\nserve log:\n%s", out, serve.log())
		}
		return m[1]
	}
	ip := lease()
	if !strings.HasPrefix(ip, "10.77.0.") {
		t.Fatalf("lease %s outside the subnet", ip)
	}
	mac := strings.TrimSpace(run(t, cli.Command(context.Background(), "cat", "/sys/class/net/eth0/address")))
	run(t, cli.Command(context.Background(), "ip", "addr", "add", ip+"/24", "dev", "eth0"))

	// The machine's iPXE script, as iPXE would fetch it.
	scriptText := run(t, cli.Command(context.Background(), busybox, "wget", "-q", "-O", "-", "http://10.77.0.1:8080/ipxe/boot.ipxe?mac="+mac))
	m := tokenRE.FindStringSubmatch(scriptText)
	if m == nil || !strings.Contains(scriptText, "kernel http://10.77.0.1:8080/files/vmlinuz") || !strings.Contains(scriptText, " airlock.api=https://10.77.0.1:8443 ") {
		t.Fatalf("iPXE script:\n%s", scriptText)
	}
	caFile := filepath.Join(stateDir, "ca.pem")
	caBefore, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatalf("airlock's CA: %v", err)
	}
	token := m[1]

	// The agent's registration with that token.
	raw, err := os.ReadFile("../services/agentapi/testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	var reg map[string]any
	json.Unmarshal(raw, &reg)
	reg["bootMAC"] = mac
	inv := reg["inventory"].(map[string]any)
	inv["system"].(map[string]any)["serial"] = "E2E-0001"
	inv["nics"] = []map[string]any{{"name": "eth0", "mac": mac, "link": true}}
	body, _ := json.Marshal(reg)
	bodyFile := writeFile(t, dir, "registration.json", string(body))
	// post sends the registration with curl, which trusts only ca (no
	// system roots) and fails on any status but 2xx.
	post := func(url, tok, ca string) (string, error) {
		out, err := cli.Command(context.Background(), curl, "-sS", "--fail", "--max-time", "20", "--cacert", ca, "--capath", "/nonexistent",
			"-H", "Authorization: Bearer "+tok, "-H", "Content-Type: application/json", "--data-binary", "@"+bodyFile, url).CombinedOutput()
		return string(out), err
	}
	const api = "https://10.77.0.1:8443/api/v1/agent/register"
	// In clear, on the boot port (no agent API there) or the TLS port: refused.
	for _, url := range []string{"http://10.77.0.1:8080/api/v1/agent/register", "http://10.77.0.1:8443/api/v1/agent/register"} {
		if out, err := post(url, token, caFile); err == nil {
			t.Fatalf("a registration in clear to %s was taken: %s", url, out)
		}
	}
	// To a client that trusts another CA, airlock is an impostor.
	otherCA := writeFile(t, dir, "other-ca.pem", otherCAPEM(t))
	if out, err := post(api, token, otherCA); err == nil || !strings.Contains(out, "certificate") {
		t.Fatalf("a client trusting another CA: %v %s", err, out)
	}
	if out, err := post(api, token, caFile); err != nil {
		t.Fatalf("register over TLS: %v %s\n%s", err, out, serve.log())
	}
	forged := token[:strings.Index(token, ".")+1] + strings.Repeat("x", 43)
	if _, err := post(api, forged, caFile); err == nil {
		t.Fatal("a forged token was accepted")
	}

	var machines []struct {
		ID, Serial, BootMAC, State string
	}
	out, err := airlock(t, "inventory", "-o", "json", "--state", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	readJSON(t, out, &machines)
	if len(machines) != 1 || machines[0].Serial != "E2E-0001" || machines[0].BootMAC != mac {
		t.Fatalf("inventory while serving = %s", out)
	}
	if !strings.Contains(serve.log(), `msg="agent report rejected"`) || !strings.Contains(serve.log(), `reason="forged agent token"`) {
		t.Errorf("the forged report was not logged:\n%s", serve.log())
	}

	// Ctrl-C: serve drains and exits 0; the inventory is read from the store.
	if err := serve.stop(t); err != nil {
		t.Fatalf("serve after SIGINT: %v\n%s", err, serve.log())
	}
	out, err = airlock(t, "inventory", "-o", "json", "--state", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	readJSON(t, out, &machines)
	if len(machines) != 1 {
		t.Fatalf("inventory after stop = %s", out)
	}

	// Restarted, airlock remembers the lease: the client gets its address back.
	run(t, cli.Command(context.Background(), "ip", "addr", "flush", "dev", "eth0"))
	serve = start(t, srv.Command(context.Background(), airlockBin(t), serveArgs...))
	serve.waitFor(t, "airlock: serving on prov0", 30*time.Second)
	if again := lease(); again != ip {
		t.Errorf("after a restart the client got %s, before %s", again, ip)
	}
	if caAfter, err := os.ReadFile(caFile); err != nil || string(caAfter) != string(caBefore) {
		t.Errorf("after a restart airlock's CA changed (%v)", err)
	}
}

// airlock serve opens the answer file's signed bundle and serves it as a
// registry beside the boot services; a bundle with a flipped byte is
// refused before anything serves.
func TestServeWithBundle(t *testing.T) {
	busybox := netns.RequireTool(t, "busybox", "busybox-static")
	dir := t.TempDir()
	if _, err := airlock(t, "bundle", "keygen", "--out", filepath.Join(dir, "site")); err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("a discovery kernel stands here\n", 4096)
	writeFile(t, dir, "vmlinuz", payload)
	sum := sha256.Sum256([]byte(payload))
	spec := fmt.Sprintf("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nmetadata: {name: e2e}\nfiles:\n  - name: kernel/vmlinuz\n    url: %s\n    sha256: %s\n",
		filepath.Join(dir, "vmlinuz"), hex.EncodeToString(sum[:]))
	specFile := writeFile(t, dir, "bundle.yaml", spec)
	bundleFile := filepath.Join(dir, "site.bundle")
	if _, err := airlock(t, "bundle", "build", "-f", specFile, "-o", bundleFile, "--key", filepath.Join(dir, "site.key")); err != nil {
		t.Fatal(err)
	}

	srv := newNS(t, "albs")
	cli := newNS(t, "albc")
	if err := netns.AddVeth(srv, "prov0", cli, "eth0"); err != nil {
		t.Fatal(err)
	}
	for _, step := range []error{srv.AddAddr("prov0", "10.77.0.1/24"), srv.LinkUp("prov0"), cli.AddAddr("eth0", "10.77.0.9/24"), cli.LinkUp("eth0")} {
		if step != nil {
			t.Fatal(step)
		}
	}
	answersWith := func(bundlePath string) string {
		return writeFile(t, dir, "answers.yaml", answers("prov0")+fmt.Sprintf("bundle: {path: %s, publicKey: %s}\n", bundlePath, filepath.Join(dir, "site.pub")))
	}
	serve := start(t, srv.Command(context.Background(), airlockBin(t), "serve", "-f", answersWith(bundleFile), "--state", filepath.Join(dir, "state")))
	serve.waitFor(t, "registry 10.77.0.1:5000", 30*time.Second)
	out := run(t, cli.Command(context.Background(), busybox, "wget", "-q", "-S", "-O", "-", "http://10.77.0.1:5000/v2/"))
	if !strings.Contains(out, "{}") {
		t.Errorf("GET /v2/ = %q", out)
	}
	if err := serve.stop(t); err != nil {
		t.Fatal(err)
	}

	// The same bundle with no key named and no trust on first use chosen
	// is refused before anything serves.
	noKey := writeFile(t, dir, "answers-nokey.yaml", answers("prov0")+fmt.Sprintf("bundle: {path: %s}\n", bundleFile))
	out1, err := srv.Command(context.Background(), airlockBin(t), "serve", "-f", noKey, "--state", filepath.Join(dir, "state1")).CombinedOutput()
	if err == nil || !strings.Contains(string(out1), "nobody named") || strings.Contains(string(out1), "serving on") {
		t.Fatalf("serve of a bundle whose key nobody named: %v\n%s", err, out1)
	}

	// Flip one byte of the signed metadata (where the bundle names itself):
	// opening checks the signature at once, so serve refuses to start.
	raw, err := os.ReadFile(bundleFile)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.LastIndex(string(raw), `"e2e"`)
	if i < 0 {
		t.Fatal("the bundle's metadata does not name it e2e")
	}
	raw[i+1] ^= 0x01
	bad := filepath.Join(dir, "flipped.bundle")
	os.WriteFile(bad, raw, 0o644)
	cmd := srv.Command(context.Background(), airlockBin(t), "serve", "-f", answersWith(bad), "--state", filepath.Join(dir, "state2"))
	out2, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "open bundle") || strings.Contains(string(out2), "serving on") {
		t.Fatalf("serve with a flipped byte in the bundle's metadata: %v\n%s", err, out2)
	}
	t.Logf("refused: %s", strings.TrimSpace(string(out2)))
}

// otherCAPEM is a CA certificate that is not airlock's.
func otherCAPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not airlock"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
