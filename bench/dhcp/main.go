// Command dhcp benchmarks airlock's DHCP server against Kea 2.2
// (multi-threaded, memfile leases persisted) with perfdhcp, server and
// client in two network namespaces joined by a veth pair. It finds, for
// each server, the highest offered rate whose DORA exchanges complete with
// fewer than 2.5% drops, prints the ratio, and runs a 2,000-client
// avalanche against airlock counting NAKs.
//
//	go run ./bench/dhcp            (root; apt-get install kea-dhcp4-server kea-admin)
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"airlock.dev/airlock/installer/engine"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/dhcp"
)

func main() {
	ratesFlag := flag.String("rates", "1000,1500,2000,2500,3000,3500,4000,5000,6000,7000,8000", "offered DORA/s to try, ascending")
	period := flag.Int("period", 8, "seconds per rate")
	clients := flag.Int("clients", 50000, "distinct client MACs (perfdhcp -R)")
	keaThreads := flag.Int("kea-threads", 4, "Kea thread-pool-size")
	keaQueue := flag.Int("kea-queue", 256, "Kea packet-queue-size")
	only := flag.String("only", "", "run only this server: airlock or kea")
	workers := flag.Int("workers", 0, "airlock worker goroutines (0: the server's default)")
	memStore := flag.Bool("mem", false, "airlock keeps leases in memory only (to see what persistence costs)")
	stateStore := flag.Bool("state", false, "airlock keeps leases in its bbolt state store, as airlock serve does (default: the dhcp package's file store)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the airlock run")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if _, err := exec.LookPath("perfdhcp"); err != nil {
		log.Fatal("perfdhcp not found: apt-get install kea-admin")
	}
	if _, err := exec.LookPath("kea-dhcp4"); err != nil {
		log.Fatal("kea-dhcp4 not found: apt-get install kea-dhcp4-server")
	}
	var rates []int
	for _, f := range strings.Split(*ratesFlag, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			log.Fatalf("bad rate %q", f)
		}
		rates = append(rates, r)
	}
	err := run(options{
		rates: rates, period: *period, clients: *clients, keaThreads: *keaThreads, keaQueue: *keaQueue,
		only: *only, workers: *workers, memStore: *memStore, stateStore: *stateStore,
	})
	if err != nil {
		log.Fatal(err)
	}
}

// options are the benchmark's settings from its flags.
type options struct {
	rates                         []int
	period, clients               int
	keaThreads, keaQueue, workers int
	only                          string
	memStore, stateStore          bool
}

