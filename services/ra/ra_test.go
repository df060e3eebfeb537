package ra

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"airlock.dev/airlock/installer/lab/netns"
)

// A host in another namespace receives the advertisement: ICMPv6 type 134,
// router lifetime 0, hop limit 255.
func TestAdvertisementReachesTheSegment(t *testing.T) {
	netns.RequireTool(t, "ip", "iproute2")
	srv := netns.NewTest(t, "alra")
	host := netns.NewTest(t, "alrh")
	if err := netns.AddVeth(srv, "prov0", host, "eth0"); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{srv.LinkUp("prov0"), host.LinkUp("eth0")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	var recv int
	if err := host.Do(func() error {
		var err error
		recv, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(recv, unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT, 1); err != nil {
			return err
		}
		return unix.SetsockoptTimeval(recv, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(recv)
	var adv *Advertiser
	if err := srv.Do(func() error {
		var err error
		adv, err = Open("prov0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer adv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- adv.Run(ctx, 200*time.Millisecond) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	buf := make([]byte, 1500)
	oob := make([]byte, 256)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		n, oobn, _, _, err := unix.Recvmsg(recv, buf, oob, 0)
		if err != nil {
			t.Fatalf("no router advertisement within 10 s: %v", err)
		}
		if n < 16 || buf[0] != 134 {
			continue // neighbour solicitations and the like
		}
		if lifetime := int(buf[6])<<8 | int(buf[7]); lifetime != 0 {
			t.Errorf("router lifetime %d, want 0", lifetime)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) == 0 || msgs[0].Header.Type != unix.IPV6_HOPLIMIT || msgs[0].Data[0] != 255 {
			t.Errorf("hop limit control message = %+v, %v; want 255", msgs, err)
		}
		return
	}
	t.Fatal("only other ICMPv6 traffic within 10 s")
}
