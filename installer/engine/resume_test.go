package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/agent"
	"airlock.dev/airlock/installer/agent/provision"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/lab/testkit"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// errCrashed is what every write returns once a crashing store crashed.
var errCrashed = errors.New("crashed")

// crashing is a store that stops writing (as a killed process does) once
// crashed is set; reads still work.
type crashing struct {
	state.Store
	crashed atomic.Bool
}

func (c *crashing) Update(fn func(state.Tx) error) error {
	if c.crashed.Load() {
		return errCrashed
	}
	return c.Store.Update(fn)
}

// resumeRig is one machine (a real agent writing a real loop device, from
// a namespace of its own) and the state store and network an engine runs
// on, so that an engine can crash and another take over.
type resumeRig struct {
	dir     string
	answers *config.Answers
	ns      *netns.NS
	peer    *netns.NS
	store   *state.BoltStore
	image   *bundle.Bundle // holds the OS image, as the only one
	raw     []byte
	backing string       // the machine's disk
	root    string       // the agent's captured host
	hc      *http.Client // the machine's plain HTTP (the OS image)
	api     *http.Client // its TLS client, trusting airlock's CA only
	logs    *syncBuf
}

func newResumeRig(t *testing.T) *resumeRig {
	t.Helper()
	netns.RequireTool(t, "ip", "iproute2")
	r := &resumeRig{dir: t.TempDir(), logs: &syncBuf{}}
	raw, compressed := testkit.DiskImage(t, 16<<20)
	r.raw = raw
	r.image, _ = osImageBundle(t, map[string][3]any{"node": {compressed, int64(len(raw)), hexSum(raw)}})
	t.Cleanup(func() { r.image.Close() })
	_, r.backing = testkit.LoopDevice(t, 64<<20)
	r.root = filepath.Join(t.TempDir(), "host")
	copyTree(t, "../agent/testdata/host", r.root)
	for name, value := range map[string]string{"serial": r.backing, "size": strconv.Itoa(64 << 20 / 512)} {
		if err := os.WriteFile(filepath.Join(r.root, "sys/block/vda", name), []byte(value+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r.ns, r.peer = netns.NewTest(t, "alrn"), netns.NewTest(t, "alrp")
	if err := netns.AddVeth(r.ns, "prov0", r.peer, "eth0"); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{r.ns.AddAddr("prov0", "10.78.0.1/24"), r.ns.LinkUp("prov0"), r.peer.LinkUp("eth0"), r.peer.AddAddr("eth0", "10.78.0.2/24")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	a, src, problems := config.Parse("answers.yaml", []byte(`apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: t, lab: true}
network: {interface: prov0, mode: proxy, subnet: 10.78.0.0/24, address: 10.78.0.1}
cluster: {name: t}
machines:
  - {name: cp, role: control-plane, hostname: "cp-{index}", installDisk: {policy: serial, serial: "`+r.backing+`"}}
admission: {policy: any}
`))
	if err := append(problems, a.Validate(src)...).Err(); err != nil {
		t.Fatal(err)
	}
	r.answers = a // proxyDHCP: no start-up probe for another server (5 s) each time an engine starts
	var err error
	if r.store, err = state.Open(r.dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.store.Close() })
	// airlock's CA, made now as the first engine would: the agent's
	// discovery image carries it.
	if _, err := LoadCA(r.dir); err != nil {
		t.Fatal(err)
	}
	r.hc, _, r.api, _ = machineClients(t, r.peer, r.dir)
	r.hc.Timeout = 30 * time.Second
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("engines' and agent's log:\n%s", r.logs.String())
		}
	})
	return r
}

// runningEngine is an engine of the rig serving and installing.
type runningEngine struct {
	e       *Engine
	cancel  context.CancelFunc
	served  chan error
	install chan struct{} // closed when Install returns, with its error in err
	err     error
}

