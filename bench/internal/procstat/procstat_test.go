package procstat

import (
	"bufio"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// The test process's own CPU time grows while it spins: its threads' run
// time first (fine-grained), then its user+system ticks.
func TestOwnTimeGrows(t *testing.T) {
	before, err := WithRun(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	after := before
	for deadline := time.Now().Add(time.Minute); after.Run-before.Run < 0.2 || after.Total() <= before.Total(); {
		if time.Now().After(deadline) {
			t.Fatalf("a minute of spinning: run %.3f -> %.3f s, user+sys %.2f -> %.2f s", before.Run, after.Run, before.Total(), after.Total())
		}
		for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
		}
		if after, err = WithRun(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	if s := Sum([]int{os.Getpid(), 1 << 30}); s < after.Total() {
		t.Errorf("Sum %.2f lost this process's time %.2f", s, after.Total())
	}
	if _, err := Of(1 << 30); err == nil {
		t.Error("no error for a process that does not exist")
	}
}

// Stop ends a command that heeds SIGTERM at once, and kills one that
// ignores it after the grace; either way the command has been waited for.
func TestStop(t *testing.T) {
	heeds := exec.Command("sleep", "60")
	ignores := exec.Command("sh", "-c", `trap "" TERM; echo ready; while :; do sleep 1; done`)
	out, err := ignores.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*exec.Cmd{heeds, ignores} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil { // the trap is set
		t.Fatal(err)
	}
	began := time.Now()
	Stop(heeds, time.Minute)
	if heeds.ProcessState == nil || time.Since(began) > 30*time.Second {
		t.Fatalf("sleep: state %v after %v", heeds.ProcessState, time.Since(began))
	}
	Stop(ignores, 200*time.Millisecond)
	ws, ok := ignores.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("a command ignoring SIGTERM ended with %v, want killed", ignores.ProcessState)
	}
}
