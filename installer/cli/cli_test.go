package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/kube"
	"airlock.dev/airlock/installer/pipeline"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// run executes the command line in-process and returns stdout, stderr and
// the exit code main would use.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := Execute(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), ExitCode(err)
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInitThenValidate(t *testing.T) {
	for _, args := range [][]string{
		{"init"},
		{"init", "--interface", "eno1", "--subnet", "192.168.50.0/24", "--mode", "full"},
		{"init", "--interface", "eno1", "--mode", "proxy"},
	} {
		out, errOut, code := run(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		file := writeFile(t, "answers.yaml", out)
		vout, verr, vcode := run(t, "validate", "-f", file)
		if vcode != 0 || !strings.Contains(vout, "valid (0 errors") {
			t.Errorf("%v output does not validate: exit %d\n%s%s", args, vcode, vout, verr)
		}
	}
	_, errOut, code := run(t, "init", "--subnet", "10.0.0.0/33")
	if code != 1 || !strings.Contains(errOut, "--subnet") {
		t.Errorf("bad --subnet: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(t, "init", "--mode", "maybe")
	if code != 1 || !strings.Contains(errOut, `mode "maybe"`) {
		t.Errorf("bad --mode: exit %d, %q", code, errOut)
	}
}

const threeProblems = `apiVersion: airlock.dev/v1alpha1
kind: Install
site:
  name: dc1
  colour: blue
network:
  interface: eth1
  subnet: 10.40.0.0/24
  leaseTime: [1h]
  dynamicRange: {start: 10.40.9.10, end: 10.40.0.20}
cluster:
  name: dc1
`

func TestValidateReportsEverythingAndExitsOne(t *testing.T) {
	file := writeFile(t, "bad.yaml", threeProblems)
	out, _, code := run(t, "validate", "-f", file)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for _, want := range []string{
		file + ":5:3: site.colour: unknown field",
		file + ":9:14: network.leaseTime: expected a duration like 1h, got a list",
		file + ":10:25: network.dynamicRange.start: 10.40.9.10 is outside the subnet 10.40.0.0/24",
		file + ": invalid (3 errors, 0 warnings)",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
	jsonOut, _, code := run(t, "validate", "-f", file, "-o", "json")
	var v validation
	if err := json.Unmarshal([]byte(jsonOut), &v); err != nil || code != 1 || v.Valid || len(v.Errors) != 3 {
		t.Errorf("validate -o json: exit %d, %+v, %v\n%s", code, v, err, jsonOut)
	}
	yamlOut, _, _ := run(t, "validate", "-f", file, "-o", "yaml")
	var y map[string]any
	if err := yaml.Unmarshal([]byte(yamlOut), &y); err != nil || y["valid"] != false {
		t.Errorf("validate -o yaml: %v\n%s", err, yamlOut)
	}
	_, errOut, code := run(t, "validate", "-f", filepath.Join(t.TempDir(), "missing.yaml"))
	if code != 1 || !strings.Contains(errOut, "read answer file") {
		t.Errorf("missing file: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(t, "validate")
	if code != 1 || !strings.Contains(errOut, `"file" not set`) {
		t.Errorf("no -f: exit %d, %q", code, errOut)
	}
}

func TestValidateWarningsStillExitZero(t *testing.T) {
	out, _, _ := run(t, "init", "--interface", "eth1")
	out = strings.Replace(out, `macs: ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"]`, `macs: ["52:54:00:00:00:01", "52:54:00:00:00:02"]`, 1)
	file := writeFile(t, "even.yaml", out)
	vout, _, code := run(t, "validate", "-f", file)
	if code != 0 || !strings.Contains(vout, "warning: machines: 2 control-plane machines") {
		t.Errorf("exit %d:\n%s", code, vout)
	}
}

func TestPlanReadsTheJournal(t *testing.T) {
	out, _, _ := run(t, "init", "--interface", "eth1", "--mode", "full")
	file := writeFile(t, "answers.yaml", out)
	stateDir := t.TempDir()
	// Before anything ran: no state, every phase pending.
	planOut, errOut, code := run(t, "plan", "-f", file, "--state", filepath.Join(stateDir, "none"), "-o", "json")
	if code != 0 {
		t.Fatalf("plan: exit %d: %s", code, errOut)
	}
	var p struct {
		Phases []struct{ Name, Status string }
		Rules  []struct{ Name, Role string }
	}
	if err := json.Unmarshal([]byte(planOut), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Phases) != len(pipeline.Phases()) || p.Phases[0].Status != "pending" || len(p.Rules) != 3 {
		t.Fatalf("plan = %+v", p)
	}
	// After the serve phase finished, plan says so.
	s, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := state.NewJournal(s).Record("serve", state.StatusDone, "", nil); err != nil {
		t.Fatal(err)
	}
	// One machine was discovered: the control plane named by its MAC.
	inv := inventory.New(s, nil, slog.New(slog.DiscardHandler))
	raw, err := os.ReadFile("../../services/agentapi/testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	var reg agentapi.Registration
	if err := json.Unmarshal(raw, &reg); err != nil {
		t.Fatal(err)
	}
	reg.BootMAC = "52:54:00:00:00:02"
	reg.Inventory.NICs = []agentapi.NIC{{Name: "eth0", MAC: reg.BootMAC, Link: true}}
	tok, err := inv.IssueBoot(reg.BootMAC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Register(context.Background(), tok.BootID, agentapi.Identity(&reg), &reg); err != nil {
		t.Fatal(err)
	}
	// While the owner holds the store, plan explains who has it.
	_, errOut, code = run(t, "plan", "-f", file, "--state", stateDir)
	if code != 1 || !strings.Contains(errOut, "in use by another airlock process") {
		t.Errorf("plan beside a running airlock: exit %d, %q", code, errOut)
	}
	s.Close()
	planOut, _, code = run(t, "plan", "-f", file, "--state", stateDir)
	if code != 0 || !regexp.MustCompile(`2\. serve +done`).MatchString(planOut) {
		t.Errorf("plan after serve: exit %d\n%s", code, planOut)
	}
	if !regexp.MustCompile(`m-[0-9a-f]+ +\S+ +\S+ +control-plane +cp-1 +awaits-approval`).MatchString(planOut) {
		t.Errorf("plan does not assign the discovered machine:\n%s", planOut)
	}
	// An invalid answer file is refused with its problems.
	bad := writeFile(t, "bad.yaml", threeProblems)
	_, errOut, code = run(t, "plan", "-f", bad, "--state", stateDir)
	if code != 1 || !strings.Contains(errOut, "site.colour: unknown field") {
		t.Errorf("plan of an invalid file: exit %d, %q", code, errOut)
	}
}

func TestVersionSchemaAndFlags(t *testing.T) {
	out, _, code := run(t, "version", "-o", "json")
	var v map[string]string
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || v["apiVersion"] != "airlock.dev/v1alpha1" {
		t.Errorf("version -o json: %v %q", err, out)
	}
	out, _, code = run(t, "schema")
	var schema map[string]any
	if err := json.Unmarshal([]byte(out), &schema); err != nil || code != 0 || schema["$id"] == nil {
		t.Errorf("schema: %v", err)
	}
	_, errOut, code := run(t, "version", "-o", "xml")
	if code != 1 || !strings.Contains(errOut, `--output "xml"`) {
		t.Errorf("bad -o: exit %d %q", code, errOut)
	}
	_, errOut, code = run(t, "version", "--log-format", "xml")
	if code != 1 || !strings.Contains(errOut, "--log-format") {
		t.Errorf("bad --log-format: exit %d %q", code, errOut)
	}
	out, _, code = run(t, "completion", "bash")
	if code != 0 || !strings.Contains(out, "__start_airlock") {
		t.Errorf("completion bash: exit %d", code)
	}
	_, errOut, code = run(t, "frobnicate")
	if code != 1 || !strings.Contains(errOut, "unknown command") {
		t.Errorf("unknown command: exit %d %q", code, errOut)
	}
}

func TestInventoryFromStoreAndSocket(t *testing.T) {
	dir := t.TempDir()
	out, errOut, code := run(t, "inventory", "--state", filepath.Join(dir, "none"))
	if code != 0 || !strings.Contains(out, "no machines discovered yet") {
		t.Fatalf("empty inventory: exit %d %q %q", code, out, errOut)
	}
	out, _, code = run(t, "inventory", "--state", filepath.Join(dir, "none"), "-o", "json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty inventory -o json: exit %d %q", code, out)
	}
}

// approve and deny with no airlock running write the decision to the
// store; status reads it back with the machine's history.
func TestApproveDenyAndStatus(t *testing.T) {
	stateDir := t.TempDir()
	s, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	inv := inventory.New(s, nil, slog.New(slog.DiscardHandler))
	var ids []string
	for _, mac := range []string{"52:54:00:00:00:11", "52:54:00:00:00:12"} {
		id := registerMachine(t, inv, mac)
		if _, err := inv.Transition(id, inventory.StateAwaitingApproval, "test"); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	s.Close()
	if _, errOut, code := run(t, "approve", "--state", stateDir); code != 2 {
		t.Errorf("approve with no machine and no --all: exit %d %s", code, errOut)
	}
	out, errOut, code := run(t, "deny", ids[1], "--state", stateDir)
	if code != 0 || !strings.Contains(out, ids[1]+" denied") {
		t.Fatalf("deny: exit %d %q %q", code, out, errOut)
	}
	out, errOut, code = run(t, "approve", "--all", "--state", stateDir)
	if code != 0 || !strings.Contains(out, ids[0]+" approved") || strings.Contains(out, ids[1]) {
		t.Fatalf("approve --all: exit %d %q %q", code, out, errOut)
	}
	if _, errOut, code := run(t, "approve", "m-0000000000", "--state", stateDir); code != 1 || !strings.Contains(errOut, "no such machine") {
		t.Errorf("approve of an unknown machine: exit %d %q", code, errOut)
	}
	out, _, code = run(t, "status", "-o", "json", "--state", stateDir)
	var st struct {
		Machines []struct {
			ID, State string
			History   []struct{ From, To, Reason string }
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("status: %v %q", err, out)
	}
	got := map[string]string{}
	for _, m := range st.Machines {
		got[m.ID] = m.State
		if len(m.History) != 2 || m.History[1].Reason == "" {
			t.Errorf("%s history %+v", m.ID, m.History)
		}
	}
	if got[ids[0]] != inventory.StateAdmitted || got[ids[1]] != inventory.StateDenied {
		t.Fatalf("states %v", got)
	}
	text, _, _ := run(t, "status", "--history", "--state", stateDir)
	if !strings.Contains(text, "awaiting-approval -> admitted") {
		t.Errorf("status --history:\n%s", text)
	}
}

// A machine sent to its local disk again and again without phoning home
// shows as a boot loop in status, in text and in JSON.
func TestStatusShowsABootLoop(t *testing.T) {
	stateDir := t.TempDir()
	s, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	inv := inventory.New(s, nil, slog.New(slog.DiscardHandler))
	inv.SetSameBootWindow(0)
	id := registerMachine(t, inv, "52:54:00:00:00:21")
	if _, err := inv.Transition(id, inventory.StateAdmitted, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Assign(id, inventory.Assignment{Rule: "cp", Role: "control-plane", Hostname: "cp-1", Index: 1}); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{inventory.StateInstalling, inventory.StateInstalled} {
		if _, err := inv.Transition(id, to, "test"); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < inventory.BootLoopAfter; i++ {
		if _, err := inv.LocalBoot(id); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	text, _, code := run(t, "status", "--state", stateDir)
	if code != 0 || !strings.Contains(text, id+" flagged: boot loop: sent to its local disk 3 times") {
		t.Fatalf("status (exit %d):\n%s", code, text)
	}
	js, _, code := run(t, "status", "-o", "json", "--state", stateDir)
	var st struct{ Machines []struct{ Flags []string } }
	if err := json.Unmarshal([]byte(js), &st); err != nil || code != 0 || len(st.Machines) != 1 || len(st.Machines[0].Flags) != 1 ||
		!strings.HasPrefix(st.Machines[0].Flags[0], "boot loop") {
		t.Fatalf("status -o json: %v %s", err, js)
	}
}

// After a crash, status reads the store and tells that a step that
// started and never ended was interrupted, not running: no airlock runs it.
func TestStatusAfterACrashSaysInterrupted(t *testing.T) {
	stateDir := t.TempDir()
	s, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	inv := inventory.New(s, nil, slog.New(slog.DiscardHandler))
	id := registerMachine(t, inv, "52:54:00:00:00:31")
	j := state.NewJournal(s)
	for _, r := range []struct{ step, status string }{
		{"serve", state.StatusStarted}, {"serve", state.StatusDone},
		{"admit/" + id, state.StatusStarted}, {"admit/" + id, state.StatusDone},
		{"assign/" + id, state.StatusStarted}, // the crash came here
	} {
		if _, err := j.Record(r.step, r.status, id, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := inv.Transition(id, inventory.StateAdmitted, "test"); err != nil {
		t.Fatal(err)
	}
	s.Close() // as a killed airlock leaves it: no control socket answers
	text, errOut, code := run(t, "status", "-o", "json", "--state", stateDir)
	var st Status
	if err := json.Unmarshal([]byte(text), &st); err != nil || code != 0 {
		t.Fatalf("status: exit %d %v %q %s", code, err, text, errOut)
	}
	phases := map[string]string{}
	for _, p := range st.Phases {
		phases[p.Name] = p.Status
	}
	if st.AirlockRunning || phases["assign"] != StatusInterrupted || phases["admit"] != "done" || phases["provision"] != "pending" {
		t.Errorf("airlock running %v, phases %v", st.AirlockRunning, phases)
	}
	if len(st.Machines) != 1 || st.Machines[0].Step != "assign/"+id || st.Machines[0].StepStatus != StatusInterrupted || st.Machines[0].State != inventory.StateAdmitted {
		t.Errorf("machines %+v", st.Machines)
	}
	text, _, _ = run(t, "status", "--state", stateDir)
	if !strings.Contains(text, "no airlock runs") || !strings.Contains(text, "assign/"+id+" interrupted") {
		t.Errorf("status:\n%s", text)
	}
}

// registerMachine registers the fixture machine
// (services/agentapi/testdata/registration.json) booted from mac, with no
// serial or UUID so that each MAC is a machine of its own, and returns its
// ID.
func registerMachine(t *testing.T, inv *inventory.Store, mac string) string {
	t.Helper()
	raw, err := os.ReadFile("../../services/agentapi/testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	var reg agentapi.Registration
	if err := json.Unmarshal(raw, &reg); err != nil {
		t.Fatal(err)
	}
	reg.BootMAC, reg.Inventory.System.Serial, reg.Inventory.System.UUID = mac, "", ""
	reg.Inventory.NICs = []agentapi.NIC{{Name: "eth0", MAC: mac, Link: true}}
	tok, err := inv.IssueBoot(mac)
	if err != nil {
		t.Fatal(err)
	}
	out, err := inv.Register(context.Background(), tok.BootID, agentapi.Identity(&reg), &reg)
	if err != nil {
		t.Fatal(err)
	}
	return out.MachineID
}

// status shows each machine's Kubernetes state (ready; a failure with
// kubeadm's phase, its output escaped in the failure line) and the
// cluster's pod network "minimal", in text and in JSON, from the store.
func TestStatusShowsTheCluster(t *testing.T) {
	stateDir := t.TempDir()
	s, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	inv := inventory.New(s, nil, slog.New(slog.DiscardHandler))
	cp := registerMachine(t, inv, "52:54:00:00:00:41")
	w := registerMachine(t, inv, "52:54:00:00:00:42")
	for id, to := range map[string][]string{
		cp: {inventory.StateInstalling, inventory.StateInstalled, inventory.StateBooted, inventory.StateJoined, inventory.StateReady},
		w:  {inventory.StateInstalling, inventory.StateInstalled, inventory.StateBooted},
	} {
		if _, err := inv.Transition(id, inventory.StateAdmitted, "test"); err != nil {
			t.Fatal(err)
		}
		if _, err := inv.Assign(id, inventory.Assignment{Rule: "r", Role: "worker", Hostname: "h-" + id[2:6], Index: 1}); err != nil {
			t.Fatal(err)
		}
		for _, st := range to {
			if _, err := inv.Transition(id, st, "test"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := kube.AllocatePodSubnets(s, netip.MustParsePrefix("10.244.0.0/16"), []string{cp, w}); err != nil {
		t.Fatal(err)
	}
	if err := kube.SaveAPIServer(s, "https://10.40.0.10:6443"); err != nil {
		t.Fatal(err)
	}
	out := "error execution phase preflight: [ERROR Mem]: \x1b[31mtoo small"
	rep := kube.NodeReport{Result: kube.ReportFailed, Step: "kubeadm-join", Phase: kube.KubeadmPhase(out), Output: out}
	if err := s.Update(func(tx state.Tx) error { return kube.SaveNodeReport(tx, w, rep) }); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Transition(w, inventory.StateFailed, "join/"+w+": machine "+w+": "+rep.Error()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	text, _, code := run(t, "status", "--state", stateDir)
	for _, want := range []string{"pod network          minimal", "https://10.40.0.10:6443", "failed: kubeadm phase preflight", "kubeadm phase preflight (step kubeadm-join) failed"} {
		if !strings.Contains(text, want) {
			t.Errorf("status does not say %q:\n%s", want, text)
		}
	}
	if code != 0 || strings.ContainsRune(text, 0x1b) {
		t.Errorf("status (exit %d) with a raw escape:\n%q", code, text)
	}
	js, _, code := run(t, "status", "-o", "json", "--state", stateDir)
	var st Status
	if err := json.Unmarshal([]byte(js), &st); err != nil || code != 0 {
		t.Fatalf("status -o json: %v %s", err, js)
	}
	kubeOf := map[string]string{}
	for _, m := range st.Machines {
		kubeOf[m.ID] = m.Kubernetes + " " + m.PodSubnet
	}
	if st.Cluster == nil || st.Cluster.PodNetwork != "minimal" || kubeOf[cp] != "ready 10.244.0.0/24" || kubeOf[w] != "failed: kubeadm phase preflight 10.244.1.0/24" {
		t.Errorf("status -o json: cluster %+v, machines %v", st.Cluster, kubeOf)
	}
}
