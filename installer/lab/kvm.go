package lab

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// ProbeKVM reports whether QEMU really runs guests under KVM here: it
// boots kernel with no root file system under -accel kvm and waits (at
// most 10 s) for the kernel to reach its "unable to mount root" panic on
// the serial console. /dev/kvm existing is not enough: nested KVM often
// hangs guests (iPXE "emulation failure", OVMF stuck, kernels hanging after
// decompression), so the lab uses TCG unless this probe passes.
func ProbeKVM(ctx context.Context, qemu, kernel string) bool {
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
		return false
	} else {
		f.Close()
	}
	return bootsToPanic(ctx, qemu, kernel, "kvm", 10*time.Second)
}

// bootsToPanic boots kernel under accel with no root file system and
// reports whether it reached its no-root panic on the serial console
// within timeout.
func bootsToPanic(ctx context.Context, qemu, kernel, accel string, timeout time.Duration) bool {
	dir, err := os.MkdirTemp("", "airlock-kvm-probe")
	if err != nil {
		return false
	}
	defer os.RemoveAll(dir)
	serial := filepath.Join(dir, "serial.log")
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-accel", accel, "-m", "256", "-nodefaults", "-no-user-config",
		"-display", "none", "-serial", "file:"+serial, "-no-reboot",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent")
	cmd.WaitDelay = time.Second
	_ = cmd.Run() // exits on the panic (-no-reboot), or is killed at the deadline
	out, _ := os.ReadFile(serial)
	return bytes.Contains(out, []byte("Kernel panic")) || bytes.Contains(out, []byte("VFS: Unable to mount root"))
}
