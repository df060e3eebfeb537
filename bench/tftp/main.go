// Command tftp benchmarks airlock's TFTP server against tftpd-hpa at
// blksize 1432: MiB/s for one transfer at a time and for 8 at once, server
// and client in two namespaces joined by a veth pair. The client is
// pin/tftp's, negotiating blksize 1432 with both servers.
//
//	go run ./bench/tftp            (root; apt-get install tftpd-hpa)
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	ptftp "github.com/pin/tftp/v3"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/services/tftp"
)

func main() {
	duration := flag.Duration("duration", 6*time.Second, "per measurement")
	sizeMiB := flag.Int("size", 16, "file size in MiB")
	flag.Parse()
	if _, err := exec.LookPath("in.tftpd"); err != nil {
		log.Fatal("in.tftpd not found: apt-get install tftpd-hpa")
	}
	if err := run(*duration, *sizeMiB<<20); err != nil {
		log.Fatal(err)
	}
}

// run makes the namespaces, measures both servers and removes everything
// it made, also when it fails.
func run(duration time.Duration, size int) error {
	dir, err := os.MkdirTemp("", "airlock-bench-tftp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	buf := make([]byte, size)
	rand.Read(buf)
	if err := os.WriteFile(filepath.Join(dir, "ipxe.efi"), buf, 0o644); err != nil {
		return err
	}
	// tftpd-hpa drops to the tftp user: let it read the directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}

	s, err := netns.Add(netns.UniqueName("albts"))
	if err != nil {
		return err
	}
	defer s.Delete()
	c, err := netns.Add(netns.UniqueName("albtc"))
	if err != nil {
		return err
	}
	defer c.Delete()
	if err := netns.AddVeth(s, "eth0", c, "eth0"); err != nil {
		return err
	}
	if err := s.AddAddr("eth0", "10.91.0.1/24"); err != nil {
		return err
	}
	if err := c.AddAddr("eth0", "10.91.0.2/24"); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// airlock on 10.91.0.1:69, lock-step (RFC 1350 + options).
	var conn net.PacketConn
	if err := s.Do(func() error {
		var err error
		conn, err = net.ListenPacket("udp4", "10.91.0.1:69")
		return err
	}); err != nil {
		return err
	}
	cfg := tftp.Defaults()
	cfg.MaxPerClient = 8 // the 8 parallel transfers all come from the one client namespace
	srv, err := tftp.New(os.DirFS(dir), conn, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		conn.Close()
		return err
	}
	served := make(chan struct{})
	go func() { srv.Run(ctx); close(served) }()
	defer func() { cancel(); <-served }()
	// tftpd-hpa on 10.91.0.1:6969.
	hpa := s.Command(ctx, "in.tftpd", "-L", "-a", "10.91.0.1:6969", "-s", dir)
	hpa.Stderr = os.Stderr
	if err := hpa.Start(); err != nil {
		return err
	}
	defer func() { cancel(); _ = hpa.Wait() }()
	time.Sleep(500 * time.Millisecond)

	res := map[string]float64{}
	for _, par := range []int{1, 8} {
		for _, t := range []struct{ name, addr string }{{"airlock", "10.91.0.1:69"}, {"tftpd-hpa", "10.91.0.1:6969"}} {
			mibs, err := measure(c, t.addr, par, duration, int64(len(buf)))
			if err != nil {
				return fmt.Errorf("%s: %v", t.name, err)
			}
			res[fmt.Sprint(t.name, par)] = mibs
			fmt.Printf("%-9s %d transfer(s) at once, blksize 1432: %6.1f MiB/s\n", t.name, par, mibs)
		}
	}
	for _, par := range []int{1, 8} {
		fmt.Printf("%d at once: ratio airlock/tftpd-hpa %.2fx\n", par, res[fmt.Sprint("airlock", par)]/res[fmt.Sprint("tftpd-hpa", par)])
	}
	return nil
}

func measure(ns *netns.NS, addr string, par int, d time.Duration, size int64) (float64, error) {
	var total atomic.Int64
	var firstErr error
	var once sync.Once
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range par {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				n, err := fetch(ns, addr)
				total.Add(n)
				if err != nil || n != size {
					once.Do(func() { firstErr = fmt.Errorf("got %d bytes: %v", n, err) })
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(total.Load()) / (1 << 20) / time.Since(start).Seconds(), firstErr
}

func fetch(ns *netns.NS, addr string) (int64, error) {
	var wt io.WriterTo
	err := ns.Do(func() error {
		c, err := ptftp.NewClient(addr)
		if err != nil {
			return err
		}
		c.SetBlockSize(1432)
		c.SetTimeout(time.Second)
		wt, err = c.Receive("ipxe.efi", "octet")
		return err
	})
	if err != nil {
		return 0, err
	}
	return wt.WriteTo(io.Discard)
}
