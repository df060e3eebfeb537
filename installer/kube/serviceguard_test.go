package kube

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
)

// TestServiceGuardDropsOnlyUnrewrittenServiceTraffic applies the service
// guard's rules with the real iptables in a node namespace that routes to a
// gateway namespace, as a node routes to its site gateway. Before any
// kube-proxy rule exists, a connection to a Service address, from the node
// itself or forwarded from a pod namespace, must not send one packet to the
// gateway. Once a DNAT rule as kube-proxy writes them rewrites the Service
// address (nat OUTPUT for the node, nat PREROUTING for pods), both
// connections reach the endpoint behind the gateway.
func TestServiceGuardDropsOnlyUnrewrittenServiceTraffic(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces and iptables): run the tests as root, as make test does")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatal("iptables missing: apt-get install iptables")
	}
	mk := func(prefix string) *netns.NS {
		ns, err := netns.Add(netns.UniqueName(prefix))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ns.Delete() })
		return ns
	}
	node, gw, pod := mk("sgn"), mk("sgg"), mk("sgp")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netns.AddQuietVeth(node, "up0", gw, "down0"))
	must(netns.AddQuietVeth(pod, "eth0", node, "pod0"))
	must(node.AddAddr("up0", "192.0.2.10/24"))
	must(gw.AddAddr("down0", "192.0.2.1/24"))
	must(node.AddAddr("pod0", "10.244.0.1/24"))
	must(pod.AddAddr("eth0", "10.244.0.2/24"))
	must(node.AddRoute("default", "via", "192.0.2.1"))
	must(pod.AddRoute("default", "via", "10.244.0.1"))
	must(gw.AddRoute("10.244.0.0/24", "via", "192.0.2.10"))
	must(node.Sysctl("net.ipv4.ip_forward", "1"))

	prog, rules := ServiceGuardRules(netip.MustParsePrefix(DefaultServiceCIDR))
	ipt := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if out, err := node.Command(ctx, prog, append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", prog, args, err, out)
		}
	}
	for _, r := range rules {
		ipt(append([]string{"-I"}, r...)...)
	}

	// The endpoint behind the gateway, as an API server off the node.
	var ln net.Listener
	must(gw.Do(func() (err error) { ln, err = net.Listen("tcp", "192.0.2.1:6443"); return err }))
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dial := func(ns *netns.NS) error {
		return ns.Do(func() error {
			c, err := net.DialTimeout("tcp", "10.96.0.1:443", 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	before, err := node.TxPackets("up0")
	must(err)
	for name, ns := range map[string]*netns.NS{"the node": node, "a pod": pod} {
		if err := dial(ns); err == nil {
			t.Fatalf("%s reached the Service address with no kube-proxy rule", name)
		}
	}
	after, err := node.TxPackets("up0")
	must(err)
	if after != before {
		t.Fatalf("the node sent %d packets to its gateway for a Service address no rule rewrote", after-before)
	}

	// kube-proxy's rewrite, in the chains kube-proxy uses.
	for _, chain := range []string{"OUTPUT", "PREROUTING"} {
		ipt("-t", "nat", "-A", chain, "-d", "10.96.0.1/32", "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination", "192.0.2.1:6443")
	}
	var errs []error
	for name, ns := range map[string]*netns.NS{"the node": node, "a pod": pod} {
		if err := dial(ns); err != nil {
			errs = append(errs, errors.New(name+": "+err.Error()))
		}
	}
	if len(errs) > 0 {
		t.Fatalf("rewritten Service traffic was dropped: %v", errors.Join(errs...))
	}
}
