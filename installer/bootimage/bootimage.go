// Package bootimage assembles the discovery initramfs: a cpio "newc"
// archive (gzip, zstd or uncompressed) holding the node agent as /init, the
// kernel modules it needs for common NICs and disks with their
// dependencies, a trimmed modules.dep for them, airlock's CA certificate
// (the only one the agent trusts for airlock's API), and the few
// directories and device nodes the kernel expects. Nothing else goes in.
package bootimage

import (
	"bytes"
	"compress/gzip"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"airlock.dev/airlock/installer/agent/kmod"
	"airlock.dev/airlock/services/agentapi"
)

// DefaultModules are the drivers the discovery image carries when the
// kernel has them as modules: virtual (virtio, e1000), common server NICs
// (Intel, Broadcom, Mellanox), and disk controllers (AHCI, NVMe, SAS/RAID,
// virtio-scsi). A kernel that builds one in or lacks it is fine.
var DefaultModules = []string{
	"virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "e1000", "e1000e", "igb", "igc",
	"ixgbe", "i40e", "ice", "bnxt_en", "tg3", "mlx4_en", "mlx5_core", "r8169",
	"ahci", "nvme", "sd_mod", "megaraid_sas", "mpt3sas", "hpsa", "smartpqi", "af_packet",
	// A hardware RNG: Go's crypto/rand (DHCP transaction IDs) blocks until
	// the kernel's pool is ready, which takes minutes in an emulated VM.
	"virtio_rng",
	// UEFI variables: the install writes the installed disk's boot entry.
	"efivarfs",
}

// Compression of the archive.
const (
	Gzip = "gzip"
	Zstd = "zstd"
	None = "none"
)

// Options say what goes into the image.
type Options struct {
	// Agent is the static airlock-agent binary for the kernel's
	// architecture; it becomes /init.
	Agent []byte
	// ModulesDir is the kernel's module tree, e.g. /lib/modules/6.1.0-56-cloud-amd64
	// (with modules.dep). Empty for a kernel without modules.
	ModulesDir string
	// CACert is airlock's CA certificate (PEM), put at
	// agentapi.CACertPath; required: the agent refuses to talk to airlock
	// without it.
	CACert []byte
	// Modules to include; DefaultModules when nil.
	Modules []string
	// Compression is Gzip (the default), Zstd or None. The kernel must
	// support it (CONFIG_RD_GZIP, CONFIG_RD_ZSTD).
	Compression string
	Log         *slog.Logger
}

// Report says what went into the image.
type Report struct {
	KernelRelease string
	// Modules are the module files included, in load order.
	Modules []string
	// Builtin are requested modules the kernel has built in.
	Builtin []string
	// Missing are requested modules the kernel has neither as module nor
	// built in.
	Missing []string
	// Bytes is the size of the (compressed) image.
	Bytes int64
}

// Build writes the image to w.
func Build(w io.Writer, opts Options) (Report, error) {
	var rep Report
	if len(opts.Agent) < 4 || !bytes.Equal(opts.Agent[:4], []byte("\x7fELF")) {
		return rep, errors.New("build boot image: the agent is not an ELF executable")
	}
	if b, _ := pem.Decode(opts.CACert); b == nil || b.Type != "CERTIFICATE" {
		return rep, errors.New("build boot image: no CA certificate (PEM) for the agent to trust")
	}
	if opts.Modules == nil {
		opts.Modules = DefaultModules
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	cw := &countWriter{w: w}
	var out io.Writer = cw
	var closer io.Closer
	switch opts.Compression {
	case "", Gzip:
		gz, _ := gzip.NewWriterLevel(cw, gzip.BestCompression)
		out, closer = gz, gz
	case Zstd:
		zw, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedBetterCompression))
		if err != nil {
			return rep, fmt.Errorf("build boot image: %w", err)
		}
		out, closer = zw, zw
	case None:
	default:
		return rep, fmt.Errorf("build boot image: unknown compression %q (gzip, zstd or none)", opts.Compression)
	}
	c := &cpioWriter{w: out}
	caPath := strings.TrimPrefix(agentapi.CACertPath, "/")
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "etc", path.Dir(caPath), "lib", "lib/modules"} {
		if err := c.entry(d, modeDir|0o755, nil, 0, 0); err != nil {
			return rep, fmt.Errorf("build boot image: %w", err)
		}
	}
	// The kernel opens /dev/console for init's stdio before devtmpfs is
	// mounted, so the node must be in the archive.
	if err := c.entry("dev/console", modeChr|0o600, nil, 5, 1); err != nil {
		return rep, fmt.Errorf("build boot image: %w", err)
	}
	if err := c.entry("init", modeFile|0o755, opts.Agent, 0, 0); err != nil {
		return rep, fmt.Errorf("build boot image: %w", err)
	}
	if err := c.entry(caPath, modeFile|0o644, opts.CACert, 0, 0); err != nil {
		return rep, fmt.Errorf("build boot image: %w", err)
	}
	if opts.ModulesDir != "" {
		if err := addModules(c, opts, &rep); err != nil {
			return rep, err
		}
	}
	if err := c.close(); err != nil {
		return rep, fmt.Errorf("build boot image: %w", err)
	}
	if closer != nil {
		if err := closer.Close(); err != nil {
			return rep, fmt.Errorf("build boot image: compress: %w", err)
		}
	}
	rep.Bytes = cw.n
	opts.Log.Info("boot image built", "kernel", rep.KernelRelease, "modules", len(rep.Modules),
		"builtin", rep.Builtin, "missing", rep.Missing, "bytes", rep.Bytes)
	return rep, nil
}

