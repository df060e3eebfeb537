// Package netns creates and removes Linux network namespaces, veth pairs,
// bridges and tap devices, and runs commands or Go code inside a namespace.
//
// It drives iproute2 (`ip`) for configuration and uses setns(2) on a locked
// OS thread for in-process work, so a Go server can open its sockets inside a
// namespace. Every link it creates lives inside a namespace it was given:
// nothing here ever adds an interface to the caller's own namespace.
//
// The API returns errors so that product code (such as `airlock lab`) can use
// it; the helpers in testing.go wrap it for tests.
package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// RunDir is where iproute2 keeps the bind mounts of named namespaces.
const RunDir = "/run/netns"

// nameCounter makes names unique within one process. It is the package's only
// mutable global: uniqueness across the whole process is its purpose.
var nameCounter atomic.Uint64

// UniqueName returns prefix followed by the process id and a per-process
// counter, e.g. "al4242-3". Several people and test binaries share one
// machine, so names must never collide across processes.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), nameCounter.Add(1))
}

// NS is a named network namespace (one that `ip netns` knows).
type NS struct {
	Name string
}

// ipTimeout bounds every `ip` invocation.
const ipTimeout = 20 * time.Second

// ip runs `ip args...` and returns a wrapped error with its stderr on failure.
func ip(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Add creates the named namespace and brings its loopback up.
func Add(name string) (*NS, error) {
	if name == "" || strings.ContainsAny(name, "/ \x00") {
		return nil, fmt.Errorf("create namespace %q: invalid name", name)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w (install iproute2)", name, err)
	}
	if err := ip("netns", "add", name); err != nil {
		return nil, fmt.Errorf("create namespace: %w", err)
	}
	n := &NS{Name: name}
	if err := n.IP("link", "set", "lo", "up"); err != nil {
		return nil, errors.Join(err, n.Delete())
	}
	return n, nil
}

// Open returns the existing named namespace.
func Open(name string) (*NS, error) {
	if _, err := os.Stat(filepath.Join(RunDir, name)); err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	return &NS{Name: name}, nil
}

// Delete kills every process still inside the namespace (they can only be
// processes started in it, such as test clients) and removes it. Links inside
// it disappear with it; the peer end of a veth pair in another namespace goes
// too.
func (n *NS) Delete() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", n.Name).Output()
	if err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	if err := ip("netns", "delete", n.Name); err != nil {
		errs = append(errs, fmt.Errorf("delete namespace: %w", err))
	}
	return errors.Join(errs...)
}

// IP runs `ip -n NAME args...`, i.e. iproute2 configuration inside n.
func (n *NS) IP(args ...string) error {
	return ip(append([]string{"-n", n.Name}, args...)...)
}

