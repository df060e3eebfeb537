package provision

import (
	"context"
	"fmt"
	"io"
)

// InstallReport is what Install did, for the agent's reply.
type InstallReport struct {
	Disk  Disk
	Wipe  WipeReport
	Write WriteReport
}

// Install carries out a provisioning order on this machine: it resolves
// pin to one disk (refusing no match, several, removable or read-only),
// wipes it (refusing a non-empty disk unless allowNonEmpty), checks that
// the pin still names the same device, and writes the image from src.
// Open src (Fetch) before calling, so that an unreachable image fails the
// order before the disk is touched.
func (h Host) Install(ctx context.Context, pin DiskPin, allowNonEmpty bool, src io.Reader, spec WriteSpec, progress func(Progress)) (InstallReport, error) {
	var rep InstallReport
	d, err := h.Resolve(pin)
	if err != nil {
		return rep, err
	}
	rep.Disk = d
	if rep.Wipe, err = h.Wipe(ctx, d.Dev, allowNonEmpty); err != nil {
		return rep, err
	}
	again, err := h.Resolve(pin)
	if err != nil {
		return rep, fmt.Errorf("after wiping %s: %w", d.Dev, err)
	}
	if again.Dev != d.Dev {
		return rep, fmt.Errorf("after wiping %s the pin (%s) names %s: %w", d.Dev, pin, again.Dev, ErrAmbiguous)
	}
	rep.Write, err = Write(ctx, d.Dev, src, spec, progress)
	return rep, err
}
