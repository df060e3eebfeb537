package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"airlock.dev/airlock/installer/agent/efiboot"
	"airlock.dev/airlock/installer/agent/kmod"
)

// MountPseudoFS mounts /proc, /sys, /dev (devtmpfs), /run and /tmp, as PID 1
// in an initramfs must before anything else. Already mounted ones are
// skipped.
func MountPseudoFS() error {
	var errs []error
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/run", "tmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC*boolToFlag(m.fstype != "devtmpfs"), "")
		if err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err))
		}
	}
	return errors.Join(errs...)
}

func boolToFlag(b bool) uintptr {
	if b {
		return 1
	}
	return 0
}

// MountEFIVars mounts efivarfs on a machine booted by UEFI (one with
// /sys/firmware/efi) unless it is mounted, and returns its directory (also
// when mounting failed, so that the install fails on it rather than
// leaving a disk the firmware cannot boot); on a BIOS machine it returns
// "". The efivarfs module must be loaded first when the kernel has it as a
// module.
func MountEFIVars() (string, error) {
	if _, err := os.Stat("/sys/firmware/efi"); err != nil {
		return "", nil
	}
	dir := efiboot.EFIVarsDir
	err := unix.Mount("efivarfs", dir, "efivarfs", unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV, "")
	if err != nil && !errors.Is(err, unix.EBUSY) {
		return dir, fmt.Errorf("mount efivarfs on %s: %w", dir, err)
	}
	return dir, nil
}

// KernelRelease returns uname -r.
func KernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// LoadModules loads every module listed in dir/modules.dep (the boot image
// holds only the modules the agent needs), dependencies first. It returns
// the modules loaded, in order.
func LoadModules(dir string) ([]string, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("open modules.dep: %w", err)
	}
	defer f.Close()
	deps, err := kmod.ParseDeps(f)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range deps.Sorted() {
		names = append(names, kmod.Name(p))
	}
	order, _ := deps.Resolve(names)
	err = kmod.Load(dir, order)
	loaded := make([]string, len(order))
	for i, p := range order {
		loaded[i] = kmod.Name(p)
	}
	return loaded, err
}

// Cmdline returns the kernel command line.
func Cmdline() (string, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", fmt.Errorf("read kernel command line: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
