package engine

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/registry"
)

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// A port already in use makes Serve fail before anything serves, and every
// socket it had opened is closed again; with the port free, it serves and
// stops cleanly when its context ends.
func TestServeFailsCleanlyAndStopsCleanly(t *testing.T) {
	netns.RequireTool(t, "ip", "iproute2")
	ns := netns.NewTest(t, "alsv")
	peer := netns.NewTest(t, "alsp")
	if err := netns.AddVeth(ns, "prov0", peer, "eth0"); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{ns.AddAddr("prov0", "10.77.0.1/24"), ns.LinkUp("prov0"), peer.LinkUp("eth0")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	a, src, problems := config.Parse("answers.yaml", []byte(`apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: t}
network: {interface: prov0, mode: full, subnet: 10.77.0.0/24, address: 10.77.0.1, dynamicRange: {start: 10.77.0.100, end: 10.77.0.120}}
cluster: {name: t}
`))
	if err := append(problems, a.Validate(src)...).Err(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	opts := Options{
		Answers: a, Store: st, StateDir: dir, IPXE: fstest.MapFS{"undionly.kpxe": {Data: []byte("x")}},
		Registry: registry.NewMemory(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}

	var blocker net.Listener
	if err := ns.Do(func() (err error) { blocker, err = net.Listen("tcp", "10.77.0.1:5000"); return err }); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	err = ns.Do(func() error { _, err := New(opts); return err })
	if err == nil || !strings.Contains(err.Error(), "listen for the registry") {
		t.Fatalf("New beside a taken registry port: %v", err)
	}
	// More open afterwards is a leak; fewer is the runtime (the race
	// detector's, say) closing one of its own meanwhile. A socket whose
	// reader goroutine is still blocked in a read is closed by the
	// runtime once that read returns, a moment after Close: wait for it,
	// at most 5 s.
	after := openFDs(t)
	for deadline := time.Now().Add(5 * time.Second); after > before && time.Now().Before(deadline); after = openFDs(t) {
		time.Sleep(10 * time.Millisecond)
	}
	if after > before {
		t.Errorf("a failed New left %d file descriptors open", after-before)
	}
	blocker.Close()

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Serving, 1)
	done := make(chan error, 1)
	var e *Engine
	if err := ns.Do(func() (err error) { e, err = New(opts); return err }); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	go func() { done <- ns.Do(func() error { return e.Run(ctx, func(s Serving) { ready <- s }) }) }()
	select {
	case s := <-ready:
		if s.Mode != "full" || s.Registry != "10.77.0.1:5000" || !s.TFTP {
			t.Errorf("serving = %+v", s)
		}
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not serving within 30 s")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
}
