// k8s-images builds the Kubernetes test images into an OCI layout
// (build), or serves such a layout from registries on loopback (serve).
// e2e/k8s/images.sh runs build with the binaries it gathered:
//
//	k8s-images build -out DIR -bins K8S_BIN_DIR -coredns FILE -testapp FILE \
//	    -iptables ROOT -testapp-ref docker.io/airlock/testapp:1.0 REF...
//	k8s-images serve -layout DIR      prints the registryMirrors, serves until killed
//
// build makes one image per REF (what `kubeadm config images list` prints),
// choosing its content by the repository's last element: kube-apiserver,
// kube-controller-manager, kube-scheduler and kube-proxy (with Debian's
// iptables from ROOT) from K8S_BIN_DIR, etcd and pause from there too,
// coredns from FILE; each binary on PATH at /usr/local/bin (kubeadm's static
// pods run it by name), pause and coredns also at / as their upstream
// entrypoints are.

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-images:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: k8s-images build|serve ...")
	}
	switch args[0] {
	case "build":
		return build(args[1:])
	case "serve":
		return serve(args[1:])
	}
	return fmt.Errorf("unknown command %q (build or serve)", args[0])
}

func build(args []string) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	out := fs.String("out", "", "OCI layout to create")
	bins := fs.String("bins", "", "directory of the Kubernetes binaries, etcd and pause (e2e/k8s/build.sh)")
	coredns := fs.String("coredns", "", "the coredns binary")
	testapp := fs.String("testapp", "", "the test app binary")
	testappRef := fs.String("testapp-ref", "docker.io/airlock/testapp:1.0", "the test app's image name")
	iptables := fs.String("iptables", "", "root of Debian's iptables and its libraries (dpkg -x), for kube-proxy")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *bins == "" || *coredns == "" || *testapp == "" || *iptables == "" || fs.NArg() == 0 {
		return errors.New("build: -out, -bins, -coredns, -testapp, -iptables and the image references are required")
	}
	bin := func(name string) []File {
		return []File{{Path: "usr/local/bin/" + name, Src: filepath.Join(*bins, name), Mode: 0o755}}
	}
	var imgs []Image
	for _, ref := range fs.Args() {
		r, err := name.ParseReference(ref, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("image %q: %w", ref, err)
		}
		img := Image{Ref: ref, Layers: [][]File{Base()}}
		switch base := path.Base(r.Context().RepositoryStr()); base {
		case "kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd":
			img.Layers = append(img.Layers, bin(base))
			img.Entrypoint = []string{"/usr/local/bin/" + base}
		case "kube-proxy":
			ipt, err := iptablesLayer(*iptables)
			if err != nil {
				return err
			}
			img.Layers = append(img.Layers, ipt, bin(base))
			img.Entrypoint = []string{"/usr/local/bin/" + base}
		case "pause":
			img.Layers = append(img.Layers, []File{{Path: "pause", Src: filepath.Join(*bins, "pause"), Mode: 0o755}})
			img.Entrypoint = []string{"/pause"}
		case "coredns":
			img.Layers = append(img.Layers, []File{{Path: "coredns", Src: *coredns, Mode: 0o755}})
			img.Entrypoint = []string{"/coredns"}
		default:
			return fmt.Errorf("image %s: no recipe for %q", ref, base)
		}
		imgs = append(imgs, img)
	}
	imgs = append(imgs, Image{Ref: *testappRef, Entrypoint: []string{"/testapp"},
		Layers: [][]File{Base(), {{Path: "testapp", Src: *testapp, Mode: 0o755}}}})
	return Write(*out, imgs)
}

// iptablesLayer is Debian's iptables (the nf_tables flavour, as the
// node's own) with its libraries and glibc, unpacked at root, and the
// names kube-proxy runs (iptables, iptables-save, iptables-restore and
// the ip6tables ones) linked to xtables-nft-multi, as the package's
// alternatives would.
func iptablesLayer(root string) ([]File, error) {
	files, err := Tree(root, "")
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(root, "usr/sbin/xtables-nft-multi")); err != nil {
		return nil, fmt.Errorf("iptables for kube-proxy: %w (dpkg -x Debian's iptables into %s)", err, root)
	}
	for _, n := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		files = append(files, File{Path: "usr/sbin/" + n, Link: "xtables-nft-multi"})
	}
	// Debian's usrmerge: /lib, /lib64, /sbin and /bin are links into /usr
	// (the dynamic loader is /lib64/ld-linux-x86-64.so.2).
	for _, d := range []string{"lib", "lib64", "sbin", "bin"} {
		if _, err := os.Lstat(filepath.Join(root, d)); errors.Is(err, os.ErrNotExist) {
			files = append(files, File{Path: d, Link: "usr/" + d})
		}
	}
	return files, nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	dir := fs.String("layout", "", "OCI layout k8s-images build made")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("serve: -layout is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	regs, err := Serve(ctx, *dir)
	if err != nil {
		return err
	}
	defer regs.Close()
	var ups []string
	for up := range regs.Mirrors {
		ups = append(ups, up)
	}
	sort.Strings(ups)
	fmt.Println("registryMirrors:")
	for _, up := range ups {
		fmt.Printf("  %s: %s\n", up, regs.Mirrors[up])
	}
	fmt.Fprintln(os.Stderr, "k8s-images: serving until interrupted")
	<-ctx.Done()
	return nil
}
