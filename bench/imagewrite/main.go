// Command imagewrite benchmarks the node agent's image write path
// (installer/agent/provision.Write: an HTTP stream, zstd decompression,
// SHA-256 of the raw stream, the first MiB held back and written last after
// the digest check, fsync) against the floor
//
//	curl URL | zstd -dc | dd of=DEV bs=4M iflag=fullblock oflag=direct
//
// writing the same image to the same target, with no verification at all.
// The image is served over HTTP on 127.0.0.1 by a separate process (this
// program re-run with -serve; net/http's file server, sendfile), and the
// target is a loop device backed by a file in -backing (tmpfs by default,
// so that the figure is the write path's and not this machine's shared
// disk). Rounds alternate which path goes first; the figure is the median
// of the per-round throughput ratios, with its range and a confidence
// interval. CPU-seconds per GiB are shown for each path (this process for
// airlock, the pipeline's processes for the floor; the loop device's
// kernel worker is charged to neither).
//
//	go run ./bench/imagewrite   (root; apt-get install zstd curl)
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"airlock.dev/airlock/bench/internal/stats"
	"airlock.dev/airlock/bench/internal/synthimage"
	"airlock.dev/airlock/installer/agent/provision"
)

func main() {
	serve := flag.String("serve", "", "internal: serve this file over HTTP on 127.0.0.1 and print the address")
	sizeMiB := flag.Int("size", 512, "raw image size in MiB")
	image := flag.String("image", "", "raw disk image to write instead of the generated one (e.g. an ext4 made with mkfs.ext4 -d); -size is then ignored")
	rounds := flag.Int("rounds", 5, "rounds; each writes the image once with each path, alternating which goes first")
	backing := flag.String("backing", "/dev/shm", "directory for the loop device's backing file (tmpfs by default)")
	dio := flag.Bool("dio", false, "the loop device writes its backing file with direct I/O (losetup --direct-io=on): with -backing on a real disk, the writes reach that disk")
	level := flag.Int("level", 3, "zstd compression level of the served image")
	buffered := flag.Bool("buffered", false, "airlock writes without O_DIRECT")
	chunkMiB := flag.Int("chunk", 4, "airlock's write size in MiB")
	verify := flag.String("verify", "raw", "what airlock checks: raw (the SHA-256 of the raw image, the default) or stream (the SHA-256 of the zstd stream as sent, plus zstd's frame checksum)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process (airlock's path) to this file")
	flag.Parse()

	if *serve != "" {
		serveFile(*serve)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := options{size: int64(*sizeMiB) << 20, rounds: *rounds, backing: *backing, level: *level,
		buffered: *buffered, chunk: *chunkMiB << 20, cpuprofile: *cpuprofile, dio: *dio, image: *image, verify: *verify}
	if err := run(ctx, o); err != nil {
		log.Print(err)
		defer os.Exit(1)
	}
}

type options struct {
	size     int64
	rounds   int
	backing  string
	level    int
	buffered bool
	chunk    int
	dio      bool
	image    string
	verify   string
	// cpuprofile, if set, profiles this process (airlock's path, the
	// floor's rounds idle here) from the first round on.
	cpuprofile string
}

// serveFile serves one file at /image on an ephemeral loopback port until
// its parent goes away.
func serveFile(name string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ln.Addr())
	go func() { io.Copy(io.Discard, os.Stdin); os.Exit(0) }() // parent closed our stdin: stop
	log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, name)
	})))
}

