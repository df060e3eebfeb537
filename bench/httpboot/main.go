// Command httpboot benchmarks airlock's HTTP boot file serving against
// nginx (sendfile on) serving the same files: throughput and server
// CPU-seconds per GiB with 50 and 200 parallel clients. Both servers run in
// a private network namespace on its loopback, with the TCP congestion
// control -cc (reno by default: see benchns.DefaultCC); the load generator
// is this program.
//
// Each client count is measured in -rounds rounds; a round measures both
// servers back to back, alternating which goes first, and the figures
// reported are the medians of the per-round ratios with their range. Each
// line also shows what decides the figure besides the server: the load
// generator's own CPU, ksoftirqd's (softirq work charged to neither
// server), how idle the machine was, and the server's context switches.
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
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"airlock.dev/airlock/bench/internal/benchns"
	"airlock.dev/airlock/bench/internal/procstat"
	"airlock.dev/airlock/bench/internal/stats"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/services/httpboot"
)

func main() {
	serve := flag.String("serve", "", "internal: serve this directory with airlock httpboot on -addr")
	addr := flag.String("addr", "127.0.0.1:8080", "internal: listen address")
	duration := flag.Duration("duration", 6*time.Second, "per measurement")
	sizeMiB := flag.Int("size", 64, "file size in MiB")
	cpuprofile := flag.String("cpuprofile", "", "internal: CPU profile of the airlock server")
	rounds := flag.Int("rounds", 5, "rounds per client count; each measures both servers, alternating which goes first")
	rate := flag.Float64("rate", 0, "total GiB/s the clients read at, paced per client (0: as fast as they can)")
	clients := flag.String("clients", "50,200", "client counts, comma-separated")
	cc := flag.String("cc", benchns.DefaultCC, "TCP congestion control in the benchmark's namespace (\"\": the host's default; see benchns.DefaultCC)")
	readBuf := flag.Int("readbuf", 8<<10, "bytes each client read asks for (8 KiB: what io.Copy(io.Discard) asked for before this flag)")
	flag.Parse()
	var counts []int
	for _, f := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			log.Fatalf("-clients: %q is not a positive number", f)
		}
		counts = append(counts, n)
	}
	if *serve != "" && *cpuprofile != "" {
		f, _ := os.Create(*cpuprofile)
		pprof.StartCPUProfile(f)
		go func() { time.Sleep(8 * time.Second); pprof.StopCPUProfile(); f.Close() }()
	}
	if *serve != "" {
		serveAirlock(*serve, *addr)
		return
	}
	// Ctrl-C or a kill ends the measuring, and run still stops the
	// servers and removes the namespace and its files.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, options{
		duration: *duration, size: *sizeMiB << 20, rounds: *rounds, rate: *rate,
		counts: counts, cc: *cc, readBuf: *readBuf,
	})
	if err != nil {
		log.Fatal(err)
	}
}

// options are the benchmark's settings from its flags.
type options struct {
	duration time.Duration
	size     int
	rounds   int
	rate     float64
	counts   []int
	cc       string
	readBuf  int
}

