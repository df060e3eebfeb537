//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"airlock.dev/airlock/installer/lab/testkit"
)

// The kill-point sweep's settings.
const (
	// killEnv chooses the kill points: "all" kills a lab of its own at
	// every transition of a clean run in turn (make e2e-full); "K" or
	// "K1,K2" kills at those (K2 counted from the restart after K1), to
	// replay a failure; unset, two points are drawn with killSeedEnv.
	killEnv = "AIRLOCK_E2E_KILL"
	// killSeedEnv is the seed of the drawn points (default: the clock's),
	// printed so that a failure can be replayed.
	killSeedEnv = "AIRLOCK_E2E_KILL_SEED"
	// killAtEnv is what the lab's airlock reads (airlock lab run): SIGKILL
	// itself right after its Nth durable transition, 0 to log them only.
	killAtEnv = "AIRLOCK_TEST_KILL_AT"
	// cleanTransitions is how many durable transitions a clean one-machine
	// install makes (journal records, lifecycle changes, orders and
	// provisioning records): the drawn points come from it, so that make
	// test runs one install, not a clean one first; the full sweep counts
	// them again and fails when this is out of date.
	cleanTransitions = 19
)

// Crash safety of an install: the lab's airlock is killed with SIGKILL
// right after one of its durable transitions (journal records, lifecycle
// changes, orders, provisioning records), status must read the store and
// tell no more than the journal says, and a restarted airlock over the
// same still-running machine finishes the install. Afterwards the store is
// consistent, the machine went through its states once, each order was
// given once and carried out once, the image was written once (unless the
// kill fell inside the write), the seed's token was used once, and the
// machine holds one lease. A clean run first counts the transitions and
// passes the same checks, then each point is killed in a lab of its own
// (make e2e-full); make test draws two points of cleanTransitions and
// kills both, chained, in one install.
func TestLabResumesAfterKill(t *testing.T) {
	airlockBin(t)
	image := osImageDir(t)
	kernel, modules := testkit.CloudKernel(t)
	up := func(t *testing.T, killAt int) *killLab { return upKillLab(t, image, kernel, modules, killAt) }
	if os.Getenv(killEnv) == "all" {
		sweepAll(t, up)
		return
	}
	var chain []int
	switch v := os.Getenv(killEnv); v {
	case "":
		seed := uint64(time.Now().UnixNano())
		if s := os.Getenv(killSeedEnv); s != "" {
			var err error
			if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
				t.Fatalf("%s=%q: %v", killSeedEnv, s, err)
			}
		}
		rng := rand.New(rand.NewPCG(seed, 0))
		n := cleanTransitions
		// Two points, the second chained after `lab restart`: the
		// restarted airlock resumes the install only once lab restart
		// took its ready report, so a second kill at any transition
		// comes after it (CI drew 8 then 4 when it did not).
		chain = append(chain, firstKillPoint+rng.IntN(n-firstKillPoint+1))
		if rest := n - chain[0]; rest >= firstKillPoint {
			chain = append(chain, firstKillPoint+rng.IntN(rest-firstKillPoint+1))
		}
		t.Logf("seed %d draws kill points %v of %d (the second counted from the restart); replay: %s=%d or %s=%s; every point: make e2e-full",
			seed, chain, n, killSeedEnv, seed, killEnv, joinInts(chain))
	default:
		for _, f := range strings.Split(v, ",") {
			k, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || k < 1 {
				t.Fatalf("%s=%q: want all, or kill points from 1", killEnv, v)
			}
			chain = append(chain, k)
		}
	}
	start := time.Now()
	l := up(t, chain[0])
	for i, k := range chain {
		l.killedAt(t, k, i)
		next := 0
		if i+1 < len(chain) {
			next = chain[i+1]
		}
		l.restart(t, next)
	}
	l.finish(t)
	t.Logf("kill points %v: %.1f minutes", chain, time.Since(start).Minutes())
}

