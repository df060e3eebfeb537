// Command dhcpra measures what airlock's "no IPv6 router here"
// advertisement (services/ra) saves when Debian's iPXE boots: a
// QEMU BIOS machine (TCG) with QEMU's iPXE ROM network-boots from airlock's
// DHCP and TFTP in a namespace; its first script chains undionly.kpxe over
// TFTP, and the time from that first script fetch to the second (made by
// undionly.kpxe's iPXE after its own DHCP and IPv6 autoconfiguration) is
// measured with the advertisement (one a second, as serve sends them) off
// and on.
//
//	go run ./bench/dhcpra          (root; apt-get install qemu-system-x86 ipxe-qemu ipxe)
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"airlock.dev/airlock/bench/internal/stats"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/services/dhcp"
	"airlock.dev/airlock/services/ra"
	"airlock.dev/airlock/services/tftp"
)

func main() {
	runs := flag.Int("runs", 2, "boots per setting")
	flag.Parse()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		log.Fatal("qemu-system-x86_64 not found: apt-get install qemu-system-x86 ipxe-qemu")
	}
	if _, err := os.Stat("/usr/lib/ipxe/undionly.kpxe"); err != nil {
		log.Fatal("undionly.kpxe not found: apt-get install ipxe")
	}
	res := map[bool][]time.Duration{}
	rom := map[bool][]time.Duration{}
	for i := range *runs {
		for _, on := range []bool{false, true} {
			first, d, err := boot(qemu, on, i)
			if err != nil {
				log.Fatalf("router advertisement %v: %v", on, err)
			}
			fmt.Printf("run %d, router advertisement %-5v: QEMU start to the ROM's script %5.1f s; undionly.kpxe to its script %5.1f s\n",
				i+1, on, first.Seconds(), d.Seconds())
			res[on] = append(res[on], d)
			rom[on] = append(rom[on], first)
		}
	}
	off, on := stats.Median(res[false]), stats.Median(res[true])
	fmt.Printf("undionly.kpxe (Debian ipxe): median %.1f s without the advertisement, %.1f s with it: %.1f s saved per boot\n",
		off.Seconds(), on.Seconds(), (off - on).Seconds())
	fmt.Printf("QEMU iPXE ROM (ipxe-qemu): median %.1f s without, %.1f s with (QEMU TCG)\n",
		stats.Median(rom[false]).Seconds(), stats.Median(rom[true]).Seconds())
}

func boot(qemu string, withRA bool, run int) (rom, chained time.Duration, err error) {
	ns, err := netns.Add(netns.UniqueName("albra"))
	if err != nil {
		return 0, 0, err
	}
	defer ns.Delete()
	for _, err := range []error{ns.AddBridge("br0"), ns.AddAddr("br0", "10.79.0.1/24"), ns.AddTap("tap0", "br0")} {
		if err != nil {
			return 0, 0, err
		}
	}
	// The bridge needs its IPv6 link-local address before it can answer.
	time.Sleep(2500 * time.Millisecond)

	var socks *dhcp.Sockets
	var tconn net.PacketConn
	var hln net.Listener
	var adv *ra.Advertiser
	if err := ns.Do(func() error {
		var err error
		if socks, err = dhcp.Listen("br0", false); err != nil {
			return err
		}
		if withRA {
			if adv, err = ra.Open("br0"); err != nil {
				return err
			}
		}
		if tconn, err = net.ListenPacket("udp4", "10.79.0.1:69"); err != nil {
			return err
		}
		hln, err = net.Listen("tcp", "10.79.0.1:8080")
		return err
	}); err != nil {
		return 0, 0, err
	}
	cfg := dhcp.Defaults()
	cfg.Interface = "br0"
	cfg.Mode = dhcp.ModeFull
	cfg.ServerIP = netip.MustParseAddr("10.79.0.1")
	cfg.Subnet = dhcp.Subnet{Prefix: netip.MustParsePrefix("10.79.0.0/24"),
		RangeStart: netip.MustParseAddr("10.79.0.100"), RangeEnd: netip.MustParseAddr("10.79.0.200")}
	cfg.ForeignProbe = 0
	cfg.Boot.HTTPBase = "http://10.79.0.1:8080"
	logger := slog.New(slog.DiscardHandler)
	dsrv, err := dhcp.New(cfg, socks, dhcp.NewMemStore(), logger)
	if err != nil {
		return 0, 0, err
	}
	tsrv, err := tftp.New(os.DirFS("/usr/lib/ipxe"), tconn, tftp.Defaults(), logger)
	if err != nil {
		return 0, 0, err
	}
	// The first script fetch (QEMU's iPXE ROM) chains undionly.kpxe; the
	// second comes from undionly.kpxe's iPXE.
	var mu sync.Mutex
	var fetches []time.Time
	second := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/ipxe/boot.ipxe", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		fetches = append(fetches, time.Now())
		switch len(fetches) {
		case 1:
			fmt.Fprint(w, "#!ipxe\nchain tftp://10.79.0.1/undionly.kpxe\n")
		case 2:
			close(second)
			fmt.Fprint(w, "#!ipxe\npoweroff\n")
		default:
			fmt.Fprint(w, "#!ipxe\npoweroff\n")
		}
	})
	hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { _ = dsrv.Run(ctx) })
	wg.Go(func() { _ = tsrv.Run(ctx) })
	wg.Go(func() { _ = hsrv.Serve(hln) })
	if adv != nil {
		wg.Go(func() { _ = adv.Run(ctx, time.Second) })
	}
	defer func() { cancel(); hsrv.Close(); wg.Wait() }()
	<-dsrv.Ready()

	qctx, qcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer qcancel()
	dir, _ := os.MkdirTemp("", "airlock-bench-ra")
	defer os.RemoveAll(dir)
	vm := ns.Command(qctx, qemu, "-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot",
		"-serial", "file:"+filepath.Join(dir, "serial"),
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
		"-device", fmt.Sprintf("virtio-net-pci,netdev=n0,mac=52:54:00:79:00:%02x", run+1), "-boot", "n")
	begin := time.Now()
	if err := vm.Start(); err != nil {
		return 0, 0, err
	}
	defer func() { qcancel(); _ = vm.Wait() }()
	select {
	case <-second:
	case <-qctx.Done():
		return 0, 0, fmt.Errorf("no second script fetch within 3 minutes (%d fetches)", len(fetches))
	}
	mu.Lock()
	defer mu.Unlock()
	return fetches[0].Sub(begin), fetches[1].Sub(fetches[0]), nil
}
