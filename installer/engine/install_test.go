package engine

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"airlock.dev/airlock/installer/agent"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/pipeline"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// testEngine builds a real engine on a veth inside a namespace of the
// test's own, serving until the test ends.
func testEngine(t *testing.T, dir, answers string, decider events.Decider) *Engine {
	t.Helper()
	e, _ := testEngineNS(t, dir, answers, decider)
	return e
}

// testEngineNS is testEngine that also returns the namespace on the other
// end of the provisioning link (eth0), where machines would be.
func testEngineNS(t *testing.T, dir, answers string, decider events.Decider) (*Engine, *netns.NS) {
	t.Helper()
	return testEngineWith(t, dir, answers, func(o *Options) { o.Decider = decider })
}

// testEngineWith is testEngineNS with the engine's options set by opt.
func testEngineWith(t *testing.T, dir, answers string, opt func(*Options)) (*Engine, *netns.NS) {
	t.Helper()
	netns.RequireTool(t, "ip", "iproute2")
	ns := netns.NewTest(t, "alin")
	peer := netns.NewTest(t, "alip")
	if err := netns.AddVeth(ns, "prov0", peer, "eth0"); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{ns.AddAddr("prov0", "10.78.0.1/24"), ns.LinkUp("prov0"), peer.LinkUp("eth0")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	a, src, problems := config.Parse("answers.yaml", []byte(`apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: t, lab: true}
network: {interface: prov0, mode: full, subnet: 10.78.0.0/24, address: 10.78.0.1, dynamicRange: {start: 10.78.0.100, end: 10.78.0.120}}
cluster: {name: t}
`+answers))
	if err := append(problems, a.Validate(src)...).Err(); err != nil {
		t.Fatal(err)
	}
	var e *Engine
	err := ns.Do(func() (err error) {
		o := Options{Answers: a, StateDir: dir, HTTPPort: 18080, Log: slog.New(slog.DiscardHandler)}
		opt(&o)
		e, err = New(o)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		e.Close()
	})
	return e, peer
}

// report registers a machine the way its agent does, through the agent
// API's backend.
func report(t *testing.T, inv *inventory.Store, serial, mac string, disks ...agentapi.Disk) string {
	t.Helper()
	raw, err := os.ReadFile("../../services/agentapi/testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	var reg agentapi.Registration
	if err := json.Unmarshal(raw, &reg); err != nil {
		t.Fatal(err)
	}
	reg.BootMAC = mac
	reg.Inventory.System.Serial, reg.Inventory.System.UUID = serial, ""
	reg.Inventory.NICs = []agentapi.NIC{{Name: "ens3", MAC: mac, Link: true}}
	if disks != nil {
		reg.Inventory.Disks = disks
	}
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

var testDisks = []agentapi.Disk{{Name: "vda", SizeBytes: 20 << 30, Serial: "DISK-A"}, {Name: "vdb", SizeBytes: 10 << 30, Serial: "DISK-B"}}

// The allowlist admits exactly the machines the rules name; each gets its
// recorded assignment and disk; a second run skips everything.
func TestInstallAllowlist(t *testing.T) {
	dir := t.TempDir()
	e, _ := testEngineWith(t, dir, `machines:
  - {name: cp, match: {serials: [SN-1]}, role: control-plane, hostname: cp-1, installDisk: {policy: largest}}
  - {name: workers, match: {macs: ["52:54:00:00:00:02"]}, role: worker, hostname: "w-{index}"}
admission: {policy: allowlist}
`, func(o *Options) {
		o.Bundle = &BundleIdentity{Name: "site.bundle", KeyID: "k1", Authenticity: "signature verified"}
	})
	var mu sync.Mutex
	var evs []events.Event
	e.Events().Add(events.SinkFunc(func(ev events.Event) { mu.Lock(); evs = append(evs, ev); mu.Unlock() }))
	stranger := report(t, e.Inventory(), "SN-9", "52:54:00:00:00:09", testDisks...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type result struct {
		res pipeline.Result
		err error
	}
	done := make(chan result, 1)
	go func() { r, err := e.Install(ctx, InstallOptions{}); done <- result{r, err} }()
	// Discovery waits for the named machines: they report while it waits.
	cp := report(t, e.Inventory(), "SN-1", "52:54:00:00:00:01", testDisks...)
	w := report(t, e.Inventory(), "", "52:54:00:00:00:02", testDisks...)
	r := <-done
	if r.err != nil || len(r.res.Failed()) > 0 {
		t.Fatalf("install: %v %v", r.err, r.res.Err())
	}
	for id, want := range map[string]string{cp: inventory.StateAssigned, w: inventory.StateAssigned, stranger: inventory.StateDiscovered} {
		m, err := e.Inventory().Get(id)
		if err != nil || m.State != want {
			t.Errorf("%s: state %s (%v), want %s", id, m.State, err, want)
		}
	}
	m, _ := e.Inventory().Get(cp)
	if m.Assignment.Hostname != "cp-1" || m.Assignment.Disk == nil || m.Assignment.Disk.Serial != "DISK-A" {
		t.Errorf("cp assignment %+v", m.Assignment)
	}
	m, _ = e.Inventory().Get(w)
	if m.Assignment.Hostname != "w-1" || m.Assignment.Disk.Serial != "DISK-B" {
		t.Errorf("worker assignment %+v (smallest disk by default)", m.Assignment)
	}
	mu.Lock()
	var notice bool
	for _, ev := range evs {
		if ev.Kind == events.Notice && ev.Machine == stranger && strings.Contains(ev.Message, "not admitted") {
			notice = true
		}
	}
	mu.Unlock()
	if !notice {
		t.Error("no notice that the stranger was not admitted")
	}
	// Again: everything is done, nothing runs.
	res, err := e.Install(ctx, InstallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for id, o := range res.Outcomes {
		if o != pipeline.Skipped {
			t.Errorf("second run: %s %s", id, o)
		}
	}
	// The journal holds every step.
	entries, err := e.Journal().Entries()
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, en := range entries {
		if en.Status == state.StatusDone {
			steps = append(steps, en.Step)
		}
	}
	for _, want := range []string{"bundle", "serve", "discover", "admit/" + cp, "admit/" + stranger, "assign/" + cp, "assign/" + w} {
		if !slices.Contains(steps, want) {
			t.Errorf("journal lacks %s done: %v", want, steps)
		}
	}
	if slices.Contains(steps, "assign/"+stranger) {
		t.Error("the stranger was assigned")
	}
}

type scripted map[string]events.Verdict // serial -> verdict

func (s scripted) Admit(_ context.Context, c events.Candidate) (events.Verdict, error) {
	return s[c.Serial], nil
}

// With the approve policy the Decider decides; a deferred machine waits
// until an operator approves it through the inventory.
func TestInstallApprove(t *testing.T) {
	e := testEngine(t, t.TempDir(), `machines:
  - {name: all, role: control-plane, hostname: "cp-{index}"}
admission: {policy: approve}
`, scripted{"SN-1": events.Approve, "SN-2": events.Deny, "SN-3": events.Defer})
	ids := map[string]string{}
	for i, sn := range []string{"SN-1", "SN-2", "SN-3"} {
		ids[sn] = report(t, e.Inventory(), sn, "52:54:00:00:01:0"+string(rune('1'+i)), testDisks...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := e.Install(ctx, InstallOptions{}); err != ErrNothingExpected {
		t.Fatalf("approve without --expect: %v", err)
	}
	waiting := make(chan struct{})
	e.Events().Add(events.SinkFunc(func(ev events.Event) {
		if ev.Kind == events.Notice && ev.Machine == ids["SN-3"] && strings.Contains(ev.Message, "waiting for an operator") {
			close(waiting)
		}
	}))
	done := make(chan error, 1)
	go func() {
		res, err := e.Install(ctx, InstallOptions{Expect: 3})
		if err == nil {
			err = res.Err()
		}
		done <- err
	}()
	select {
	case <-waiting:
	case err := <-done:
		t.Fatalf("install ended before the operator decided: %v", err)
	}
	if _, err := e.Inventory().Transition(ids["SN-3"], inventory.StateAdmitted, "approved by test"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for sn, want := range map[string]string{"SN-1": inventory.StateAssigned, "SN-2": inventory.StateDenied, "SN-3": inventory.StateAssigned} {
		if m, _ := e.Inventory().Get(ids[sn]); m.State != want {
			t.Errorf("%s: %s, want %s", sn, m.State, want)
		}
	}
}

// A machine with no disk that fits fails its assign step, naming it, and
// is marked failed; the others go on.
func TestInstallFailureIsTheMachines(t *testing.T) {
	e := testEngine(t, t.TempDir(), `machines:
  - {name: big, match: {serials: [SN-1, SN-2]}, role: control-plane, hostname: "cp-{index}", installDisk: {minSize: 15Gi}}
admission: {policy: allowlist}
`, nil)
	ok := report(t, e.Inventory(), "SN-1", "52:54:00:00:02:01", testDisks...)
	bad := report(t, e.Inventory(), "SN-2", "52:54:00:00:02:02", agentapi.Disk{Name: "vda", SizeBytes: 8 << 30, Serial: "SMALL"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := e.Install(ctx, InstallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Failed(); !slices.Equal(got, []string{"assign/" + bad}) {
		t.Fatalf("failed %v, want assign/%s", got, bad)
	}
	m, _ := e.Inventory().Get(bad)
	if m.State != inventory.StateFailed || !strings.Contains(m.Failure, "assign/"+bad) || !strings.Contains(m.Failure, "smaller than") {
		t.Errorf("failed machine: %s %q", m.State, m.Failure)
	}
	if m, _ := e.Inventory().Get(ok); m.State != inventory.StateAssigned {
		t.Errorf("the other machine: %s", m.State)
	}
}

// machineClients are the clients a machine's agent has, dialling from the
// machines' namespace peer: plain HTTP to the boot server (the OS image)
// and TLS to the agent API, trusting only airlock's CA in stateDir, as the
// discovery image carries it.
func machineClients(t *testing.T, peer *netns.NS, stateDir string) (hc *http.Client, base *url.URL, apiHC *http.Client, api *url.URL) {
	t.Helper()
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := peer.Do(func() (err error) {
			c, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	caPEM, err := os.ReadFile(filepath.Join(stateDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	apiHC, err = agent.TLSClient(caPEM, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	apiHC.Transport.(agent.HTTPSOnly).DialContext = dial
	base, _ = url.Parse("http://10.78.0.1:18080")
	api, _ = url.Parse("https://10.78.0.1:8443")
	return &http.Client{Transport: &http.Transport{DialContext: dial}}, base, apiHC, api
}
