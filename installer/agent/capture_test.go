package agent

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"testing"
)

var capture = flag.String("capture", "", "copy the files Collect reads from / into this directory (a fixture tree) instead of running the tests")

// TestMain makes this test binary a fixture writer when given -capture:
//
//	go test ./installer/agent -capture testdata/NAME
//
// copies from the running machine only the files the inventory reader looks
// at, with driver links kept as links, and exits without running a test (so
// that no test reports PASS for it).
func TestMain(m *testing.M) {
	flag.Parse()
	if *capture != "" {
		n, err := captureFixture(os.DirFS("/"), *capture)
		if err != nil {
			fmt.Fprintf(os.Stderr, "capture into %s: %v\n", *capture, err)
			os.Exit(1)
		}
		fmt.Printf("captured %d files and links into %s\n", n, *capture)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// captureFixture copies from root into dir what Collect reads and returns
// how many files and links it wrote. What root lacks is left out.
func captureFixture(root fs.FS, dir string) (int, error) {
	n := 0
	copyFile := func(name string) error {
		data, err := fs.ReadFile(root, name)
		if err != nil {
			return nil // absent or unreadable here: the fixture lacks it too
		}
		dst := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		n++
		return os.WriteFile(dst, data, 0o644)
	}
	copyLink := func(name string) error {
		target, err := fs.ReadLink(root, name)
		if err != nil {
			return nil
		}
		dst := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
			return err
		}
		n++
		return os.Symlink("../drivers/"+path.Base(target), dst)
	}
	mkdir := func(name string) error {
		if _, err := fs.Stat(root, name); err != nil {
			return nil
		}
		return os.MkdirAll(filepath.Join(dir, name), 0o755)
	}
	var errs []error
	try := func(err error) { errs = append(errs, err) }
	for _, f := range []string{"proc/cpuinfo", "proc/meminfo", "sys/firmware/dmi/entries/2-0/raw"} {
		try(copyFile(f))
	}
	try(mkdir("sys/firmware/efi"))
	if es, err := fs.ReadDir(root, "sys/class/dmi/id"); err == nil {
		for _, e := range es {
			if e.Type().IsRegular() {
				try(copyFile("sys/class/dmi/id/" + e.Name()))
			}
		}
	}
	if es, err := fs.ReadDir(root, "sys/block"); err == nil {
		for _, e := range es {
			d := "sys/block/" + e.Name() + "/"
			for _, f := range []string{"size", "removable", "queue/rotational", "device/model", "device/name", "device/serial", "serial", "device/wwid", "wwid"} {
				try(copyFile(d + f))
			}
		}
	}
	if es, err := fs.ReadDir(root, "sys/class/net"); err == nil {
		for _, e := range es {
			d := "sys/class/net/" + e.Name() + "/"
			for _, f := range []string{"address", "type", "carrier", "speed"} {
				try(copyFile(d + f))
			}
			try(mkdir(d + "device"))
			try(copyLink(d + "device/driver"))
		}
	}
	if es, err := fs.ReadDir(root, "sys/bus/pci/devices"); err == nil {
		for _, e := range es {
			d := "sys/bus/pci/devices/" + e.Name() + "/"
			for _, f := range []string{"vendor", "device", "class"} {
				try(copyFile(d + f))
			}
			try(copyLink(d + "driver"))
		}
	}
	for _, err := range errs {
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// A fixture captured from a fixture (testdata/host was made by -capture) is
// the same tree and reads back as the same inventory: the capture keeps
// everything Collect looks at.
func TestCaptureKeepsWhatCollectReads(t *testing.T) {
	src := os.DirFS("testdata/host")
	want, err := Collect(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	n, err := captureFixture(src, dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Collect(os.DirFS(dir))
	if err != nil {
		t.Fatalf("collect from the capture (%d files): %v", n, err)
	}
	if len(want.NICs) == 0 || len(want.PCI) == 0 || want.Memory.TotalBytes == 0 {
		t.Fatalf("testdata/host reads as an empty machine: %+v", want)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("capture of testdata/host reads as\n%+v\nwant\n%+v", got, want)
	}
	files := 0
	err = fs.WalkDir(src, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		if d.Type()&fs.ModeSymlink != 0 {
			want, _ := fs.ReadLink(src, name)
			if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != want {
				t.Errorf("link %s: captured as %q (%v), want %q", name, got, err, want)
			}
			return nil
		}
		want, _ := fs.ReadFile(src, name)
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != string(want) {
			t.Errorf("file %s: captured as %q (%v), want %q", name, got, err, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files != n {
		t.Errorf("capture wrote %d files and links, testdata/host holds %d", n, files)
	}
}

// Captured from this machine, the fixture tells the same processor and
// memory as the machine itself (disks and links are left out of the
// comparison: other tests on this shared machine add and remove loop
// devices and namespaces' links at any time).
func TestCaptureThisMachine(t *testing.T) {
	live, err := Collect(os.DirFS("/"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := captureFixture(os.DirFS("/"), dir); err != nil {
		t.Fatal(err)
	}
	got, err := Collect(os.DirFS(dir))
	if err != nil {
		t.Fatal(err)
	}
	if live.CPU.Threads == 0 || live.Memory.TotalBytes == 0 {
		t.Fatalf("this machine reads as no processor or no memory: %+v %+v", live.CPU, live.Memory)
	}
	if got.CPU != live.CPU || got.Memory != live.Memory || got.System != live.System {
		t.Fatalf("capture reads as %+v %+v %+v, the machine as %+v %+v %+v", got.CPU, got.Memory, got.System, live.CPU, live.Memory, live.System)
	}
}
