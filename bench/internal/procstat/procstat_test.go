package procstat

import (
	"os"
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
