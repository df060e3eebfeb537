package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// labChildEnv makes the test binary play the lab's airlock in one of the
// ways TestLabReadyReport names, on descriptor LabReadyFD.
const labChildEnv = "AIRLOCK_TEST_LAB_CHILD"

func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(labChildEnv); ok {
		os.Exit(labChild(mode))
	}
	os.Exit(m.Run())
}

func labChild(mode string) int {
	switch mode {
	case "ready-then-crash":
		// As a crash test's kill at the first transition: the install
		// starts once the report is taken, and dies at once.
		if err := LabReportReady(LabReadyFD, Serving{Interface: "br0"}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	case "exit-before-ready":
		return 3
	case "die-after-ready":
		// It reports, and is gone before it takes the answer (it reads
		// no more: the answer cannot reach it).
		if err := unix.Shutdown(LabReadyFD, unix.SHUT_RD); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if _, err := os.NewFile(LabReadyFD, "ready").WriteString("ready {}\n"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 4
	case "silent":
		time.Sleep(time.Minute)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown %s %q\n", labChildEnv, mode)
	return 1
}

// lab up and lab restart start the lab's airlock and wait for its ready
// report over a socket pair (descriptor LabReadyFD); the airlock starts
// its install only once that report is taken. Real child processes (this
// test binary re-run) play the airlock: one that crashes right after the
// release (a kill at its first transition) leaves the start successful;
// one that exits before it reports never became ready; one that reports
// and dies before the release died after it was ready; one that never
// reports times out, still running.
func TestLabReadyReport(t *testing.T) {
	for _, tc := range []struct {
		mode string
		want error
		text string
	}{
		{"ready-then-crash", nil, ""},
		{"exit-before-ready", ErrLabNeverReady, "exit status 3"},
		{"die-after-ready", ErrLabDiedAfterReady, "exit status 4"},
		{"silent", ErrLabNeverReady, "did not serve within"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), labChildEnv+"="+tc.mode)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := startReporting(context.Background(), cmd, 2*time.Second)
			t.Cleanup(func() {
				// startReporting left it running (or it died): end it, by
				// its PID, and reap it.
				if cmd.Process != nil {
					_ = cmd.Process.Kill()
				}
			})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("start: %v (child: %s)", err, stderr.String())
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("start: %v, want %v with %q (child: %s)", err, tc.want, tc.text, stderr.String())
			}
			t.Logf("%s: %v", tc.mode, err)
		})
	}
}
