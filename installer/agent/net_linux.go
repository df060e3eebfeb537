package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/jsimonetti/rtnetlink/rtnl"
)

// EthernetNICs returns the names of the physical Ethernet NICs in sysRoot
// (normally /sys/class/net): those with a device and type 1.
func EthernetNICs(classNet string) ([]string, error) {
	entries, err := os.ReadDir(classNet)
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	var out []string
	for _, e := range entries {
		dir := classNet + "/" + e.Name()
		if _, err := os.Stat(dir + "/device"); err != nil {
			continue
		}
		if t, _ := os.ReadFile(dir + "/type"); strings.TrimSpace(string(t)) != "1" {
			continue
		}
		out = append(out, e.Name())
	}
	return out, nil
}

// LinksUp brings the named interfaces up.
func LinksUp(names []string) error {
	rt, err := rtnl.Dial(nil)
	if err != nil {
		return fmt.Errorf("open rtnetlink: %w", err)
	}
	defer rt.Close()
	var errs []error
	for _, n := range names {
		ifi, err := net.InterfaceByName(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("bring %s up: %w", n, err))
			continue
		}
		if err := rt.LinkUp(ifi); err != nil {
			errs = append(errs, fmt.Errorf("bring %s up: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// WaitCarrier waits up to timeout for any of names to report carrier and
// returns those that have it.
func WaitCarrier(ctx context.Context, classNet string, names []string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		var up []string
		for _, n := range names {
			if c, _ := os.ReadFile(classNet + "/" + n + "/carrier"); strings.TrimSpace(string(c)) == "1" {
				up = append(up, n)
			}
		}
		if len(up) > 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return up
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Lease is the address the agent got.
type Lease struct {
	Interface string
	MAC       net.HardwareAddr
	Addr      net.IPNet
	Router    net.IP
	Server    net.IP
}

// DHCP runs a DHCP exchange on each of names at once and configures the
// first lease it gets on its interface (address and, if given, default
// route). The whole attempt is bounded by timeout.
func DHCP(ctx context.Context, log *slog.Logger, names []string, timeout time.Duration) (Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		l   Lease
		err error
	}
	results := make(chan result, len(names))
	// Open every socket here, on the caller's thread, so that a caller
	// inside a network namespace gets them there; exchange concurrently.
	var errs []error
	started := 0
	for _, n := range names {
		c, err := nclient4.New(n, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(1000))
		if err != nil {
			errs = append(errs, fmt.Errorf("DHCP client on %s: %w", n, err))
			continue
		}
		started++
		go func() {
			defer c.Close()
			l, err := request(ctx, c, n)
			results <- result{l, err}
		}()
	}
	for range started {
		r := <-results
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		cancel() // stop the others
		if err := configure(r.l); err != nil {
			return r.l, err
		}
		log.Info("DHCP lease", "nic", r.l.Interface, "addr", r.l.Addr.String(), "router", r.l.Router, "server", r.l.Server)
		return r.l, nil
	}
	if len(errs) == 0 {
		return Lease{}, errors.New("DHCP: no interface to try")
	}
	// Drain nothing: the remaining goroutines end with ctx.
	return Lease{}, fmt.Errorf("DHCP: %w", errors.Join(errs...))
}

func request(ctx context.Context, c *nclient4.Client, ifname string) (Lease, error) {
	lease, err := c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("airlock-agent")))
	if err != nil {
		return Lease{}, fmt.Errorf("DHCP on %s: %w", ifname, err)
	}
	ack := lease.ACK
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	l := Lease{
		Interface: ifname,
		MAC:       c.InterfaceAddr(),
		Addr:      net.IPNet{IP: ack.YourIPAddr.To4(), Mask: mask},
		Server:    ack.ServerIdentifier(),
	}
	if r := ack.Router(); len(r) > 0 {
		l.Router = r[0]
	}
	return l, nil
}

func configure(l Lease) error {
	rt, err := rtnl.Dial(nil)
	if err != nil {
		return fmt.Errorf("open rtnetlink: %w", err)
	}
	defer rt.Close()
	ifi, err := net.InterfaceByName(l.Interface)
	if err != nil {
		return fmt.Errorf("configure %s: %w", l.Interface, err)
	}
	if err := rt.AddrAdd(ifi, &l.Addr); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("add %s to %s: %w", l.Addr.String(), l.Interface, err)
	}
	if l.Router != nil && !l.Router.IsUnspecified() {
		dst := net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		if err := rt.RouteReplace(ifi, dst, l.Router); err != nil {
			return fmt.Errorf("default route via %s: %w", l.Router, err)
		}
	}
	return nil
}
