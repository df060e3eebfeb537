package state

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const crashChildEnv = "AIRLOCK_STATE_CRASH_CHILD"

// TestMain runs this test binary as TestCrashSafety's child when
// crashChildEnv names a store (so that the child's role never shows as a
// test of its own), and runs the tests otherwise.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		os.Exit(crashChild(dir, os.Getenv(crashChildEnv+"_ROUND")))
	}
	os.Exit(m.Run())
}

// crashChild writes journal entries to the store in dir as fast as it can
// and prints "ack SEQ STEP" after each durable write, until it is killed.
// It prints "error ..." and returns 3 if a write fails.
func crashChild(dir, round string) int {
	s, err := Open(dir)
	if err != nil {
		fmt.Println("error", err)
		return 3
	}
	j := NewJournal(s)
	for i := 0; ; i++ {
		step := fmt.Sprintf("burst/%s-step-%d", round, i)
		e, err := j.Record(step, StatusDone, strings.Repeat("x", i%300), nil)
		if err != nil {
			fmt.Println("error", err)
			return 3
		}
		// Interleave bulk writes so that kills land inside page splits too.
		err = s.Update(func(tx Tx) error {
			return tx.Put("leases", fmt.Sprintf("lease-%d", i%97), []byte(strings.Repeat("y", i%4000)))
		})
		if err != nil {
			fmt.Println("error", err)
			return 3
		}
		fmt.Printf("ack %d %s\n", e.Seq, step)
	}
}

// TestCrashSafety kills a writer with SIGKILL in the middle of a burst of
// journal writes, 20 times over the same store, and checks after each kill
// that the store is consistent and that every acknowledged write survived.
func TestCrashSafety(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	acked := map[uint64]string{}
	for round := range 20 {
		killAfter := 5 + rng.IntN(120)
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s_ROUND=r%d", crashChildEnv, round))
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		timer := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
		sc := bufio.NewScanner(out)
		n := 0
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 1 && fields[0] == "error" {
				t.Fatalf("round %d: child failed: %s", round, sc.Text())
			}
			if len(fields) != 3 || fields[0] != "ack" {
				t.Fatalf("round %d: child printed %q, want ack SEQ STEP", round, sc.Text())
			}
			seq, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				t.Fatalf("round %d: bad ack %q", round, sc.Text())
			}
			acked[seq] = fields[2]
			n++
			if n == killAfter {
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
		}
		werr := cmd.Wait()
		timer.Stop()
		if n < killAfter {
			t.Fatalf("round %d: child stopped after %d acks before being killed (%v)", round, n, werr)
		}
		if st, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !st.Signaled() || st.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child ended with %v, not by the SIGKILL after ack %d", round, werr, killAfter)
		}

		s, err := Open(dir)
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		if err := s.Check(); err != nil {
			t.Fatalf("round %d: store inconsistent after SIGKILL: %v", round, err)
		}
		entries, err := NewJournal(s).Entries()
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		got := map[uint64]string{}
		for i, e := range entries {
			if e.Seq != uint64(i+1) {
				t.Fatalf("round %d: journal has a gap: entry %d has seq %d", round, i, e.Seq)
			}
			got[e.Seq] = e.Step
			last, found, err := NewJournal(s).Last(e.Step)
			if err != nil || !found || last.Seq != e.Seq {
				t.Fatalf("round %d: step index disagrees with journal for %s: %+v %v %v", round, e.Step, last, found, err)
			}
		}
		for seq, step := range acked {
			if got[seq] != step {
				t.Fatalf("round %d: acknowledged write %d (%s) lost after SIGKILL", round, seq, step)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: killed after %d acks; %d entries, all %d acknowledged present", round, killAfter, len(entries), len(acked))
	}
}
