package provision

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// WipeReport records what a disk held before Wipe and what was done.
type WipeReport struct {
	Dev      string
	Before   Signatures
	TornDown []string   // holders removed (dm-0, md127), innermost last
	Zeroed   [][2]int64 // byte ranges zeroed
	Reread   string     // what re-reading the partition table gave
	After    Signatures
}

// Wipe clears dev for a new image: it refuses a disk that holds anything
// (ErrNotEmpty) unless allowNonEmpty, refuses one that is mounted or used
// as swap (ErrBusy) in any case, tears down device-mapper (LVM) and md
// RAID devices stacked on it, opens it exclusively, zeroes its first and
// last MiB (the MBR, both GPT copies, and the signatures blkid looks for)
// and the first and last MiB of every partition its tables listed,
// re-reads the partition table, and checks that nothing is found any more.
func Wipe(ctx context.Context, dev string, allowNonEmpty bool) (WipeReport, error) {
	return Host{SysRoot: "/sys", DevRoot: "/dev"}.Wipe(ctx, dev, allowNonEmpty)
}

// Wipe is the package function on h's roots.
func (h Host) Wipe(ctx context.Context, dev string, allowNonEmpty bool) (WipeReport, error) {
	rep := WipeReport{Dev: dev}
	before, err := h.Inspect(dev)
	if err != nil {
		return rep, err
	}
	rep.Before = before
	if len(before.Busy) > 0 {
		return rep, fmt.Errorf("wipe %s: %s: %w", dev, strings.Join(before.Busy, ", "), ErrBusy)
	}
	if !before.Empty() && !allowNonEmpty {
		return rep, fmt.Errorf("wipe %s: holds %s and wiping it is not allowed: %w", dev, before, ErrNotEmpty)
	}
	for _, holder := range before.Holders {
		if err := h.tearDown(holder, &rep.TornDown, 0); err != nil {
			return rep, fmt.Errorf("wipe %s: %w", dev, err)
		}
	}
	f, err := openExclusive(dev)
	if err != nil {
		return rep, err
	}
	defer f.Close()
	size, err := deviceSize(f)
	if err != nil {
		return rep, err
	}
	ranges := [][2]int64{{0, MiB}, {size - MiB, size}}
	for _, p := range before.partRanges {
		ranges = append(ranges, [2]int64{p[0], p[0] + MiB}, [2]int64{p[1] - MiB, p[1]})
	}
	zero := make([]byte, MiB)
	for _, r := range ranges {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("wipe %s: %w", dev, err)
		}
		start, end := max(r[0], 0), min(r[1], size)
		if end <= start {
			continue
		}
		if _, err := f.WriteAt(zero[:end-start], start); err != nil {
			return rep, fmt.Errorf("wipe %s: zero bytes %d-%d: %w", dev, start, end, err)
		}
		rep.Zeroed = append(rep.Zeroed, [2]int64{start, end})
	}
	if err := f.Sync(); err != nil {
		return rep, fmt.Errorf("wipe %s: sync: %w", dev, err)
	}
	if rep.Reread, err = rereadPartitions(f); err != nil {
		return rep, fmt.Errorf("wipe %s: %w", dev, err)
	}
	if err := f.Close(); err != nil {
		return rep, fmt.Errorf("wipe %s: close: %w", dev, err)
	}
	if rep.After, err = h.Inspect(dev); err != nil {
		return rep, err
	}
	if !rep.After.Empty() {
		return rep, fmt.Errorf("wipe %s: still holds %s after wiping", dev, rep.After)
	}
	return rep, nil
}

// tearDown removes a holder (dm-N or mdN) after whatever is stacked on it.
func (h Host) tearDown(name string, done *[]string, depth int) error {
	if depth > 8 {
		return fmt.Errorf("tear down %s: holders nested too deep", name)
	}
	if contains(*done, name) {
		return nil
	}
	dir := filepath.Join(h.SysRoot, "block", name)
	for _, up := range dirNames(filepath.Join(dir, "holders")) {
		if err := h.tearDown(up, done, depth+1); err != nil {
			return err
		}
	}
	var err error
	switch {
	case strings.HasPrefix(name, "dm-"):
		majMin := strings.SplitN(sysText(dir, "dev"), ":", 2)
		if len(majMin) != 2 {
			return fmt.Errorf("tear down %s: no device number in sysfs", name)
		}
		major, err1 := strconv.ParseUint(majMin[0], 10, 32)
		minor, err2 := strconv.ParseUint(majMin[1], 10, 32)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("tear down %s: bad device number %q", name, sysText(dir, "dev"))
		}
		err = removeDM(h.DevRoot, uint32(major), uint32(minor))
	case strings.HasPrefix(name, "md"):
		err = stopMD(filepath.Join(h.DevRoot, name))
	default:
		return fmt.Errorf("tear down holder %q: neither device-mapper nor md", name)
	}
	if err != nil {
		return fmt.Errorf("tear down %s (%s): %w", name, sysText(dir, "dm/name"), err)
	}
	*done = append(*done, name)
	return nil
}
