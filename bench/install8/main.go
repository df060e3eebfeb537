// Command install8 measures airlock's CPU per GiB of OS image served while
// 8 machines install at once, next to the CPU per GiB of airlock's own
// registry serving the same bytes as a blob (the registry's blob serving is
// the peer: bench/registry holds it against docker-registry).
//
// One real `airlock serve` (the binary, built from this tree unless
// -airlock names one) runs in a network namespace of the benchmark's own
// (TCP congestion control -cc, reno by default: see benchns.DefaultCC),
// on a veth provisioning interface, in proxy DHCP mode, from a signed
// bundle that holds one OS image, whose blob the bundle's registry also
// serves as an image layer. Then -machines agents at once, each the node
// agent's own write path (installer/agent/provision.Fetch and Write: HTTP,
// zstd, SHA-256 of the raw image, the first MiB written last, O_DIRECT,
// fsync) onto a loop device of its own backed by tmpfs, install the image:
// -installs times from /os/images/NAME as install orders it, as often from
// the registry's /v2/.../blobs/DIGEST. Rounds alternate which goes first.
// airlock's CPU over each phase (its threads' run time), divided by the
// bytes it sent, is its CPU per GiB served; the figure is the median of the
// per-round ratios OS image / registry, with its range and a confidence
// interval of the median. The agents run in this process, so their CPU
// (shown too) is not airlock's.
//
//	go run ./bench/install8 [-machines 8] [-size 256] [-installs 2] [-rounds 7]   (root)
package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"airlock.dev/airlock/bench/internal/benchns"
	"airlock.dev/airlock/bench/internal/procstat"
	"airlock.dev/airlock/bench/internal/stats"
	"airlock.dev/airlock/bench/internal/synthimage"
	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/agent/provision"
	"airlock.dev/airlock/installer/lab/netns"
)

// Where airlock serves, inside the benchmark's namespace.
const (
	address   = "10.79.0.1"
	imageName = "node"
	repo      = "docker.io/library/node-image"
)

