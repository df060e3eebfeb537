package provision

import (
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openExclusive opens a block device (or image file) for writing with
// O_EXCL: on a block device the kernel then refuses the open while the
// device or a partition of it is mounted, held by dm/md, or opened
// exclusively by anyone else, and keeps those out while it is open.
func openExclusive(dev string) (*os.File, error) {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("open %s exclusively: %w (%w)", dev, ErrBusy, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s exclusively: %w", dev, err)
	}
	return f, nil
}

func isBlock(f *os.File) bool {
	var st unix.Stat_t
	return unix.Fstat(int(f.Fd()), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK
}

// sectorSize is the logical sector size of a block device, 512 for a file.
func sectorSize(f *os.File) (int64, error) {
	if !isBlock(f) {
		return 512, nil
	}
	n, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
	if err != nil {
		return 0, fmt.Errorf("logical sector size of %s: %w", f.Name(), err)
	}
	return int64(n), nil
}

// rereadPartitions asks the kernel to re-read the partition table
// (BLKRRPART), retrying while the device is briefly busy as
// coreos-installer does. It reports "not partitionable" for devices that
// refuse with EINVAL (a loop device without partition scanning) and ""
// for files; other failures are errors.
func rereadPartitions(f *os.File) (string, error) {
	if !isBlock(f) {
		return "not a block device", nil
	}
	var err error
	for try := 0; try < 20; try++ {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKRRPART, 0)
		if errno == 0 {
			return "re-read", nil
		}
		err = errno
		if errno == unix.EINVAL {
			return "not partitionable (EINVAL)", nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", fmt.Errorf("re-read partition table of %s: %w", f.Name(), err)
}

// blkZeroOut has the device zero length bytes at off (BLKZEROOUT: WRITE
// ZEROES where the device has it, else the kernel writes zero pages).
func blkZeroOut(f *os.File, off, length int64) error {
	r := [2]uint64{uint64(off), uint64(length)}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), blkZeroOutIoctl, uintptr(unsafe.Pointer(&r[0]))); errno != 0 {
		return fmt.Errorf("zero bytes %d-%d of %s: %w", off, off+length, f.Name(), errno)
	}
	return nil
}

const blkZeroOutIoctl = 0x12<<8 | 127 // _IO(0x12, 127), linux/fs.h

// Device-mapper and md ioctls (linux/dm-ioctl.h, linux/raid/md_u.h).
const (
	dmIoctlSize = 312
	dmDevRemove = 3<<30 | dmIoctlSize<<16 | 0xfd<<8 | 4 // _IOWR(0xfd, DM_DEV_REMOVE_CMD, struct dm_ioctl)
	mdStopArray = 9<<8 | 0x14                           // _IO(MD_MAJOR, 0x14)
)

// removeDM removes the device-mapper device with the given number, as
// `dmsetup remove` does (DM_DEV_REMOVE on /dev/mapper/control).
func removeDM(devRoot string, major, minor uint32) error {
	ctl, err := os.OpenFile(devRoot+"/mapper/control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open device-mapper control: %w", err)
	}
	defer ctl.Close()
	var buf [dmIoctlSize]byte
	le := func(off int, v uint32) {
		buf[off], buf[off+1], buf[off+2], buf[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	le(0, 4) // version 4.0.0
	le(12, dmIoctlSize)
	le(16, dmIoctlSize) // data_start
	dev := unix.Mkdev(major, minor)
	for i := 0; i < 8; i++ {
		buf[40+i] = byte(dev >> (8 * i))
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), dmDevRemove, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return fmt.Errorf("remove device-mapper device %d:%d: %w", major, minor, errno)
	}
	return nil
}

// stopMD stops the md array at node, as `mdadm --stop` does.
func stopMD(node string) error {
	f, err := os.OpenFile(node, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("stop md array: %w", err)
	}
	defer f.Close()
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), mdStopArray, 0); errno != 0 {
		return fmt.Errorf("stop md array %s: %w", node, errno)
	}
	return nil
}

// RereadPartitionTable asks the kernel to read f's partition table again
// (after a partition was added); it says what came of it.
func RereadPartitionTable(f *os.File) (string, error) { return rereadPartitions(f) }
