package engine

import (
	"fmt"
	"strings"
	"testing"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/lab"
)

// lab up --bundle needs the bundle's key or an explicit trust on first
// use, like every other command, and hands that choice to the lab's
// airlock through its answer file.
func TestLabBundleNeedsTrust(t *testing.T) {
	o := LabOptions{Bundle: "/nonexistent/site.bundle", Agent: "/nonexistent/agent"}
	err := checkLabInputs(o)
	if err == nil || !strings.Contains(err.Error(), "--bundle-key") {
		t.Fatalf("lab up --bundle without a key: %v", err)
	}
	o.BundleTrustOnFirstUse = true
	if err := checkLabInputs(o); err == nil || strings.Contains(err.Error(), "--bundle-key") {
		t.Fatalf("lab up --bundle --bundle-trust-on-first-use: %v", err)
	}
	for _, c := range []struct {
		o    LabOptions
		want config.Bundle
	}{
		{LabOptions{}, config.Bundle{}},
		{LabOptions{Bundle: "/b", BundleKey: "/k.pub"}, config.Bundle{Path: "/b", PublicKey: "/k.pub"}},
		{LabOptions{Bundle: "/b", BundleTrustOnFirstUse: true}, config.Bundle{Path: "/b", TrustOnFirstUse: true}},
		{LabOptions{Bundle: "/b", BundleKey: "/k.pub", BundleTrustOnFirstUse: true}, config.Bundle{Path: "/b", PublicKey: "/k.pub"}},
	} {
		if got := c.o.labBundle(); got != c.want {
			t.Errorf("%+v: bundle section %+v, want %+v", c.o, got, c.want)
		}
	}
}

// The lab's answer file carries the bundle's trust to the lab's airlock.
func TestLabAnswerFileCarriesBundleTrust(t *testing.T) {
	s := &lab.State{Bridge: "albr0", ServerAddr: "10.77.0.1/24", Subnet: "10.77.0.0/24",
		VMs:      []lab.VM{{Name: "node-a-01", Rack: "rack-a", Slot: 1, Serial: "SN-1"}},
		Switches: []lab.Switch{{Rack: "rack-a", SystemName: "rack-a-tor"}}}
	for _, want := range []config.Bundle{
		{},
		{Path: "/media/usb/site \"b\".bundle", PublicKey: "/media/usb/site.pub"},
		{Path: "/media/usb/site.bundle", TrustOnFirstUse: true},
	} {
		out, err := labAnswerFile(s, want, false, "")
		if err != nil {
			t.Fatalf("%+v: %v", want, err)
		}
		a, _, problems := config.Parse("lab.yaml", out)
		if err := problems.Err(); err != nil || a.Bundle != want {
			t.Fatalf("%+v: got %+v (%v):\n%s", want, a.Bundle, err, out)
		}
	}
}

// Every machine of the lab gets its own rule: the first the control
// plane, the others workers numbered within their rack, each with a static
// address from .10 on (the e2e test finds them in the installed systems).
func TestLabAnswerFileGivesEveryMachineAnAddress(t *testing.T) {
	s := &lab.State{Bridge: "albr0", ServerAddr: "10.77.0.1/24", Subnet: "10.77.0.0/24",
		VMs: []lab.VM{{Name: "node-a-01", Rack: "rack-a", Slot: 1, Serial: "SN-1"}, {Name: "node-b-01", Rack: "rack-b", Slot: 1, Serial: "SN-2"},
			{Name: "node-a-02", Rack: "rack-a", Slot: 2, Serial: "SN-3"}},
		Switches: []lab.Switch{{Rack: "rack-a", SystemName: "rack-a-tor"}, {Rack: "rack-b", SystemName: "rack-b-tor"}}}
	out, err := labAnswerFile(s, config.Bundle{}, false, "")
	if err != nil {
		t.Fatal(err)
	}
	a, _, problems := config.Parse("lab.yaml", out)
	if err := problems.Err(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range a.Machines {
		got = append(got, fmt.Sprintf("%s %v %s %s %s", r.Name, r.Match.Serials, r.Role, r.Hostname, r.Address))
	}
	want := []string{
		"cp [SN-1] control-plane cp-1 10.77.0.10/24",
		"node-b-01 [SN-2] worker worker-rack-b-1 10.77.0.11/24",
		"node-a-02 [SN-3] worker worker-rack-a-1 10.77.0.12/24",
		"workers [] worker worker-{rack}-{index} invalid Prefix",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// With a Kubernetes version the lab's answer file asks for a kubeadm
// cluster at it; without, it leaves the distribution to the defaults.
func TestLabAnswerFileKubernetes(t *testing.T) {
	s := &lab.State{Bridge: "albr0", ServerAddr: "10.77.0.1/24", Subnet: "10.77.0.0/24", Router: "10.77.0.254",
		VMs:      []lab.VM{{Name: "node-a-01", Rack: "rack-a", Slot: 1, Serial: "SN-1"}},
		Switches: []lab.Switch{{Rack: "rack-a", SystemName: "rack-a-tor"}}}
	for _, v := range []string{"", "v1.33.9"} {
		out, err := labAnswerFile(s, config.Bundle{}, false, v)
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		a, _, problems := config.Parse("lab.yaml", out)
		if err := problems.Err(); err != nil {
			t.Fatal(err)
		}
		if a.Network.Gateway.String() != "10.77.0.254" || len(a.Network.DNS) != 1 || a.Network.DNS[0].String() != "10.77.0.254" {
			t.Errorf("gateway %s, DNS %v: want the lab's router 10.77.0.254 for both", a.Network.Gateway, a.Network.DNS)
		}
		if v == "" {
			if strings.Contains(string(out), "distribution") {
				t.Errorf("no version given, yet the answer file names a distribution:\n%s", out)
			}
			continue
		}
		if want := (config.Distribution{Name: "kubeadm", Version: v}); a.Cluster.Name != "lab" || a.Cluster.Distribution != want {
			t.Errorf("%q: cluster %+v, want distribution %+v:\n%s", v, a.Cluster, want, out)
		}
	}
}
