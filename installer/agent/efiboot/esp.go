package efiboot

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"airlock.dev/airlock/installer/agent/gpt"
)

// ErrNoESP means the disk's GPT has no EFI system partition.
var ErrNoESP = errors.New("no EFI system partition")

// LoaderOnDisk finds the EFI system partition in disk's GPT (the first
// one, by entry number) and the boot loader on it, and returns the path
// that boots it: HD(...)/File(loader).
func LoaderOnDisk(disk io.ReaderAt) (DevicePath, error) {
	parts, err := gpt.Partitions(disk)
	if err != nil {
		return nil, fmt.Errorf("read the partition table: %w", err)
	}
	for _, p := range parts {
		if !strings.EqualFold(p.Type, gpt.ESPType) {
			continue
		}
		size := p.LastLBA - p.FirstLBA + 1
		loader, err := FindLoader(disk, int64(p.FirstLBA)*512, int64(size)*512)
		if err != nil {
			return nil, fmt.Errorf("EFI system partition %d: %w", p.Number, err)
		}
		return DiskPath(HardDrive{Partition: uint32(p.Number), Start: p.FirstLBA, Size: size, GUID: p.UniqueID}, loader)
	}
	return nil, ErrNoESP
}