// run makes the namespace, starts both servers in it, measures and
// removes everything it made, also when it fails.
func run(ctx context.Context, o options) error {
	if _, err := exec.LookPath("nginx"); err != nil {
		return errors.New("nginx not found: apt-get install nginx-light")
	}
	dir, err := os.MkdirTemp("", "airlock-bench-http")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	files := filepath.Join(dir, "files")
	os.MkdirAll(files, 0o755)
	buf := make([]byte, o.size)
	rand.Read(buf)
	if err := os.WriteFile(filepath.Join(files, "vmlinuz"), buf, 0o644); err != nil {
		return err
	}

	ns, err := benchns.New("albh", o.cc)
	if err != nil {
		return err
	}
	defer ns.Delete()

	self, _ := os.Executable()
	ctx, cancel := context.WithCancel(ctx)
	var started []*exec.Cmd
	defer func() {
		cancel() // kills what was started
		for _, c := range started {
			_ = c.Wait()
		}
	}()
	air := ns.Command(ctx, self, "-serve", files, "-addr", "127.0.0.1:8080", "-cpuprofile", os.Getenv("BENCH_HTTP_PROFILE"))
	air.Stderr = os.Stderr
	if err := air.Start(); err != nil {
		return err
	}
	started = append(started, air)
	nginx, err := startNginx(ctx, ns, dir, files)
	if err != nil {
		return err
	}
	started = append(started, nginx)
	time.Sleep(time.Second)

	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 512,
		DisableCompression:  true,
		DialContext:         benchns.Dialer(ns),
	}}
	servers := []server{
		{"airlock", "http://127.0.0.1:8080/files/vmlinuz", func() []int { return []int{air.Process.Pid} }},
		{"nginx", "http://127.0.0.1:8081/files/vmlinuz", func() []int { return nsPids(ns, "nginx") }},
	}
	// Warm up both (page cache, connections, nginx's workers).
	for _, srv := range servers {
		if _, err := load(ctx, client, srv.url, 8, time.Second, int64(len(buf)), o.readBuf, 0); err != nil {
			return fmt.Errorf("%s: warm-up: %w", srv.name, err)
		}
	}
	pace := "as fast as they can"
	if o.rate > 0 {
		pace = fmt.Sprintf("paced to %.2f GiB/s in all", o.rate)
	}
	fmt.Printf("%d MiB file, %d rounds of %s per server and client count, order alternating; clients read %d KiB at a time, %s; TCP congestion control %s\n",
		o.size>>20, o.rounds, o.duration, o.readBuf>>10, pace, benchns.CongestionControl(ns))
	for _, par := range o.counts {
		var tput, cpu, mach []float64
		var a, n []sample
		for r := range o.rounds {
			order := []int{0, 1}
			if r%2 == 1 {
				order = []int{1, 0}
			}
			var got [2]sample
			for _, i := range order {
				s, err := measure(ctx, client, servers[i], par, o.duration, int64(len(buf)), o.readBuf, o.rate)
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("interrupted: %w", err)
				}
				if err != nil {
					return fmt.Errorf("%s: %w", servers[i].name, err)
				}
				got[i] = s
				fmt.Printf("round %d %-8s %3d clients: %s\n", r+1, servers[i].name, par, s)
			}
			a, n = append(a, got[0]), append(n, got[1])
			tput = append(tput, got[0].gibps()/got[1].gibps())
			cpu = append(cpu, got[0].cpuPerGiB()/got[1].cpuPerGiB())
			mach = append(mach, got[0].machinePerGiB()/got[1].machinePerGiB())
		}
		fmt.Printf("%d clients, medians of %d rounds: airlock %.2f GiB/s %.4f CPU-s/GiB; nginx %.2f GiB/s %.4f CPU-s/GiB\n",
			par, o.rounds, stats.MedianOf(a, sample.gibps), stats.MedianOf(a, sample.cpuPerGiB), stats.MedianOf(n, sample.gibps), stats.MedianOf(n, sample.cpuPerGiB))
		tm, tlo, thi := stats.Spread(tput)
		cm, clo, chi := stats.Spread(cpu)
		mm, mlo, mhi := stats.Spread(mach)
		fmt.Printf("%d clients: throughput airlock/nginx median %.2fx (%.2f-%.2f); CPU-s per GiB airlock/nginx median %.2fx (%.2f-%.2f) (<=1 is the goal)\n",
			par, tm, tlo, thi, cm, clo, chi)
		// Whether the goal is met beyond the rounds' spread: the median's
		// confidence interval lies below 1.
		ilo, ihi, cover := stats.MedianCI(cpu, 0.95)
		verdict := "at or below 1: the goal is met"
		switch {
		case ilo > 1:
			verdict = "above 1: the goal is missed"
		case ihi > 1:
			verdict = "1 is inside it: these rounds cannot tell"
		}
		fmt.Printf("%d clients: CPU ratio's median lies in %.2f-%.2f with %.0f%% confidence: %s\n", par, ilo, ihi, 100*cover, verdict)
		fmt.Printf("%d clients: whole machine's CPU-s per GiB airlock/nginx median %.2fx (%.2f-%.2f)\n", par, mm, mlo, mhi)
	}
	return nil
}

type server struct {
	name string
	url  string
	pids func() []int
}

// sample is one measurement of one server.
type sample struct {
	bytes   int64
	secs    float64
	server  float64 // server CPU-s
	client  float64 // this process's CPU-s (the load generator)
	softirq float64 // ksoftirqd CPU-s (softirq work charged to no server)
	idle    float64 // fraction of the machine's CPU time left idle
	machine float64 // busy CPU-s of the whole machine (server, load generator, softirqs)
	cs      float64 // server context switches
}

func (s sample) gib() float64       { return float64(s.bytes) / (1 << 30) }
func (s sample) gibps() float64     { return s.gib() / s.secs }
func (s sample) cpuPerGiB() float64 { return s.server / s.gib() }

