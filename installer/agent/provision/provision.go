// Package provision puts an operating system image on a machine's disk for
// the node agent: it re-resolves the disk the engine pinned (WWN, serial,
// size, by-path) from /sys, looks for what the disk holds (partition
// tables, filesystems, LVM, RAID, device-mapper holders), wipes it under an
// exclusive open, and streams a raw disk image onto it, decompressing
// (gzip, xz, zstd: by magic bytes) and hashing on the way.
//
// The first MiB of the image is held back in memory and written last, only
// once the size and SHA-256 of the whole raw stream have checked out, so a
// disk whose write failed or whose image was corrupt has a zeroed first
// MiB and boots nothing. A GPT image smaller than the disk has its backup
// header and entries moved to the disk's real end (CRCs recomputed) before
// that last write.
//
// The package uses Linux system calls only through golang.org/x/sys/unix
// and links no cgo: it runs in the agent's static binary. It shells out to
// nothing; tests check its work with independent tools (blkid, wipefs,
// sfdisk, sgdisk).
package provision

import (
	"errors"
	"fmt"
)

// MiB is the size held back at the start of the image and zeroed at both
// ends of a wiped disk.
const MiB = 1 << 20

// Errors the agent reports as the reason an order was refused.
var (
	// ErrNoMatch: no disk on the machine matches the pin.
	ErrNoMatch = errors.New("no disk matches the pin")
	// ErrAmbiguous: more than one disk matches the pin.
	ErrAmbiguous = errors.New("several disks match the pin")
	// ErrWeakPin: the pin names no WWN, serial or by-path (size alone is
	// not an identity).
	ErrWeakPin = errors.New("pin names no WWN, serial or by-path")
	// ErrRemovable: the disk is removable media.
	ErrRemovable = errors.New("disk is removable")
	// ErrReadOnly: the disk is read-only.
	ErrReadOnly = errors.New("disk is read-only")
	// ErrNotEmpty: the disk holds a partition table, filesystem, LVM or
	// RAID signature, or has holders, and wiping it was not allowed.
	ErrNotEmpty = errors.New("disk is not empty")
	// ErrBusy: the disk or one of its partitions is mounted, used as swap
	// or held open exclusively by someone else.
	ErrBusy = errors.New("disk is in use")
	// ErrSize: the image's raw size is not what the order said, or does not
	// fit on the disk.
	ErrSize = errors.New("image size mismatch")
)

// DigestError is returned by Write when the raw image's SHA-256 is not the
// one the order named. The disk's first MiB is left zeroed.
type DigestError struct {
	Expected, Actual string
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("image sha256 mismatch: expected %s, got %s (first MiB of the disk left zeroed)", e.Expected, e.Actual)
}
