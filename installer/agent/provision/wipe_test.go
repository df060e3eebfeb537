package provision

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestResolveLoop(t *testing.T) {
	dev, backing := loopDevice(t, 64<<20)
	h := Host{SysRoot: "/sys", DevRoot: "/dev", Loop: true}
	d, err := h.Resolve(DiskPin{Serial: backing, SizeBytes: 64 << 20})
	if err != nil || d.Dev != dev {
		t.Fatalf("Resolve = %q, %v; want %s", d.Dev, err, dev)
	}
	if _, err := h.Resolve(DiskPin{Serial: backing, SizeBytes: 32 << 20}); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("Resolve with the wrong size: %v, want ErrNoMatch", err)
	}
	if _, err := (Host{SysRoot: "/sys", DevRoot: "/dev"}).Resolve(DiskPin{Serial: backing}); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("Resolve without Loop: %v, want ErrNoMatch", err)
	}
	_, roBacking := loopDevice(t, 8<<20, "--read-only")
	if _, err := h.Resolve(DiskPin{Serial: roBacking}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Resolve a read-only loop device: %v, want ErrReadOnly", err)
	}
}

// TestInspectMatchesBlkid makes filesystems and signatures with Debian's
// tools and checks that Inspect names them as blkid does.
func TestInspectMatchesBlkid(t *testing.T) {
	dev, _ := loopDevice(t, 320<<20) // mkfs.xfs wants 300 MB
	lvm := `devices { use_devicesfile=0 obtain_device_list_from_udev=0 } activation { udev_sync=0 udev_rules=0 }`
	for _, tc := range []struct {
		tool, pkg string
		args      []string
		want      string
	}{
		{"mkfs.ext4", "e2fsprogs", []string{"-q", "-F"}, "ext4"},
		{"mkfs.ext2", "e2fsprogs", []string{"-q", "-F"}, "ext2"},
		{"mkfs.xfs", "xfsprogs", []string{"-q", "-f"}, "xfs"},
		{"mkfs.vfat", "dosfstools", nil, "vfat"},
		{"mkswap", "util-linux", nil, "swap"},
		{"mkfs.btrfs", "btrfs-progs", []string{"-q", "-f"}, "btrfs"},
		{"pvcreate", "lvm2", []string{"-ff", "-y", "--config", lvm}, "LVM2_member"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			need(t, tc.tool, tc.pkg)
			putDev(t, dev, make([]byte, 1<<20), 0)
			run(t, tc.tool, append(tc.args, dev)...)
			out, code := blkid(t, dev, 0)
			if code != 0 || !strings.Contains(out, `TYPE="`+tc.want+`"`) {
				t.Fatalf("blkid after %s: exit %d: %s", tc.tool, code, out)
			}
			s, err := Inspect(dev)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Found) != 1 || s.Found[0].Type != tc.want || s.Found[0].Where != "disk" {
				t.Fatalf("Inspect after %s = %s, want %s on disk", tc.tool, s, tc.want)
			}
		})
	}
}

func TestWipeRefusesAndClears(t *testing.T) {
	ctx := context.Background()
	dev, _ := loopDevice(t, 64<<20)
	img := makeImage(t, 48<<20)
	putDev(t, dev, img.raw, 0)
	// A second filesystem past the image, where no table points any more.
	run(t, "mkfs.ext4", "-q", "-F", "-E", "offset="+itoa(56<<20), dev, "4M")

	before, err := Inspect(dev)
	if err != nil {
		t.Fatal(err)
	}
	if got := before.String(); !strings.Contains(got, "gpt on disk") || !strings.Contains(got, "ext4 on partition 1 at 1048576") {
		t.Fatalf("Inspect = %s, want gpt and ext4 on partition 1", got)
	}
	_, err = Wipe(ctx, dev, false)
	if !errors.Is(err, ErrNotEmpty) || !strings.Contains(err.Error(), "ext4 on partition 1") {
		t.Fatalf("Wipe not allowed: %v, want ErrNotEmpty naming what is there", err)
	}
	if out, code := blkid(t, dev, 0); code != 0 || !strings.Contains(out, `PTTYPE="gpt"`) {
		t.Fatalf("refused Wipe changed the disk: blkid exit %d %s", code, out)
	}

	rep, err := Wipe(ctx, dev, true)
	if err != nil {
		t.Fatalf("Wipe: %v", err)
	}
	if !rep.After.Empty() || len(rep.Before.Found) < 2 {
		t.Fatalf("report before %s after %s", rep.Before, rep.After)
	}
	if rep.Reread != "not partitionable (EINVAL)" {
		t.Errorf("re-read on a loop device without partition scanning: %q", rep.Reread)
	}
	// Independent checks: blkid and wipefs find nothing, on the disk and
	// where the partitions were.
	need(t, "wipefs", "util-linux")
	if out := run(t, "wipefs", "--no-act", dev); strings.TrimSpace(out) != "" {
		t.Fatalf("wipefs still finds signatures:\n%s", out)
	}
	for _, off := range []int64{0, 1 << 20, 41 << 20} {
		if out, code := blkid(t, dev, off); code != 2 {
			t.Fatalf("blkid at %d after Wipe: exit %d %s", off, code, out)
		}
	}
	// The last MiB (backup GPT) is zero.
	if tail := readDev(t, dev, 63<<20, 1<<20); !allZero(tail) {
		t.Fatal("last MiB not zeroed")
	}
	// The stray ext4 at 56 MiB was in no table and is left: Wipe only
	// promises what blkid and wipefs see.
	if _, err := Wipe(ctx, dev, false); err != nil {
		t.Fatalf("Wipe of an empty disk without permission: %v", err)
	}
}

