// Package engine is the part of the installer that runs: it joins the
// network services to the state store (DHCP leases, boot decisions, the
// agent API over the inventory) and runs them together. The command line
// and the wizard are thin callers of it.
package engine

import (
	"context"
	"fmt"
	"net"
	"strings"

	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/services/agentapi"
	"airlock.dev/airlock/services/httpboot"
)

// DiscoveryImage is the kernel and initramfs that machines boot to be
// discovered, as paths under httpboot's /files/.
type DiscoveryImage struct {
	Kernel  string
	Initrd  string
	Cmdline string // extra kernel arguments, e.g. console=ttyS0
}

// BootDecider tells httpboot what each machine boots. Today every machine
// boots the discovery image with a fresh per-boot token; provisioning adds
// the install and local-disk decisions from the inventory.
type BootDecider struct {
	Inventory *inventory.Store
	Image     DiscoveryImage
	// API is the agent API's https base URL (airlock.api).
	API string
	// Local, when set, says whether the machine with a boot MAC boots its
	// own disk (it is installed).
	Local func(mac string) bool
}

var _ httpboot.Backend = (*BootDecider)(nil)

// BootSpec implements httpboot.Backend.
func (b *BootDecider) BootSpec(_ context.Context, mac net.HardwareAddr) (httpboot.BootSpec, error) {
	if b.Local != nil && b.Local(mac.String()) {
		return httpboot.BootSpec{State: httpboot.StateLocal}, nil
	}
	if b.Image.Kernel == "" || b.Image.Initrd == "" {
		return httpboot.BootSpec{}, fmt.Errorf("no discovery image: the bundle has no kernel and boot image")
	}
	tok, err := b.Inventory.IssueBoot(mac.String())
	if err != nil {
		return httpboot.BootSpec{}, err
	}
	// httpboot adds airlock.url (its own base URL) and airlock.mac.
	args := []string{agentapi.CmdlineToken + "=" + tok.String()}
	if b.API != "" {
		args = append(args, agentapi.CmdlineAPI+"="+b.API)
	}
	if b.Image.Cmdline != "" {
		args = append(args, b.Image.Cmdline)
	}
	return httpboot.BootSpec{
		State:   httpboot.StateDiscover,
		Kernel:  b.Image.Kernel,
		Initrds: []string{b.Image.Initrd},
		Cmdline: strings.Join(args, " "),
	}, nil
}