func addModules(c *cpioWriter, opts Options, rep *Report) error {
	rep.KernelRelease = filepath.Base(opts.ModulesDir)
	depFile, err := os.Open(filepath.Join(opts.ModulesDir, "modules.dep"))
	if err != nil {
		return fmt.Errorf("build boot image: %w", err)
	}
	defer depFile.Close()
	deps, err := kmod.ParseDeps(depFile)
	if err != nil {
		return fmt.Errorf("build boot image: %w", err)
	}
	builtin := map[string]bool{}
	if f, err := os.Open(filepath.Join(opts.ModulesDir, "modules.builtin")); err == nil {
		builtin, err = kmod.Builtin(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("build boot image: %w", err)
		}
	}
	order, missing := deps.Resolve(opts.Modules)
	for _, m := range missing {
		if builtin[m] {
			rep.Builtin = append(rep.Builtin, m)
		} else {
			rep.Missing = append(rep.Missing, m)
		}
	}
	base := "lib/modules/" + rep.KernelRelease
	dirs := map[string]bool{"lib": true, "lib/modules": true}
	mkdirs := func(p string) error {
		var parts []string
		for d := path.Dir(p); d != "." && !dirs[d]; d = path.Dir(d) {
			parts = append(parts, d)
		}
		slices.Reverse(parts)
		for _, d := range parts {
			dirs[d] = true
			if err := c.entry(d, modeDir|0o755, nil, 0, 0); err != nil {
				return err
			}
		}
		return nil
	}
	var depLines strings.Builder
	for _, p := range order {
		data, err := readModule(filepath.Join(opts.ModulesDir, filepath.FromSlash(p)))
		if err != nil {
			return fmt.Errorf("build boot image: %w", err)
		}
		plain := stripCompression(p)
		dst := base + "/" + plain
		if err := mkdirs(dst); err != nil {
			return fmt.Errorf("build boot image: %w", err)
		}
		if err := c.entry(dst, modeFile|0o644, data, 0, 0); err != nil {
			return fmt.Errorf("build boot image: %w", err)
		}
		rep.Modules = append(rep.Modules, plain)
		depLines.WriteString(plain + ":")
		for _, d := range deps.DepsOf(p) {
			depLines.WriteString(" " + stripCompression(d))
		}
		depLines.WriteString("\n")
	}
	if err := mkdirs(base + "/modules.dep"); err != nil {
		return fmt.Errorf("build boot image: %w", err)
	}
	if err := c.entry(base+"/modules.dep", modeFile|0o644, []byte(depLines.String()), 0, 0); err != nil {
		return fmt.Errorf("build boot image: %w", err)
	}
	return nil
}

func stripCompression(p string) string {
	for _, s := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(p, ".ko"+s) {
			return strings.TrimSuffix(p, s)
		}
	}
	return p
}

// readModule reads a module file, decompressing .ko.xz, .ko.zst and .ko.gz
// so that the agent can load it with plain finit_module(2).
func readModule(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read module: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(file, ".xz"):
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress module %s: %w", file, err)
		}
		r = xr
	case strings.HasSuffix(file, ".zst"):
		zr, err := zstd.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress module %s: %w", file, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(file, ".gz"):
		gr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress module %s: %w", file, err)
		}
		r = gr
	}
	data, err := io.ReadAll(io.LimitReader(r, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", file, err)
	}
	if len(data) < 4 || !bytes.Equal(data[:4], []byte("\x7fELF")) {
		return nil, fmt.Errorf("module %s is not an ELF object", file)
	}
	return data, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