func main() {
	machines := flag.Int("machines", 8, "machines installing at once")
	sizeMiB := flag.Int("size", 256, "raw image size in MiB (generated: a quarter zeros, a quarter random, half text-like)")
	rounds := flag.Int("rounds", 7, "rounds; each installs every machine -installs times from the OS image path and as often from the registry, alternating which goes first")
	installs := flag.Int("installs", 2, "installs per machine and phase")
	backing := flag.String("backing", "/dev/shm", "directory for the loop devices' backing files (tmpfs by default: the figure is airlock's, not this machine's disk)")
	airlockBin := flag.String("airlock", "", "airlock binary to run (default: go build this tree into a temporary directory)")
	cc := flag.String("cc", benchns.DefaultCC, "TCP congestion control in the benchmark's namespace (\"\": the host's default)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := options{machines: *machines, size: int64(*sizeMiB) << 20, rounds: *rounds, installs: *installs, backing: *backing, airlock: *airlockBin, cc: *cc}
	if err := run(ctx, o); err != nil {
		log.Print(err)
		defer os.Exit(1)
	}
}

type options struct {
	machines int
	size     int64
	rounds   int
	installs int
	backing  string
	airlock  string
	cc       string
}

func run(ctx context.Context, o options) error {
	if os.Getuid() != 0 {
		return errors.New("run as root (loop devices, network namespaces)")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		return errors.New("losetup not found: apt-get install mount")
	}
	work, err := os.MkdirTemp("", "airlock-bench-install8")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	disks, err := os.MkdirTemp(o.backing, "airlock-bench-install8")
	if err != nil {
		return err
	}
	defer os.RemoveAll(disks)

	fmt.Printf("GOMAXPROCS %d, load average %s\n", runtime.GOMAXPROCS(0), loadavg())
	t0 := time.Now()
	img, err := makeImage(filepath.Join(work, "image.zst"), o.size)
	if err != nil {
		return err
	}
	fmt.Printf("image: %d MiB raw, %.1f MiB zstd (made in %.1fs), raw sha256 %s\n", o.size>>20, float64(img.blobSize)/(1<<20), time.Since(t0).Seconds(), img.rawSHA256[:16])
	bundlePath, pubPath := filepath.Join(work, "site.bundle"), filepath.Join(work, "site.pub")
	if err := writeBundle(bundlePath, pubPath, img); err != nil {
		return err
	}
	bin := o.airlock
	if bin == "" {
		bin = filepath.Join(work, "airlock")
		t0 = time.Now()
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
			return fmt.Errorf("go build airlock (run from the repository's root, as bench/install8.sh does): %v\n%s", err, out)
		}
		fmt.Printf("airlock built in %.0fs\n", time.Since(t0).Seconds())
	}

	ns, err := benchns.New("alin", o.cc)
	if err != nil {
		return err
	}
	defer func() {
		if err := ns.Delete(); err != nil {
			log.Print(err)
		}
	}()
	// The provisioning interface: one end of a veth pair inside the
	// namespace (the agents reach airlock's address over the namespace's
	// loopback, as the registry and HTTP benchmarks' clients do).
	for _, args := range [][]string{{"link", "add", "prov0", "type", "veth", "peer", "name", "prov1"}, {"addr", "add", address + "/24", "dev", "prov0"},
		{"link", "set", "prov0", "up"}, {"link", "set", "prov1", "up"}} {
		if err := ns.IP(args...); err != nil {
			return err
		}
	}
	answers := filepath.Join(work, "answers.yaml")
	if err := os.WriteFile(answers, []byte(fmt.Sprintf(`apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: bench}
network: {interface: prov0, mode: proxy, subnet: 10.79.0.0/24, address: %s}
bundle: {path: %q, publicKey: %q}
machines:
  - {name: cp, match: {macs: ["52:54:00:00:00:01"]}, role: control-plane, hostname: cp-1, osImage: %s}
  - {name: nodes, match: {macs: ["52:54:00:00:00:02"]}, role: worker, hostname: node-1, osImage: %s}
cluster: {name: bench}
`, address, bundlePath, pubPath, imageName, imageName)), 0o600); err != nil {
		return err
	}
	srv, err := startAirlock(ctx, ns, bin, answers, filepath.Join(work, "state"))
	if err != nil {
		return err
	}
	defer srv.stop()
	fmt.Printf("airlock serve (pid %d) in namespace %s, TCP congestion control %s\n", srv.cmd.Process.Pid, ns.Name, benchns.CongestionControl(ns))

	devs, err := loopDevices(disks, o.machines, o.size+64<<20)
	defer func() {
		for _, d := range devs {
			exec.Command("losetup", "-d", d).Run()
		}
	}()
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: benchns.Dialer(ns), DisableCompression: true, MaxIdleConnsPerHost: o.machines}}
	paths := map[string]string{
		"OS image": fmt.Sprintf("http://%s:8080/os/images/%s", address, imageName),
		"registry": fmt.Sprintf("http://%s:5000/v2/%s/blobs/%s", address, strings.TrimPrefix(repo, "docker.io/"), img.blobDigest),
	}
	// Warm up: airlock checks each blob's digest before it first serves
	// it, and the page cache fills; neither is counted.
	for _, name := range []string{"OS image", "registry"} {
		if err := fetchAll(ctx, client, paths[name], img.blobSize); err != nil {
			return fmt.Errorf("warm-up %s: %w", name, err)
		}
	}
	spec := provision.WriteSpec{RawSize: o.size, RawSHA256: img.rawSHA256}
	served := float64(img.blobSize) * float64(o.machines*o.installs) / (1 << 30)
	var ratios []float64
	var osr, regr []phase
	for r := 0; r < o.rounds; r++ {
		order := []string{"OS image", "registry"}
		if r%2 == 1 {
			order = []string{"registry", "OS image"}
		}
		res := map[string]phase{}
		for _, name := range order {
			p, err := install(ctx, client, srv.cmd.Process.Pid, paths[name], devs, spec, o.installs)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, name, err)
			}
			p.served = served
			res[name] = p
		}
		a, g := res["OS image"], res["registry"]
		osr, regr = append(osr, a), append(regr, g)
		ratios = append(ratios, a.airlockPerGiB()/g.airlockPerGiB())
		fmt.Printf("round %d (%s first): OS image %.2f CPU-s/GiB (%.0f MiB/s served), registry %.2f CPU-s/GiB (%.0f MiB/s); ratio %.2f; agents %.2f / %.2f CPU-s per GiB served; load %s\n",
			r+1, order[0], a.airlockPerGiB(), a.rate(), g.airlockPerGiB(), g.rate(), ratios[r], a.agentsPerGiB(), g.agentsPerGiB(), loadavg())
	}
	med, lo, hi := stats.Spread(ratios)
	ciLo, ciHi, cover := stats.MedianCI(ratios, 0.95)
	fmt.Printf("\n%d machines at once, %.2f GiB served per phase (%d machines x %d installs x %.1f MiB), %d rounds\n", o.machines, served, o.machines, o.installs, float64(img.blobSize)/(1<<20), o.rounds)
	fmt.Printf("airlock CPU-s per GiB served (medians): OS image %.3f (user %.3f, system %.3f), registry %.3f (user %.3f, system %.3f)\n",
		stats.MedianOf(osr, phase.airlockPerGiB), stats.MedianOf(osr, phase.userPerGiB), stats.MedianOf(osr, phase.sysPerGiB),
		stats.MedianOf(regr, phase.airlockPerGiB), stats.MedianOf(regr, phase.userPerGiB), stats.MedianOf(regr, phase.sysPerGiB))
	fmt.Printf("served: OS image %.0f MiB/s, registry %.0f MiB/s; the agents (this process) %.2f / %.2f CPU-s per GiB served\n",
		stats.MedianOf(osr, phase.rate), stats.MedianOf(regr, phase.rate), stats.MedianOf(osr, phase.agentsPerGiB), stats.MedianOf(regr, phase.agentsPerGiB))
	fmt.Printf("ratio OS image / registry, airlock CPU per GiB served: %.2fx (range %.2f-%.2f; %.0f%% interval of the median %.2f-%.2f); goal: at the registry's level (<= 1.0x)\n",
		med, lo, hi, cover*100, ciLo, ciHi)
	fmt.Printf("load average at the end %s\n", loadavg())
	return nil
}

