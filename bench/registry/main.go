// Command registry benchmarks airlock's registry serving blobs straight
// from a bundle (sendfile) against Debian's docker-registry (distribution
// 2.8) serving the same blob from its filesystem storage. Both run as
// child processes on the loopback of a network namespace the benchmark
// makes (TCP congestion control -cc, reno by default: see
// benchns.DefaultCC); the same Go client downloads the blob -n times with
// -c in parallel from each. It prints throughput, server CPU-seconds per
// GiB (from /proc/PID/stat) and the ratios.
//
//	go run ./bench/registry [-size 512] [-n 16] [-c 2] [-rounds 5] [-cc reno]
package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"airlock.dev/airlock/bench/internal/benchns"
	"airlock.dev/airlock/bench/internal/procstat"
	"airlock.dev/airlock/bench/internal/stats"
	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/services/registry"
)

const repo = "docker.io/library/bench"

func main() {
	if len(os.Args) > 2 && os.Args[1] == "serve" {
		serve(os.Args[2])
		return
	}
	sizeMiB := flag.Int("size", 512, "blob size in MiB")
	n := flag.Int("n", 16, "downloads per server")
	c := flag.Int("c", 2, "parallel downloads")
	readBuf := flag.Int("readbuf", 32<<10, "bytes each client read asks for (32 KiB: io.Copy's buffer, as crane and skopeo read; containerd's content.Copy reads 1 MiB)")
	rounds := flag.Int("rounds", 5, "rounds, alternating which server goes first; the median of the per-round ratios is reported")
	cc := flag.String("cc", benchns.DefaultCC, "TCP congestion control in the benchmark's namespace (\"\": the host's default)")
	flag.Parse()
	if err := run(*sizeMiB, *n, *c, *rounds, *readBuf, *cc); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// serve is the child process: serve the bundle until SIGTERM.
func serve(path string) {
	b, err := bundle.Open(path, bundle.Trust{IntegrityOnly: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(l.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := registry.New(b, nil).Run(ctx, l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(sizeMiB, n, c, rounds, readBuf int, cc string) error {
	reg, err := exec.LookPath("docker-registry")
	if err != nil {
		return fmt.Errorf("docker-registry not found: apt-get install docker-registry")
	}
	dir, err := os.MkdirTemp("", "airlock-bench-registry")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ns, err := benchns.New("albr", cc)
	if err != nil {
		return err
	}
	defer ns.Delete()
	fmt.Printf("blob of %d MiB, %d downloads per server, %d in parallel, reads of %d KiB; TCP congestion control %s\n",
		sizeMiB, n, c, readBuf>>10, benchns.CongestionControl(ns))
	blobPath := filepath.Join(dir, "blob")
	digest, err := writeBlob(blobPath, int64(sizeMiB)<<20)
	if err != nil {
		return err
	}
	bundlePath := filepath.Join(dir, "bench.bundle")
	if err := writeBundle(bundlePath, blobPath, digest); err != nil {
		return err
	}
	// docker-registry's storage: the blob and the repository's link to it.
	root := filepath.Join(dir, "registry")
	hex := strings.TrimPrefix(digest, "sha256:")
	data := filepath.Join(root, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
	link := filepath.Join(root, "docker/registry/v2/repositories/library/bench/_layers/sha256", hex, "link")
	for _, p := range []string{data, link} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
	}
	if err := os.Link(blobPath, data); err != nil {
		return err
	}
	if err := os.WriteFile(link, []byte(digest), 0o644); err != nil {
		return err
	}
	port, err := freePort(ns)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: false\nhttp:\n  addr: 127.0.0.1:%d\n", root, port)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	ours, err := start(ns, self, []string{"serve", bundlePath}, "")
	if err != nil {
		return err
	}
	defer ours.stop()
	theirs, err := start(ns, reg, []string{"serve", cfgPath}, fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	defer theirs.stop()

	size := int64(sizeMiB) << 20
	var as, ds []result
	var tputRatios, cpuRatios []float64
	for i := 0; i < rounds; i++ {
		// Alternate which server goes first, so that neither always meets
		// the page cache, the client's state or the machine's load first.
		var a, d result
		var err error
		if i%2 == 0 {
			if a, err = measure("airlock registry", ours, "library/bench", digest, size, n, c, readBuf); err == nil {
				d, err = measure("docker-registry", theirs, "library/bench", digest, size, n, c, readBuf)
			}
		} else {
			if d, err = measure("docker-registry", theirs, "library/bench", digest, size, n, c, readBuf); err == nil {
				a, err = measure("airlock registry", ours, "library/bench", digest, size, n, c, readBuf)
			}
		}
		if err != nil {
			return err
		}
		as, ds = append(as, a), append(ds, d)
		tputRatios = append(tputRatios, a.throughput/d.throughput)
		cpuRatios = append(cpuRatios, a.cpuPerGiB/d.cpuPerGiB)
	}
	a, d := median(as), median(ds)
	fmt.Printf("\nmedians: airlock %.2f GiB/s, %.3f CPU-s/GiB; docker-registry %.2f GiB/s, %.3f CPU-s/GiB\n", a.throughput, a.cpuPerGiB, d.throughput, d.cpuPerGiB)
	tm, tlo, thi := stats.Spread(tputRatios)
	cm, clo, chi := stats.Spread(cpuRatios)
	fmt.Printf("ratio airlock/docker-registry, median of %d rounds (range): throughput %.2fx (%.2f-%.2f; goal >= 1.0x), server CPU per GiB %.2fx (%.2f-%.2f; goal <= 0.3x)\n",
		rounds, tm, tlo, thi, cm, clo, chi)
	return nil
}

type server struct {
	cmd  *exec.Cmd
	addr string
	dial func(ctx context.Context, network, address string) (net.Conn, error) // into the server's namespace
}

func (s *server) stop() { procstat.Stop(s.cmd, 10*time.Second) }

// start runs a server in ns; addr "" means it prints its address on
// stdout.
func start(ns *netns.NS, bin string, args []string, addr string) (*server, error) {
	cmd := ns.Command(context.Background(), bin, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &server{cmd: cmd, addr: addr, dial: benchns.Dialer(ns)}
	if addr == "" {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			s.stop()
			return nil, fmt.Errorf("%s did not print its address: %w", bin, err)
		}
		s.addr = strings.TrimSpace(line)
	} else {
		go io.Copy(io.Discard, out)
	}
	probe := &http.Client{Transport: &http.Transport{DialContext: s.dial}}
	for i := 0; i < 100; i++ {
		if resp, err := probe.Get("http://" + s.addr + "/v2/"); err == nil {
			resp.Body.Close()
			return s, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
	return nil, fmt.Errorf("%s did not answer on %s", bin, s.addr)
}

type result struct{ throughput, cpuPerGiB float64 }

// median takes the median of each measure separately.
func median(rs []result) result {
	return result{
		stats.MedianOf(rs, func(r result) float64 { return r.throughput }),
		stats.MedianOf(rs, func(r result) float64 { return r.cpuPerGiB }),
	}
}

func measure(label string, s *server, name, digest string, size int64, n, c, readBuf int) (result, error) {
	url := fmt.Sprintf("http://%s/v2/%s/blobs/%s", s.addr, name, digest)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c, DisableCompression: true, DialContext: s.dial}}
	get := func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: GET blob: %s", label, resp.Status)
		}
		// io.Discard's own ReadFrom would read in 8 KiB pieces whatever
		// the buffer: hide it, so that the client reads readBuf at a time.
		got, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, make([]byte, readBuf))
		if err != nil {
			return err
		}
		if got != size {
			return fmt.Errorf("%s: got %d bytes, want %d", label, got, size)
		}
		return nil
	}
	// Warm up: page cache, and airlock's digest check on first serve.
	if err := get(); err != nil {
		return result{}, err
	}
	cpu0, err := procstat.Of(s.cmd.Process.Pid)
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	jobs := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				if err := get(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return result{}, err
	}
	cpu1, err := procstat.Of(s.cmd.Process.Pid)
	if err != nil {
		return result{}, err
	}
	gib := float64(size) * float64(n) / (1 << 30)
	r := result{throughput: gib / elapsed.Seconds(), cpuPerGiB: (cpu1.Total() - cpu0.Total()) / gib}
	fmt.Printf("%-17s %6.2f GiB in %6.2fs: %6.2f GiB/s, server %.2f CPU-s (user %.2f, system %.2f), %.3f CPU-s per GiB\n",
		label, gib, elapsed.Seconds(), r.throughput, cpu1.Total()-cpu0.Total(), cpu1.User-cpu0.User, cpu1.Sys-cpu0.Sys, r.cpuPerGiB)
	return r, nil
}

func writeBlob(path string, size int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var seed [32]byte
	rand.Read(seed[:])
	r := mrand.NewChaCha8(seed)
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), r, size); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), f.Close()
}

func writeBundle(path, blobPath, digest string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	w, err := bundle.Create(path, bundle.WriterOptions{})
	if err != nil {
		return err
	}
	if _, err := w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), ""); err != nil {
		return err
	}
	f, err := os.Open(blobPath)
	if err != nil {
		return err
	}
	defer f.Close()
	st, _ := f.Stat()
	if err := w.AddFile("blobs/sha256/"+strings.TrimPrefix(digest, "sha256:"), f, st.Size(), digest, ""); err != nil {
		return err
	}
	man := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[]}`, digest, st.Size())
	md, err := w.AddBytes("blobs/sha256/"+sha256Hex([]byte(man)), []byte(man), "application/vnd.oci.image.manifest.v1+json")
	if err != nil {
		return err
	}
	_, err = w.Finish(bundle.Metadata{Name: "bench", Images: []bundle.Image{{Repository: repo, Tag: "1", Digest: md, MediaType: "application/vnd.oci.image.manifest.v1+json"}}}, priv)
	return err
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// freePort picks a free port on ns's loopback: docker-registry takes its
// address from its config file (the namespace is the benchmark's own, so
// nothing else races for it).
func freePort(ns *netns.NS) (int, error) {
	var port int
	err := ns.Do(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	})
	return port, err
}
