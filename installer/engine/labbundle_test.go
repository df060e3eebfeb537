package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/lab"
	"airlock.dev/airlock/installer/lab/testkit"
)

// writeOSImageDir writes an OS image directory as e2e/osimage/build.sh
// leaves it: disk.raw.zst, disk.raw.size and disk.raw.sha256 (rawSum).
func writeOSImageDir(t *testing.T, dir string, compressed []byte, rawSize int64, rawSum string) OSImageDir {
	t.Helper()
	for name, data := range map[string]string{"disk.raw.zst": string(compressed), "disk.raw.size": strconv.FormatInt(rawSize, 10) + "\n", "disk.raw.sha256": rawSum + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img, err := ReadOSImageDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// lab up --os-image builds a real signed bundle around the image, with a
// key of the lab's own in the state directory; the answers' bundle section
// opens it as serve and install open a site's (the key named), with the
// image's raw size and SHA-256 in its signed metadata and its blob as
// given. Run again with the same image, the bundle is kept as it is; with
// another image it is built again (same key); an image whose raw digest
// is not the one its directory states is refused, naming both.
func TestLabOSBundle(t *testing.T) {
	raw, compressed := testkit.DiskImage(t, 16<<20)
	imgDir, stateDir, cacheDir := t.TempDir(), t.TempDir(), t.TempDir()
	img := writeOSImageDir(t, imgDir, compressed, int64(len(raw)), hexSum(raw))
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx := context.Background()

	cfg, err := LabOSBundle(ctx, img, stateDir, cacheDir, log)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	if cfg.Path != filepath.Join(stateDir, labBundleFile) || cfg.PublicKey != filepath.Join(stateDir, labPubFile) || cfg.TrustOnFirstUse {
		t.Fatalf("bundle section %+v", cfg)
	}
	if st, err := os.Stat(filepath.Join(stateDir, labKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the lab's private key: %v, %v", st, err)
	}
	b, err := OpenBundle(cfg, stateDir)
	if err != nil {
		t.Fatalf("open the lab's bundle as install does: %v", err)
	}
	im, ok := b.OSImage(LabOSImageName)
	if !ok || len(b.OSImages()) != 1 || im.RawSize != int64(len(raw)) || im.RawSHA256 != hexSum(raw) || im.Compression != bundle.CompressionZstd {
		t.Fatalf("the lab's bundle holds %+v", b.OSImages())
	}
	r, off, size, err := b.OSImageContent(LabOSImageName)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(io.NewSectionReader(r, off, size))
	if err != nil || !bytes.Equal(blob, compressed) {
		t.Fatalf("the bundle's blob is not the image file as given (%d of %d bytes, %v)", len(blob), len(compressed), err)
	}
	b.Close()
	built, err := os.Stat(cfg.Path)
	if err != nil {
		t.Fatal(err)
	}

	// Same image: the bundle is not built again.
	logs.Reset()
	if _, err := LabOSBundle(ctx, img, stateDir, cacheDir, log); err != nil {
		t.Fatal(err)
	}
	again, err := os.Stat(cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !again.ModTime().Equal(built.ModTime()) || !os.SameFile(built, again) || !strings.Contains(logs.String(), "already built") {
		t.Fatalf("the same image built the bundle again:\n%s", logs.String())
	}

	// Another image: built again, signed by the same key.
	raw2 := bytes.Clone(raw)
	raw2[9<<20] ^= 0xff
	enc, _ := zstd.NewWriter(nil)
	compressed2 := enc.EncodeAll(raw2, nil)
	enc.Close()
	img2 := writeOSImageDir(t, imgDir, compressed2, int64(len(raw2)), hexSum(raw2))
	logs.Reset()
	if _, err := LabOSBundle(ctx, img2, stateDir, cacheDir, log); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "already built") {
		t.Fatalf("another image reused the bundle:\n%s", logs.String())
	}
	b, err = OpenBundle(cfg, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if im, _ := b.OSImage(LabOSImageName); im.RawSHA256 != hexSum(raw2) {
		t.Fatalf("after a new image the bundle holds raw %s, want %s", im.RawSHA256, hexSum(raw2))
	}
	b.Close()

	// A directory whose disk.raw.sha256 is not its image's.
	bad := writeOSImageDir(t, t.TempDir(), compressed, int64(len(raw)), hexSum(raw2))
	_, err = LabOSBundle(ctx, bad, t.TempDir(), cacheDir, log)
	var rde *bundle.RawDigestError
	if !errors.As(err, &rde) || !strings.Contains(err.Error(), hexSum(raw)) || !strings.Contains(err.Error(), hexSum(raw2)) {
		t.Fatalf("an image with another raw digest than stated: %v", err)
	}
}

// A malformed OS image directory is refused before anything is built.
func TestReadOSImageDirRefuses(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"no image":          {"disk.raw.size": "10", "disk.raw.sha256": strings.Repeat("a", 64)},
		"no digest":         {"disk.raw.zst": "x", "disk.raw.size": "10"},
		"digest not hex":    {"disk.raw.zst": "x", "disk.raw.size": "10", "disk.raw.sha256": strings.Repeat("g", 64)},
		"size zero":         {"disk.raw.zst": "x", "disk.raw.size": "0", "disk.raw.sha256": strings.Repeat("a", 64)},
		"size not a number": {"disk.raw.zst": "x", "disk.raw.size": "1e9", "disk.raw.sha256": strings.Repeat("a", 64)},
	} {
		dir := t.TempDir()
		for f, data := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := ReadOSImageDir(dir); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The lab's answer file with its own OS bundle names that bundle and its
// key, and every rule installs the lab's image, which the bundle has.
func TestLabAnswerFileInstallsTheLabImage(t *testing.T) {
	s := &lab.State{Bridge: "albr0", ServerAddr: "10.77.0.1/24", Subnet: "10.77.0.0/24",
		VMs:      []lab.VM{{Name: "node-a-01", Rack: "rack-a", Slot: 1, Serial: "SN-1"}, {Name: "node-a-02", Rack: "rack-a", Slot: 2, Serial: "SN-2"}},
		Switches: []lab.Switch{{Rack: "rack-a", SystemName: "rack-a-tor"}}}
	bun := config.Bundle{Path: "/var/lib/airlock/lab-os.bundle", PublicKey: "/var/lib/airlock/lab-bundle.pub"}
	out, err := labAnswerFile(s, bun, true, "")
	if err != nil {
		t.Fatal(err)
	}
	a, _, problems := config.Parse("lab.yaml", out)
	if err := problems.Err(); err != nil {
		t.Fatal(err)
	}
	if a.Bundle != bun {
		t.Fatalf("bundle %+v, want %+v", a.Bundle, bun)
	}
	for _, r := range a.Machines {
		if r.OSImage != LabOSImageName {
			t.Errorf("rule %s installs %q, want %q", r.Name, r.OSImage, LabOSImageName)
		}
	}
	if err := CheckRuleImages(a, []string{LabOSImageName}); err != nil {
		t.Fatal(err)
	}
	if err := CheckRuleImages(a, []string{"debian-12"}); err == nil {
		t.Fatal("a bundle without the lab's image passed the rules' check")
	}
}

// --os-image builds the lab a bundle of its own; beside --bundle (which
// brings its own OS images) it is refused.
func TestLabOSImageNotWithBundle(t *testing.T) {
	err := checkLabInputs(LabOptions{Bundle: "/b", BundleKey: "/k.pub", OSImage: "/img", Agent: "/a"})
	if err == nil || !strings.Contains(err.Error(), "--os-image") {
		t.Fatalf("--bundle with --os-image: %v", err)
	}
}
