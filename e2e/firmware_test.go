//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
)

// Real firmware against airlock serve: a QEMU machine with SeaBIOS and
// Debian's iPXE option ROM, and one with OVMF (UEFI), each network-boot on
// a bridge inside a namespace and fetch their iPXE script from airlock.
// QEMU runs under TCG: /dev/kvm on these machines is nested and hangs.
func TestFirmwareReachesTheIPXEScript(t *testing.T) {
	qemu := netns.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	for _, f := range []string{"/usr/lib/ipxe/qemu/efi-virtio.rom", "/usr/lib/ipxe/qemu/pxe-virtio.rom"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s missing: apt-get install ipxe-qemu", f)
		}
	}
	const ovmfCode, ovmfVars = "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"
	if _, err := os.Stat(ovmfCode); err != nil {
		t.Fatalf("%s missing: apt-get install ovmf", ovmfCode)
	}
	dir := t.TempDir()
	srv := newNS(t, "alfw")
	for _, step := range []error{srv.AddBridge("br0"), srv.AddAddr("br0", "10.78.0.1/24"), srv.AddTap("tap0", "br0"), srv.AddTap("tap1", "br0"), srv.LinkUp("tap0"), srv.LinkUp("tap1")} {
		if step != nil {
			t.Fatal(step)
		}
	}
	file := writeFile(t, dir, "answers.yaml", strings.NewReplacer("10.77.", "10.78.", "prov0", "br0").Replace(answers("br0")))
	boot := filepath.Join(dir, "boot")
	os.MkdirAll(boot, 0o755)
	writeFile(t, boot, "vmlinuz", "x")
	writeFile(t, boot, "initramfs.img", "x")
	serve := start(t, srv.Command(context.Background(), airlockBin(t), "serve", "-f", file, "--state", filepath.Join(dir, "state"), "--boot-files", boot))
	serve.waitFor(t, "airlock: serving on br0 (DHCP full", 30*time.Second)

	for i, fw := range []string{"bios", "uefi"} {
		t.Run(fw, func(t *testing.T) {
			mac := fmt.Sprintf("52:54:00:78:00:%02x", i+1)
			args := []string{"-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot",
				"-serial", "file:" + filepath.Join(dir, fw+".serial"),
				"-netdev", fmt.Sprintf("tap,id=n0,ifname=tap%d,script=no,downscript=no", i),
				"-device", "virtio-net-pci,netdev=n0,mac=" + mac, "-boot", "n"}
			if fw == "uefi" {
				// A copy: the firmware writes its variables.
				b, err := os.ReadFile(ovmfVars)
				if err != nil {
					t.Fatalf("%v: apt-get install ovmf", err)
				}
				vars := writeFile(t, dir, "OVMF_VARS.fd", string(b))
				args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode, "-drive", "if=pflash,format=raw,file="+vars)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			begin := time.Now()
			vm := start(t, srv.Command(ctx, qemu, args...))
			defer vm.cmd.Process.Kill()
			serve.waitFor(t, "httpboot: script", 150*time.Second)
			if !strings.Contains(serve.log(), "mac="+mac) {
				t.Fatalf("script served, but not to %s:\n%s", mac, serve.log())
			}
			t.Logf("%s firmware fetched its iPXE script %.1f s after QEMU started (TCG)", fw, time.Since(begin).Seconds())
		})
	}
}