// start builds an engine over the rig's store (as given) and runs it and
// its install.
func (r *resumeRig) start(t *testing.T, st state.Store, name string) *runningEngine {
	t.Helper()
	var e *Engine
	err := r.ns.Do(func() (err error) {
		e, err = New(Options{Answers: r.answers, StateDir: r.dir, Store: st, HTTPPort: 18080, OSImages: r.image,
			Log: slog.New(slog.NewTextHandler(r.logs, nil)).With("engine", name)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	e.Inventory().SetHeartbeat(1)
	ctx, cancel := context.WithCancel(context.Background())
	re := &runningEngine{e: e, cancel: cancel, served: make(chan error, 1), install: make(chan struct{})}
	go func() { re.served <- e.Run(ctx, nil) }()
	go func() {
		res, err := e.Install(ctx, InstallOptions{Expect: 1})
		if err == nil {
			err = res.Err()
		}
		re.err = err
		close(re.install)
	}()
	return re
}

// stop ends the engine as its process's death would, and waits.
func (re *runningEngine) stop(t *testing.T) {
	t.Helper()
	re.cancel()
	<-re.install
	if err := <-re.served; err != nil {
		t.Logf("Run after the crash: %v", err)
	}
	re.e.Close()
}

// machineAgent is the machine: its agent carries out orders (counted per
// ID) until it is told to reboot; its installed system then phones home
// with the token of the seed on its disk.
type machineAgent struct {
	mu     sync.Mutex
	taken  map[string]int    // order ID -> times carried out
	kinds  map[string]string // order ID -> kind
	failed []string          // install orders that failed
	reboot chan struct{}     // closed at the reboot order
	cancel context.CancelFunc
}

// runAgent starts the machine's agent. Its first cut install orders fail
// as a fetch cut short by airlock's death does.
func (r *resumeRig) runAgent(t *testing.T, tok agentapi.Token, cut int) *machineAgent {
	t.Helper()
	base, _ := url.Parse("http://10.78.0.1:18080")
	api, _ := url.Parse("https://10.78.0.1:8443")
	log := slog.New(slog.NewTextHandler(r.logs, nil)).With("part", "agent")
	installer := agent.Installer{Host: provision.Host{SysRoot: "/sys", DevRoot: "/dev", Loop: true}, Base: base, HTTP: r.hc,
		API: api, APIHTTP: r.api, Token: tok, Log: log}
	ctx, cancel := context.WithCancel(context.Background())
	m := &machineAgent{taken: map[string]int{}, kinds: map[string]string{}, reboot: make(chan struct{}), cancel: cancel}
	var once sync.Once
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = agent.Run(ctx, agent.Options{Root: os.DirFS(r.root), Client: agent.NewClient(api, tok, r.api), Log: log,
			Backoff: agent.Backoff{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond},
			OnOrder: func(ctx context.Context, o agentapi.Order, progress func(uint64, uint64)) error {
				m.mu.Lock()
				m.taken[o.ID]++
				m.kinds[o.ID] = o.Kind
				m.mu.Unlock()
				switch o.Kind {
				case agentapi.OrderInstall:
					m.mu.Lock()
					fail := len(m.failed) < cut
					m.mu.Unlock()
					err := errors.New("fetch /os/image: read tcp 10.78.0.2:40000->10.78.0.1:18080: connection reset by peer")
					if !fail {
						err = installer.Run(ctx, o, progress)
					}
					if err != nil {
						m.mu.Lock()
						m.failed = append(m.failed, o.ID+": "+err.Error())
						m.mu.Unlock()
					}
					return err
				case agentapi.OrderReboot:
					once.Do(func() { close(m.reboot) })
					<-ctx.Done() // the machine reboots: its agent says nothing more
					return ctx.Err()
				}
				return nil
			}})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

var phoneHomeRE = regexp.MustCompile(`(https://[0-9.:]+/api/v1/phone-home/m-[0-9a-f]+)\?token=([A-Za-z0-9_-]+)`)

// phoneHome is the installed system's cloud-init: the URL and token of the
// seed on its disk, posted until airlock answers (it retries, as
// cloud-init does, while airlock is down). It returns the status.
func (r *resumeRig) phoneHome(deadline time.Time) (int, error) {
	disk, err := os.ReadFile(r.backing)
	if err != nil {
		return 0, err
	}
	found := phoneHomeRE.FindAllSubmatch(disk, -1)
	if len(found) == 0 {
		return 0, errors.New("no phone-home URL in the seed on the disk")
	}
	u := string(found[len(found)-1][1]) + "?token=" + string(found[len(found)-1][2])
	for {
		resp, err := r.api.Post(u, "application/x-www-form-urlencoded", strings.NewReader("instance_id=x&hostname=cp-1"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusInternalServerError {
				return resp.StatusCode, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("phone-home: no answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// installWithCrash runs one install, crashing the first engine right after
// its killAt-th durable transition (0: never) and finishing with a second
// engine over the same store, machine and network; it returns the first
// engine's transitions and checks the outcome.
func installWithCrash(t *testing.T, killAt int, cutFirst bool) []string {
	r := newResumeRig(t)
	crash := &crashing{Store: r.store}
	var points []string
	crashed := make(chan struct{})
	hooked := state.WithCommitHook(crash, TransitionBuckets(), func(n int, b []string) {
		points = append(points, strings.Join(b, ","))
		if n == killAt {
			crash.crashed.Store(true)
			close(crashed)
		}
	})
	// The machine's boot token, as its PXE boot got it before anything.
	tok, err := inventory.New(r.store, nil, slog.New(slog.DiscardHandler)).IssueBoot(agentMAC(t, r))
	if err != nil {
		t.Fatal(err)
	}
	first := r.start(t, hooked, "first")
	cut := 0
	if cutFirst {
		cut = 1
	}
	m := r.runAgent(t, tok, cut)
	deadline := time.Now().Add(2 * time.Minute)
	type answer struct {
		code int
		err  error
	}
	phoned := make(chan answer, 1)
	go func() {
		select {
		case <-m.reboot:
			code, err := r.phoneHome(deadline)
			phoned <- answer{code, err}
		case <-time.After(time.Until(deadline)):
			phoned <- answer{err: errors.New("no reboot order")}
		}
	}()
	live := first
	if killAt > 0 {
		select {
		case <-crashed:
		case <-first.install:
			t.Fatalf("the install ended (%v) before transition %d", first.err, killAt)
		case <-time.After(time.Until(deadline)):
			t.Fatalf("no transition %d within 2 minutes", killAt)
		}
		first.stop(t)
		live = r.start(t, r.store, "second")
	}
	select {
	case <-live.install:
		if live.err != nil {
			t.Fatalf("install after the crash at %d: %v", killAt, live.err)
		}
	case <-time.After(time.Until(deadline)):
		t.Fatalf("the install did not finish within 2 minutes of its start (crash at %d)", killAt)
	}
	if a := <-phoned; a.err != nil || a.code != http.StatusOK {
		t.Errorf("the phone-home: %d %v", a.code, a.err)
	}
	live.stop(t)
	r.checkInstalledOnce(t, m, killAt, cutFirst)
	return points
}

// agentMAC is the boot MAC the agent registers with.
func agentMAC(t *testing.T, r *resumeRig) string {
	inv, err := agent.Collect(os.DirFS(r.root))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := agent.Registration(inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	return reg.BootMAC
}

// checkInstalledOnce checks the store and the machine after an install:
// booted through each state once, every step done once, only the orders
// the provisioning record names given, each carried out once, the image
// written once (with cutFirst: a first install order failed, and exactly
// one more was given), the token spent.
func (r *resumeRig) checkInstalledOnce(t *testing.T, a *machineAgent, killAt int, cutFirst bool) {
	t.Helper()
	ms, err := inventory.List(r.store)
	if err != nil || len(ms) != 1 {
		t.Fatalf("crash at %d: machines %v %v", killAt, ms, err)
	}
	m := ms[0]
	var states []string
	for _, h := range m.History {
		states = append(states, h.To)
	}
	if got := strings.Join(states, " "); got != "admitted assigned installing installed booted" {
		t.Errorf("crash at %d: the machine went through %q", killAt, got)
	}
	entries, err := state.NewJournal(r.store).Entries()
	if err != nil {
		t.Fatal(err)
	}
	done := map[string]int{}
	for _, e := range entries {
		if e.Status == state.StatusDone {
			done[e.Step]++
		}
		if e.Status == state.StatusFailed {
			t.Errorf("crash at %d: %s failed: %s", killAt, e.Step, e.Error)
		}
	}
	for _, s := range []string{"serve", "discover", "admit/" + m.ID, "assign/" + m.ID, "provision/" + m.ID, "boot/" + m.ID} {
		if done[s] != 1 {
			t.Errorf("crash at %d: %s done %d times", killAt, s, done[s])
		}
	}
	rec, found, err := getProvision(r.store, m.ID)
	if err != nil || !found || !rec.Used || rec.Order == "" || rec.Reboot == "" {
		t.Errorf("crash at %d: provisioning record %+v %v %v", killAt, rec, found, err)
	}
	given := []string{rec.Order, rec.Reboot}
	for _, o := range m.Orders {
		if !slices.Contains(given, o.ID) || o.Kind == agentapi.OrderInstall {
			t.Errorf("crash at %d: order %s (%s) waits; the record names %v", killAt, o.ID, o.Kind, given)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	installs := 0
	for id, n := range a.taken {
		if n != 1 {
			t.Errorf("crash at %d: the agent carried out order %s %d times", killAt, id, n)
		}
		if a.kinds[id] == agentapi.OrderInstall {
			installs++
		}
		if !slices.Contains(given, id) && !(cutFirst && a.kinds[id] == agentapi.OrderInstall) {
			t.Errorf("crash at %d: the agent was given order %s (%s), which the record does not name (%v)", killAt, id, a.kinds[id], given)
		}
	}
	want := 1
	if cutFirst {
		want = 2
	}
	if installs != want || len(a.failed) != want-1 {
		t.Errorf("crash at %d: %d install orders carried out (want %d), failed: %v", killAt, installs, want, a.failed)
	}
}

// An install survives a crash of airlock right after any of its durable
// transitions: a second airlock over the same store, with the machine's
// agent still running, finishes it, and nothing is done twice: no step,
// no state change, no order (none given that the record does not name,
// none carried out twice), the image written once, the token spent once.
// A clean run counts the transitions; then a crash at each in turn. (The
// lab's crash test, e2e TestLabResumesAfterKill, does the same with
// SIGKILL and a virtual machine.)
func TestInstallResumesAfterACrashAtEveryTransition(t *testing.T) {
	points := installWithCrash(t, 0, false)
	t.Logf("%d transitions: %v", len(points), points)
	if len(points) < 15 {
		t.Fatalf("only %d transitions in a whole install", len(points))
	}
	for k := 1; k <= len(points); k++ {
		t.Run(fmt.Sprintf("crash-at-%02d-%s", k, points[k-1]), func(t *testing.T) {
			installWithCrash(t, k, false)
		})
	}
}

// The install order an airlock gave before it crashed fails when the
// agent's fetch of the image from it was cut by the crash: the restarted
// airlock orders the install again, once, instead of failing the machine.
// (A failure of the new order fails the machine.)
func TestResumedInstallOrdersAgainAfterACutFetch(t *testing.T) {
	orderAt := slices.Index(installTransitions, "orders,provision") + 1
	installWithCrash(t, orderAt, true)
}

// An install order that failed before airlock stopped is ordered again
// once by the next run, as any failed step is taken up again, and a
// failure of that one fails the machine: never a third order.
func TestAFailedInstallIsOrderedAgainOnce(t *testing.T) {
	r := newResumeRig(t)
	tok, err := inventory.New(r.store, nil, slog.New(slog.DiscardHandler)).IssueBoot(agentMAC(t, r))
	if err != nil {
		t.Fatal(err)
	}
	m := r.runAgent(t, tok, 100)
	for i, name := range []string{"first", "second"} {
		re := r.start(t, r.store, name)
		select {
		case <-re.install:
		case <-time.After(2 * time.Minute):
			t.Fatalf("the %s install did not end within 2 minutes", name)
		}
		if re.err == nil || !strings.Contains(re.err.Error(), "connection reset") {
			t.Errorf("the %s install: %v, want the agent's failure", name, re.err)
		}
		re.stop(t)
		m.mu.Lock()
		if len(m.failed) != i+1 {
			t.Errorf("after the %s install, %d install orders failed, want %d: %v", name, len(m.failed), i+1, m.failed)
		}
		m.mu.Unlock()
	}
	ms, err := inventory.List(r.store)
	if err != nil || len(ms) != 1 || ms[0].State != inventory.StateFailed {
		t.Fatalf("machines %+v %v", ms, err)
	}
}

// installTransitions are a clean install's transitions, in order (the
// sweep above counts them afresh; this names the order's).
var installTransitions = []string{"journal", "journal", "journal", "journal", "journal", "lifecycle", "journal", "journal", "lifecycle",
	"journal", "journal", "lifecycle", "orders,provision", "lifecycle", "journal", "journal", "orders,provision", "lifecycle,provision", "journal"}