// sweepAll counts the transitions of a clean run, checks it like the
// others, and kills a lab of its own at each transition in turn.
func sweepAll(t *testing.T, up func(*testing.T, int) *killLab) {
	start := time.Now()
	clean := up(t, 0)
	clean.waitBooted(t)
	points := clean.points(t)
	clean.stop(t)
	clean.inspect(t, false)
	clean.checkAddress(t)
	if t.Failed() {
		t.FailNow()
	}
	n := len(points[0])
	var names []string
	for i, p := range points[0] {
		names = append(names, fmt.Sprintf("%d:%s", i+1, p))
	}
	t.Logf("clean run: %d transitions in %.1f minutes: %s", n, time.Since(start).Minutes(), strings.Join(names, " "))
	if n != cleanTransitions {
		t.Errorf("a clean install now makes %d transitions, not %d: set cleanTransitions to %d (make test draws its points from it)", n, cleanTransitions, n)
	}
	clean.down(t)
	for k := firstKillPoint; k <= n; k++ {
		t.Run(fmt.Sprintf("kill-at-%02d-of-%d", k, n), func(t *testing.T) {
			start := time.Now()
			l := up(t, k)
			l.killedAt(t, k, 0)
			l.restart(t, 0)
			l.finish(t)
			t.Logf("kill point %d (%s): %.1f minutes", k, points[0][k-1], time.Since(start).Minutes())
		})
	}
}

// firstKillPoint is the first transition the lab sweep kills at: the
// first, the serve step's journal record. The lab's airlock makes it only
// once lab up (or lab restart) took its ready report, so a kill there
// leaves lab up successful and the install to resume (CI drew 1 and lab up
// failed when the airlock did not wait for that).
const firstKillPoint = 1

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, k := range v {
		s[i] = strconv.Itoa(k)
	}
	return strings.Join(s, ",")
}

// killLab is a one-machine lab whose airlock installs it and is killed.
type killLab struct {
	dir string
	vm  labVM
	// insideWrite is set when a kill came while the agent was writing
	// the image (it may then write it again).
	insideWrite bool
}

// airlockEnv runs a short airlock command with env added to this one's.
func airlockEnv(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, airlockBin(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("airlock %s: %w\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), nil
}

// upKillLab brings up one BIOS machine whose lab airlock installs it and
// kills itself after its killAt-th transition (0: never).
func upKillLab(t *testing.T, image, kernel, modules string, killAt int) *killLab {
	t.Helper()
	l := &killLab{dir: t.TempDir()}
	if os.Getenv("AIRLOCK_E2E_KEEP") == "1" {
		l.dir, _ = os.MkdirTemp("", "airlock-e2e-kill-")
	}
	_, err := airlockEnv(t, []string{killAtEnv + "=" + strconv.Itoa(killAt)},
		"lab", "up", "--state", l.dir, "--nodes", "1", "--racks", "1", "--firmware", "bios",
		"--install", "--os-image", image, "--kernel", kernel, "--modules", modules,
		"--agent", filepath.Join(filepath.Dir(airlockBin(t)), "airlock-agent"), "--log-format", "json")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if keep(t) {
			t.Logf("the lab is still up: airlock status --state %s; logs in %s/lab; airlock lab down --state %s", l.dir, l.dir, l.dir)
			return
		}
		l.down(t)
	})
	out, err := airlock(t, "lab", "status", "-o", "json", "--state", l.dir)
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ VMs []labVM }
	readJSON(t, out, &st)
	if len(st.VMs) != 1 {
		t.Fatalf("lab status: %s", out)
	}
	l.vm = st.VMs[0]
	return l
}

func (l *killLab) down(t *testing.T) {
	if _, err := airlock(t, "lab", "down", "--state", l.dir); err != nil {
		t.Error(err)
	}
}

// logRecord is one line of the lab airlock's JSON log.
type logRecord struct {
	Msg     string `json:"msg"`
	N       int    `json:"n"`
	At      int    `json:"at"`
	Buckets string `json:"buckets"`
	Machine string `json:"machine"`
}

