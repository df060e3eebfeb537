package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"

	"airlock.dev/airlock/installer/bootimage"
)

// KernelPackage is the name of the bundle file that holds the discovery
// kernel: a Debian linux-image package, e.g. linux-image-cloud-amd64's.
const KernelPackage = "boot/kernel.deb"

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// DiscoveryFromKernelPackage unpacks the kernel package (whose bundle
// digest is digest), assembles the discovery initramfs from its modules and
// the agent, and returns them as files for httpboot. The result is kept
// under stateDir/boot/DIGEST, so a restart reuses it.
func DiscoveryFromKernelPackage(pkg io.Reader, digest, stateDir string, agent []byte, log *slog.Logger) (fs.FS, DiscoveryImage, error) {
	if !digestRE.MatchString(digest) {
		return nil, DiscoveryImage{}, fmt.Errorf("kernel package digest %q is not sha256:HEX", digest)
	}
	dir := filepath.Join(stateDir, "boot", digest[len("sha256:"):])
	image := DiscoveryImage{Kernel: bootKernel, Initrd: bootInitrd, Cmdline: "console=ttyS0"}
	if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
		return os.DirFS(dir), image, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, DiscoveryImage{}, err
	}
	work := filepath.Join(dir, "unpacked")
	k, err := bootimage.ExtractKernelDeb(pkg, work)
	if err != nil {
		return nil, DiscoveryImage{}, fmt.Errorf("bundle file %s: %w", KernelPackage, err)
	}
	if err := os.Rename(k.Image, filepath.Join(dir, bootKernel)); err != nil {
		return nil, DiscoveryImage{}, err
	}
	var img bytes.Buffer
	rep, err := bootimage.Build(&img, bootimage.Options{Agent: agent, ModulesDir: k.ModulesDir, Compression: bootimage.Gzip, Log: log})
	if err != nil {
		return nil, DiscoveryImage{}, fmt.Errorf("assemble the discovery image from %s: %w", KernelPackage, err)
	}
	if err := os.WriteFile(filepath.Join(dir, bootInitrd), img.Bytes(), 0o644); err != nil {
		return nil, DiscoveryImage{}, err
	}
	if err := errors.Join(os.RemoveAll(work), os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600)); err != nil {
		return nil, DiscoveryImage{}, err
	}
	log.Info("discovery image assembled from the bundle", "kernel", k.Release, "modules", len(rep.Modules), "bytes", rep.Bytes)
	return os.DirFS(dir), image, nil
}
