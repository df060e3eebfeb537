package engine

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/agent"
	"airlock.dev/airlock/installer/agent/provision"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/lab/testkit"
	"airlock.dev/airlock/services/agentapi"
)

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// osImageBundle writes a signed bundle holding the given OS images (blob,
// and the raw size and digest its metadata records) and opens it with its
// key, as serve and install do.
func osImageBundle(t *testing.T, images map[string][3]any) (*bundle.Bundle, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "site.bundle")
	w, err := bundle.Create(path, bundle.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), "")
	var meta bundle.Metadata
	names := slices.Sorted(maps.Keys(images))
	for _, name := range names {
		im := images[name]
		blob := im[0].([]byte)
		d, err := w.AddBytes(bundle.OSImagePathPrefix+name, blob, "")
		if err != nil {
			t.Fatal(err)
		}
		meta.OSImages = append(meta.OSImages, bundle.OSImage{Name: name, Path: bundle.OSImagePathPrefix + name, Size: int64(len(blob)), Digest: d,
			Compression: bundle.DetectFormat(blob), RawSize: im[1].(int64), RawSHA256: im[2].(string)})
	}
	if _, err := w.Finish(meta, priv); err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Open(path, bundle.Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	return b, path
}

// testMachine is one machine of the rack: its captured host (with its own
// boot MAC and disk), its loop device, and its agent.
type testMachine struct {
	name, mac, root, dev, backing string
	rebooted                      chan struct{}
}

