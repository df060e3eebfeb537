//go:build e2e

// Package e2e holds black-box tests of the built airlock binary: they run
// it as a process inside network namespaces they create, talk to it with
// real clients, and remove everything they made. Run them with `make e2e`
// (which builds bin/airlock and sets AIRLOCK_BIN). AIRLOCK_E2E_KEEP=1
// keeps what a failed test made, and says how to look at it.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
)

// airlockBin returns the binary under test.
func airlockBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("AIRLOCK_BIN")
	if bin == "" {
		t.Fatal("AIRLOCK_BIN is not set: run `make e2e` (it builds bin/airlock and sets it)")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("AIRLOCK_BIN: %v (run `make build`)", err)
	}
	return bin
}

// keep reports whether a failed test should leave its lab for a person.
func keep(t *testing.T) bool {
	if t.Failed() && os.Getenv("AIRLOCK_E2E_KEEP") == "1" {
		t.Logf("AIRLOCK_E2E_KEEP=1: leaving namespaces and state in place; `ip netns list` shows them, `ip netns exec NAME bash` enters one")
		return true
	}
	return false
}

// newNS makes a namespace removed at the end unless kept.
func newNS(t *testing.T, prefix string) *netns.NS {
	t.Helper()
	netns.RequireTool(t, "ip", "iproute2")
	ns, err := netns.Add(netns.UniqueName(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !keep(t) {
			ns.Delete()
		}
	})
	return ns
}

// process is an airlock (or other) process the test started. Every line it
// writes to stderr is kept (none is dropped however fast it writes), and
// waitFor reads them in order.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and every line is kept

	mu    sync.Mutex
	lines []string      // every stderr line so far
	grew  chan struct{} // closed (and replaced) when a line is added
	next  int           // the first line waitFor has not looked at yet
	err   error         // cmd.Wait's result, set before done is closed
}

func start(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, done: make(chan struct{}), grew: make(chan struct{})}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.grew)
			p.grew = make(chan struct{})
			p.mu.Unlock()
		}
		if err := sc.Err(); err != nil {
			// A line over 1 MiB: keep the reason, and drain the pipe so
			// that the process never blocks on a full one.
			p.mu.Lock()
			p.lines = append(p.lines, fmt.Sprintf("(test harness: stopped reading stderr: %v)", err))
			p.mu.Unlock()
			_, _ = io.Copy(io.Discard, pipe)
		}
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *process) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n") + "\n"
}

// seen looks at the lines waitFor has not looked at yet, up to the first
// one containing s, and reports whether there was one.
func (p *process) seen(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.next < len(p.lines) {
		line := p.lines[p.next]
		p.next++
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// waitFor waits for a stderr line containing s, after the line an earlier
// waitFor returned on.
func (p *process) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if p.seen(s) {
			return
		}
		p.mu.Lock()
		grew := p.grew
		p.mu.Unlock()
		select {
		case <-grew:
		case <-p.done:
			if p.seen(s) {
				return
			}
			t.Fatalf("process exited (%v) before printing %q:\n%s", p.exitErr(), s, p.log())
		case <-deadline.C:
			if p.seen(s) {
				return
			}
			t.Fatalf("no %q within %s:\n%s", s, timeout, p.log())
		}
	}
}

// exitErr is cmd.Wait's result once the process has exited.
func (p *process) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// stop interrupts the process (SIGINT, as Ctrl-C does) and waits.
func (p *process) stop(t *testing.T) error {
	select {
	case <-p.done:
		return p.exitErr()
	default:
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
		return p.exitErr()
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		return fmt.Errorf("did not stop within 20 s of SIGINT")
	}
}

// airlock runs a short airlock command and returns stdout.
func airlock(t *testing.T, args ...string) (string, error) {
	t.Helper()
	// Three minutes: `lab up` alone may wait 90 s for its airlock to
	// serve, after building the boot image, on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, airlockBin(t), args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("airlock %s: %w\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), nil
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return string(out)
}

func readJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.NewDecoder(strings.NewReader(s)).Decode(v); err != nil && err != io.EOF {
		t.Fatalf("decode %q: %v", s, err)
	}
}

// The harness keeps every line a process writes, however fast: 5000 lines
// written before anyone reads are all found, in order, after the process
// has exited (a bounded channel dropped lines here).
func TestProcessKeepsEveryLine(t *testing.T) {
	const n = 5000
	p := start(t, exec.Command("sh", "-c", fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "line $i end" >&2; i=$((i+1)); done`, n)))
	<-p.done
	if err := p.exitErr(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	for i := 1; i <= n; i++ {
		p.waitFor(t, fmt.Sprintf("line %d end", i), time.Second)
	}
	if p.seen("line") {
		t.Fatal("lines after the last one")
	}
}