// run makes the namespaces, measures both servers and removes everything
// it made, also when it fails.
func run(o options) error {
	dir, err := os.MkdirTemp("", "airlock-bench-dhcp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// Two segments, one per server, both up for the whole run; each rate
	// is measured on airlock and then on Kea, so that load from other
	// processes on the machine hits both alike.
	aSrv, aCli, cleanupA, err := topology()
	if err != nil {
		return err
	}
	defer cleanupA()
	kSrv, kCli, cleanupK, err := topology()
	if err != nil {
		return err
	}
	defer cleanupK()

	store := dhcp.LeaseStore(dhcp.NewFileStore(filepath.Join(dir, "airlock-leases.jsonl")))
	storeText := "leases in a file (written before each ACK, fsync within 100 ms)"
	switch {
	case o.memStore:
		store, storeText = dhcp.NewMemStore(), "leases in memory only"
	case o.stateStore:
		st, err := state.Open(filepath.Join(dir, "state"))
		if err != nil {
			return err
		}
		defer st.Close()
		store, storeText = engine.Leases{Store: st}, "leases in the bbolt state store (one fsynced transaction per batch, before its ACKs), as airlock serve does"
	}
	ab, stop, err := startAirlock(aSrv, store, o.workers)
	if err != nil {
		return err
	}
	defer stop()
	stopKea, err := startKea(kSrv, dir, o.keaThreads, o.keaQueue)
	if err != nil {
		return err
	}
	defer stopKea()
	fmt.Printf("airlock: full mode, %s, probing off as in Kea 2.2\n", storeText)
	fmt.Printf("Kea 2.2: multi-threaded (%d threads, queue %d), memfile persisted\n", o.keaThreads, o.keaQueue)
	var airlockBest, keaBest int
	aOK, kOK := o.only != "kea", o.only != "airlock"
	for _, r := range o.rates {
		if !aOK && !kOK {
			break
		}
		if aOK {
			a, ok := point(aCli, "airlock", r, o.period, o.clients)
			aOK = ok
			if ok {
				airlockBest = max(airlockBest, a)
			}
		}
		if kOK {
			k, ok := point(kCli, "Kea", r, o.period, o.clients)
			kOK = ok
			if ok {
				keaBest = max(keaBest, k)
			}
		}
	}
	stats := ab.Handler().Stats()
	fmt.Printf("  (airlock: %d packets dropped with every worker busy)\n", ab.Dropped())
	if os.Getenv("BENCH_VERBOSE") != "" {
		for _, n := range []*netns.NS{aSrv, aCli, kSrv, kCli} {
			out, _ := n.Command(context.Background(), "sh", "-c", "grep Udp: /proc/net/snmp").CombinedOutput()
			fmt.Printf("  %s UDP counters:\n%s", n.Name, indent(string(out)))
		}
	}
	stop()
	stopKea()
	if o.only != "" {
		return nil
	}

	fmt.Println("== avalanche: 2,000 new clients at once against airlock")
	ab2, stop2, err := startAirlock(aSrv, dhcp.NewFileStore(filepath.Join(dir, "airlock-avalanche.jsonl")), o.workers)
	if err != nil {
		return err
	}
	out := perfdhcp(aCli, "--scenario", "avalanche", "-R", "2000", "-l", "eth0", "10.90.0.1")
	av := ab2.Handler().Stats()
	stop2()
	fmt.Print(indent(out))

	fmt.Printf("\nairlock max DORA/s with <2.5%% drops: %d (server sent %d offers, %d acks, %d naks)\n",
		airlockBest, stats.Offers, stats.Acks, stats.Naks)
	fmt.Printf("Kea     max DORA/s with <2.5%% drops: %d\n", keaBest)
	if keaBest > 0 {
		fmt.Printf("ratio airlock/Kea: %.2fx\n", float64(airlockBest)/float64(keaBest))
	}
	fmt.Printf("avalanche: %d acks, %d naks (want 2000 acks, 0 naks)\n", av.Acks, av.Naks)
	return nil
}

func topology() (srv, cli *netns.NS, cleanup func(), err error) {
	s, err := netns.Add(netns.UniqueName("albs"))
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := netns.Add(netns.UniqueName("albc"))
	if err != nil {
		s.Delete()
		return nil, nil, nil, err
	}
	cleanup = func() { c.Delete(); s.Delete() }
	err = netns.AddVeth(s, "eth0", c, "eth0")
	if err == nil {
		err = s.AddAddr("eth0", "10.90.0.1/16")
	}
	if err == nil {
		err = c.AddAddr("eth0", "10.90.0.2/16")
	}
	if err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	return s, c, cleanup, nil
}

// startAirlock runs airlock's DHCP server in ns; stop (safe to call more
// than once) ends it.
func startAirlock(ns *netns.NS, store dhcp.LeaseStore, workers int) (srv *dhcp.Server, stop func(), err error) {
	cfg := dhcp.Defaults()
	cfg.Interface = "eth0"
	cfg.Mode = dhcp.ModeFull
	cfg.ServerIP = netip.MustParseAddr("10.90.0.1")
	cfg.Subnet = dhcp.Subnet{
		Prefix:     netip.MustParsePrefix("10.90.0.0/16"),
		RangeStart: netip.MustParseAddr("10.90.1.0"),
		RangeEnd:   netip.MustParseAddr("10.90.254.255"),
		Router:     netip.MustParseAddr("10.90.0.1"),
	}
	cfg.ProbeTimeout = 0
	cfg.ForeignProbe = 0
	// perfdhcp's 50,000 made-up MACs are strangers: the limits that keep
	// a hostile host from draining the pool would cap the rate measured
	// (Kea has none).
	cfg.Limits = dhcp.Limits{}
	cfg.Boot.HTTPBase = "http://10.90.0.1:8080"
	var socks *dhcp.Sockets
	if err := ns.Do(func() error {
		var err error
		socks, err = dhcp.Listen("eth0", false)
		return err
	}); err != nil {
		return nil, nil, err
	}
	srv, err = dhcp.New(cfg, socks, store, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		socks.Close()
		return nil, nil, err
	}
	if workers > 0 {
		srv.Workers = workers
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		return nil, nil, err
	}
	var once sync.Once
	return srv, func() { once.Do(func() { cancel(); <-done }) }, nil
}

// startKea runs kea-dhcp4 in ns; stop (safe to call more than once) ends it.
func startKea(ns *netns.NS, dir string, threads, queue int) (stop func(), err error) {
	conf := fmt.Sprintf(`{"Dhcp4": {
  "interfaces-config": {"interfaces": ["eth0"], "dhcp-socket-type": "udp"},
  "lease-database": {"type": "memfile", "persist": true, "name": %q, "lfc-interval": 0},
  "multi-threading": {"enable-multi-threading": true, "thread-pool-size": %d, "packet-queue-size": %d},
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "10.90.0.0/16", "pools": [{"pool": "10.90.1.0 - 10.90.254.255"}],
     "option-data": [{"name": "routers", "data": "10.90.0.1"}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stderr"}], "severity": "WARN"}]
}}`, filepath.Join(dir, "kea-leases.csv"), threads, queue)
	path := filepath.Join(dir, "kea.json")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := ns.Command(ctx, "kea-dhcp4", "-c", path)
	cmd.Env = append(os.Environ(), "KEA_PIDFILE_DIR="+dir, "KEA_LOCKFILE_DIR="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	time.Sleep(2 * time.Second)
	var once sync.Once
	return func() { once.Do(func() { cancel(); _ = cmd.Wait() }) }, nil
}

func perfdhcp(ns *netns.NS, args ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, _ := ns.Command(ctx, "perfdhcp", append([]string{"-4"}, args...)...).CombinedOutput()
	return string(out)
}

var (
	reSent = regexp.MustCompile(`sent packets: (\d+)`)
	reRecv = regexp.MustCompile(`received packets: (\d+)`)
)

// result parses perfdhcp's two exchange sections (DO, RA): sent and
// received per section; a DORA completes when the ACK arrives.
func result(out string) (sent, acked int, dropPct float64) {
	sents := reSent.FindAllStringSubmatch(out, -1)
	recvs := reRecv.FindAllStringSubmatch(out, -1)
	if len(sents) < 2 || len(recvs) < 2 {
		return 0, 0, 100
	}
	sent, _ = strconv.Atoi(sents[0][1])
	acked, _ = strconv.Atoi(recvs[1][1])
	if sent == 0 {
		return 0, 0, 100
	}
	return sent, acked, 100 * float64(sent-acked) / float64(sent)
}

// point runs perfdhcp at rate r; ok is false once drops reach 2.5%.
func point(cli *netns.NS, name string, r, period, clients int) (achieved int, ok bool) {
	out := perfdhcp(cli, "-W", "1000000", "-r", strconv.Itoa(r), "-R", strconv.Itoa(clients), "-p", strconv.Itoa(period), "-l", "eth0", "10.90.0.1")
	sent, acked, drop := result(out)
	a := float64(acked) / float64(period)
	fmt.Printf("  %-7s offered %5d/s: %7d DISCOVERs, %7d ACKs, %5.2f%% lost, %7.0f DORA/s\n", name, r, sent, acked, drop, a)
	if sent == 0 || os.Getenv("BENCH_VERBOSE") != "" {
		fmt.Print(indent(out))
	}
	return int(a), drop < 2.5
}

func indent(s string) string {
	var b bytes.Buffer
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		b.WriteString("    " + sc.Text() + "\n")
	}
	return b.String()
}
