package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"airlock.dev/airlock/bundle"
)

// airlock plan shows each rule's OS image from a real signed bundle: its
// raw size when the bundle has it; an image the bundle lacks is a problem
// naming the rule by its field path, and plan exits 1. A bundle trusted on
// first use is opened without recording its key (plan touches nothing).
func TestPlanShowsEachRulesOSImage(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "site")
	if _, _, err := runBundle(t, "keygen", "--out", key); err != nil {
		t.Fatal(err)
	}
	raw := bytes.Repeat([]byte("a disk image "), 200000) // 2.5 MiB
	zw, _ := zstd.NewWriter(nil)
	blob := zw.EncodeAll(raw, nil)
	zw.Close()
	if err := os.WriteFile(filepath.Join(dir, "node.img"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	spec := writeFile(t, "bundle.yaml", "apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nosImages:\n  - {name: debian-12, path: "+filepath.Join(dir, "node.img")+"}\n")
	bpath := filepath.Join(dir, "site.bundle")
	if _, errOut, err := runBundle(t, "build", "-f", spec, "-o", bpath, "--key", key+".key"); err != nil {
		t.Fatalf("build: %v\n%s", err, errOut)
	}
	answers, _, _ := run(t, "init", "--interface", "eth1", "--bundle-key", key+".pub")
	answers = strings.Replace(answers, "path: site.bundle", "path: "+bpath, 1)
	answers = strings.Replace(answers, "    hostname: cp-{index}\n", "    hostname: cp-{index}\n    osImage: debian-12\n", 1)
	answers = strings.Replace(answers, "    hostname: gpu-{rack}-{index}\n", "    hostname: gpu-{rack}-{index}\n    osImage: rocky-9\n", 1)
	file := writeFile(t, "answers.yaml", answers)
	stateDir := t.TempDir()

	out, errOut, code := run(t, "plan", "-f", file, "--state", stateDir)
	if code != 1 {
		t.Fatalf("plan with a rule whose image the bundle lacks: exit %d\n%s%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^  control-plane +control-plane +cp-\{index\} +image debian-12 \(raw 2\.5 MiB\) `,
		`(?m)^  gpu-workers +gpu-worker +gpu-\{rack\}-\{index\} +image rocky-9: MISSING from the bundle `,
		`(?m)^  workers +worker +worker-\{rack\}-\{index\} +image debian-12 \(raw 2\.5 MiB\) `,
		`(?m)^Bundle +` + regexp.QuoteMeta(bpath) + `, signed by .*; 1 OS image\(s\)$`,
		`(?m)^Problems \(install would refuse to start\)\n  machines\[1\]\.osImage: rule "gpu-workers" installs "rocky-9", which the bundle does not have \(its OS images: debian-12\)$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("plan output does not match %s:\n%s", re, out)
		}
	}
	out, _, code = run(t, "plan", "-f", file, "--state", stateDir, "-o", "json")
	var p struct {
		Rules []struct {
			Name    string
			OSImage struct {
				Name      string
				Default   bool
				InBundle  *bool
				RawSize   int64
				RawSHA256 string
			}
		}
		Problems []string
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil || code != 1 {
		t.Fatalf("plan -o json: exit %d, %v\n%s", code, err, out)
	}
	cp, gpu, workers := p.Rules[0].OSImage, p.Rules[1].OSImage, p.Rules[2].OSImage
	if cp.Name != "debian-12" || cp.InBundle == nil || !*cp.InBundle || cp.RawSize != int64(len(raw)) || cp.RawSHA256 != hex.EncodeToString(sum[:]) || cp.Default {
		t.Errorf("control-plane rule's image: %+v", cp)
	}
	if gpu.Name != "rocky-9" || gpu.InBundle == nil || *gpu.InBundle {
		t.Errorf("gpu-workers rule's image: %+v", gpu)
	}
	if workers.Name != "debian-12" || !workers.Default || workers.RawSize != int64(len(raw)) {
		t.Errorf("workers rule's image (the bundle's only one): %+v", workers)
	}
	if len(p.Problems) != 1 || !strings.HasPrefix(p.Problems[0], "machines[1].osImage: ") {
		t.Errorf("problems: %q", p.Problems)
	}

	// Every rule's image in the bundle: exit 0. Trust on first use: the
	// bundle is read, its key not recorded.
	ok := strings.Replace(answers, "    osImage: rocky-9\n", "", 1)
	ok = strings.Replace(ok, `publicKey: "`+key+`.pub"`, "trustOnFirstUse: true", 1)
	out, errOut, code = run(t, "plan", "-f", writeFile(t, "ok.yaml", ok), "--state", stateDir)
	if code != 0 || strings.Contains(out, "Problems") || !strings.Contains(out, "image debian-12 (raw 2.5 MiB)") {
		t.Fatalf("plan with every image in the bundle: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(stateDir, bundle.PinFileName)); !os.IsNotExist(err) {
		t.Errorf("plan recorded the bundle's key for trust on first use: %v", err)
	}

	// No bundle to open: the images are shown as named, unchecked.
	missing := strings.Replace(answers, "path: "+bpath, "path: "+filepath.Join(dir, "gone.bundle"), 1)
	out, _, code = run(t, "plan", "-f", writeFile(t, "missing.yaml", missing), "--state", stateDir)
	if code != 0 || !strings.Contains(out, "image rocky-9: bundle not opened: not checked") || !strings.Contains(out, "not opened: ") {
		t.Errorf("plan without the bundle: exit %d\n%s", code, out)
	}
}
