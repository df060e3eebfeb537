package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/kube"
	"airlock.dev/airlock/installer/state"
)

func TestControlSocket(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := state.NewJournal(st).Record("serve", state.StatusStarted, "", nil); err != nil {
		t.Fatal(err)
	}
	c := NewClient(dir)
	if _, err := c.Machines(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("before Listen: %v, want ErrNotRunning", err)
	}
	ln, err := Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, SocketName))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, %v; want 0600", info.Mode(), err)
	}
	if _, err := Listen(dir); err == nil {
		t.Error("a second Listen on a live socket succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, Handler(EngineSource{Inventory: inventory.New(st, nil, slog.New(slog.NewTextHandler(io.Discard, nil))), Store: st}, slog.New(slog.NewTextHandler(io.Discard, nil))))
	}()
	machines, err := c.Machines(context.Background())
	if err != nil || len(machines) != 0 {
		t.Fatalf("machines = %v, %v", machines, err)
	}
	j, err := c.Journal(context.Background())
	if err != nil || len(j) != 1 || j[0].Step != "serve" {
		t.Fatalf("journal = %v, %v", j, err)
	}
	// The cluster: nothing before the first seeds, then the pod network
	// and each machine's subnet, as the store holds them.
	if cl, err := c.Cluster(context.Background()); err != nil || cl.PodNetwork != "" {
		t.Errorf("cluster before any seed = %+v, %v", cl, err)
	}
	if _, err := kube.AllocatePodSubnets(st, netip.MustParsePrefix("10.244.0.0/16"), []string{"m-1"}); err != nil {
		t.Fatal(err)
	}
	if cl, err := c.Cluster(context.Background()); err != nil || cl.PodNetwork != kube.PodNetworkMinimal || cl.PodSubnets["m-1"].String() != "10.244.0.0/24" {
		t.Errorf("cluster = %+v, %v", cl, err)
	}
	if err := c.Rediscover(context.Background(), "m-nosuch"); err == nil || !strings.Contains(err.Error(), "no such machine") {
		t.Errorf("rediscover of an unknown machine: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after cancel = %v, want nil", err)
	}
	// The socket file of a dead airlock is stale: the next Listen replaces it.
	ln2, err := Listen(dir)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln2.Close()
}

// An airlock that dies while it serves a request (a crash test kills it,
// or it crashes): the client says ErrLost, not an error to give up on;
// asked again, the dead airlock's socket refuses and says ErrNotRunning.
func TestClientSeesADeathMidRequestAsLost(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	// A killed process leaves its socket file behind.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	accepted := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			// It dies: its listener and the connection close, unanswered.
			ln.Close()
			conn.Close()
		}
		accepted <- err
	}()
	c := NewClient(dir)
	_, err = c.Machines(context.Background())
	if aerr := <-accepted; aerr != nil {
		t.Fatal(aerr)
	}
	if !errors.Is(err, ErrLost) {
		t.Fatalf("a request the airlock died in: %v, want ErrLost", err)
	}
	if _, err := c.Machines(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("asked again: %v, want ErrNotRunning", err)
	}
}
