package cli

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/state"
)

// status (and inventory) asked while the airlock dies (its connection
// broken mid-request: a crash test's SIGKILL) read the store, as they do
// once it is dead, instead of failing: the lab kill sweep hit this.
func TestProgressReadsTheStoreWhenTheAirlockDiesMidRequest(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := state.NewJournal(st).Record("serve", state.StatusStarted, "", nil); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, control.SocketName))
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // as a killed process leaves it
	accepted := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			ln.Close()
			conn.Close()
		}
		accepted <- err
	}()
	_, journal, live, err := readProgressLive(context.Background(), dir)
	if aerr := <-accepted; aerr != nil {
		t.Fatal(aerr)
	}
	if err != nil {
		t.Fatalf("progress with the airlock dying mid-request: %v", err)
	}
	if live || len(journal) != 1 || journal[0].Step != "serve" {
		t.Fatalf("live=%v journal=%+v: want the store's one entry", live, journal)
	}
}