func run(ctx context.Context, o options) error {
	for tool, pkg := range map[string]string{"zstd": "zstd", "curl": "curl", "dd": "coreutils", "losetup": "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: apt-get install %s", tool, pkg)
		}
	}
	if os.Getuid() != 0 {
		return errors.New("run as root (loop devices)")
	}
	dir, err := os.MkdirTemp(o.backing, "airlock-bench-imagewrite")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	start := time.Now()
	var sum string
	var zsize int64
	if o.image != "" {
		sum, zsize, o.size, err = useImage(dir, o.image, o.level)
	} else {
		sum, zsize, err = makeImage(dir, o.size, o.level)
	}
	if err != nil {
		return err
	}
	fmt.Printf("GOMAXPROCS %d, load average %s\n", runtime.GOMAXPROCS(0), loadavg())
	fmt.Printf("image: %d MiB raw, %.0f MiB zstd -%d (made in %.1fs), sha256 %s\n",
		o.size>>20, float64(zsize)/(1<<20), o.level, time.Since(start).Seconds(), sum[:16])

	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		return err
	}
	if err := os.Truncate(disk, o.size+64<<20); err != nil {
		return err
	}
	args := []string{"--find", "--show", disk}
	if o.dio {
		args = append([]string{"--direct-io=on"}, args...)
	}
	out, err := exec.Command("losetup", args...).Output()
	if err != nil {
		return fmt.Errorf("losetup: %w", err)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()

	self, _ := os.Executable()
	srv := exec.CommandContext(ctx, self, "-serve", filepath.Join(dir, "image.zst"))
	srv.Stderr = os.Stderr
	stdin, _ := srv.StdinPipe()
	stdout, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); srv.Process.Kill(); srv.Wait() }()
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fmt.Errorf("image server: %w", err)
	}
	url := "http://" + strings.TrimSpace(addr) + "/image"
	dioState, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop/dio"))
	fmt.Printf("target: %s backed by %s (loop direct I/O %s); image at %s\n", dev, disk, strings.TrimSpace(string(dioState)), url)

	spec := provision.WriteSpec{RawSize: o.size, RawSHA256: sum, Buffered: o.buffered, ChunkSize: o.chunk}
	switch o.verify {
	case "raw":
	case "stream":
		zsum, err := fileSHA256(filepath.Join(dir, "image.zst"))
		if err != nil {
			return err
		}
		spec.RawSHA256, spec.StreamSHA256 = "", zsum
	default:
		return fmt.Errorf("-verify %q: raw or stream", o.verify)
	}
	fmt.Printf("airlock checks %s\n", map[string]string{"raw": "the raw image's SHA-256", "stream": "the zstd stream's SHA-256 and its frame checksum"}[o.verify])
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	var airRate, floorRate, ratio, airCPU, floorCPU []float64
	gib := float64(o.size) / (1 << 30)
	for r := 0; r < o.rounds; r++ {
		var a, f result
		measureAir := func() error {
			a, err = measure(syscall.RUSAGE_SELF, func() error {
				body, err := provision.Fetch(ctx, client, url)
				if err != nil {
					return err
				}
				defer body.Close()
				_, err = provision.Write(ctx, dev, body, spec, nil)
				return err
			})
			return err
		}
		measureFloor := func() error {
			f, err = measure(syscall.RUSAGE_CHILDREN, func() error {
				cmd := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c",
					`curl -sS --fail "$1" | zstd -dc | dd of="$2" bs=4M iflag=fullblock oflag=direct status=none`, "floor", url, dev)
				cmd.Stderr = os.Stderr
				return cmd.Run()
			})
			return err
		}
		first, second := measureAir, measureFloor
		if r%2 == 1 {
			first, second = measureFloor, measureAir
		}
		if err := first(); err != nil {
			return err
		}
		if err := second(); err != nil {
			return err
		}
		ar, fr := float64(o.size)/(1<<20)/a.wall.Seconds(), float64(o.size)/(1<<20)/f.wall.Seconds()
		airRate, floorRate, ratio = append(airRate, ar), append(floorRate, fr), append(ratio, ar/fr)
		airCPU, floorCPU = append(airCPU, a.cpu.Seconds()/gib), append(floorCPU, f.cpu.Seconds()/gib)
		fmt.Printf("round %d (%s first): airlock %.0f MiB/s (%.2f CPU-s/GiB), floor %.0f MiB/s (%.2f CPU-s/GiB), ratio %.3f\n",
			r+1, map[bool]string{true: "airlock", false: "floor"}[r%2 == 0], ar, airCPU[r], fr, floorCPU[r], ar/fr)
	}
	med, lo, hi := stats.Spread(ratio)
	ciLo, ciHi, cover := stats.MedianCI(ratio, 0.95)
	fmt.Printf("airlock %.0f MiB/s, floor %.0f MiB/s (medians of %d rounds)\n", stats.Median(airRate), stats.Median(floorRate), o.rounds)
	fmt.Printf("throughput ratio airlock/floor: %.3fx (range %.3f-%.3f; %.0f%% interval of the median %.3f-%.3f); goal >= 0.95x with verification\n",
		med, lo, hi, cover*100, ciLo, ciHi)
	fmt.Printf("CPU-s per GiB: airlock %.2f, floor %.2f\n", stats.Median(airCPU), stats.Median(floorCPU))
	fmt.Printf("load average at the end %s\n", loadavg())
	return nil
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

type result struct {
	wall, cpu time.Duration
}

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(who, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func measure(who int, f func() error) (result, error) {
	c0, t0 := rusage(who), time.Now()
	err := f()
	return result{wall: time.Since(t0), cpu: rusage(who) - c0}, err
}

func fileSHA256(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// useImage hashes the raw image at name and compresses it with the zstd
// command to dir/image.zst.
func useImage(dir, name string, level int) (sum string, zsize, size int64, err error) {
	f, err := os.Open(name)
	if err != nil {
		return "", 0, 0, err
	}
	defer f.Close()
	h := sha256.New()
	if size, err = io.Copy(h, f); err != nil {
		return "", 0, 0, fmt.Errorf("read %s: %w", name, err)
	}
	zst := filepath.Join(dir, "image.zst")
	if out, err := exec.Command("zstd", "-q", "-f", fmt.Sprintf("-%d", level), "-T0", "-o", zst, name).CombinedOutput(); err != nil {
		return "", 0, 0, fmt.Errorf("zstd: %v\n%s", err, out)
	}
	fi, err := os.Stat(zst)
	if err != nil {
		return "", 0, 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), fi.Size(), size, nil
}

// makeImage writes a raw image of size bytes shaped like a cloud image
// (a quarter zeros, a quarter random, half text-like data), hashes it and
// compresses it with the zstd command to dir/image.zst. The raw file is
// removed.
func makeImage(dir string, size int64, level int) (string, int64, error) {
	raw := filepath.Join(dir, "image.raw")
	f, err := os.Create(raw)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	if err := synthimage.Write(io.MultiWriter(f, h), size); err != nil {
		f.Close()
		return "", 0, err
	}
	if err := f.Close(); err != nil {
		return "", 0, err
	}
	zst := filepath.Join(dir, "image.zst")
	if out, err := exec.Command("zstd", "-q", "-f", fmt.Sprintf("-%d", level), "-T0", "-o", zst, raw).CombinedOutput(); err != nil {
		return "", 0, fmt.Errorf("zstd: %v\n%s", err, out)
	}
	os.Remove(raw)
	fi, err := os.Stat(zst)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), fi.Size(), nil
}