func TestWipeRefusesBusy(t *testing.T) {
	ctx := context.Background()
	dev, _ := loopDevice(t, 32<<20)
	need(t, "mkfs.ext4", "e2fsprogs")
	run(t, "mkfs.ext4", "-q", "-F", dev)
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, 0) })
	if _, err := Wipe(ctx, dev, true); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "mounted on") {
		t.Fatalf("Wipe of a mounted disk: %v, want ErrBusy", err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	// Held open exclusively by someone else: the exclusive open refuses.
	held, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Wipe(ctx, dev, true)
	held.Close()
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Wipe of a disk held open with O_EXCL: %v, want ErrBusy", err)
	}
	if out, code := blkid(t, dev, 0); code != 0 || !strings.Contains(out, "ext4") {
		t.Fatalf("refused Wipe changed the disk: %s", out)
	}
	if _, err := Wipe(ctx, dev, true); err != nil {
		t.Fatalf("Wipe once free: %v", err)
	}
	if out, err := exec.Command("wipefs", "--no-act", dev).Output(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("wipefs after Wipe: %v %s", err, out)
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestWipeDOS: an MBR-partitioned disk with LVM in its second partition
// (tables and signatures made by sfdisk and pvcreate) is found and
// cleared, partitions included.
func TestWipeDOS(t *testing.T) {
	dev, _ := loopDevice(t, 64<<20)
	need(t, "sfdisk", "fdisk")
	need(t, "pvcreate", "lvm2")
	cmd := exec.Command("sfdisk", "--quiet", dev)
	cmd.Stdin = strings.NewReader("label: dos\nstart=2048, size=40960, type=83\nstart=43008, size=40960, type=8e\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	// No partition nodes here: make the PV through a loop device over the
	// second partition's bytes.
	part := strings.TrimSpace(run(t, "losetup", "--find", "--show", "--offset", itoa(43008*512), "--sizelimit", itoa(40960*512), dev))
	defer exec.Command("losetup", "-d", part).Run()
	run(t, "pvcreate", "-ff", "-y", "--config", `devices { use_devicesfile=0 obtain_device_list_from_udev=0 } activation { udev_sync=0 udev_rules=0 }`, part)
	if err := exec.Command("losetup", "-d", part).Run(); err != nil {
		t.Fatal(err)
	}
	if out, code := blkid(t, dev, 43008*512); code != 0 || !strings.Contains(out, "LVM2_member") {
		t.Fatalf("blkid does not see the PV: exit %d %s", code, out)
	}
	s, err := Inspect(dev)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.String(); !strings.Contains(got, "dos on disk") || !strings.Contains(got, "LVM2_member on partition 2 at 22020096") {
		t.Fatalf("Inspect = %s", got)
	}
	if _, err := Wipe(context.Background(), dev, false); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("Wipe: %v, want ErrNotEmpty", err)
	}
	if _, err := Wipe(context.Background(), dev, true); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 2048 * 512, 43008 * 512} {
		if out, code := blkid(t, dev, off); code != 2 {
			t.Fatalf("blkid at %d after Wipe: exit %d %s", off, code, out)
		}
	}
}
