package agent

import (
	"flag"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

var capture = flag.String("capture", "", "copy the files Collect reads from / into this directory (a fixture tree), then stop")

// TestCapture writes a fixture tree from the running machine: only the
// files the inventory reader looks at, with driver links kept as links.
// Run: go test ./installer/agent -run TestCapture -capture testdata/NAME
func TestCapture(t *testing.T) {
	if *capture == "" {
		return
	}
	root := os.DirFS("/")
	copyFile := func(name string) {
		data, err := fs.ReadFile(root, name)
		if err != nil {
			return
		}
		dst := filepath.Join(*capture, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyLink := func(name string) {
		target, err := fs.ReadLink(root, name)
		if err != nil {
			return
		}
		dst := filepath.Join(*capture, name)
		_ = os.MkdirAll(filepath.Dir(dst), 0o755)
		_ = os.Remove(dst)
		if err := os.Symlink("../drivers/"+path.Base(target), dst); err != nil {
			t.Fatal(err)
		}
	}
	mkdir := func(name string) {
		if _, err := fs.Stat(root, name); err == nil {
			_ = os.MkdirAll(filepath.Join(*capture, name), 0o755)
		}
	}
	for _, f := range []string{"proc/cpuinfo", "proc/meminfo", "sys/firmware/dmi/entries/2-0/raw"} {
		copyFile(f)
	}
	mkdir("sys/firmware/efi")
	if es, err := fs.ReadDir(root, "sys/class/dmi/id"); err == nil {
		for _, e := range es {
			if e.Type().IsRegular() {
				copyFile("sys/class/dmi/id/" + e.Name())
			}
		}
	}
	if es, err := fs.ReadDir(root, "sys/block"); err == nil {
		for _, e := range es {
			d := "sys/block/" + e.Name() + "/"
			for _, f := range []string{"size", "removable", "queue/rotational", "device/model", "device/name", "device/serial", "serial", "device/wwid", "wwid"} {
				copyFile(d + f)
			}
		}
	}
	if es, err := fs.ReadDir(root, "sys/class/net"); err == nil {
		for _, e := range es {
			d := "sys/class/net/" + e.Name() + "/"
			for _, f := range []string{"address", "type", "carrier", "speed"} {
				copyFile(d + f)
			}
			mkdir(d + "device")
			copyLink(d + "device/driver")
		}
	}
	if es, err := fs.ReadDir(root, "sys/bus/pci/devices"); err == nil {
		for _, e := range es {
			d := "sys/bus/pci/devices/" + e.Name() + "/"
			for _, f := range []string{"vendor", "device", "class"} {
				copyFile(d + f)
			}
			copyLink(d + "driver")
		}
	}
	t.Logf("captured into %s", strings.TrimSpace(*capture))
}
