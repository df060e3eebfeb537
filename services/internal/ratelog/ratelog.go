// Package ratelog bounds repeated log lines. A network service that logs
// every refused packet lets any host on the segment fill the disk or the
// terminal; a Limiter logs the first few lines of each kind (message and
// client) per window, counts the rest, and logs one summary line with the
// count when the window ends.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter passes at most Burst lines per key and Window to its logger.
type Limiter struct {
	log    *slog.Logger
	burst  int
	window time.Duration
	// maxKeys bounds the keys remembered: past it, lines of a message
	// share one key (their client is not told apart), so random clients
	// cannot grow the table.
	maxKeys int
	now     func() time.Time

	mu   sync.Mutex
	keys map[key]*entry
}

type key struct{ msg, client string }

type entry struct {
	start      time.Time
	logged     int
	suppressed int
	level      slog.Level
}

// New returns a limiter that logs burst lines per message and client every
// window, remembering at most maxKeys of them.
func New(log *slog.Logger, burst int, window time.Duration, maxKeys int) *Limiter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Limiter{log: log, burst: max(burst, 1), window: window, maxKeys: max(maxKeys, 1), now: time.Now, keys: map[key]*entry{}}
}

// Default is the limiter the services use: 5 lines per message and client
// per minute, 256 clients told apart; a flood from made-up clients makes
// at most about 260 lines a minute per message.
func Default(log *slog.Logger) *Limiter { return New(log, 5, time.Minute, DefaultKeys) }

// DefaultKeys is the number of keys Default remembers.
const DefaultKeys = 256

// overflow is the client of the shared key used once maxKeys are held.
const overflow = "(many clients)"

// Log logs msg with args at level unless lines of msg about client were
// logged burst times in the current window; then it only counts.
func (l *Limiter) Log(ctx context.Context, level slog.Level, msg, client string, args ...any) {
	if !l.log.Enabled(ctx, level) {
		return
	}
	now := l.now()
	l.mu.Lock()
	k := key{msg, client}
	e := l.keys[k]
	if e == nil && len(l.keys) >= l.maxKeys {
		l.sweepLocked(ctx, now)
		if len(l.keys) >= l.maxKeys {
			k.client = overflow
			e = l.keys[k]
		}
	}
	if e == nil {
		e = &entry{start: now, level: level}
		l.keys[k] = e
	}
	if now.Sub(e.start) >= l.window {
		l.summaryLocked(ctx, k, e)
		*e = entry{start: now, level: level}
	}
	if e.logged >= l.burst {
		e.suppressed++
		l.mu.Unlock()
		return
	}
	e.logged++
	last := e.logged == l.burst
	l.mu.Unlock()
	if last {
		args = append(args, "further", "suppressed for "+l.window.String())
	}
	l.log.Log(ctx, level, msg, args...)
}

// Flush logs the summary of every window that has ended and forgets its
// key; the services call it periodically so that a count is not held back
// until the next line of its kind.
func (l *Limiter) Flush(ctx context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweepLocked(ctx, l.now())
}

func (l *Limiter) sweepLocked(ctx context.Context, now time.Time) {
	for k, e := range l.keys {
		if now.Sub(e.start) >= l.window {
			l.summaryLocked(ctx, k, e)
			delete(l.keys, k)
		}
	}
}

func (l *Limiter) summaryLocked(ctx context.Context, k key, e *entry) {
	if e.suppressed == 0 {
		return
	}
	args := []any{"suppressed", e.suppressed, "window", l.window.String()}
	if k.client != "" {
		args = append(args, "client", k.client)
	}
	l.log.Log(ctx, e.level, k.msg+" (repeated)", args...)
}

// Run flushes every window until ctx ends, then flushes once more.
func (l *Limiter) Run(ctx context.Context) {
	t := time.NewTicker(l.window)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.mu.Lock()
			for k, e := range l.keys {
				l.summaryLocked(context.WithoutCancel(ctx), k, e)
				delete(l.keys, k)
			}
			l.mu.Unlock()
			return
		case <-t.C:
			l.Flush(ctx)
		}
	}
}
