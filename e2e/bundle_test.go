//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/lab/testkit"
)

// The product's own path from a signed bundle to a discovered machine:
// the bundle carries a Debian kernel package (built here with dpkg-deb
// from the cloud kernel), airlock serve unpacks it, assembles the discovery
// image with the agent it carries, and a QEMU machine that network-boots
// from it is registered in the inventory.
func TestBundleKernelToDiscovery(t *testing.T) {
	qemu := netns.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	dir := t.TempDir()
	bundleFile := kernelBundle(t, dir)

	// The provisioning network: a bridge with one machine on a tap.
	srv := newNS(t, "albk")
	for _, step := range []error{srv.AddBridge("br0"), srv.AddAddr("br0", "10.77.0.1/24"), srv.AddTap("tap0", "br0"), srv.LinkUp("tap0")} {
		if step != nil {
			t.Fatal(step)
		}
	}
	answersFile := writeFile(t, dir, "answers.yaml", strings.Replace(answers("br0"), "prov0", "br0", 1)+
		fmt.Sprintf("bundle: {path: %s, publicKey: %s}\n", bundleFile, filepath.Join(dir, "site.pub")))
	stateDir := filepath.Join(dir, "state")
	serve := start(t, srv.Command(context.Background(), airlockBin(t), "serve", "-f", answersFile, "--state", stateDir))
	serve.waitFor(t, "airlock: serving on br0", 90*time.Second)
	if !strings.Contains(serve.log(), "discovery image assembled from the bundle") {
		t.Fatalf("serve did not assemble the discovery image from the bundle:\n%s", serve.log())
	}

	mac := "52:54:00:77:00:42"
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	vm := start(t, srv.Command(ctx, qemu, "-accel", "tcg", "-machine", "q35", "-m", "512", "-display", "none", "-no-reboot",
		"-serial", "file:"+filepath.Join(dir, "vm.serial"), "-smbios", "type=1,serial=E2E-BUNDLE-1",
		"-device", "virtio-rng-pci",
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0,mac="+mac, "-boot", "n"))
	defer vm.cmd.Process.Kill()
	for {
		found := inventoryOf(t, stateDir)
		if m, ok := found["E2E-BUNDLE-1"]; ok {
			if m.BootMAC != mac {
				t.Errorf("boot MAC %s, want %s", m.BootMAC, mac)
			}
			t.Logf("discovered from the bundle's kernel %.1f s after power-on", time.Since(begin).Seconds())
			return
		}
		if time.Since(begin) > 3*time.Minute {
			serial, _ := os.ReadFile(filepath.Join(dir, "vm.serial"))
			t.Fatalf("not discovered within 3 minutes.\nserve log:\n%s\nserial console (end):\n%s", serve.log(), tailString(string(serial), 3000))
		}
		time.Sleep(2 * time.Second)
	}
}

// kernelBundle builds a signed bundle (key dir/site.key, dir/site.pub)
// that carries a Debian kernel package made here with dpkg-deb from the
// cloud kernel, and returns its path.
func kernelBundle(t *testing.T, dir string) string {
	t.Helper()
	deb, sum := kernelDeb(t, dir)
	if _, err := airlock(t, "bundle", "keygen", "--out", filepath.Join(dir, "site")); err != nil {
		t.Fatal(err)
	}
	spec := writeFile(t, dir, "bundle.yaml", fmt.Sprintf("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nmetadata: {name: e2e-kernel}\nfiles:\n  - name: boot/kernel.deb\n    url: %s\n    sha256: %s\n", deb, sum))
	bundleFile := filepath.Join(dir, "site.bundle")
	if _, err := airlock(t, "bundle", "build", "-f", spec, "-o", bundleFile, "--key", filepath.Join(dir, "site.key")); err != nil {
		t.Fatal(err)
	}
	return bundleFile
}

// kernelDeb makes dir/kernel.deb, a Debian kernel package (dpkg-deb) of the
// cloud kernel and its modules, and returns its path and sha256 (hex).
func kernelDeb(t *testing.T, dir string) (string, string) {
	t.Helper()
	dpkgDeb := netns.RequireTool(t, "dpkg-deb", "dpkg")
	kernel, modules := testkit.CloudKernel(t)
	root := filepath.Join(dir, "pkg")
	for _, d := range []string{"boot", "lib/modules", "DEBIAN"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	run(t, exec.Command("cp", kernel, filepath.Join(root, "boot")))
	run(t, exec.Command("cp", "-a", modules, filepath.Join(root, "lib", "modules")))
	os.WriteFile(filepath.Join(root, "DEBIAN", "control"), []byte("Package: linux-image-e2e\nVersion: 1\nArchitecture: amd64\nMaintainer: airlock tests <tests@airlock.invalid>\nDescription: e2e kernel\n"), 0o644)
	deb := filepath.Join(dir, "kernel.deb")
	run(t, exec.Command(dpkgDeb, "--root-owner-group", "-Zgzip", "-z1", "-b", root, deb))
	os.RemoveAll(root)
	f, err := os.Open(deb)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return deb, hex.EncodeToString(h.Sum(nil))
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
