package ratelog

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type buf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buf) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimSpace(b.b.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func newTest(burst, maxKeys int) (*Limiter, *buf, *time.Time) {
	var out buf
	l := New(slog.New(slog.NewTextHandler(&out, nil)), burst, time.Minute, maxKeys)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return now }
	return l, &out, &now
}

func count(lines []string, sub string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

func TestBurstThenSummary(t *testing.T) {
	ctx := context.Background()
	l, out, now := newTest(3, 100)
	for range 1000 {
		l.Log(ctx, slog.LevelWarn, "refused", "aa", "mac", "aa")
	}
	l.Log(ctx, slog.LevelWarn, "refused", "bb", "mac", "bb")
	lines := out.lines()
	if got := count(lines, "msg=refused "); got != 4 {
		t.Fatalf("%d lines logged, want 3 for aa and 1 for bb:\n%s", got, strings.Join(lines, "\n"))
	}
	if !strings.Contains(lines[2], "further=") {
		t.Errorf("the last line before suppression does not say so: %s", lines[2])
	}
	*now = now.Add(time.Minute)
	l.Flush(ctx)
	lines = out.lines()
	if got := count(lines, `msg="refused (repeated)" suppressed=997`); got != 1 {
		t.Fatalf("no summary of 997 suppressed lines:\n%s", strings.Join(lines, "\n"))
	}
	// A new window logs again.
	l.Log(ctx, slog.LevelWarn, "refused", "aa")
	if got := count(out.lines(), "msg=refused"); got != 5 {
		t.Fatalf("new window: %d lines", got)
	}
}

// TestManyClientsBounded: a flood of distinct clients (random MACs) keeps
// at most maxKeys keys plus one shared per message, and logs a bounded
// number of lines.
func TestManyClientsBounded(t *testing.T) {
	ctx := context.Background()
	l, out, now := newTest(2, 50)
	for i := range 100000 {
		l.Log(ctx, slog.LevelInfo, "no free address", fmt.Sprint(i))
	}
	if n := len(l.keys); n > 51 {
		t.Fatalf("%d keys held, want <= 51", n)
	}
	if got := len(out.lines()); got > 50*2+2 {
		t.Fatalf("%d lines for 100000 events, want <= %d", got, 50*2+2)
	}
	*now = now.Add(2 * time.Minute)
	l.Flush(ctx)
	lines := out.lines()
	if count(lines, "client=\"(many clients)\"") != 1 {
		t.Fatalf("no summary for the overflow key:\n%s", strings.Join(lines[len(lines)-3:], "\n"))
	}
	if len(l.keys) != 0 {
		t.Fatalf("%d keys left after the window", len(l.keys))
	}
}

func TestDisabledLevelCostsNothing(t *testing.T) {
	var out buf
	l := New(slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn})), 1, time.Minute, 10)
	for i := range 100 {
		l.Log(context.Background(), slog.LevelDebug, "x", fmt.Sprint(i))
	}
	if len(l.keys) != 0 || len(out.lines()) != 0 {
		t.Fatalf("debug lines under a warn logger: %d keys, %d lines", len(l.keys), len(out.lines()))
	}
}
