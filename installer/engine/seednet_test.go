package engine

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/seed"
	"airlock.dev/airlock/services/agentapi"
)

func seedTestMachine() inventory.Machine {
	return inventory.Machine{ID: "m-0123456789", BootMAC: "52:54:00:00:0e:01", Hardware: agentapi.Inventory{NICs: []agentapi.NIC{
		{Name: "eth0", MAC: "52:54:00:00:0e:01"}, {Name: "eth1", MAC: "52:54:00:00:0e:02"}, {Name: "eth2", MAC: "52:54:00:00:0e:03"},
	}}}
}

// A rule's bonds and VLANs reach the seed: members named by NIC name or
// MAC are the machine's reported NICs, matched by MAC; the provisioning
// address moves to the bond that holds the boot NIC; the network-config
// passes cloud-init's own parser and renders for ifupdown with the bond,
// its members and the VLANs; the user-data with the SSH key passes
// cloud-init schema.
func TestSeedNetworkFromTheRule(t *testing.T) {
	rule := &config.Rule{
		Name:  "cp",
		Bonds: []config.Bond{{Name: "bond0", Mode: "802.3ad", Interfaces: []string{"eth0", "52:54:00:00:0e:03"}, MTU: 9000}},
		VLANs: []config.VLAN{
			{ID: 100, Link: "bond0", Address: netip.MustParsePrefix("192.168.100.5/24")},
			{ID: 200, Link: "eth1", Address: netip.MustParsePrefix("192.168.200.5/24")},
		},
	}
	boot := bootIP{Address: "10.40.0.5/24", Gateway: netip.MustParseAddr("10.40.0.254"), Nameservers: []netip.Addr{netip.MustParseAddr("10.40.0.53")}}
	n, err := seedNetwork(seedTestMachine(), rule, boot)
	if err != nil {
		t.Fatal(err)
	}
	files, err := seed.Render(seed.Config{InstanceID: "m-0123456789-x", Hostname: "cp-1", Network: n,
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO74MOQ9I2Jk+04KEebSswJFbl8jstuD8OR+04kqAc1Z admin@laptop"}})
	if err != nil {
		t.Fatal(err)
	}
	nc := string(files.NetworkConfig)
	for _, want := range []string{"bond0:", "mode: 802.3ad", "mtu: 9000", "- eth0", "- eth2", "10.40.0.5/24", "bond0.100:", "eth1.200:", "192.168.200.5/24", "52:54:00:00:0e:03"} {
		if !strings.Contains(nc, want) {
			t.Errorf("network-config has no %q:\n%s", want, nc)
		}
	}
	if !strings.Contains(string(files.UserData), "admin@laptop") {
		t.Errorf("user-data has no SSH key:\n%s", files.UserData)
	}
	for _, tool := range []string{"cloud-init", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: apt-get install cloud-init", tool)
		}
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "network-config"), files.NetworkConfig, 0o644)
	os.WriteFile(filepath.Join(dir, "user-data"), files.UserData, 0o644)
	out, err := exec.Command("/usr/bin/python3", "../seed/testdata/netcheck.py", filepath.Join(dir, "network-config")).CombinedOutput()
	if err != nil {
		t.Fatalf("cloud-init's network parser: %v\n%s\n%s", err, out, nc)
	}
	eni := string(out)
	for _, want := range []string{"iface bond0 inet static", "address 10.40.0.5/24", "route add default gw 10.40.0.254", "bond-slaves none", "bond-master bond0", "iface bond0.100 inet static", "vlan-raw-device eth1"} {
		if !strings.Contains(eni, want) {
			t.Errorf("ifupdown rendering has no %q:\n%s", want, eni)
		}
	}
	out, err = exec.Command("cloud-init", "schema", "--config-file", filepath.Join(dir, "user-data")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
		t.Errorf("cloud-init schema: %v\n%s", err, out)
	}
}

// Without bonds the address stays on the boot NIC; without an address it
// takes DHCP; a member the machine did not report fails, naming it.
func TestSeedNetworkBootNIC(t *testing.T) {
	n, err := seedNetwork(seedTestMachine(), nil, bootIP{Address: "10.40.0.5/24"})
	if err != nil || len(n.Ethernets) != 1 || n.Ethernets[0].Name != "eth0" || n.Ethernets[0].Addresses[0].String() != "10.40.0.5/24" {
		t.Fatalf("%+v %v", n, err)
	}
	n, err = seedNetwork(seedTestMachine(), &config.Rule{VLANs: []config.VLAN{{ID: 7, Link: "eth1"}}}, bootIP{})
	if err != nil || !n.Ethernets[0].DHCP4 || len(n.Ethernets) != 2 || n.VLANs[0].Link != "eth1" {
		t.Fatalf("%+v %v", n, err)
	}
	_, err = seedNetwork(seedTestMachine(), &config.Rule{Bonds: []config.Bond{{Name: "bond0", Interfaces: []string{"eth0", "ens9"}}}}, bootIP{})
	if err == nil || !strings.Contains(err.Error(), `no NIC named "ens9"`) {
		t.Fatalf("unknown member: %v", err)
	}
	_, err = seedNetwork(seedTestMachine(), &config.Rule{Bonds: []config.Bond{{Name: "bond0", Interfaces: []string{"52:54:00:00:0e:09"}}}}, bootIP{})
	if err == nil || !strings.Contains(err.Error(), "no NIC with MAC 52:54:00:00:0e:09") {
		t.Fatalf("unknown MAC: %v", err)
	}
}

// newSeed takes the machine's rule from the answer file (by the rule name
// recorded in its assignment) and the site's SSH keys.
func TestNewSeedTakesTheRuleAndKeys(t *testing.T) {
	e := testEngine(t, t.TempDir(), `machines:
  - name: cp
    match: {serials: [SN-1]}
    role: control-plane
    hostname: cp-1
    address: 10.78.0.50/24
    bonds: [{name: bond0, mode: active-backup, interfaces: [ens3]}]
    vlans: [{id: 42, link: bond0, address: 192.168.42.5/24}]
admission: {policy: any}
`, nil)
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO74MOQ9I2Jk+04KEebSswJFbl8jstuD8OR+04kqAc1Z admin@laptop"
	e.answers.Site.SSHAuthorizedKeys = []string{key}
	inv := e.Inventory()
	id := report(t, inv, "SN-1", "52:54:00:00:0f:01", testDisks...)
	if _, err := inv.Transition(id, inventory.StateAdmitted, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Assign(id, inventory.Assignment{Rule: "cp", Role: "control-plane", Hostname: "cp-1", Index: 1, Address: "10.78.0.50/24"}); err != nil {
		t.Fatal(err)
	}
	m, err := inv.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.newSeed(m); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(e.seedFile(id))
	if err != nil {
		t.Fatal(err)
	}
	// The seed's small files lie whole in the FAT image.
	for _, want := range []string{key, "bond0:", "mode: active-backup", "bond0.42:", "192.168.42.5/24", "10.78.0.50/24", "airlock-lab-check"} {
		if !strings.Contains(string(img), want) {
			t.Errorf("the seed has no %q", want)
		}
	}
}
