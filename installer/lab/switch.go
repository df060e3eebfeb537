package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/services/agentapi/lldp"
)

// Port returns the switch port name a VM is plugged into: Eth1/<slot>.
func (vm VM) Port() string { return fmt.Sprintf("Eth1/%d", vm.Slot) }

// Frames returns the LLDP frame each VM's tap receives from its rack's
// switch, keyed by tap name.
func (s *State) Frames() (map[string][]byte, error) {
	sws := map[string]Switch{}
	for _, sw := range s.Switches {
		sws[sw.Rack] = sw
	}
	out := map[string][]byte{}
	for _, vm := range s.VMs {
		sw, ok := sws[vm.Rack]
		if !ok {
			return nil, fmt.Errorf("VM %s is in rack %s, which has no switch", vm.Name, vm.Rack)
		}
		src, err := net.ParseMAC(sw.ChassisID)
		if err != nil {
			return nil, fmt.Errorf("switch %s: %w", sw.SystemName, err)
		}
		// Each port has its own source MAC, as on a real switch.
		src[5] = byte(vm.Slot)
		f, err := lldp.Encode(lldp.Frame{
			Source: src, ChassisID: sw.ChassisID, PortID: vm.Port(), TTL: 120,
			PortDescription: "Ethernet1/" + fmt.Sprint(vm.Slot), SystemName: sw.SystemName,
			SystemDescription: "airlock lab top-of-rack switch",
		})
		if err != nil {
			return nil, err
		}
		out[vm.Tap] = f
	}
	return out, nil
}

// RunSwitches plays every rack's top-of-rack switch: it sends an LLDP frame
// into each VM's tap every interval (real switches use 30 s; the agent
// listens for a few seconds, so the lab uses 1 s) until ctx ends. Like an
// L3 top-of-rack switch it also sends IPv6 router advertisements on the
// provisioning network (saying there is no IPv6 router), which spares the
// firmware's iPXE a ~13 s wait for one. It returns nil when ctx is
// cancelled. Run it in the process that owns the lab.
func (s *State) RunSwitches(ctx context.Context, log *slog.Logger, interval time.Duration) error {
	frames, err := s.Frames()
	if err != nil {
		return err
	}
	ns, err := netns.Open(s.Namespace)
	if err != nil {
		return fmt.Errorf("open lab namespace: %w", err)
	}
	routerDone := make(chan struct{})
	go func() {
		defer close(routerDone)
		if err := runRouter(ctx, ns, s.Bridge, 500*time.Millisecond); err != nil {
			log.Warn("lab router advertisements off", "err", err)
		}
	}()
	defer func() { <-routerDone }()
	t := time.NewTicker(interval)
	defer t.Stop()
	warned := map[string]bool{}
	for {
		err := ns.Do(func() error {
			var errs []error
			for tap, f := range frames {
				if err := lldp.Send(tap, f); err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		})
		if err != nil && !warned[err.Error()] {
			warned[err.Error()] = true
			log.Warn("lab switch could not send LLDP", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
