package engine

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/bootimage"
)

// KernelPackage is the name of the bundle file that holds the discovery
// kernel: a Debian linux-image package, e.g. linux-image-cloud-amd64's.
const KernelPackage = "boot/kernel.deb"

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ErrNoKernelPackage means a bundle carries no discovery kernel.
var ErrNoKernelPackage = errors.New("the bundle has no " + KernelPackage + " (a Debian linux-image package) to build the discovery image from")

// discoveryImage names the discovery kernel and boot image in a boot
// files directory (assembled from a bundle, or by lab up).
var discoveryImage = DiscoveryImage{Kernel: bootKernel, Initrd: bootInitrd, Cmdline: "console=ttyS0"}

// DiscoveryFromBundle assembles the discovery image from the bundle's
// kernel package and the agent (the static airlock-agent, asked for only
// when the image must be built) and returns it as files for httpboot; see
// DiscoveryFromKernelPackage. It returns ErrNoKernelPackage when the
// bundle has none.
func DiscoveryFromBundle(b *bundle.Bundle, stateDir string, agent func() ([]byte, error), log *slog.Logger) (fs.FS, DiscoveryImage, error) {
	dir, err := discoveryDirFromBundle(b, stateDir, agent, log)
	if err != nil {
		return nil, DiscoveryImage{}, err
	}
	return os.DirFS(dir), discoveryImage, nil
}

func discoveryDirFromBundle(b *bundle.Bundle, stateDir string, agent func() ([]byte, error), log *slog.Logger) (string, error) {
	for _, f := range b.Metadata().Files {
		if f.Name != KernelPackage {
			continue
		}
		bin, err := agent()
		if err != nil {
			return "", err
		}
		pkg, err := b.Open(f.Path) // checks the digest
		if err != nil {
			return "", err
		}
		return assembleDiscovery(pkg, f.Digest, stateDir, bin, log)
	}
	return "", ErrNoKernelPackage
}

// DiscoveryFromKernelPackage unpacks the kernel package (whose bundle
// digest is digest), assembles the discovery initramfs from its modules,
// the agent and airlock's CA (stateDir's, made if need be), and returns
// them as files for httpboot. The result is kept under
// stateDir/boot/DIGEST-CA, so a restart reuses it and a new CA gets a new
// image.
func DiscoveryFromKernelPackage(pkg io.Reader, digest, stateDir string, agent []byte, log *slog.Logger) (fs.FS, DiscoveryImage, error) {
	dir, err := assembleDiscovery(pkg, digest, stateDir, agent, log)
	if err != nil {
		return nil, DiscoveryImage{}, err
	}
	return os.DirFS(dir), discoveryImage, nil
}

// assembleDiscovery does DiscoveryFromKernelPackage's work and returns the
// directory that holds the kernel and boot image.
func assembleDiscovery(pkg io.Reader, digest, stateDir string, agent []byte, log *slog.Logger) (string, error) {
	if !digestRE.MatchString(digest) {
		return "", fmt.Errorf("kernel package digest %q is not sha256:HEX", digest)
	}
	ca, err := LoadCA(stateDir)
	if err != nil {
		return "", err
	}
	caSum := sha256.Sum256(ca.Cert.Raw)
	dir := filepath.Join(stateDir, "boot", digest[len("sha256:"):]+"-"+hex.EncodeToString(caSum[:8]))
	if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
		return dir, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	work := filepath.Join(dir, "unpacked")
	k, err := bootimage.ExtractKernelDeb(pkg, work)
	if err != nil {
		return "", fmt.Errorf("bundle file %s: %w", KernelPackage, err)
	}
	if err := os.Rename(k.Image, filepath.Join(dir, bootKernel)); err != nil {
		return "", err
	}
	var img bytes.Buffer
	rep, err := bootimage.Build(&img, bootimage.Options{Agent: agent, CACert: ca.CertPEM, ModulesDir: k.ModulesDir, Compression: bootimage.Gzip, Log: log})
	if err != nil {
		return "", fmt.Errorf("assemble the discovery image from %s: %w", KernelPackage, err)
	}
	if err := os.WriteFile(filepath.Join(dir, bootInitrd), img.Bytes(), 0o644); err != nil {
		return "", err
	}
	if err := errors.Join(os.RemoveAll(work), os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600)); err != nil {
		return "", err
	}
	log.Info("discovery image assembled from the bundle", "kernel", k.Release, "modules", len(rep.Modules), "bytes", rep.Bytes)
	return dir, nil
}
