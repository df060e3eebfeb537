package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/bundle/build"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/engine"
	"airlock.dev/airlock/installer/termtext"
	"airlock.dev/airlock/manifests"
	"airlock.dev/airlock/services/registry"
)

// newBundleCommand builds `airlock bundle build|verify|inspect|check|keygen|serve`.
func newBundleCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Build, sign, verify and inspect offline bundles",
		Long: `A bundle carries everything a site needs (images, Helm charts, files) in one
signed file, or appended to the airlock executable itself (--embed).

  airlock bundle keygen --out site            site.key (keep it) and site.pub
  airlock bundle check -f bundle.yaml         check bundle.yaml, print every problem
  airlock bundle build -f bundle.yaml -o site.bundle --key site.key
  airlock bundle verify --key site.pub site.bundle
  airlock bundle inspect site.bundle`,
	}
	cmd.AddCommand(
		newBundleKeygenCommand(g),
		newBundleCheckCommand(g),
		newBundleBuildCommand(g),
		newBundleVerifyCommand(g),
		newBundleInspectCommand(g),
		newBundleServeCommand(g),
	)
	return cmd
}

func newBundleServeCommand(g *globals) *cobra.Command {
	var keyPath, listen string
	var tofu bool
	cmd := &cobra.Command{
		Use:   "serve --key site.pub|--trust-on-first-use [--listen ADDR] [BUNDLE]",
		Short: "Serve only the bundle's images as a read-only OCI registry (airlock serve runs every service)",
		Long: `Serve answers the OCI distribution API from the bundle (or from the bundle
appended to this executable when BUNDLE is left out) until interrupted.
Point containerd at it with a hosts.toml mirror per upstream registry:

  # /etc/containerd/certs.d/docker.io/hosts.toml (same for registry.k8s.io,
  # nvcr.io, quay.io, ghcr.io)
  server = "https://registry-1.docker.io"
  [host."http://AIRLOCK:5000"]
    capabilities = ["pull", "resolve"]

containerd then asks for /v2/library/nginx/manifests/1.25?ns=docker.io and the
registry answers with docker.io/library/nginx:1.25 from the bundle.

The bundle must be signed by the key given with --key, or, with
--trust-on-first-use, by the key of the first bundle served from this state
directory (recorded there).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := engine.OpenBundle(config.Bundle{Path: bundleArg(args), PublicKey: keyPath, TrustOnFirstUse: tofu}, g.stateDir)
			if err != nil {
				return noBundleHint(bundleArg(args), err)
			}
			defer b.Close()
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("registry: listen: %w", err)
			}
			log := g.log
			if log == nil {
				log = slog.New(slog.DiscardHandler)
			}
			logTrust(&globals{log: log, stateDir: g.stateDir}, b)
			log.Info("registry serving", "bundle", b.Name(), "address", l.Addr().String(), "repositories", len(b.Repositories()))
			fmt.Fprintf(g.streams.Out, "serving %s on %s\n", termtext.Escape(b.Name()), l.Addr())
			return registry.New(b, log).Run(cmd.Context(), l)
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "public key the bundle must be signed with (the builder's site.pub)")
	cmd.Flags().BoolVar(&tofu, "trust-on-first-use", false, "instead of --key: trust the key of the first bundle served from this state directory, and refuse any other later")
	cmd.Flags().StringVar(&listen, "listen", ":5000", "address to serve on")
	return cmd
}

func newBundleKeygenCommand(g *globals) *cobra.Command {
	var out string
	var force bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Make an ed25519 key pair for signing bundles",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, err := bundle.Keygen(bundle.KeygenOptions{PrivatePath: out + ".key", PublicPath: out + ".pub", Force: force})
			if err != nil {
				return err
			}
			fmt.Fprintf(g.streams.Out, "key %s: private key %s.key (keep it on the connected side), public key %s.pub (give it to the site)\n", id, termtext.Escape(out), termtext.Escape(out))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "airlock-bundle", "write OUT.key and OUT.pub")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite existing key files")
	return cmd
}

// loadBundleSpec reads and checks bundle.yaml, printing its problems.
func loadBundleSpec(w io.Writer, file string) (*build.Spec, error) {
	spec, problems, err := build.LoadSpec(file)
	if err != nil {
		return nil, err
	}
	for _, p := range problems {
		fmt.Fprintln(w, p)
	}
	if errs := problems.Errors(); len(errs) > 0 {
		fmt.Fprintf(w, "%s: %s; fix them and run airlock bundle check -f %s\n", termtext.Escape(file), countProblems(problems), termtext.Escape(file))
		return nil, &exitError{code: 1}
	}
	return spec, nil
}

func newBundleCheckCommand(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "check -f bundle.yaml",
		Short: "Check a bundle.yaml and print every problem as FILE:LINE:COL: path: message",
		Long: `Check parses bundle.yaml strictly and prints every problem with its place.
It reads every OS image whole (format, raw size and SHA-256), lists the images
the kubernetes: section adds, and, when its binaries come from a local
directory, checks each against its .sha256 file, naming one that is missing
or does not match. Nothing is fetched from the network.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := loadBundleSpec(g.streams.Out, file)
			if err != nil {
				return err
			}
			// OS images are local files: each is read whole, its format
			// found, and its raw disk image hashed, as build does.
			bad := 0
			for i, im := range spec.OSImages {
				p := im.Path
				if !filepath.IsAbs(p) {
					p = filepath.Join(filepath.Dir(file), p)
				}
				info, err := build.InspectOSImage(cmd.Context(), p)
				if err != nil {
					fmt.Fprintf(g.streams.Out, "%s: osImages[%d] %s: %s\n", termtext.Escape(file), i, termtext.Escape(im.Name), termtext.Escape(err.Error()))
					bad++
					continue
				}
				if im.RawSHA256 != "" && im.RawSHA256 != info.RawSHA256 {
					fmt.Fprintf(g.streams.Out, "%s: osImages[%d] %s: %s holds a raw disk image with sha256 %s, bundle.yaml says rawSHA256 %s\n",
						termtext.Escape(file), i, termtext.Escape(im.Name), termtext.Escape(p), info.RawSHA256, termtext.Escape(im.RawSHA256))
					bad++
					continue
				}
				fmt.Fprintf(g.streams.Out, "%s: osImages[%d] %s: %s, %s, raw %s (%d bytes), raw sha256 %s\n", termtext.Escape(file), i, termtext.Escape(im.Name),
					termtext.Escape(im.Path), info.Format, bundle.HumanSize(info.RawSize), info.RawSize, info.RawSHA256)
			}
			if bad > 0 {
				fmt.Fprintf(g.streams.Out, "%s: %d of %d OS images failed their check\n", termtext.Escape(file), bad, len(spec.OSImages))
				return &exitError{code: 1}
			}
			kube, err := checkKubernetesSpec(cmd.Context(), g.streams.Out, file, spec)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.streams.Out, "%s: valid: %d images, %d charts, %d files, %d OS images%s\n", termtext.Escape(file), len(spec.Images), len(spec.Charts), len(spec.Files), len(spec.OSImages), kube)
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "bundle.yaml", "bundle spec (YAML)")
	_ = cmd.MarkFlagFilename("file", "yaml", "yml")
	return cmd
}

