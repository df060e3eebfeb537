package lab

import (
	"context"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"airlock.dev/airlock/e2e/netns"
)

// routerAdvertisement is an ICMPv6 router advertisement (RFC 4861 4.2) that
// says "no default router, no prefixes, no DHCPv6": type 134, hop limit 0,
// flags 0, router lifetime 0, reachable time 0, retransmit timer 0. The
// kernel fills in the checksum.
var routerAdvertisement = []byte{134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// openRouterSocket opens, inside ns, a raw ICMPv6 socket sending to the
// all-nodes group on ifname with hop limit 255 (receivers drop RAs with any
// other). Sockets keep the namespace they were opened in.
func openRouterSocket(ns *netns.NS, ifname string) (fd int, err error) {
	err = ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		for _, o := range []struct{ opt, v int }{{unix.IPV6_MULTICAST_HOPS, 255}, {unix.IPV6_UNICAST_HOPS, 255}, {unix.IPV6_MULTICAST_IF, ifi.Index}} {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, o.opt, o.v); err != nil {
				unix.Close(fd)
				return err
			}
		}
		return nil
	})
	if err != nil {
		return -1, fmt.Errorf("open router advertisement socket on %s: %w", ifname, err)
	}
	return fd, nil
}

func sendRouterAdvertisement(fd, ifindex int) error {
	to := &unix.SockaddrInet6{ZoneId: uint32(ifindex)}
	copy(to.Addr[:], net.ParseIP("ff02::1").To16())
	return unix.Sendto(fd, routerAdvertisement, 0, to)
}

// runRouter advertises "no IPv6 router here" on the lab's bridge every
// interval. Firmware iPXE (Debian's 2019 build) otherwise waits about 13 s
// for an IPv6 router before it uses its IPv4 address: measured in the lab,
// a BIOS VM reached its boot script 16.7 s after iPXE began configuring
// without this, 2.1 s with it. The first sends fail while the bridge's
// link-local address is still tentative; they are retried.
func runRouter(ctx context.Context, ns *netns.NS, bridge string, interval time.Duration) error {
	fd, err := openRouterSocket(ns, bridge)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var ifindex int
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(bridge)
		if err == nil {
			ifindex = ifi.Index
		}
		return err
	}); err != nil {
		return err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		_ = sendRouterAdvertisement(fd, ifindex)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
