package bootimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/lab/testkit"
)

// makeDeb builds a real Debian package with dpkg-deb from a directory tree.
func makeDeb(t *testing.T, root, compression string) string {
	t.Helper()
	dpkgDeb := netns.RequireTool(t, "dpkg-deb", "dpkg")
	os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755)
	control := "Package: linux-image-test\nVersion: 1\nArchitecture: amd64\nMaintainer: airlock tests <tests@airlock.invalid>\nDescription: test kernel\n"
	if err := os.WriteFile(filepath.Join(root, "DEBIAN", "control"), []byte(control), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "kernel.deb")
	if b, err := exec.Command(dpkgDeb, "--root-owner-group", "-Z"+compression, "-z1", "-b", root, out).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, b)
	}
	return out
}

// The kernel package built from this machine's cloud kernel unpacks to a
// kernel and module tree that the boot image can be made from.
func TestExtractKernelDebFromTheCloudKernel(t *testing.T) {
	kernel, modules := testkit.CloudKernel(t)
	release := filepath.Base(modules)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	os.MkdirAll(filepath.Join(root, "lib", "modules"), 0o755)
	if b, err := exec.Command("cp", kernel, filepath.Join(root, "boot")).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	if b, err := exec.Command("cp", "-a", modules, filepath.Join(root, "lib", "modules")).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	deb := makeDeb(t, root, "gzip")
	f, err := os.Open(deb)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	k, err := ExtractKernelDeb(f, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if k.Release != release {
		t.Errorf("release %q, want %q", k.Release, release)
	}
	want, _ := os.ReadFile(kernel)
	got, _ := os.ReadFile(k.Image)
	if !bytes.Equal(got, want) {
		t.Error("unpacked kernel differs from the packaged one")
	}
	var img bytes.Buffer
	rep, err := Build(&img, Options{Agent: readAgent(t), CACert: testCA(t), ModulesDir: k.ModulesDir, Compression: Gzip})
	if err != nil {
		t.Fatalf("boot image from the unpacked modules: %v", err)
	}
	if len(rep.Modules) == 0 || rep.KernelRelease != release {
		t.Errorf("report = %+v", rep)
	}
}

// Hostile or broken packages: nothing is written outside the directory,
// and the errors say what is wrong.
func TestExtractKernelDebRefuses(t *testing.T) {
	// An xz-compressed package whose data.tar tries to escape, carries a
	// symlink and a device, and has a kernel with its module tree.
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	os.MkdirAll(filepath.Join(root, "lib", "modules", "9.9.9-test"), 0o755)
	os.WriteFile(filepath.Join(root, "boot", "vmlinuz-9.9.9-test"), []byte("kernel"), 0o644)
	os.WriteFile(filepath.Join(root, "lib", "modules", "9.9.9-test", "modules.dep"), nil, 0o644)
	os.Symlink("/etc/shadow", filepath.Join(root, "lib", "modules", "9.9.9-test", "build"))
	dir := t.TempDir()
	f, _ := os.Open(makeDeb(t, root, "xz"))
	k, err := ExtractKernelDeb(f, dir)
	f.Close()
	if err != nil || k.Release != "9.9.9-test" {
		t.Fatalf("xz package: %+v, %v", k, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "lib", "modules", "9.9.9-test", "build")); err == nil {
		t.Error("a symlink from the package was written")
	}

	escape := t.TempDir()
	deb := fakeDeb(t, map[string]string{
		"./boot/vmlinuz-1.0":                    "k",
		"./lib/modules/1.0/modules.dep":         "",
		"../../" + filepath.Base(escape) + "/x": "escaped",
		"/etc/airlock-test":                     "absolute",
		"./lib/modules/1.0/../../../../etc/y":   "dotdot",
	})
	out := t.TempDir()
	if _, err := ExtractKernelDeb(bytes.NewReader(deb), out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(escape, "x")); err == nil {
		t.Error("a ../ path escaped the directory")
	}
	if _, err := os.Stat("/etc/airlock-test"); err == nil {
		t.Error("an absolute path was written")
	}
	var walked []string
	filepath.Walk(out, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(out, p)
			walked = append(walked, rel)
		}
		return nil
	})
	if strings.Join(walked, ",") != "boot/vmlinuz-1.0,lib/modules/1.0/modules.dep" {
		t.Errorf("unpacked %v", walked)
	}

	for name, data := range map[string][]byte{
		"not a package":  []byte("hello"),
		"truncated":      deb[:len(deb)/2],
		"no kernel":      fakeDeb(t, map[string]string{"./usr/share/doc/x": "y"}),
		"no modules.dep": fakeDeb(t, map[string]string{"./boot/vmlinuz-2.0": "k"}),
	} {
		if _, err := ExtractKernelDeb(bytes.NewReader(data), t.TempDir()); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "no kernel" && !errors.Is(err, ErrNotKernelPackage) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// fakeDeb writes an ar archive with a gzip data.tar holding files.
func fakeDeb(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var tarBuf bytes.Buffer
	gz := gzip.NewWriter(&tarBuf)
	tw := tar.NewWriter(gz)
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	gz.Close()
	var ar bytes.Buffer
	ar.WriteString(arMagic)
	member := func(name string, data []byte) {
		fmt.Fprintf(&ar, "%-16s%-12s%-6s%-6s%-8s%-10d`\n", name, "0", "0", "0", "100644", len(data))
		ar.Write(data)
		if len(data)%2 == 1 {
			ar.WriteByte('\n')
		}
	}
	member("debian-binary", []byte("2.0\n"))
	member("data.tar.gz", tarBuf.Bytes())
	return ar.Bytes()
}
