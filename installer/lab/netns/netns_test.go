package netns

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestUniqueName(t *testing.T) {
	a, b := UniqueName("al"), UniqueName("al")
	if a == b {
		t.Fatalf("names collide: %s", a)
	}
	if !strings.HasPrefix(a, "al") || !strings.Contains(a, strconv.Itoa(os.Getpid())) {
		t.Fatalf("name %q lacks prefix or pid", a)
	}
}

// TestVethPingAndInProcessServer joins two namespaces with a veth pair, pings
// across it with a real ping, and serves TCP from a socket opened in-process
// inside one namespace, dialled from a socket opened inside the other.
func TestVethPingAndInProcessServer(t *testing.T) {
	RequireTool(t, "ping", "iputils-ping")
	a := NewTest(t, "alt")
	b := NewTest(t, "alt")
	MustVeth(t, a, "va", b, "vb")
	a.MustAddr(t, "va", "10.77.0.1/24")
	b.MustAddr(t, "vb", "10.77.0.2/24")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := b.Command(ctx, "ping", "-c", "1", "-W", "5", "10.77.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("ping across veth: %v\n%s", err, out)
	}

	var ln net.Listener
	if err := a.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "10.77.0.1:0")
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", a.Name, err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("hello from " + a.Name))
		c.Close()
	}()

	var conn net.Conn
	if err := b.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial from %s: %v", b.Name, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "hello from "+a.Name {
		t.Fatalf("read %q, %v", got, err)
	}

	// The address is not reachable from this (the host's) namespace: the
	// listener really lives in a.
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("listener in %s reachable from the host namespace", a.Name)
	}
}

func TestBridgeTapAndSysctl(t *testing.T) {
	n := NewTest(t, "alt")
	if err := n.AddBridge("br0"); err != nil {
		t.Fatal(err)
	}
	if err := n.AddTap("tap0", "br0"); err != nil {
		t.Fatal(err)
	}
	n.MustAddr(t, "br0", "10.78.0.1/24")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.Command(ctx, "ip", "-o", "link", "show", "tap0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "master br0") {
		t.Fatalf("tap0 not on br0: %v\n%s", err, out)
	}
	if err := n.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
}

// TestDeleteKillsProcessesInside: a process left running inside a
// namespace is killed by Delete. The test waits until the process is
// really inside (listed by `ip netns pids` and running sleep, not still
// `ip netns exec` on its way in) and fails unless it then dies by SIGKILL,
// so it cannot pass by deleting the namespace before anything entered it.
func TestDeleteKillsProcessesInside(t *testing.T) {
	RequireTool(t, "sleep", "coreutils")
	m, err := Add(UniqueName("alt"))
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_ = m.Delete()
		}
	})
	cmd := m.Command(context.Background(), "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Kill()
			<-done
		}
	})
	pid := strconv.Itoa(cmd.Process.Pid)
	inside := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ip", "netns", "pids", m.Name).Output()
		if err != nil || !slices.Contains(strings.Fields(string(out)), pid) {
			return false
		}
		comm, err := os.ReadFile("/proc/" + pid + "/comm")
		return err == nil && strings.TrimSpace(string(comm)) == "sleep"
	}
	for deadline := time.Now().Add(10 * time.Second); !inside(); time.Sleep(20 * time.Millisecond) {
		select {
		case <-done:
			t.Fatalf("sleep 60 in %s exited before Delete: %v", m.Name, cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s never showed up inside %s as sleep", pid, m.Name)
		}
	}
	deleted = true
	if err := m.Delete(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("process inside deleted namespace still running")
	}
	if st, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !st.Signaled() || st.Signal() != syscall.SIGKILL {
		t.Fatalf("process inside %s ended with %v, not by Delete's SIGKILL", m.Name, cmd.ProcessState)
	}
	if _, err := os.Stat(filepath.Join(RunDir, m.Name)); !os.IsNotExist(err) {
		t.Fatalf("namespace %s still exists: %v", m.Name, err)
	}
}

func TestAddRejectsBadName(t *testing.T) {
	if _, err := Add("a/b"); err == nil {
		t.Fatal("Add accepted a name with a slash")
	}
}

// TestQuietVethCountsWhatIsRoutedOut: a quiet veth as a namespace's
// default route sends nothing of its own (zero after it comes up) and counts
// what a process sends off the namespace, so a zero from TxPackets means
// nothing tried to leave.
func TestQuietVethCountsWhatIsRoutedOut(t *testing.T) {
	n := NewTest(t, "alt")
	out := NewTest(t, "alt")
	if err := AddQuietVeth(n, "uplink0", out, "wan0"); err != nil {
		t.Fatal(err)
	}
	if err := n.AddRoute("default", "dev", "uplink0"); err != nil {
		t.Fatal(err)
	}
	got, err := n.TxPackets("uplink0")
	if err != nil {
		t.Fatal(err)
	}
	if got != 0 {
		t.Fatalf("a fresh quiet veth sent %d packets, want 0", got)
	}
	err = n.Do(func() error {
		c, err := net.Dial("udp4", "192.0.2.1:9") // TEST-NET-1: off the namespace
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("leak"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The datagram waits on ARP for its on-link destination: the request
	// is what leaves first.
	if got, err = n.TxPackets("uplink0"); err != nil || got == 0 {
		t.Fatalf("after a datagram off the namespace the uplink counted %d (%v), want more than 0", got, err)
	}
	if _, err := n.TxPackets("nosuchlink"); err == nil {
		t.Fatal("TxPackets of a missing link: no error")
	}
}
