package assign

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// junkUUID is the UUID a well-known board vendor ships on every board.
const junkUUID = "03000200-0400-0500-0006-000700080009"

// discovered registers machines through the inventory into a real bbolt
// store, the way agents do at discovery, and lists them back from it.
func discovered(t *testing.T, machines []struct{ serial, uuid, mac string }) (byMAC map[string]string, list []inventory.Machine) {
	t.Helper()
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	inv := inventory.New(st, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	raw, err := os.ReadFile("../../services/agentapi/testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	byMAC = map[string]string{}
	for _, m := range machines {
		var reg agentapi.Registration
		if err := json.Unmarshal(raw, &reg); err != nil {
			t.Fatal(err)
		}
		reg.BootMAC = m.mac
		reg.Inventory.System.Serial, reg.Inventory.System.UUID = m.serial, m.uuid
		reg.Inventory.NICs = []agentapi.NIC{{Name: "ens3", MAC: m.mac, Link: true}}
		if err := reg.Validate(); err != nil {
			t.Fatalf("registration of %s: %v", m.mac, err)
		}
		tok, err := inv.IssueBoot(m.mac)
		if err != nil {
			t.Fatal(err)
		}
		reply, err := inv.Register(context.Background(), tok.BootID, agentapi.Identity(&reg), &reg)
		if err != nil {
			t.Fatalf("register %s: %v", m.mac, err)
		}
		byMAC[m.mac] = reply.MachineID
	}
	// Read back from the store itself, not from what Register returned.
	if list, err = inventory.List(st); err != nil {
		t.Fatal(err)
	}
	if len(list) != len(machines) {
		t.Fatalf("%d machines registered, the store holds %d", len(machines), len(list))
	}
	return byMAC, list
}

func admitted(as []Assignment) []string {
	var ids []string
	for _, a := range as {
		if a.Admission == Admitted {
			ids = append(ids, a.MachineID)
		}
	}
	slices.Sort(ids)
	return ids
}

// An allowlist admits exactly the machines its rules name, nothing else,
// against a real store holding machines without serials and with vendor
// placeholder serials, and a hostile answer file that names empty or
// placeholder identities admits nobody even when its errors are ignored.
func TestAllowlistAdmitsExactlyTheNamedMachines(t *testing.T) {
	byMAC, machines := discovered(t, []struct{ serial, uuid, mac string }{
		{"SN-ALLOWED-1", "4c4c4544-0001-0000-0000-000000000001", "52:54:00:aa:00:01"}, // named by serial
		{"", junkUUID, "52:54:00:aa:00:02"},                                           // no serial at all
		{"To Be Filled By O.E.M.", junkUUID, "52:54:00:aa:00:03"},                     // placeholder serial
		{"Default string", junkUUID, "52:54:00:aa:00:04"},                             // placeholder, named by MAC
		{"0", "", "52:54:00:aa:00:05"},                                                // placeholder
		{"SN-OTHER", "4c4c4544-0001-0000-0000-000000000006", "52:54:00:aa:00:06"},     // real serial, not named
		{"   ", "", "52:54:00:aa:00:07"},                                              // blank
		{"0000000000", "", "52:54:00:aa:00:08"},                                       // placeholder
	})
	for _, m := range machines {
		if m.Serial != "" && m.Serial != "SN-ALLOWED-1" && m.Serial != "SN-OTHER" {
			t.Errorf("inventory kept the placeholder serial %q of %s", m.Serial, m.ID)
		}
	}

	good := []byte(`apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: dc1}
network: {interface: eth1, mode: full, subnet: 10.40.0.0/24, dynamicRange: {start: 10.40.0.100, end: 10.40.0.200}}
admission: {policy: allowlist}
machines:
  - name: cp
    match: {serials: [SN-ALLOWED-1]}
    role: control-plane
    hostname: cp-1
  - name: by-mac
    match: {macs: ["52:54:00:AA:00:04"]}
    role: worker
    hostname: w-named
  - name: rest
    role: worker
    hostname: worker-{index}
cluster: {name: dc1}
`)
	a, src, problems := config.Parse("good.yaml", good)
	problems = append(problems, a.Validate(src)...)
	if err := problems.Err(); err != nil {
		t.Fatalf("the allowlist file does not validate: %v", err)
	}
	want := []string{byMAC["52:54:00:aa:00:01"], byMAC["52:54:00:aa:00:04"]}
	slices.Sort(want)
	got := Assign(a, machines)
	if g := admitted(got); !slices.Equal(g, want) {
		t.Errorf("allowlist admitted %v, want exactly %v\n%+v", g, want, got)
	}

	// Every way of writing an empty or placeholder identity: validation
	// refuses each entry, and the rules, used anyway, admit nobody.
	hostile := []byte(`apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: dc1}
network: {interface: eth1, mode: full, subnet: 10.40.0.0/24, dynamicRange: {start: 10.40.0.100, end: 10.40.0.200}}
admission: {policy: allowlist}
machines:
  - name: empty
    match: {serials: ["", ~, "  ", "To Be Filled By O.E.M.", "to be filled by o.e.m.", "Default string", "0", "0000000000"]}
    role: control-plane
    hostname: cp-{index}
  - name: null-macs
    match: {macs: [null, "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"]}
    role: worker
    hostname: w-{index}
  - name: empty-rack-or-model
    match: {racks: [""], gpuModels: [""]}
    role: worker
    hostname: r-{index}
cluster: {name: dc1}
`)
	h, hsrc, hproblems := config.Parse("hostile.yaml", hostile)
	hproblems = append(hproblems, h.Validate(hsrc)...)
	if len(hproblems.Errors()) < 13 {
		t.Errorf("validation found %d errors in the hostile file, want one per entry (13):\n%s", len(hproblems.Errors()), hproblems)
	}
	for _, as := range Assign(h, machines) {
		if as.Admission == Admitted || as.Rule != "" {
			t.Errorf("an empty or placeholder identity matched %s (serial %q): %+v", as.MachineID, as.Serial, as)
		}
	}
	for _, policy := range []string{config.AdmitAny, config.AdmitApprove} {
		h.Admission.Policy = policy
		for _, as := range Assign(h, machines) {
			if as.Rule != "" {
				t.Errorf("policy %s: rule %q matched %s (serial %q)", policy, as.Rule, as.MachineID, as.Serial)
			}
		}
	}
}