// checkKubernetesSpec prints what bundle.yaml's kubernetes: section adds
// (its images; its binaries, checked against their .sha256 files when they
// come from a local directory) and fails naming a binary that is missing
// or does not match. It returns the summary's words for it.
func checkKubernetesSpec(ctx context.Context, w io.Writer, file string, spec *build.Spec) (string, error) {
	if spec.Kubernetes == nil {
		return "", nil
	}
	e := termtext.Escape
	version := spec.Kubernetes.Version
	if version == "" {
		version = manifests.DefaultKubernetesVersion
	}
	refs, err := spec.KubernetesImageRefs()
	if err != nil {
		fmt.Fprintf(w, "%s: kubernetes: %s\n", e(file), e(err.Error()))
		return "", &exitError{code: 1}
	}
	for _, ref := range refs {
		fmt.Fprintf(w, "%s: kubernetes %s: image %s\n", e(file), e(version), e(ref))
	}
	checks, remote := build.CheckKubernetesBinaries(ctx, spec, filepath.Dir(file))
	if remote {
		fmt.Fprintf(w, "%s: kubernetes %s: binaries %s from %s, fetched and checked against their .sha256 files by build\n",
			e(file), e(version), strings.Join(bundle.KubernetesBinaries, ", "), e(spec.Kubernetes.Binaries))
	}
	bad := 0
	for _, c := range checks {
		if c.Err != nil {
			fmt.Fprintf(w, "%s: kubernetes %s: %s for linux/%s: %s\n", e(file), e(version), c.Name, e(c.Arch), e(c.Err.Error()))
			bad++
			continue
		}
		fmt.Fprintf(w, "%s: kubernetes %s: %s for linux/%s: %s, %s, sha256 %s matches its .sha256\n", e(file), e(version), c.Name, e(c.Arch), e(c.Source), bundle.HumanSize(c.Size), c.SHA256)
	}
	if bad > 0 {
		fmt.Fprintf(w, "%s: %d of %d Kubernetes binaries failed their check\n", e(file), bad, len(checks))
		return "", &exitError{code: 1}
	}
	return fmt.Sprintf(", Kubernetes %s (%d images, %d binaries)", e(version), len(refs), len(bundle.KubernetesBinaries)*len(spec.KubernetesArches())), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newBundleBuildCommand(g *globals) *cobra.Command {
	var (
		file, out, keyPath, cache, split, binary string
		embed                                    bool
		concurrency                              int
	)
	cmd := &cobra.Command{
		Use:   "build -f bundle.yaml -o site.bundle --key site.key",
		Short: "Gather images, charts and files into a signed bundle (run on the connected side)",
		Long: `Build pulls every image (multi-arch indexes kept, blobs de-duplicated), every
chart (and every image the chart references when rendered with the values in
bundle.yaml), every file (checked against its sha256) and every OS image, and
writes a signed bundle. An OS image (osImages:) is a local raw disk image,
compressed with gzip, xz or zstd or not, or a qcow2 image, converted here to
raw compressed with zstd; the format is found from the file's first bytes. The
signed metadata records each one's raw size and SHA-256, which the agent checks
as it writes. Image blobs are written straight into the bundle as they arrive: until
it is signed, the output is OUT.partial with a journal, OUT.resume, so running
build again after an interruption fetches only what is missing (blobs already
written are hashed again, not trusted). A rebuild after editing bundle.yaml
takes the blobs it can from the bundle it replaces. Charts and files are kept
in the cache directory (--cache) between runs.

kubernetes: {version: v1.35.4} adds what the nodes need to form a cluster:
kubelet, kubeadm and kubectl (from BASE/VERSION/bin/linux/ARCH/NAME, BASE being
kubernetes.binaries, https://dl.k8s.io/release by default, or a local
directory with the same layout; each checked against the NAME.sha256 beside
it), exactly the images kubeadm of that version pulls, and kube-vip (unless
kubeVIP: false). registryMirrors: {registry.k8s.io: http://HOST:PORT} pulls a
registry's images from a mirror on the connected side; the bundle keeps their
original names and digests (http is for tests and pull-through caches).

--split 4G writes site.bundle.001, .002, ... for removable media; airlock reads
them back as one. --embed writes a self-contained executable: this airlock
binary with the bundle appended.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := loadBundleSpec(g.streams.Err, file)
			if err != nil {
				return err
			}
			key, err := bundle.ReadPrivateKey(keyPath)
			if err != nil {
				return err
			}
			opts := build.Options{
				Spec: spec, SpecDir: filepath.Dir(file), Output: out, Key: key, CacheDir: cache,
				Progress: g.streams.Err, ProgressTTY: isTerminal(g.streams.Err), Concurrency: concurrency, Log: g.log,
			}
			if split != "" {
				q, err := config.ParseQuantity(split)
				if err != nil {
					return fmt.Errorf("--split: %w", err)
				}
				opts.PartSize = int64(q)
			}
			if embed {
				if opts.PartSize > 0 {
					return errors.New("--embed and --split cannot be combined: a self-contained executable is one file")
				}
				if binary == "" {
					if binary, err = os.Executable(); err != nil {
						return fmt.Errorf("--embed: find this executable: %w", err)
					}
				}
				opts.Embed = binary
			}
			res, err := build.Build(cmd.Context(), opts)
			if err != nil {
				return err
			}
			for _, p := range res.Paths {
				fmt.Fprintln(g.streams.Out, termtext.Escape(p))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "bundle.yaml", "bundle spec (YAML)")
	f.StringVarP(&out, "out", "o", "site.bundle", "bundle (or self-contained executable) to write")
	f.StringVar(&keyPath, "key", "", "private signing key (from airlock bundle keygen)")
	f.StringVar(&cache, "cache", "", "charts and files downloaded, reused by later builds (default OUT.cache)")
	f.StringVar(&split, "split", "", "split into parts of this size, like 4G or 700Mi")
	f.BoolVar(&embed, "embed", false, "write a self-contained executable: airlock with the bundle appended")
	f.StringVar(&binary, "airlock-binary", "", "with --embed, the airlock executable to use (default: this one)")
	f.IntVar(&concurrency, "concurrency", 4, "parallel downloads")
	_ = cmd.MarkFlagRequired("key")
	_ = cmd.MarkFlagFilename("file", "yaml", "yml")
	return cmd
}

// bundleArg is the optional BUNDLE argument ("" means this executable's own).
func bundleArg(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	return ""
}

// openBundle opens the named bundle, or this executable's own bundle when
// name is empty, for verify and inspect: signed by the key at keyPath, or,
// with no key, checked for integrity only (they say so).
func openBundle(name, keyPath string) (*bundle.Bundle, error) {
	trust := bundle.Trust{IntegrityOnly: true}
	if keyPath != "" {
		pub, err := bundle.ReadPublicKey(keyPath)
		if err != nil {
			return nil, err
		}
		trust = bundle.Trust{PublicKey: pub}
	}
	b, err := bundle.Open(name, trust)
	return b, noBundleHint(name, err)
}

// noBundleHint explains that no bundle was named and this executable
// carries none.
func noBundleHint(name string, err error) error {
	if name == "" && errors.Is(err, bundle.ErrNotBundle) {
		return fmt.Errorf("no bundle given, and this airlock executable carries none: name a bundle file (%w)", err)
	}
	return err
}

// errNoKey ends bundle verify without --key: the bundle is intact, but who
// built it was not checked.
var errNoKey = errors.New("authenticity NOT checked: no --key given, so the signature proves only that the bundle is intact, not who built it; run again with --key site.pub (the builder's public key, handed over out of band), or pass --insecure-no-key to accept integrity only")

type verifyReport struct {
	Bundle      string  `json:"bundle"`
	KeyID       string  `json:"keyID"`
	Trusted     bool    `json:"trusted"`
	Entries     int     `json:"entries"`
	Bytes       int64   `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	BytesPerSec float64 `json:"bytesPerSecond"`
	Verified    bool    `json:"verified"`
	// Authenticity says whether (and how) the signer was checked.
	Authenticity  string `json:"authenticity"`
	Error         string `json:"error,omitempty"`
	SelfContained bool   `json:"selfContained"`
}

func newBundleVerifyCommand(g *globals) *cobra.Command {
	var keyPath string
	var insecure bool
	var workers int
	var output *string
	cmd := &cobra.Command{
		Use:   "verify --key site.pub [BUNDLE]",
		Short: "Check a bundle's signature and every digest, and print the throughput",
		Long: `Verify checks that the bundle is signed by --key, the archive structure byte
for byte, and the digest of every blob and file. With no BUNDLE it verifies
the bundle appended to this executable.

Without --key the signature is checked against the key the bundle carries:
that proves the bundle intact, not who built it. Verify then says
"authenticity NOT checked" and exits 1, unless --insecure-no-key accepts that.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			if keyPath != "" && insecure {
				return errors.New("--key and --insecure-no-key: choose one")
			}
			start := time.Now()
			b, err := openBundle(bundleArg(args), keyPath)
			if err != nil {
				return err
			}
			defer b.Close()
			tty := *output == "text" && isTerminal(g.streams.Err)
			opts := bundle.VerifyOptions{Workers: workers}
			if tty {
				opts.Progress = func(done, total int64) {
					fmt.Fprintf(g.streams.Err, "\r\033[Kverifying: %s of %s", bundle.HumanSize(done), bundle.HumanSize(total))
				}
			}
			res, verr := b.Verify(cmd.Context(), opts)
			if tty {
				fmt.Fprint(g.streams.Err, "\r\033[K")
			}
			d := time.Since(start)
			rep := verifyReport{
				Bundle: b.Name(), KeyID: res.KeyID, Trusted: res.Trusted, Entries: res.Entries, Bytes: res.Bytes,
				Seconds: d.Seconds(), BytesPerSec: float64(res.Bytes) / d.Seconds(), Verified: verr == nil, SelfContained: b.Embedded(),
				Authenticity: res.Authenticity.String(),
			}
			if verr != nil {
				rep.Error = verr.Error()
			}
			err = render(g.streams.Out, *output, rep, func(w io.Writer) error {
				if verr != nil {
					return nil
				}
				if !res.Trusted {
					fmt.Fprintf(w, "%s: intact: signature by the key it carries, %s; %d entries, %s checked in %s (%s/s)\n%s: authenticity NOT checked: no --key given, anyone could have built and signed it\n",
						termtext.Escape(b.Name()), termtext.Escape(res.KeyID), res.Entries, bundle.HumanSize(res.Bytes), d.Round(time.Millisecond), bundle.HumanSize(int64(rep.BytesPerSec)), termtext.Escape(b.Name()))
					return nil
				}
				fmt.Fprintf(w, "%s: OK: signature by key %s (the given key); %d entries, %s checked in %s (%s/s)\n",
					termtext.Escape(b.Name()), termtext.Escape(res.KeyID), res.Entries, bundle.HumanSize(res.Bytes), d.Round(time.Millisecond), bundle.HumanSize(int64(rep.BytesPerSec)))
				return nil
			})
			if err != nil {
				return err
			}
			if verr == nil && !res.Trusted && !insecure {
				return errNoKey
			}
			return verr
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "public key the bundle must be signed with (the builder's site.pub)")
	cmd.Flags().BoolVar(&insecure, "insecure-no-key", false, "without --key, accept a bundle whose signer was not checked (integrity only) and exit 0")
	cmd.Flags().IntVar(&workers, "workers", 2, "entries hashed in parallel")
	output = outputFlag(cmd)
	return cmd
}

func newBundleInspectCommand(g *globals) *cobra.Command {
	var keyPath string
	var output *string
	cmd := &cobra.Command{
		Use:   "inspect [--key site.pub] [BUNDLE]",
		Short: "Show a bundle's images, charts (and the images they reference) and files",
		Long: `Inspect shows what the bundle's signed metadata lists. Without --key the
signature is checked against the key the bundle carries only, and inspect
says that authenticity was NOT checked.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			b, err := openBundle(bundleArg(args), keyPath)
			if err != nil {
				return err
			}
			defer b.Close()
			in := b.Inspect()
			return render(g.streams.Out, *output, in, in.WriteText)
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "public key the bundle must be signed with")
	output = outputFlag(cmd)
	return cmd
}
