package engine

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/seed"
)

// bootIP is the layer-3 configuration of the interface that carries the
// machine's provisioning address: the assignment's static address with
// the network's gateway and DNS, or DHCP.
type bootIP struct {
	Address     string // prefix; empty: DHCP
	Gateway     netip.Addr
	Nameservers []netip.Addr
}

func (b bootIP) config() (seed.IPConfig, error) {
	if b.Address == "" {
		return seed.IPConfig{DHCP4: true}, nil
	}
	p, err := netip.ParsePrefix(b.Address)
	if err != nil {
		return seed.IPConfig{}, fmt.Errorf("address %q: %w", b.Address, err)
	}
	return seed.IPConfig{Addresses: []netip.Prefix{p}, Gateway: b.Gateway, Nameservers: b.Nameservers}, nil
}

// seedNetwork is the installed system's network configuration for machine
// m: its boot NIC (by MAC, named as the agent saw it), and the rule's bonds
// and VLANs, their members found among the NICs the machine reported (by
// name or MAC) and matched by MAC in the seed. The provisioning address
// goes on the boot NIC, or on the bond the boot NIC is a member of.
func seedNetwork(m inventory.Machine, rule *config.Rule, boot bootIP) (seed.Network, error) {
	var n seed.Network
	bootHW, err := net.ParseMAC(m.BootMAC)
	if err != nil {
		return n, fmt.Errorf("boot MAC %q: %w", m.BootMAC, err)
	}
	ip, err := boot.config()
	if err != nil {
		return n, err
	}
	nicName := func(hw net.HardwareAddr) string {
		for _, nic := range m.Hardware.NICs {
			if strings.EqualFold(nic.MAC, hw.String()) && validNICName(nic.Name) {
				return nic.Name
			}
		}
		return ""
	}
	bootName := nicName(bootHW)
	if bootName == "" {
		bootName = "eth0"
	}
	n.Ethernets = []seed.Ethernet{{Name: bootName, MAC: bootHW}}
	// ethernet adds the NIC a bond or VLAN names (once) and returns its
	// name in the seed.
	ethernet := func(member string) (string, error) {
		var hw net.HardwareAddr
		name := ""
		if h, err := net.ParseMAC(member); err == nil && len(h) == 6 {
			hw, name = h, nicName(h)
			if name == "" {
				return "", fmt.Errorf("machine %s reported no NIC with MAC %s (it has %s)", m.ID, hw, nicList(m))
			}
		} else {
			for _, nic := range m.Hardware.NICs {
				if nic.Name == member {
					hw, _ = net.ParseMAC(nic.MAC)
				}
			}
			if len(hw) != 6 || !validNICName(member) {
				return "", fmt.Errorf("machine %s reported no NIC named %q (it has %s)", m.ID, member, nicList(m))
			}
			name = member
		}
		for _, e := range n.Ethernets {
			if slices.Equal(e.MAC, hw) {
				return e.Name, nil
			}
		}
		n.Ethernets = append(n.Ethernets, seed.Ethernet{Name: name, MAC: hw})
		return name, nil
	}
	bootInBond := false
	if rule != nil {
		for _, b := range rule.Bonds {
			bond := seed.Bond{Name: b.Name, Mode: b.Mode}
			bond.MTU = b.MTU
			if b.Address.IsValid() {
				bond.Addresses = []netip.Prefix{b.Address}
			}
			for _, member := range b.Interfaces {
				name, err := ethernet(member)
				if err != nil {
					return n, fmt.Errorf("bond %s: %w", b.Name, err)
				}
				bond.Interfaces = append(bond.Interfaces, name)
				if name == bootName {
					bootInBond = true
					// The provisioning address moves to the bond.
					for _, a := range ip.Addresses {
						if !slices.Contains(bond.Addresses, a) {
							bond.Addresses = append(bond.Addresses, a)
						}
					}
					bond.DHCP4 = ip.DHCP4 && len(bond.Addresses) == 0
					bond.Gateway, bond.Nameservers = ip.Gateway, ip.Nameservers
				}
			}
			n.Bonds = append(n.Bonds, bond)
		}
		for _, v := range rule.VLANs {
			link := v.Link
			if !slices.ContainsFunc(rule.Bonds, func(b config.Bond) bool { return b.Name == v.Link }) {
				if link, err = ethernet(v.Link); err != nil {
					return n, fmt.Errorf("VLAN %d: %w", v.ID, err)
				}
			}
			vl := seed.VLAN{Name: link + "." + strconv.Itoa(v.ID), ID: v.ID, Link: link}
			if len(vl.Name) > 15 {
				vl.Name = "vlan" + strconv.Itoa(v.ID)
			}
			if v.Address.IsValid() {
				vl.Addresses = []netip.Prefix{v.Address}
			}
			n.VLANs = append(n.VLANs, vl)
		}
	}
	if !bootInBond {
		n.Ethernets[0].IPConfig = ip
	}
	return n, nil
}

// validNICName is what the seed accepts as an interface name.
func validNICName(s string) bool {
	if s == "" || len(s) > 15 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

func nicList(m inventory.Machine) string {
	var l []string
	for _, nic := range m.Hardware.NICs {
		l = append(l, fmt.Sprintf("%q %s", nic.Name, nic.MAC))
	}
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}