// runs splits the lab airlock's log into its runs (one per start), each
// run's records in order.
func (l *killLab) runs(t *testing.T) [][]logRecord {
	t.Helper()
	f, err := os.Open(filepath.Join(l.dir, "lab", "airlock.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var runs [][]logRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r logRecord
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			continue // the event printer's lines
		}
		if r.Msg == "test kill point armed" {
			runs = append(runs, nil)
		}
		if len(runs) > 0 {
			runs[len(runs)-1] = append(runs[len(runs)-1], r)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return runs
}

// points lists each run's transitions (the buckets each wrote).
func (l *killLab) points(t *testing.T) [][]string {
	var out [][]string
	for _, run := range l.runs(t) {
		var ps []string
		for _, r := range run {
			if r.Msg == "test kill point" {
				if r.N != len(ps)+1 {
					t.Errorf("transition %d logged as number %d", len(ps)+1, r.N)
				}
				ps = append(ps, r.Buckets)
			}
		}
		out = append(out, ps)
	}
	return out
}

// labStatus reads lab status: whether the lab's airlock serves.
func (l *killLab) serving(t *testing.T) bool {
	t.Helper()
	out, err := airlock(t, "lab", "status", "-o", "json", "--state", l.dir)
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Serving bool }
	readJSON(t, out, &st)
	return st.Serving
}

// statusJSON is what airlock status -o json says.
type statusJSON struct {
	AirlockRunning bool
	Phases         []struct{ Name, Status string }
	Machines       []struct {
		ID, State, Step, StepStatus, Failure string
		History                              []struct{ From, To string }
		Assignment                           *struct{ Address string }
	}
}

func (l *killLab) status(t *testing.T) (statusJSON, string) {
	t.Helper()
	out, err := airlock(t, "status", "-o", "json", "--state", l.dir)
	if err != nil {
		t.Fatal(err)
	}
	var st statusJSON
	readJSON(t, out, &st)
	return st, out
}

// killedAt waits until the airlock of run (0: the first) killed itself at
// transition k, then checks what status and the store say.
func (l *killLab) killedAt(t *testing.T, k, run int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Minute)
	for {
		runs := l.runs(t)
		if len(runs) > run {
			rs := runs[run]
			if i := slices.IndexFunc(rs, func(r logRecord) bool { return r.Msg == "test kill: SIGKILL" }); i >= 0 {
				if rs[i].N != k {
					t.Fatalf("run %d killed itself at transition %d, not %d", run+1, rs[i].N, k)
				}
				if !l.serving(t) {
					break
				}
			}
		}
		if st, out := l.status(t); len(st.Machines) == 1 && (st.Machines[0].State == "booted" || st.Machines[0].State == "failed") {
			t.Fatalf("run %d of the lab's airlock never reached transition %d (made %d): %s\n%s", run+1, k, len(l.points(t)[run]), out, labLogTail(l.dir))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no kill at transition %d within 20 minutes:\n%s", k, labLogTail(l.dir))
		}
		time.Sleep(time.Second)
	}
	if agentWriting(l.serial(t)) {
		l.insideWrite = true
	}
	l.checkTruthful(t, k)
}

// restart starts the lab's airlock again, killing itself at killAt (0:
// never).
func (l *killLab) restart(t *testing.T, killAt int) {
	t.Helper()
	if _, err := airlockEnv(t, []string{killAtEnv + "=" + strconv.Itoa(killAt)}, "lab", "restart", "--state", l.dir); err != nil {
		t.Fatal(err)
	}
}

// finish waits for the machine to boot its disk, stops the airlock and
// checks the store.
func (l *killLab) finish(t *testing.T) {
	t.Helper()
	l.waitBooted(t)
	l.stop(t)
	l.inspect(t, l.insideWrite)
	l.checkAddress(t)
}

