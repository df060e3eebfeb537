// Command httpboot benchmarks airlock's HTTP boot file serving against
// nginx (sendfile on) serving the same files: throughput and server
// CPU-seconds per GiB with 50 and 200 parallel clients. Both servers run in
// a private network namespace on its loopback; the load generator is this
// program.
//
//	go run ./bench/httpboot        (root; apt-get install nginx-light)
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"airlock.dev/airlock/e2e/netns"
	"airlock.dev/airlock/services/httpboot"
)

func main() {
	serve := flag.String("serve", "", "internal: serve this directory with airlock httpboot on -addr")
	addr := flag.String("addr", "127.0.0.1:8080", "internal: listen address")
	duration := flag.Duration("duration", 8*time.Second, "per measurement")
	sizeMiB := flag.Int("size", 64, "file size in MiB")
	cpuprofile := flag.String("cpuprofile", "", "internal: CPU profile of the airlock server")
	flag.Parse()
	if *serve != "" && *cpuprofile != "" {
		f, _ := os.Create(*cpuprofile)
		pprof.StartCPUProfile(f)
		go func() { time.Sleep(8 * time.Second); pprof.StopCPUProfile(); f.Close() }()
	}
	if *serve != "" {
		serveAirlock(*serve, *addr)
		return
	}
	if _, err := exec.LookPath("nginx"); err != nil {
		log.Fatal("nginx not found: apt-get install nginx-light")
	}
	dir, err := os.MkdirTemp("", "airlock-bench-http")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	files := filepath.Join(dir, "files")
	os.MkdirAll(files, 0o755)
	buf := make([]byte, *sizeMiB<<20)
	rand.Read(buf)
	if err := os.WriteFile(filepath.Join(files, "vmlinuz"), buf, 0o644); err != nil {
		log.Fatal(err)
	}

	ns, err := netns.Add(netns.UniqueName("albh"))
	if err != nil {
		log.Fatal(err)
	}
	defer ns.Delete()

	self, _ := os.Executable()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	air := ns.Command(ctx, self, "-serve", files, "-addr", "127.0.0.1:8080", "-cpuprofile", os.Getenv("BENCH_HTTP_PROFILE"))
	air.Stderr = os.Stderr
	if err := air.Start(); err != nil {
		log.Fatal(err)
	}
	nginx := startNginx(ctx, ns, dir, files)
	time.Sleep(time.Second)

	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 512,
		DisableCompression:  true,
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, address)
				return err
			})
			return c, err
		},
	}}
	type row struct {
		name     string
		par      int
		gib, cpu float64
		secs     float64
	}
	var rows []row
	for _, par := range []int{50, 200} {
		for _, srv := range []struct {
			name string
			url  string
			pids func() []int
		}{
			{"airlock", "http://127.0.0.1:8080/files/vmlinuz", func() []int { return []int{air.Process.Pid} }},
			{"nginx", "http://127.0.0.1:8081/files/vmlinuz", func() []int { return nsPids(ns, "nginx") }},
		} {
			pids := srv.pids()
			c0 := cpuSeconds(pids)
			t0 := time.Now()
			n, err := load(client, srv.url, par, *duration, int64(len(buf)))
			secs := time.Since(t0).Seconds()
			c1 := cpuSeconds(pids)
			if err != nil {
				log.Fatalf("%s: %v", srv.name, err)
			}
			gib := float64(n) / (1 << 30)
			rows = append(rows, row{srv.name, par, gib, c1 - c0, secs})
			fmt.Printf("%-8s %3d clients: %6.2f GiB in %.1fs = %5.2f GiB/s, server CPU %.2f s = %.3f CPU-s/GiB\n",
				srv.name, par, gib, secs, gib/secs, c1-c0, (c1-c0)/gib)
		}
	}
	for i := 0; i+1 < len(rows); i += 2 {
		a, n := rows[i], rows[i+1]
		fmt.Printf("%d clients: throughput airlock/nginx %.2fx; CPU-s per GiB airlock/nginx %.2fx (<=1 is the goal)\n",
			a.par, (a.gib/a.secs)/(n.gib/n.secs), (a.cpu/a.gib)/(n.cpu/n.gib))
	}
	cancel()
	_ = air.Wait()
	_ = nginx.Wait()
}

// load runs par clients fetching url repeatedly for d and returns the
// bytes received.
func load(c *http.Client, url string, par int, d time.Duration, size int64) (int64, error) {
	var total atomic.Int64
	var firstErr error
	var once sync.Once
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range par {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				resp, err := c.Get(url)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				total.Add(n)
				if err != nil || n != size {
					once.Do(func() { firstErr = fmt.Errorf("short body %d: %v", n, err) })
					return
				}
			}
		})
	}
	wg.Wait()
	return total.Load(), firstErr
}

func serveAirlock(dir, addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	cfg := httpboot.Defaults()
	cfg.BaseURL = "http://" + addr
	s, err := httpboot.New(cfg, ln, httpboot.NewMemBackend(httpboot.BootSpec{State: httpboot.StateLocal}), nil, os.DirFS(dir), nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Run(context.Background()); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

func startNginx(ctx context.Context, ns *netns.NS, dir, files string) *exec.Cmd {
	conf := fmt.Sprintf(`user root;
worker_processes 2;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy; fastcgi_temp_path %[1]s/fcgi;
  uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;
  types { application/octet-stream vmlinuz; }
  server { listen 127.0.0.1:8081; location /files/ { alias %[2]s/; } }
}
`, dir, files)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		log.Fatal(err)
	}
	cmd := ns.Command(ctx, "nginx", "-c", path, "-p", dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	return cmd
}

// nsPids lists the processes named comm inside ns.
func nsPids(ns *netns.NS, comm string) []int {
	out, _ := exec.Command("ip", "netns", "pids", ns.Name).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, _ := strconv.Atoi(f)
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(b)) == comm {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cpuSeconds sums user+system time of pids (from /proc/PID/stat).
func cpuSeconds(pids []int) float64 {
	var ticks float64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		s = s[strings.LastIndexByte(s, ')')+2:]
		f := strings.Fields(s)
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		ticks += u + st
	}
	return ticks / 100 // USER_HZ
}
