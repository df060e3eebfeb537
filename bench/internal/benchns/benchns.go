// Package benchns gives a benchmark a network namespace of its own, with
// the TCP congestion control it names, and a dialer into it for the load
// generator.
package benchns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"airlock.dev/airlock/installer/lab/netns"
)

// DefaultCC is the congestion control the benchmarks measure under unless
// told otherwise.
//
// Why not the host's: a congestion control that paces (bbr; this machine's
// host default, not Debian's, which is cubic) sends on loopback from
// hrtimer-driven softirqs, charged to whichever process happens to be
// running when the timer fires, the load generator most of the time. A
// server's CPU figure then measures who was on the CPU more than what the
// server costs (bench/results-boot.md, session 3: the whole machine's CPU
// per GiB 0.81x nginx's while the server's share was 1.27x), and pacing
// halves throughput for both peers. reno, like cubic, does not pace; a
// namespace other than the host's may only pick from
// net.ipv4.tcp_allowed_congestion_control, which need not hold cubic.
const DefaultCC = "reno"

// New creates a namespace named after prefix, with its loopback up and cc
// as its congestion control ("" keeps the host's default, which a new
// namespace inherits). The caller deletes it.
func New(prefix, cc string) (*netns.NS, error) {
	ns, err := netns.Add(netns.UniqueName(prefix))
	if err != nil {
		return nil, err
	}
	if cc == "" {
		return ns, nil
	}
	err = ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/tcp_congestion_control", []byte(cc), 0)
	})
	if err != nil {
		err = fmt.Errorf("congestion control %s: %w (a namespace may pick only from net.ipv4.tcp_allowed_congestion_control)", cc, err)
		return nil, errors.Join(err, ns.Delete())
	}
	return ns, nil
}

// CongestionControl is the TCP congestion control in effect in ns.
func CongestionControl(ns *netns.NS) string {
	var cc string
	_ = ns.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
		cc = strings.TrimSpace(string(b))
		return err
	})
	return cc
}

// Dialer returns a DialContext that opens connections inside ns.
func Dialer(ns *netns.NS) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
}