// The OS images come from a real signed bundle, each rule installing its
// own, and four machines are installed at once by the real agent library
// onto loop devices:
//   - good: its disk holds ext4 and its rule allows wiping: it is
//     installed, reboots and, once it phones home, is booted;
//   - kept: its disk holds ext4 and its rule does not allow wiping: the
//     agent refuses it and the filesystem is still there;
//   - flipped: its image differs from what the signed metadata records by
//     one byte: the agent fails it with the expected and the actual raw
//     SHA-256, and leaves the disk's first MiB zero (nothing boots);
//   - damaged: a byte of its blob was flipped in the bundle file after
//     signing: airlock fails it with both blob digests before ordering.
//
// The other machines' failures do not stop good.
func TestBundleImagesOneFailsOthersInstall(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatal("mkfs.ext4 is needed: apt-get install e2fsprogs")
	}
	raw, goodBlob := testkit.DiskImage(t, 16<<20)
	flippedRaw := bytes.Clone(raw)
	flippedRaw[9<<20+77] ^= 0x10
	enc, _ := zstd.NewWriter(nil)
	flippedBlob := enc.EncodeAll(flippedRaw, nil)
	enc.Close()
	rawSize := int64(len(raw))
	b, bundlePath := osImageBundle(t, map[string][3]any{
		"good":    {goodBlob, rawSize, hexSum(raw)},
		"flipped": {flippedBlob, rawSize, hexSum(raw)},
		"damaged": {bytes.Clone(goodBlob), rawSize, hexSum(raw)},
	})
	// Damage the blob of "damaged" in the file, after signing.
	var damagedAt int64
	for _, e := range b.Metadata().Entries {
		if e.Path == bundle.OSImagePathPrefix+"damaged" {
			damagedAt = e.Offset + e.Size/2
		}
	}
	b.Close()
	f, err := os.OpenFile(bundlePath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	f.ReadAt(one, damagedAt)
	one[0] ^= 0x01
	f.WriteAt(one, damagedAt)
	f.Close()
	b, err = bundle.Open(bundlePath, bundle.Trust{IntegrityOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	dir := t.TempDir()
	var machines []*testMachine
	var rules strings.Builder
	for i, name := range []string{"good", "kept", "flipped", "damaged"} {
		m := &testMachine{name: name, mac: fmt.Sprintf("02:fc:00:00:00:%02x", i+1), rebooted: make(chan struct{})}
		m.dev, m.backing = testkit.LoopDevice(t, 64<<20)
		if name == "good" || name == "kept" {
			run(t, "", "mkfs.ext4", "-q", "-F", m.dev)
		}
		m.root = filepath.Join(dir, name)
		copyTree(t, "../agent/testdata/host", m.root)
		for file, value := range map[string]string{"sys/block/vda/serial": m.backing, "sys/block/vda/size": strconv.Itoa(64 << 20 / 512), "sys/class/net/eth0/address": m.mac} {
			if err := os.WriteFile(filepath.Join(m.root, file), []byte(value+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		role, image, wipe := "worker", name, "false"
		if name == "good" {
			role, wipe = "control-plane", "true"
		}
		if name == "kept" {
			image = "good"
		}
		fmt.Fprintf(&rules, "  - {name: %s, match: {macs: [%q]}, role: %s, hostname: %s-1, osImage: %s, installDisk: {policy: serial, serial: %q, allowWipe: %s}}\n",
			name, m.mac, role, name, image, m.backing, wipe)
		machines = append(machines, m)
	}

	var logs syncBuf
	defer func() {
		if t.Failed() {
			t.Logf("engine and agent log:\n%s", logs.String())
		}
	}()
	stateDir := t.TempDir()
	e, peer := testEngineWith(t, stateDir, "machines:\n"+rules.String()+"admission: {policy: allowlist}\n", func(o *Options) {
		o.Log = slog.New(slog.NewTextHandler(&logs, nil))
		o.OSImages = b
	})
	e.Inventory().SetHeartbeat(1)
	peer.MustAddr(t, "eth0", "10.78.0.2/24")
	hc, base, apiHC, api := machineClients(t, peer, stateDir)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for _, m := range machines {
		inv, err := agent.Collect(os.DirFS(m.root))
		if err != nil {
			t.Fatal(err)
		}
		reg, err := agent.Registration(inv, nil)
		if err != nil {
			t.Fatal(err)
		}
		if reg.BootMAC != m.mac {
			t.Fatalf("%s registers with boot MAC %s, want %s", m.name, reg.BootMAC, m.mac)
		}
		tok, err := e.Inventory().IssueBoot(reg.BootMAC)
		if err != nil {
			t.Fatal(err)
		}
		agentLog := slog.New(slog.NewTextHandler(&logs, nil)).With("part", "agent "+m.name)
		installer := agent.Installer{Host: provision.Host{SysRoot: "/sys", DevRoot: "/dev", Loop: true}, Base: base, HTTP: hc,
			API: api, APIHTTP: apiHC, Token: tok, Log: agentLog}
		go agent.Run(ctx, agent.Options{Root: os.DirFS(m.root), Client: agent.NewClient(api, tok, apiHC), Log: agentLog,
			OnOrder: func(ctx context.Context, o agentapi.Order, progress func(uint64, uint64)) error {
				switch o.Kind {
				case agentapi.OrderInstall:
					return installer.Run(ctx, o, progress)
				case agentapi.OrderReboot:
					close(m.rebooted)
					<-ctx.Done()
					return ctx.Err()
				}
				return nil
			}})
	}

	type outcome struct {
		failed map[string]error
		err    error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := e.Install(ctx, InstallOptions{})
		failed := map[string]error{}
		for _, id := range res.Failed() {
			failed[id] = res.Errors[id]
		}
		done <- outcome{failed, err}
	}()
	good := machines[0]
	select {
	case <-good.rebooted:
	case o := <-done:
		t.Fatalf("install ended before good rebooted: %v %v", o.failed, o.err)
	case <-ctx.Done():
		t.Fatal("good was never told to reboot")
	}
	// good phones home, as cloud-init does from its seed.
	byMAC := map[string]inventory.Machine{}
	ms, err := e.Inventory().List()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		byMAC[m.BootMAC] = m
	}
	seedImg, err := os.ReadFile(e.seedFile(byMAC[good.mac].ID))
	if err != nil {
		t.Fatal(err)
	}
	found := regexp.MustCompile(`(https://10\.78\.0\.1:8443/api/v1/phone-home/m-[0-9a-f]+\?token=[A-Za-z0-9_-]+)`).FindSubmatch(seedImg)
	if found == nil {
		t.Fatal("no https phone-home URL in good's seed")
	}
	if code := post(t, apiHC, string(found[1])); code != http.StatusOK {
		t.Fatalf("phone-home: %d", code)
	}
	var o outcome
	select {
	case o = <-done:
	case <-ctx.Done():
		t.Fatal("install did not end")
	}
	if o.err != nil {
		t.Fatalf("install: %v", o.err)
	}

	id := func(m *testMachine) string { return byMAC[m.mac].ID }
	if m, _ := e.Inventory().Get(id(good)); m.State != inventory.StateBooted {
		t.Errorf("good is %s (%s), want booted", m.State, m.Failure)
	}
	disk, err := os.ReadFile(good.backing)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk[1<<20:15<<20], raw[1<<20:15<<20]) {
		t.Error("good's image is not on its disk")
	}
	if len(o.failed) != 3 {
		t.Errorf("failed steps %v, want the provision steps of kept, flipped and damaged", o.failed)
	}
	failure := func(m *testMachine) string {
		t.Helper()
		mm, err := e.Inventory().Get(id(m))
		if err != nil {
			t.Fatal(err)
		}
		if mm.State != inventory.StateFailed {
			t.Errorf("%s is %s, want failed", m.name, mm.State)
		}
		step := "provision/" + mm.ID
		if o.failed[step] == nil {
			t.Errorf("%s: step %s did not fail (failed: %v)", m.name, step, o.failed)
		}
		return mm.Failure
	}
	// kept: refused, its filesystem intact.
	kept := machines[1]
	if f := failure(kept); !strings.Contains(f, provision.ErrNotEmpty.Error()) || !strings.Contains(f, "ext4") {
		t.Errorf("kept failed with %q, want the agent's refusal of a disk holding ext4", f)
	}
	if out, _ := exec.Command("blkid", "-p", "-o", "value", "-s", "TYPE", kept.dev).Output(); strings.TrimSpace(string(out)) != "ext4" {
		t.Errorf("kept's disk no longer holds ext4: blkid says %q", out)
	}
	// flipped: both raw digests, nothing bootable on the disk.
	flipped := machines[2]
	if f := failure(flipped); !strings.Contains(f, hexSum(raw)) || !strings.Contains(f, hexSum(flippedRaw)) {
		t.Errorf("flipped failed with %q, want the expected %s and the actual %s", f, hexSum(raw), hexSum(flippedRaw))
	}
	disk, err = os.ReadFile(flipped.backing)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk[:1<<20], make([]byte, 1<<20)) {
		t.Error("flipped's first MiB is not zero: a half-checked image could boot")
	}
	// damaged: airlock refused its blob, naming both blob digests.
	damaged := machines[3]
	if f := failure(damaged); !strings.Contains(f, "osimages/damaged") || strings.Count(f, "sha256:") < 2 {
		t.Errorf("damaged failed with %q, want the blob's two digests", f)
	}
	disk, err = os.ReadFile(damaged.backing)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk, make([]byte, len(disk))) {
		t.Error("damaged's disk was written")
	}

	// The images are served by name, ranges too; a damaged one is not.
	req, _ := http.NewRequest(http.MethodGet, "http://10.78.0.1:18080/os/images/good", nil)
	req.Header.Set("Range", "bytes=100-199")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, goodBlob[100:200]) {
		t.Errorf("range of good: %d, %d bytes", resp.StatusCode, len(part))
	}
	for path, want := range map[string]int{"/os/images/damaged": http.StatusInternalServerError, "/os/images/nope": http.StatusNotFound, "/os/images/": http.StatusNotFound} {
		resp, err := hc.Get("http://10.78.0.1:18080" + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// A rule naming an image the bundle lacks, or naming none when the bundle
// has several, is refused with the rule and the bundle's images named.
func TestCheckRuleImages(t *testing.T) {
	a := &config.Answers{Machines: []config.Rule{{Name: "cp", OSImage: "debian-12"}, {Name: "workers"}}}
	if err := CheckRuleImages(a, []string{"debian-12"}); err != nil {
		t.Fatalf("one image, named and defaulted: %v", err)
	}
	err := CheckRuleImages(a, []string{"rocky-9", "ubuntu-24.04"})
	for _, want := range []string{`rule "cp"`, `"debian-12"`, `rule "workers"`, "names no osImage", "rocky-9, ubuntu-24.04"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %s", err, want)
		}
	}
	if err := CheckRuleImages(a, nil); err == nil || !strings.Contains(err.Error(), "its OS images: none") {
		t.Errorf("no images but a rule names one: %v", err)
	}
	if err := CheckRuleImages(&config.Answers{Machines: []config.Rule{{Name: "w"}}}, nil); err != nil {
		t.Errorf("no images and no rule naming one: %v", err)
	}
}

// The answer file and the bundle agree on what an OS image name is.
func TestOSImageNameFormsAgree(t *testing.T) {
	for _, name := range []string{"debian-12", "a", "ubuntu-24.04", "rocky_9", "-x", "x-", "Debian", "a/b", "..", strings.Repeat("a", 63), strings.Repeat("a", 64), ""} {
		if c, b := config.OSImageNameRE.MatchString(name), bundle.ValidOSImageName(name); c != b {
			t.Errorf("%q: config says %v, bundle %v", name, c, b)
		}
	}
}
