// Package procstat reads a process's CPU time from /proc, for the
// benchmarks that compare a server's CPU cost with its peer's, and stops
// the servers they start.
package procstat

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of /proc/PID/stat's times on Linux.
const userHZ = 100

// Times is a process's CPU time in seconds: User and Sys from
// /proc/PID/stat (ticks of 10 ms, coarse for a phase that costs a tenth
// of a second), Run the sum of its threads' time on a CPU from
// /proc/PID/task/*/schedstat (nanoseconds; zero when Of was not asked for
// it).
type Times struct{ User, Sys, Run float64 }

// Total is User + Sys.
func (t Times) Total() float64 { return t.User + t.Sys }

// Of reads pid's user and system time.
func Of(pid int) (Times, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Times{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return Times{}, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	fields := strings.Fields(s[i+2:])
	if len(fields) < 13 {
		return Times{}, fmt.Errorf("/proc/%d/stat: %d fields after the command", pid, len(fields))
	}
	ut, err1 := strconv.ParseFloat(fields[11], 64)
	st, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return Times{}, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, fields[11], fields[12])
	}
	return Times{User: ut / userHZ, Sys: st / userHZ}, nil
}

// WithRun is Of with Run filled in from every thread's schedstat.
func WithRun(pid int) (Times, error) {
	t, err := Of(pid)
	if err != nil {
		return t, err
	}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return t, fmt.Errorf("threads of %d: %v", pid, err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue // the thread ended
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			t.Run += float64(ns) / 1e9
		}
	}
	return t, nil
}

// Sum is the total user and system time of pids; a process that is gone
// counts nothing.
func Sum(pids []int) float64 {
	var s float64
	for _, pid := range pids {
		if t, err := Of(pid); err == nil {
			s += t.Total()
		}
	}
	return s
}

// Stop asks a started command to end (SIGTERM), kills it if it has not
// within grace, and returns once it has been waited for.
func Stop(cmd *exec.Cmd, grace time.Duration) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		cmd.Process.Kill()
		<-done
	}
}