// checkAddress checks that the machine's one lease is the address status
// shows for it (its assignment's): the discovery lease it held before it
// was assigned was freed when it took that address.
func (l *killLab) checkAddress(t *testing.T) {
	t.Helper()
	st, out := l.status(t)
	if len(st.Machines) != 1 || st.Machines[0].Assignment == nil || st.Machines[0].Assignment.Address == "" {
		t.Errorf("status shows no assigned address: %s", out)
		return
	}
	addr, _, _ := strings.Cut(st.Machines[0].Assignment.Address, "/")
	var held []string
	for _, le := range readStore(t, l.dir).leases {
		if strings.EqualFold(le.MAC, l.vm.MAC) {
			held = append(held, le.IP+" "+le.State)
		}
	}
	if len(held) != 1 || held[0] != addr+" bound" {
		t.Errorf("status shows %s at %s, but its MAC %s holds %v", st.Machines[0].ID, addr, l.vm.MAC, held)
	}
}

func (l *killLab) waitBooted(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Minute)
	for {
		st, out := l.status(t)
		if len(st.Machines) == 1 {
			switch st.Machines[0].State {
			case "booted":
				return
			case "failed":
				t.Fatalf("the machine failed: %s\n%s", out, labLogTail(l.dir))
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the machine did not boot its disk within 20 minutes: %s\n%s", out, labLogTail(l.dir))
		}
		time.Sleep(2 * time.Second)
	}
}

