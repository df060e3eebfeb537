package seed

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func need(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("%s not found: apt-get install %s (run .ci/deps)", tool, pkg)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=0", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fatCases: the seed of a golden case (FAT12, 1 MiB), and a seed with a
// large bootstrap file (FAT16), and many files with long names.
func fatCases(t *testing.T) map[string][]SeedFile {
	f, err := Render(cases(t)["static"])
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16+7)
	many := []SeedFile{}
	for i := range 40 {
		many = append(many, SeedFile{Name: fmt.Sprintf("a rather long file name number %02d.config.yaml", i), Content: []byte(strings.Repeat("x", i*100))})
	}
	many = append(many, SeedFile{Name: "empty", Content: nil}, SeedFile{Name: "exactly13char", Content: []byte("13")})
	return map[string][]SeedFile{
		"seed":  f.List(),
		"big":   append(f.List(), SeedFile{Name: "bootstrap.bin", Content: big}),
		"many":  many,
		"fat16": {{Name: "user-data", Content: bytes.Repeat([]byte{7}, 5<<20)}},
	}
}

// The image reads back with dosfstools, mtools and blkid, file for file.
// (This host's kernel has no vfat driver; the guest kernel reads the seed in
// the boot test of e2e/osimage.)
func TestFATImageReadsBack(t *testing.T) {
	need(t, "fsck.vfat", "dosfstools")
	need(t, "mdir", "mtools")
	need(t, "blkid", "util-linux")
	wantType := map[string]string{"seed": "FAT12", "many": "FAT12", "big": "FAT16", "fat16": "FAT16"}
	for name, files := range fatCases(t) {
		t.Run(name, func(t *testing.T) {
			img, err := FATImage(Label, files)
			if err != nil {
				t.Fatal(err)
			}
			if len(img)%mib != 0 {
				t.Errorf("image size %d is not whole MiB", len(img))
			}
			if got := string(img[54:59]); got != wantType[name] {
				t.Errorf("filesystem type %s, want %s", got, wantType[name])
			}
			again, _ := FATImage(Label, files)
			if !bytes.Equal(img, again) {
				t.Errorf("two builds of the same files differ")
			}
			path := filepath.Join(t.TempDir(), "cidata.img")
			if err := os.WriteFile(path, img, 0o644); err != nil {
				t.Fatal(err)
			}
			out := run(t, "fsck.vfat", "-n", "-v", path)
			if strings.Contains(out, "differ") || strings.Contains(strings.ToLower(out), "error") {
				t.Errorf("fsck.vfat -n reports:\n%s", out)
			}
			out = run(t, "blkid", "-p", "-o", "export", path)
			if !strings.Contains(out, "\nLABEL=CIDATA\n") || !strings.Contains(out, "\nTYPE=vfat\n") {
				t.Errorf("blkid:\n%s", out)
			}
			listing := run(t, "mdir", "-i", path, "-a", "::")
			for _, f := range files {
				if !strings.Contains(listing, f.Name) {
					t.Errorf("mdir does not list %q:\n%s", f.Name, listing)
				}
				got := run(t, "mtype", "-i", path, "::"+f.Name)
				if got != string(f.Content) {
					t.Errorf("mtype %s: %d bytes differ from the %d written", f.Name, len(got), len(f.Content))
				}
			}
		})
	}
}

func TestFATImageRejects(t *testing.T) {
	for name, files := range map[string][]SeedFile{
		"slash":     {{Name: "a/b"}},
		"dotdot":    {{Name: ".."}},
		"control":   {{Name: "a\nb"}},
		"non-ascii": {{Name: "café"}},
		"twice":     {{Name: "user-data"}, {Name: "USER-DATA"}},
		"too big":   {{Name: "x", Content: make([]byte, MaxImageSize+1)}},
		"too many":  manyFiles(300),
	} {
		if _, err := FATImage(Label, files); err == nil {
			t.Errorf("%s: built without error", name)
		}
	}
	if _, err := FATImage("cidata", nil); err == nil {
		t.Errorf("lower-case label accepted")
	}
}

func manyFiles(n int) []SeedFile {
	var l []SeedFile
	for i := range n {
		l = append(l, SeedFile{Name: fmt.Sprintf("file-%d", i)})
	}
	return l
}

func TestShortNames(t *testing.T) {
	var taken [][11]byte
	for name, want := range map[string]string{"meta-data": "META-D~1   ", "net.work.config": "NETWOR~1CON", "x": "X~1        "} {
		if got := string(func() []byte { s := shortName(name, taken); return s[:] }()); got != want {
			t.Errorf("shortName(%q) = %q, want %q", name, got, want)
		}
	}
	a := shortName("user-data", nil)
	b := shortName("user-data2", [][11]byte{a})
	if a == b || string(b[:8]) != "USER-D~2" {
		t.Errorf("aliases %q %q", a, b)
	}
}