// machinePerGiB does not depend on which process the kernel charged the
// loopback's receive path and softirqs to.
func (s sample) machinePerGiB() float64 { return s.machine / s.gib() }

func (s sample) String() string {
	return fmt.Sprintf("%6.2f GiB in %.1fs = %5.2f GiB/s, server %.2f CPU-s = %.4f CPU-s/GiB, %.0f context switches/GiB; client %.2f CPU-s, ksoftirqd %.2f, idle %2.0f%%, machine %.3f CPU-s/GiB",
		s.gib(), s.secs, s.gibps(), s.server, s.cpuPerGiB(), s.cs/s.gib(), s.client, s.softirq, 100*s.idle, s.machinePerGiB())
}

func measure(ctx context.Context, c *http.Client, srv server, par int, d time.Duration, size int64, readBuf int, rate float64) (sample, error) {
	// Fresh connections for every measurement, as every booting machine
	// opens its own: kept-alive ones carry TCP state (autotuned buffers)
	// from the previous measurement, which made nginx's figure drift
	// upwards round after round.
	c.CloseIdleConnections()
	pids := srv.pids()
	soft := nsPidsByPrefix("ksoftirqd/")
	c0, cl0, k0 := procstat.Sum(pids), procstat.Sum([]int{os.Getpid()}), procstat.Sum(soft)
	busy0, total0 := machineCPU()
	cs0 := contextSwitches(pids)
	t0 := time.Now()
	n, err := load(ctx, c, srv.url, par, d, size, readBuf, rate)
	secs := time.Since(t0).Seconds()
	c1, cl1, k1 := procstat.Sum(pids), procstat.Sum([]int{os.Getpid()}), procstat.Sum(soft)
	busy1, total1 := machineCPU()
	cs1 := contextSwitches(pids)
	s := sample{bytes: n, secs: secs, server: c1 - c0, client: cl1 - cl0, softirq: k1 - k0, cs: cs1 - cs0}
	if total1 > total0 {
		s.idle = 1 - (busy1-busy0)/(total1-total0)
	}
	s.machine = (busy1 - busy0) / 100 // USER_HZ
	return s, err
}

// load runs par clients fetching url repeatedly for d and returns the
// bytes received. Each client reads readBuf bytes at a time; with rate > 0
// each client is paced to rate/par GiB/s, taking 256 KiB and then waiting
// until it is due (as a client behind a slower link would).
func load(ctx context.Context, c *http.Client, url string, par int, d time.Duration, size int64, readBuf int, rate float64) (int64, error) {
	perClient := rate * (1 << 30) / float64(par) // bytes per second
	var total atomic.Int64
	var firstErr error
	var once sync.Once
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range par {
		wg.Go(func() {
			buf := make([]byte, readBuf)
			start := time.Now()
			var got int64
			for time.Now().Before(deadline) {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				resp, err := c.Do(req)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				var n int64
				for {
					m, err := resp.Body.Read(buf)
					n += int64(m)
					if perClient > 0 && (got+n)>>18 != (got+n-int64(m))>>18 {
						due := start.Add(time.Duration(float64(got+n) / perClient * float64(time.Second)))
						time.Sleep(time.Until(due))
					}
					if err == io.EOF {
						break
					}
					if err != nil {
						once.Do(func() { firstErr = err })
						break
					}
				}
				resp.Body.Close()
				total.Add(n)
				got += n
				if n != size {
					once.Do(func() { firstErr = fmt.Errorf("short body %d of %d", n, size) })
					return
				}
			}
		})
	}
	wg.Wait()
	return total.Load(), firstErr
}

// contextSwitches sums the voluntary and involuntary context switches of
// every thread of pids.
func contextSwitches(pids []int) float64 {
	var n float64
	for _, pid := range pids {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, t := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
			for _, line := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
					x, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
					n += x
				}
			}
		}
	}
	return n
}

// machineCPU returns the busy and total jiffies of the whole machine.
func machineCPU() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)[1:]
	for i, x := range f {
		v, _ := strconv.ParseFloat(x, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// nsPidsByPrefix lists the processes (of any namespace) whose comm starts
// with prefix.
func nsPidsByPrefix(prefix string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.HasPrefix(string(b), prefix) {
			pids = append(pids, pid)
		}
	}
	return pids
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

func startNginx(ctx context.Context, ns *netns.NS, dir, files string) (*exec.Cmd, error) {
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
		return nil, err
	}
	cmd := ns.Command(ctx, "nginx", "-c", path, "-p", dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	return cmd, nil
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