// stop ends the lab's airlock (SIGTERM, as Ctrl-C does; the test started
// it) and waits until it has closed the store.
func (l *killLab) stop(t *testing.T) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(l.dir, ownerFile))
	if err != nil {
		t.Fatalf("the lab's airlock owns no store: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 1 {
		t.Fatalf("owner file %q", raw)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !bytes.Contains(cmdline, []byte(l.dir)) {
		t.Fatalf("process %d is not this lab's airlock: %q", pid, cmdline)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(l.dir, ownerFile)); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lab's airlock (%d) did not stop within a minute of SIGTERM", pid)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (l *killLab) serial(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(l.dir, "lab", l.vm.Name+".serial.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// The agent's lines on the serial console: an order it starts, and the
// image written.
var (
	agentOrderRE   = regexp.MustCompile(`msg=order [^\n]*?\bid=(o-[0-9]+) kind=([a-z-]+)`)
	agentWrittenRE = regexp.MustCompile(`msg="image written"`)
	agentEndRE     = regexp.MustCompile(`msg="order (done|failed)" [^\n]*?\bid=(o-[0-9]+) kind=install`)
)

// agentWriting reports whether the agent started an install order it has
// not finished.
func agentWriting(serial string) bool {
	started := 0
	for _, m := range agentOrderRE.FindAllStringSubmatch(serial, -1) {
		if m[2] == "install" {
			started++
		}
	}
	return started > len(agentEndRE.FindAllString(serial, -1))
}

// steps that make each lifecycle state, and the state each step's end
// guarantees.
var (
	stepOf = map[string]string{"admitted": "admit", "assigned": "assign", "installing": "provision", "installed": "provision", "booted": "boot"}
	order  = []string{"discovered", "admitted", "assigned", "installing", "installed", "booted"}
	target = map[string]string{"admit": "admitted", "assign": "assigned", "provision": "installed", "boot": "booted"}
)

// checkTruthful checks, with the airlock dead after transition k, that
// status reads the store and says nothing the journal does not: no
// machine further than the steps journaled for it, every step the journal
// has done reflected in the machine's state, and a step cut short shown as
// interrupted.
func (l *killLab) checkTruthful(t *testing.T, k int) {
	t.Helper()
	st, out := l.status(t)
	if st.AirlockRunning {
		t.Errorf("after the kill at %d, status says an airlock runs: %s", k, out)
	}
	last := map[string]string{}
	for _, e := range readStore(t, l.dir).journal {
		last[e.Step] = e.Status
	}
	for _, p := range st.Phases {
		if p.Status == "running" {
			t.Errorf("after the kill at %d, phase %s shows running with no airlock", k, p.Name)
		}
	}
	for _, m := range st.Machines {
		if step, ok := stepOf[m.State]; ok {
			if _, journaled := last[step+"/"+m.ID]; !journaled {
				t.Errorf("after the kill at %d, machine %s is %s but the journal has no %s/%s: %s", k, m.ID, m.State, step, m.ID, out)
			}
		}
		for step, want := range target {
			if last[step+"/"+m.ID] == "done" && slices.Index(order, m.State) < slices.Index(order, want) {
				t.Errorf("after the kill at %d, the journal has %s/%s done but machine is %s", k, step, m.ID, m.State)
			}
		}
		if n := len(m.History); n > 0 && m.History[n-1].To != m.State {
			t.Errorf("after the kill at %d, machine %s is %s but its history ends at %s", k, m.ID, m.State, m.History[n-1].To)
		}
		if last[m.Step] == "started" && m.StepStatus != "interrupted" {
			t.Errorf("after the kill at %d, step %s shows %q, want interrupted", k, m.Step, m.StepStatus)
		}
	}
}

// The state store as the checks read it: the file airlock keeps in its
// state directory, opened read-only with bbolt itself (the e2e tests use
// none of airlock's packages), and the parts of its records they need.
const (
	storeFile = "airlock.db"
	ownerFile = "owner.pid" // the PID of the airlock that owns the store
)

type journalEntry struct {
	Seq                 uint64
	Step, Status, Error string
}

type storedMachine struct {
	ID     string
	Orders []struct{ ID, Kind string }
	// Results are the agent's answers to orders.
	Results []struct{ ID, Status string }
	// From the lifecycle bucket.
	State   string
	History []struct{ From, To string }
}

type storeDump struct {
	journal  []journalEntry
	machines []storedMachine
	// provision and leases: machine ID -> record; every lease.
	provision map[string]provisionRecord
	leases    []struct{ IP, MAC, State string }
}

// readStore opens the store read-only, checks its consistency (bbolt's
// own check) and reads it.
func readStore(t *testing.T, dir string) storeDump {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, storeFile), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open the state store read-only: %v", err)
	}
	defer db.Close()
	d := storeDump{provision: map[string]provisionRecord{}}
	each := func(tx *bolt.Tx, bucket string, fn func(k, v []byte) error) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.ForEach(fn)
	}
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return fmt.Errorf("the store is inconsistent: %w", errors.Join(errs...))
		}
		lifecycle := tx.Bucket([]byte("lifecycle"))
		err := each(tx, "machines", func(k, v []byte) error {
			var m storedMachine
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("machine %s: %w", k, err)
			}
			m.State = "discovered"
			if lifecycle != nil {
				if raw := lifecycle.Get(k); raw != nil {
					if err := json.Unmarshal(raw, &m); err != nil {
						return fmt.Errorf("lifecycle of %s: %w", k, err)
					}
				}
			}
			d.machines = append(d.machines, m)
			return nil
		})
		if err != nil {
			return err
		}
		err = each(tx, "journal", func(k, v []byte) error {
			var e journalEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("journal %s: %w", k, err)
			}
			d.journal = append(d.journal, e)
			return nil
		})
		if err != nil {
			return err
		}
		err = each(tx, "provision", func(k, v []byte) error {
			var r provisionRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("provision %s: %w", k, err)
			}
			d.provision[string(k)] = r
			return nil
		})
		if err != nil {
			return err
		}
		return each(tx, "leases", func(k, v []byte) error {
			var l struct{ IP, MAC, State string }
			if err := json.Unmarshal(v, &l); err != nil {
				return fmt.Errorf("lease %s: %w", k, err)
			}
			d.leases = append(d.leases, l)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// provisionRecord is the part of the engine's provisioning record (bucket
// "provision") the checks read.
type provisionRecord struct {
	Order     string `json:"order"`
	Reboot    string `json:"reboot"`
	TokenHash string `json:"tokenHash"`
	Used      bool   `json:"used"`
}

// inspect checks the store of a finished install, read-only, and the
// machine's console: see TestLabResumesAfterKill.
func (l *killLab) inspect(t *testing.T, insideWrite bool) {
	t.Helper()
	d := readStore(t, l.dir)
	if len(d.machines) != 1 {
		t.Fatalf("machines %+v", d.machines)
	}
	m := d.machines[0]
	var states []string
	for _, h := range m.History {
		states = append(states, h.To)
	}
	if got, want := strings.Join(states, " "), "admitted assigned installing installed booted"; got != want {
		t.Errorf("machine %s went through %q, want %q", m.ID, got, want)
	}
	// The journal: every step done exactly once, none failed.
	done := map[string]int{}
	for _, e := range d.journal {
		switch e.Status {
		case "done":
			done[e.Step]++
		case "failed":
			t.Errorf("journal: %s failed: %s", e.Step, e.Error)
		}
	}
	for _, step := range []string{"serve", "discover", "admit/" + m.ID, "assign/" + m.ID, "provision/" + m.ID, "boot/" + m.ID} {
		if done[step] != 1 {
			t.Errorf("journal: %s done %d times, want once", step, done[step])
		}
	}
	// Orders: only the two the provisioning record names were ever given.
	rec, ok := d.provision[m.ID]
	if !ok {
		t.Fatalf("no provisioning record for %s", m.ID)
	}
	leases := d.leases
	if rec.Order == "" || rec.Reboot == "" || rec.Order == rec.Reboot {
		t.Errorf("provisioning record %+v: want an install and a reboot order", rec)
	}
	if !rec.Used {
		t.Errorf("the seed's token was never used: %+v", rec)
	}
	given := []string{rec.Order, rec.Reboot}
	for _, o := range m.Orders {
		if !slices.Contains(given, o.ID) {
			t.Errorf("order %s (%s) waits for the machine, but the install gave %v", o.ID, o.Kind, given)
		}
		if o.Kind == "install" {
			t.Errorf("install order %s still waits", o.ID)
		}
	}
	for _, r := range m.Results {
		// A write cut by the kill fails its order, which is given again.
		if !slices.Contains(given, r.ID) && !(insideWrite && r.Status == "failed") {
			t.Errorf("the agent answered order %s (%s), but the install gave %v", r.ID, r.Status, given)
		}
	}
	// Leases: one per MAC.
	byMAC := map[string][]string{}
	for _, le := range leases {
		byMAC[strings.ToLower(le.MAC)] = append(byMAC[strings.ToLower(le.MAC)], le.IP+" "+le.State)
	}
	for mac, ls := range byMAC {
		if len(ls) > 1 {
			t.Errorf("MAC %s holds %d leases: %v", mac, len(ls), ls)
		}
	}
	if len(byMAC[strings.ToLower(l.vm.MAC)]) != 1 {
		t.Errorf("the machine's MAC %s holds no lease: %v", l.vm.MAC, leases)
	}
	// The agent: each order carried out once, the image written once.
	serial := l.serial(t)
	seen := map[string]int{}
	installs := 0
	for _, o := range agentOrderRE.FindAllStringSubmatch(serial, -1) {
		seen[o[1]]++
		if o[2] == "install" {
			installs++
		}
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("the agent carried out order %s %d times", id, n)
		}
	}
	written := len(agentWrittenRE.FindAllString(serial, -1))
	if installs != 1 || written != 1 {
		if !insideWrite || written > 2 {
			t.Errorf("the agent took %d install orders and wrote the image %d times, want once (a kill inside the write: %v)", installs, written, insideWrite)
		} else {
			t.Logf("the kill fell inside the write: %d install orders, the image written %d times", installs, written)
		}
	}
	// The phone-home: accepted at most once by the logs (a kill right
	// after its transaction comes before its log line; the token spent
	// and the single booted transition above are what it left).
	phoned := 0
	for _, run := range l.runs(t) {
		for _, r := range run {
			if r.Msg == "phoned home" {
				phoned++
			}
		}
	}
	if phoned > 1 {
		t.Errorf("the installed system's phone-home was accepted %d times, want once", phoned)
	}
}
