package build

import (
	"fmt"
	"io"
	"sync"
	"time"

	"airlock.dev/airlock/installer/termtext"
)

// progress prints build progress: one line per step, and on a terminal a
// running total that rewrites its line. Lines name charts, images and
// errors from registries and downloaded charts: each is escaped, so only
// progress's own line rewriting reaches the terminal as control codes.
type progress struct {
	mu  sync.Mutex
	w   io.Writer
	tty bool
	run bool // a running line is shown
}

func newProgress(w io.Writer, tty bool) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, tty: tty}
}

func (p *progress) linef(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(p.w, termtext.Escape(fmt.Sprintf(format, args...)))
}

// running shows status() every 200ms (on a terminal) or every 5s until the
// returned stop is called.
func (p *progress) running(status func() string) (stop func()) {
	every := 5 * time.Second
	if p.tty {
		every = 200 * time.Millisecond
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.mu.Lock()
				if p.tty {
					fmt.Fprintf(p.w, "\r\033[K%s", termtext.Escape(status()))
					p.run = true
				} else {
					fmt.Fprintln(p.w, termtext.Escape(status()))
				}
				p.mu.Unlock()
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		p.mu.Lock()
		if p.run {
			fmt.Fprint(p.w, "\r\033[K")
			p.run = false
		}
		p.mu.Unlock()
		p.linef("%s", status())
	}
}