// Command returns an *exec.Cmd that runs name with args inside n through
// `ip netns exec`. The caller owns the process (start, wait, kill by PID);
// ctx bounds its lifetime.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL, Setpgid: true}
	cmd.Cancel = func() error {
		// Kill the whole process group: `ip netns exec` execs the command,
		// but the command itself may have children.
		if cmd.Process == nil {
			return nil
		}
		return unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Do runs fn on an OS thread switched into n and switches the thread back
// afterwards. Sockets opened by fn stay in n after Do returns, so a Go server
// can bind inside a namespace and serve from any goroutine. Goroutines that fn
// starts do not run in n (they may run on other threads): open sockets inside
// fn and hand them out.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// A dedicated goroutine: if switching back fails, the goroutine
		// exits still locked and the runtime discards the tainted thread.
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: open own namespace: %w", n.Name, err)
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join(RunDir, n.Name))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", n.Name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: setns: %w", n.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("leave namespace %s: setns: %w", n.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// AddVeth creates a veth pair with end aName in a and end bName in b (a and b
// may be the same namespace) and brings both ends up.
func AddVeth(a *NS, aName string, b *NS, bName string) error {
	if err := a.IP("link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
		return fmt.Errorf("create veth %s/%s-%s/%s: %w", a.Name, aName, b.Name, bName, err)
	}
	return errors.Join(a.LinkUp(aName), b.LinkUp(bName))
}

// AddBridge creates a bridge inside n and brings it up.
func (n *NS) AddBridge(name string) error {
	if err := n.IP("link", "add", name, "type", "bridge"); err != nil {
		return fmt.Errorf("create bridge: %w", err)
	}
	// No STP forwarding delay: links forward at once.
	if err := n.IP("link", "set", name, "type", "bridge", "forward_delay", "0", "stp_state", "0"); err != nil {
		return fmt.Errorf("configure bridge: %w", err)
	}
	return n.LinkUp(name)
}

// AddTap creates a persistent tap device inside n, optionally attaches it to
// bridge (empty for none) and brings it up. QEMU opens it with
// `-netdev tap,ifname=NAME,script=no,downscript=no` run inside n.
func (n *NS) AddTap(name, bridge string) error {
	if err := n.IP("tuntap", "add", "dev", name, "mode", "tap"); err != nil {
		return fmt.Errorf("create tap: %w", err)
	}
	if bridge != "" {
		if err := n.SetMaster(name, bridge); err != nil {
			return err
		}
	}
	return n.LinkUp(name)
}

// AddQuietVeth is AddVeth with IPv6 off on both ends before they come up,
// so that neither end sends anything of its own (no neighbour discovery,
// no MLD): what such a link carries, something else sent.
func AddQuietVeth(a *NS, aName string, b *NS, bName string) error {
	if err := a.IP("link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
		return fmt.Errorf("create veth %s/%s-%s/%s: %w", a.Name, aName, b.Name, bName, err)
	}
	if err := errors.Join(a.Sysctl("net.ipv6.conf."+aName+".disable_ipv6", "1"), b.Sysctl("net.ipv6.conf."+bName+".disable_ipv6", "1")); err != nil {
		return err
	}
	return errors.Join(a.LinkUp(aName), b.LinkUp(bName))
}

// TxPackets returns how many packets dev inside n has sent (its kernel
// counter, as `ip -s link` shows it).
func (n *NS) TxPackets(dev string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "-n", n.Name, "-j", "-s", "link", "show", "dev", dev).Output()
	if err != nil {
		return 0, fmt.Errorf("read counters of %s in %s: %w", dev, n.Name, err)
	}
	var links []struct {
		Stats64 struct {
			TX struct {
				Packets *uint64 `json:"packets"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 || links[0].Stats64.TX.Packets == nil {
		return 0, fmt.Errorf("read counters of %s in %s: unexpected `ip -j -s link` output %.200q (%v)", dev, n.Name, out, err)
	}
	return *links[0].Stats64.TX.Packets, nil
}

// SetMaster attaches dev to bridge inside n.
func (n *NS) SetMaster(dev, bridge string) error {
	if err := n.IP("link", "set", dev, "master", bridge); err != nil {
		return fmt.Errorf("attach %s to %s: %w", dev, bridge, err)
	}
	return nil
}

// AddAddr assigns cidr (e.g. "10.0.0.1/24") to dev inside n.
func (n *NS) AddAddr(dev, cidr string) error {
	if err := n.IP("addr", "add", cidr, "dev", dev); err != nil {
		return fmt.Errorf("assign address: %w", err)
	}
	return nil
}

// LinkUp brings dev up inside n.
func (n *NS) LinkUp(dev string) error {
	if err := n.IP("link", "set", dev, "up"); err != nil {
		return fmt.Errorf("bring link up: %w", err)
	}
	return nil
}

// AddRoute adds a route inside n, e.g. AddRoute("10.1.0.0/24", "via", "10.0.0.2").
func (n *NS) AddRoute(dst string, args ...string) error {
	if err := n.IP(append([]string{"route", "add", dst}, args...)...); err != nil {
		return fmt.Errorf("add route: %w", err)
	}
	return nil
}

// Sysctl writes a sysctl inside n (key in dotted form, e.g.
// "net.ipv4.ip_forward").
func (n *NS) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func() error {
		// /proc/sys/net reflects the namespace of the opening thread.
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Name, err)
		}
		return nil
	})
}
