package engine

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/services/dhcp"
)

// machineAdmitter is what the DHCP server asks, per packet, about a MAC:
// machines the inventory holds (unless denied) and the MACs the answer
// file names are known, so the limits on strangers do not hold them back;
// the answer file's fixed reservations and the static addresses recorded
// in assignments are reserved. It is rebuilt from the inventory at every
// change, so a machine admitted or assigned while airlock runs is served by
// the next packet, with no restart.
type machineAdmitter struct {
	answers *config.Answers
	base    []dhcp.Reservation // the answer file's, from DHCPConfig
	cur     atomic.Pointer[dhcp.StaticAdmitter]
}

var _ dhcp.Admitter = (*machineAdmitter)(nil)

func newMachineAdmitter(a *config.Answers, base []dhcp.Reservation) *machineAdmitter {
	m := &machineAdmitter{answers: a, base: base}
	m.rebuild(nil)
	return m
}

// Admit implements dhcp.Admitter.
func (m *machineAdmitter) Admit(mac net.HardwareAddr) dhcp.Admission { return m.cur.Load().Admit(mac) }

// ReservedFor implements dhcp.Admitter.
func (m *machineAdmitter) ReservedFor(ip netip.Addr) (net.HardwareAddr, bool) {
	return m.cur.Load().ReservedFor(ip)
}

// rebuild makes the admitter's tables anew from the answers and machines.
func (m *machineAdmitter) rebuild(machines []inventory.Machine) {
	s := dhcp.NewStaticAdmitter(nil, false)
	known := func(mac string) {
		if hw, err := net.ParseMAC(mac); err == nil {
			if s.Admit(hw).Known {
				return // a reservation already knows it
			}
			s.Reserve(dhcp.Reservation{MAC: hw})
		}
	}
	for _, r := range m.base {
		s.Reserve(r)
	}
	for _, r := range m.answers.Machines {
		for _, mac := range r.Match.MACs {
			if mac.Usable() {
				known(strings.ToLower(string(mac)))
			}
		}
	}
	for _, mc := range machines {
		if mc.State == inventory.StateDenied {
			continue
		}
		if as := mc.Assignment; as != nil && as.Address != "" {
			if p, err := netip.ParsePrefix(as.Address); err == nil && m.answers.Network.Subnet.Contains(p.Addr()) {
				if hw, err := net.ParseMAC(mc.BootMAC); err == nil {
					s.Reserve(dhcp.Reservation{MAC: hw, IP: p.Addr(), Hostname: as.Hostname})
				}
			}
		}
		known(mc.BootMAC)
		for _, mac := range mc.MACs {
			known(mac)
		}
	}
	m.cur.Store(s)
}

// follow rebuilds the admitter at every change of the inventory until ctx
// ends.
func (m *machineAdmitter) follow(ctx context.Context, inv *inventory.Store) error {
	for {
		changed := inv.Changed()
		ms, err := inv.List()
		if err != nil {
			return err
		}
		m.rebuild(ms)
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}