// phase is one phase of a round: every machine installed once from one path.
type phase struct {
	wall time.Duration
	// cpu is airlock's CPU-seconds, from its threads' run time (ns);
	// user and sys split it, from /proc/PID/stat's 10 ms ticks.
	cpu, user, sys float64
	agents         float64 // this process's CPU-seconds (the agents)
	served         float64 // GiB airlock sent
}

func (p phase) airlockPerGiB() float64 { return p.cpu / p.served }
func (p phase) userPerGiB() float64    { return p.user / p.served }
func (p phase) sysPerGiB() float64     { return p.sys / p.served }
func (p phase) agentsPerGiB() float64  { return p.agents / p.served }
func (p phase) rate() float64          { return p.served * 1024 / p.wall.Seconds() }

// install has one agent per device fetch url and write it, n times
// each, all at once, and measures airlock's CPU (process pid) and the
// agents' over it.
func install(ctx context.Context, client *http.Client, pid int, url string, devs []string, spec provision.WriteSpec, n int) (phase, error) {
	c0, err := procstat.WithRun(pid)
	if err != nil {
		return phase{}, err
	}
	self0, t0 := rusageSelf(), time.Now()
	errs := make([]error, len(devs))
	var wg sync.WaitGroup
	for i, dev := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < n && errs[i] == nil; k++ {
				body, err := provision.Fetch(ctx, client, url)
				if err != nil {
					errs[i] = err
					return
				}
				_, errs[i] = provision.Write(ctx, dev, body, spec, nil)
				body.Close()
			}
		}()
	}
	wg.Wait()
	p := phase{wall: time.Since(t0), agents: rusageSelf() - self0}
	c1, err := procstat.WithRun(pid)
	if err != nil {
		return p, err
	}
	p.cpu, p.user, p.sys = c1.Run-c0.Run, c1.User-c0.User, c1.Sys-c0.Sys
	if lost := (p.user + p.sys) - p.cpu; lost > 0.03 {
		// A thread that ended took its run time with it (its ticks stay
		// in /proc/PID/stat): count the ticks instead.
		p.cpu = p.user + p.sys
	}
	return p, errors.Join(errs...)
}

// fetchAll reads url whole and checks its length.
func fetchAll(ctx context.Context, client *http.Client, url string, size int64) error {
	body, err := provision.Fetch(ctx, client, url)
	if err != nil {
		return err
	}
	defer body.Close()
	n, err := io.Copy(io.Discard, body)
	if err == nil && n != size {
		err = fmt.Errorf("%s: %d bytes, want %d", url, n, size)
	}
	return err
}

type server struct{ cmd *exec.Cmd }

func (s *server) stop() { procstat.Stop(s.cmd, 10*time.Second) }

