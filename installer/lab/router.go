package lab

import (
	"context"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/services/ra"
)

// runRouter advertises "no IPv6 router here" on the lab's bridge every
// interval, as an L3 top-of-rack switch would, so that the VMs' iPXE does
// not wait ~13 s for an IPv6 router (see services/ra). The lab's airlock
// sends the same advertisements in full mode; the switches send them too
// so that the lab boots quickly whatever serves it.
func runRouter(ctx context.Context, ns *netns.NS, bridge string, interval time.Duration) error {
	var adv *ra.Advertiser
	if err := ns.Do(func() error {
		var err error
		adv, err = ra.Open(bridge)
		return err
	}); err != nil {
		return err
	}
	defer adv.Close()
	return adv.Run(ctx, interval)
}
