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

// process is an airlock (or other) process the test started.
type process struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	lines  chan string
	done   chan error
}

func start(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, lines: make(chan string, 256), done: make(chan error, 1)}
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
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *process) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// waitFor waits for a stderr line containing s.
func (p *process) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line := <-p.lines:
			if strings.Contains(line, s) {
				return
			}
		case err := <-p.done:
			p.done <- err
			t.Fatalf("process exited (%v) before printing %q:\n%s", err, s, p.log())
		case <-deadline:
			t.Fatalf("no %q within %s:\n%s", s, timeout, p.log())
		}
	}
}

// stop interrupts the process (SIGINT, as Ctrl-C does) and waits.
func (p *process) stop(t *testing.T) error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		return fmt.Errorf("did not stop within 20 s of SIGINT")
	}
}

// airlock runs a short airlock command and returns stdout.
func airlock(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
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