// startAirlock runs `airlock serve` in ns (`ip netns exec` execs it, so
// the process's PID is airlock's) and waits until it serves the OS image
// and the registry.
func startAirlock(ctx context.Context, ns *netns.NS, bin, answers, state string) (*server, error) {
	cmd := ns.Command(ctx, bin, "serve", "-f", answers, "--state", state, "--log-level", "warn")
	logf, err := os.Create(filepath.Join(filepath.Dir(answers), "airlock.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start airlock: %w", err)
	}
	s := &server{cmd: cmd}
	probe := &http.Client{Transport: &http.Transport{DialContext: benchns.Dialer(ns)}, Timeout: 2 * time.Second}
	for i := 0; i < 300; i++ {
		ok := 0
		for _, u := range []string{"http://" + address + ":8080/os/images/" + imageName, "http://" + address + ":5000/v2/"} {
			if resp, err := probe.Head(u); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ok++
				}
			}
		}
		if ok == 2 {
			return s, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
	out, _ := os.ReadFile(logf.Name())
	return nil, fmt.Errorf("airlock did not serve the OS image and the registry within 30 s; its log:\n%s", out)
}

// loopDevices makes n loop devices, each backed by a sparse file of size
// bytes in dir.
func loopDevices(dir string, n int, size int64) ([]string, error) {
	var devs []string
	for i := 0; i < n; i++ {
		f := filepath.Join(dir, "disk"+strconv.Itoa(i))
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			return devs, err
		}
		if err := os.Truncate(f, size); err != nil {
			return devs, err
		}
		out, err := exec.Command("losetup", "--find", "--show", f).Output()
		if err != nil {
			return devs, fmt.Errorf("losetup: %w", err)
		}
		devs = append(devs, strings.TrimSpace(string(out)))
	}
	return devs, nil
}

type image struct {
	path       string // the zstd blob
	blobSize   int64
	blobDigest string // sha256:...
	rawSHA256  string
	rawSize    int64
}

// makeImage writes a raw image of size bytes shaped like a cloud image (a
// quarter zeros, a quarter random, half text-like data, as bench/imagewrite
// makes it), compressed with zstd, to path.
func makeImage(path string, size int64) (image, error) {
	f, err := os.Create(path)
	if err != nil {
		return image{}, err
	}
	defer f.Close()
	blobHash := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, blobHash), 1<<20)
	zw, err := zstd.NewWriter(bw, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return image{}, err
	}
	rawHash := sha256.New()
	if err := synthimage.Write(io.MultiWriter(zw, rawHash), size); err != nil {
		return image{}, err
	}
	if err := errors.Join(zw.Close(), bw.Flush()); err != nil {
		return image{}, err
	}
	st, err := f.Stat()
	if err != nil {
		return image{}, err
	}
	return image{path: path, blobSize: st.Size(), blobDigest: "sha256:" + hex.EncodeToString(blobHash.Sum(nil)),
		rawSHA256: hex.EncodeToString(rawHash.Sum(nil)), rawSize: size}, f.Close()
}

// writeBundle writes a signed bundle holding img twice: as the OS image
// imageName (what install orders) and as the layer of the image repo:1
// (what the registry serves); the public key goes to pubPath.
func writeBundle(path, pubPath string, img image) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	if err := os.WriteFile(pubPath, bundle.EncodePublicKey(pub), 0o644); err != nil {
		return err
	}
	w, err := bundle.Create(path, bundle.WriterOptions{})
	if err != nil {
		return err
	}
	if _, err := w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), ""); err != nil {
		return err
	}
	add := func(p string) error {
		f, err := os.Open(img.path)
		if err != nil {
			return err
		}
		defer f.Close()
		return w.AddFile(p, f, img.blobSize, img.blobDigest, "")
	}
	if err := add("blobs/sha256/" + strings.TrimPrefix(img.blobDigest, "sha256:")); err != nil {
		return err
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgDigest, err := w.AddBytes("blobs/sha256/"+sha256Hex(cfg), cfg, "")
	if err != nil {
		return err
	}
	man := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"%s","size":%d}]}`,
		cfgDigest, len(cfg), img.blobDigest, img.blobSize)
	md, err := w.AddBytes("blobs/sha256/"+sha256Hex([]byte(man)), []byte(man), "application/vnd.oci.image.manifest.v1+json")
	if err != nil {
		return err
	}
	osPath := bundle.OSImagePathPrefix + imageName
	if err := add(osPath); err != nil {
		return err
	}
	_, err = w.Finish(bundle.Metadata{Name: "bench-install8",
		Images:   []bundle.Image{{Repository: repo, Tag: "1", Digest: md, MediaType: "application/vnd.oci.image.manifest.v1+json"}},
		OSImages: []bundle.OSImage{{Name: imageName, Path: osPath, Size: img.blobSize, Digest: img.blobDigest, Compression: bundle.CompressionZstd, RawSize: img.rawSize, RawSHA256: img.rawSHA256}},
	}, priv)
	return err
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func rusageSelf() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// loadavg is the first three fields of /proc/loadavg: how busy the
// machine was, which decides these figures on a shared one.
func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
