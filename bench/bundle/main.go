// Command bundle benchmarks airlock's bundle against the Debian tools that
// do the same job by hand:
//
//	go run ./bench/bundle verify [-size 1024]   bundle verify vs sha256sum over the same bytes
//	go run ./bench/bundle build  [-size 512] [-dir DIR]
//	                                            bundle build from a local registry vs
//	                                            skopeo copy into an OCI layout, then tar | zstd
//
// Both builds write under -dir (default $TMPDIR, on disk). With -dir
// /dev/shm both write to tmpfs and the disk is out of the comparison: the
// virtual disk of the test machines bursts at ~1.7 GB/s and then holds
// ~360 MB/s, so on disk the later rounds measure the disk's throttle.
// airlock's build ends with an fsync of its bundle; the peer's pipeline
// does not sync, which on disk leaves its output in the page cache when
// its clock stops.
//
// Everything runs on loopback with content the benchmark makes itself.
// Each prints both timings and the ratio.
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	mrand "math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"airlock.dev/airlock/bench/internal/stats"
	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/bundle/build"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "verify" && os.Args[1] != "build") {
		fmt.Fprintln(os.Stderr, "usage: bundle verify|build [-size MiB]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	size := fs.Int("size", 0, "total content in MiB (default 1024 for verify, 512 for build)")
	rounds := fs.Int("rounds", 3, "build rounds; medians are compared")
	workDir := fs.String("dir", "", "directory both builds write under (default $TMPDIR)")
	peerSync := fs.Bool("peer-sync", false, "end the peer's timed pipeline with an fsync of its output (sync FILE), as airlock's build does, so that both outputs are on disk when the clocks stop")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	fs.Parse(os.Args[2:])
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	var err error
	switch os.Args[1] {
	case "verify":
		err = benchVerify(orDefault(*size, 1024))
	case "build":
		err = benchBuild(orDefault(*size, 512), *rounds, *workDir, *peerSync)
	}
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func orDefault(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}

func randomBytes(r *mrand.ChaCha8, n int) []byte {
	b := make([]byte, n)
	r.Read(b)
	return b
}

// layers makes count random layers of size bytes each.
func layers(count, size int) []v1.Layer {
	var seed [32]byte
	rand.Read(seed[:])
	r := mrand.NewChaCha8(seed)
	var out []v1.Layer
	for i := 0; i < count; i++ {
		out = append(out, static.NewLayer(randomBytes(r, size), types.OCILayer))
	}
	return out
}

// benchVerify writes a bundle of 16 blobs and times bundle verify (open,
// signature, structure, every digest) against sha256sum of the whole file.
func benchVerify(sizeMiB int) error {
	sha, err := exec.LookPath("sha256sum")
	if err != nil {
		return errors.New("sha256sum not found: apt-get install coreutils")
	}
	dir, err := os.MkdirTemp("", "airlock-bench-verify")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	path := filepath.Join(dir, "site.bundle")
	w, err := bundle.Create(path, bundle.WriterOptions{})
	if err != nil {
		return err
	}
	w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), "")
	const n = 16
	for _, l := range layers(n, sizeMiB<<20/n) {
		d, _ := l.Digest()
		rc, _ := l.Compressed()
		data, _ := io.ReadAll(rc)
		if _, err := w.AddBytes("blobs/sha256/"+d.Hex, data, ""); err != nil {
			return err
		}
	}
	if _, err := w.Finish(bundle.Metadata{Name: "bench"}, priv); err != nil {
		return err
	}
	st, _ := os.Stat(path)
	fmt.Printf("bundle of %s in %d blobs (page cache warm for both)\n", bundle.HumanSize(st.Size()), n)
	// Warm the page cache.
	exec.Command("cat", path).Run()
	best := func(f func() error) (time.Duration, error) {
		var b time.Duration
		for i := 0; i < 3; i++ {
			start := time.Now()
			if err := f(); err != nil {
				return 0, err
			}
			if d := time.Since(start); b == 0 || d < b {
				b = d
			}
		}
		return b, nil
	}
	ours, err := best(func() error {
		b, err := bundle.Open(path, bundle.Trust{IntegrityOnly: true})
		if err != nil {
			return err
		}
		defer b.Close()
		_, err = b.Verify(context.Background(), bundle.VerifyOptions{})
		return err
	})
	if err != nil {
		return err
	}
	theirs, err := best(func() error { return exec.Command(sha, path).Run() })
	if err != nil {
		return err
	}
	gib := float64(st.Size()) / (1 << 30)
	fmt.Printf("airlock bundle verify  %6.3fs  %5.2f GiB/s (signature, archive structure, every digest; 2 workers)\n", ours.Seconds(), gib/ours.Seconds())
	fmt.Printf("sha256sum              %6.3fs  %5.2f GiB/s (one digest of the file)\n", theirs.Seconds(), gib/theirs.Seconds())
	fmt.Printf("ratio verify/sha256sum: %.2fx time (goal <= 1.1x)\n", ours.Seconds()/theirs.Seconds())
	return nil
}

