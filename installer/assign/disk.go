package assign

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/services/agentapi"
)

// ErrNoDisk means no disk of a machine fits the rule's install-disk policy.
var ErrNoDisk = errors.New("no disk fits the install-disk policy")

// Disk chooses the install disk among a machine's disks by the rule's
// policy and pins it by its identity (WWN, serial, size). Removable disks
// are never chosen; neither is a disk without a WWN or serial, which could
// not be told apart from another of its size when the agent checks it
// again before writing. Several disks that fit the serial policy are an
// error, not a guess.
func Disk(p config.InstallDisk, disks []agentapi.Disk) (inventory.DiskPin, error) {
	var fit []agentapi.Disk
	var why []string
	for _, d := range disks {
		switch {
		case d.Removable:
			why = append(why, d.Name+" is removable")
		case d.WWN == "" && d.Serial == "":
			why = append(why, d.Name+" has neither WWN nor serial")
		case d.SizeBytes == 0:
			why = append(why, d.Name+" has no size")
		case p.MinSize > 0 && d.SizeBytes < uint64(p.MinSize):
			why = append(why, fmt.Sprintf("%s is smaller than %v", d.Name, p.MinSize))
		case p.Rotational != nil && d.Rotational != *p.Rotational:
			why = append(why, d.Name+" has the wrong kind (rotational)")
		case p.Policy == config.DiskSerial && d.Serial != p.Serial:
		default:
			fit = append(fit, d)
		}
	}
	if len(fit) == 0 {
		return inventory.DiskPin{}, fmt.Errorf("%w (%s): %s", ErrNoDisk, policyText(p), strings.Join(append(why, "no other disk"), "; "))
	}
	var d agentapi.Disk
	switch p.Policy {
	case config.DiskSerial:
		if len(fit) > 1 {
			return inventory.DiskPin{}, fmt.Errorf("%w: %d disks have serial %q", ErrNoDisk, len(fit), p.Serial)
		}
		d = fit[0]
	case config.DiskLargest:
		d = slices.MaxFunc(fit, func(a, b agentapi.Disk) int { return cmp.Compare(a.SizeBytes, b.SizeBytes) })
	case config.DiskFirst:
		d = slices.MinFunc(fit, func(a, b agentapi.Disk) int { return strings.Compare(a.Name, b.Name) })
	default: // smallest
		d = slices.MinFunc(fit, func(a, b agentapi.Disk) int {
			return cmp.Or(cmp.Compare(a.SizeBytes, b.SizeBytes), strings.Compare(a.Name, b.Name))
		})
	}
	return inventory.DiskPin{Name: d.Name, WWN: d.WWN, Serial: d.Serial, SizeBytes: d.SizeBytes}, nil
}

func policyText(p config.InstallDisk) string {
	if p.Policy == "" {
		return "smallest"
	}
	if p.Policy == config.DiskSerial {
		return "serial " + p.Serial
	}
	return p.Policy
}
