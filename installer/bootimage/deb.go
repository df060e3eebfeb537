package bootimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Limits on a kernel package, which comes from a bundle: signed, but
// still parsed as untrusted input.
const (
	maxDebMember   = 1 << 30 // one ar member (data.tar.*)
	maxDebExtract  = 2 << 30 // everything written out
	maxDebEntries  = 200_000
	arMagic        = "!<arch>\n"
	arHeaderLength = 60
)

// Kernel is a kernel and its module tree unpacked from a package.
type Kernel struct {
	Release    string // e.g. 6.1.0-41-cloud-amd64
	Image      string // path of vmlinuz
	ModulesDir string // path of lib/modules/RELEASE (has modules.dep)
}

// ErrNotKernelPackage means the package holds no kernel image with modules.
var ErrNotKernelPackage = errors.New("not a kernel package: no boot/vmlinuz-RELEASE with lib/modules/RELEASE/modules.dep")

// ExtractKernelDeb unpacks the kernel image and module tree of a Debian
// kernel package (linux-image-*.deb) into dir. Only regular files under
// boot/vmlinuz-* and lib/modules/ (or usr/lib/modules/) are written; links,
// devices and paths that leave dir are skipped or refused.
func ExtractKernelDeb(r io.Reader, dir string) (Kernel, error) {
	data, name, err := debDataMember(bufio.NewReader(r))
	if err != nil {
		return Kernel{}, fmt.Errorf("read kernel package: %w", err)
	}
	tr, closeFn, err := decompressor(name, data)
	if err != nil {
		return Kernel{}, fmt.Errorf("read kernel package %s: %w", name, err)
	}
	defer closeFn()
	var k Kernel
	var written int64
	t := tar.NewReader(tr)
	for n := 0; ; n++ {
		if n > maxDebEntries {
			return Kernel{}, fmt.Errorf("kernel package: more than %d entries", maxDebEntries)
		}
		h, err := t.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Kernel{}, fmt.Errorf("kernel package %s: %w", name, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		rel, keep := kernelPath(h.Name)
		if !keep {
			continue
		}
		if written += h.Size; written > maxDebExtract || h.Size < 0 {
			return Kernel{}, fmt.Errorf("kernel package: more than %d bytes to unpack", maxDebExtract)
		}
		dst := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return Kernel{}, err
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return Kernel{}, err
		}
		_, err = io.Copy(f, io.LimitReader(t, h.Size))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return Kernel{}, fmt.Errorf("unpack %s: %w", rel, err)
		}
		if release, ok := strings.CutPrefix(rel, "boot/vmlinuz-"); ok {
			k.Release, k.Image = release, dst
		}
	}
	if k.Image == "" {
		return Kernel{}, ErrNotKernelPackage
	}
	k.ModulesDir = filepath.Join(dir, "lib", "modules", k.Release)
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.dep")); err != nil {
		return Kernel{}, fmt.Errorf("%w (found boot/vmlinuz-%s but no lib/modules/%s/modules.dep)", ErrNotKernelPackage, k.Release, k.Release)
	}
	return k, nil
}

// kernelPath maps a path inside data.tar to where it goes, keeping only
// the kernel image and the module tree.
func kernelPath(name string) (string, bool) {
	p := path.Clean("/" + name)[1:] // drops "./", resolves "..": nothing escapes
	p = strings.TrimPrefix(p, "usr/")
	switch {
	case strings.HasPrefix(p, "boot/vmlinuz-") && !strings.Contains(p[len("boot/"):], "/"):
		return p, true
	case strings.HasPrefix(p, "lib/modules/") && strings.Count(p, "/") >= 3:
		return p, true
	}
	return "", false
}

// debDataMember finds data.tar.* in a .deb (an ar archive) and returns it.
func debDataMember(r *bufio.Reader) ([]byte, string, error) {
	magic := make([]byte, len(arMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != arMagic {
		return nil, "", errors.New("not a Debian package (no ar header)")
	}
	hdr := make([]byte, arHeaderLength)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, "", errors.New("no data.tar member in the package")
			}
			return nil, "", fmt.Errorf("truncated package: %w", err)
		}
		if string(hdr[58:60]) != "`\n" {
			return nil, "", errors.New("corrupt ar member header")
		}
		name := strings.TrimRight(strings.TrimSpace(string(hdr[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 || size > maxDebMember {
			return nil, "", fmt.Errorf("member %q: bad size %q", name, strings.TrimSpace(string(hdr[48:58])))
		}
		if strings.HasPrefix(name, "data.tar") {
			data := make([]byte, size)
			if _, err := io.ReadFull(r, data); err != nil {
				return nil, "", fmt.Errorf("member %s: truncated: %w", name, err)
			}
			return data, name, nil
		}
		if _, err := r.Discard(int(size + size%2)); err != nil {
			return nil, "", fmt.Errorf("member %s: truncated: %w", name, err)
		}
	}
}

func decompressor(name string, data []byte) (io.Reader, func(), error) {
	br := bytes.NewReader(data)
	switch path.Ext(name) {
	case ".xz":
		r, err := xz.NewReader(br)
		return r, func() {}, err
	case ".zst":
		d, err := zstd.NewReader(br, zstd.WithDecoderMaxMemory(1<<30))
		if err != nil {
			return nil, nil, err
		}
		return d, d.Close, nil
	case ".gz":
		r, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return r, func() { r.Close() }, nil
	case ".tar":
		return br, func() {}, nil
	}
	return nil, nil, fmt.Errorf("unknown compression of %s", name)
}