// benchBuild pushes images into a loopback registry and times a cold
// bundle build of them against skopeo copy of each into an OCI layout
// followed by tar | zstd.
func benchBuild(sizeMiB, rounds int, workDir string, peerSync bool) error {
	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		return errors.New("skopeo not found: apt-get install skopeo")
	}
	if _, err := exec.LookPath("zstd"); err != nil {
		return errors.New("zstd not found: apt-get install zstd")
	}
	dir, err := os.MkdirTemp(workDir, "airlock-bench-build")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var sfs syscall.Statfs_t
	syscall.Statfs(dir, &sfs)
	where := "on disk"
	if sfs.Type == 0x01021994 { // TMPFS_MAGIC
		where = "on tmpfs"
	}
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	const images, perImage = 4, 4
	all := layers(images*perImage, sizeMiB<<20/(images*perImage))
	var refs []string
	for i := 0; i < images; i++ {
		img, err := mutate.AppendLayers(empty.Image, all[i*perImage:(i+1)*perImage]...)
		if err != nil {
			return err
		}
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		ref := fmt.Sprintf("%s/bench/app%d:1.0", host, i)
		nr, _ := name.ParseReference(ref)
		if err := remote.Write(nr, img); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
		refs = append(refs, ref)
	}
	fmt.Printf("%d images of %d layers, %d MiB in all, from a loopback registry, written %s (%s)\n", images, perImage, sizeMiB, where, dir)

	var spec bytes.Buffer
	spec.WriteString("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nmetadata: {name: bench}\nimages:\n")
	for _, r := range refs {
		fmt.Fprintf(&spec, "  - ref: %s\n", r)
	}
	s, problems := build.ParseSpec("bundle.yaml", spec.Bytes())
	if err := problems.Err(); err != nil {
		return err
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	var oursAll, theirsAll []time.Duration
	var res *build.Result
	var tarball string
	for round := 0; round < rounds; round++ {
		rdir := filepath.Join(dir, fmt.Sprint(round))
		os.MkdirAll(rdir, 0o755)
		// airlock bundle build, cold cache. Each side starts with no dirty
		// pages left by the other (airlock's build ends with an fsync).
		syscall.Sync()
		start := time.Now()
		res, err = build.Build(context.Background(), build.Options{Spec: s, Output: filepath.Join(rdir, "site.bundle"), Key: priv})
		if err != nil {
			return err
		}
		oursAll = append(oursAll, time.Since(start))
		// skopeo copy into an OCI layout, then tar | zstd.
		layout := filepath.Join(rdir, "layout")
		syscall.Sync()
		start = time.Now()
		for i, r := range refs {
			cmd := exec.Command(skopeo, "copy", "--src-tls-verify=false", "docker://"+r, fmt.Sprintf("oci:%s:app%d", layout, i))
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("skopeo copy %s: %v\n%s", r, err, b)
			}
		}
		tarball = filepath.Join(rdir, "site.tar.zst")
		pipeline := fmt.Sprintf("set -o pipefail; tar -C %q -cf - . | zstd -q -T0 -o %q", layout, tarball)
		if peerSync {
			pipeline += fmt.Sprintf(" && sync %q", tarball) // fsync of the output, as airlock does
		}
		cmd := exec.Command("bash", "-c", pipeline)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("tar | zstd: %v\n%s", err, b)
		}
		theirsAll = append(theirsAll, time.Since(start))
		fmt.Printf("round %d: airlock %.2fs, skopeo + tar | zstd %.2fs\n", round+1, oursAll[round].Seconds(), theirsAll[round].Seconds())
		if round < rounds-1 {
			os.RemoveAll(rdir) // the last round's outputs are measured below
		}
	}
	ours, theirs := stats.Median(oursAll), stats.Median(theirsAll)
	tst, _ := os.Stat(tarball)
	fmt.Printf("medians of %d rounds:\n", rounds)
	fmt.Printf("%-33s %6.2fs  (%s signed bundle, %d blobs)\n", "airlock bundle build", ours.Seconds(), bundle.HumanSize(res.Size), res.Blobs)
	peer := "skopeo copy + tar | zstd"
	if peerSync {
		peer += " + sync"
	}
	fmt.Printf("%-33s %6.2fs  (%s tar.zst)\n", peer, theirs.Seconds(), bundle.HumanSize(tst.Size()))
	fmt.Printf("ratio skopeo/airlock: airlock is %.2fx faster (goal >= 3x)\n", theirs.Seconds()/ours.Seconds())
	return nil
}
