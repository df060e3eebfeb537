// Command k8s-images builds the container images the Kubernetes end-to-end
// test installs, from Go binaries, under their upstream names
// (registry.k8s.io/kube-apiserver:v1.35.4, ...), into one OCI image layout
// whose index names each image by its reference; and serves such a layout
// from registries on loopback, one per upstream registry, so that
// `airlock bundle build` with registryMirrors collects them exactly as a
// site's bundle is built from the real registries.
//
// It is test tooling in a module of its own: e2e/k8s/images.sh runs it to
// build, and the end-to-end test runs its serve. Usage in main.go.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// RefAnnotation names an image in the layout's index (as `crane` and
// containerd do).
const RefAnnotation = "org.opencontainers.image.ref.name"

// File is one file of an image layer: Src on this machine (or Data), at
// Path in the image, with Mode.
type File struct {
	Path string
	Src  string
	Data []byte
	Mode int64
	// Link, when set, makes Path a symbolic link to it.
	Link string
}

// Image is one image to build.
type Image struct {
	Ref        string // registry.k8s.io/kube-apiserver:v1.35.4
	Entrypoint []string
	// Layers, bottom first; each a list of files (directories are made as
	// needed).
	Layers [][]File
}

// epoch is every file's and the config's time: the same inputs make the
// same digests.
var epoch = time.Unix(0, 0).UTC()

// Base is the layer every image starts with: what distroless/static has
// that a Go server reads (passwd, group, nsswitch, a sticky /tmp).
func Base() []File {
	return []File{
		{Path: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"), Mode: 0o644},
		{Path: "etc/group", Data: []byte("root:x:0:\nnobody:x:65534:\n"), Mode: 0o644},
		{Path: "etc/nsswitch.conf", Data: []byte("hosts: files dns\n"), Mode: 0o644},
		{Path: "tmp/", Mode: 0o1777},
		{Path: "root/", Mode: 0o700},
	}
}

// Tree lists the regular files, directories and symbolic links under dir
// (an unpacked Debian package tree, say) as layer files below prefix.
func Tree(dir, prefix string) ([]File, error) {
	var files []File
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		at := path.Join(prefix, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			files = append(files, File{Path: at + "/", Mode: int64(info.Mode().Perm())})
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			files = append(files, File{Path: at, Link: target})
		case info.Mode().IsRegular():
			files = append(files, File{Path: at, Src: p, Mode: int64(info.Mode().Perm())})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	return files, nil
}

// layer packs files into an uncompressed tar, parents before children, in
// path order.
func layer(files []File) ([]byte, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	made := map[string]bool{}
	var mkdirs func(dir string) error
	mkdirs = func(dir string) error {
		if dir == "." || dir == "" || made[dir] {
			return nil
		}
		if err := mkdirs(path.Dir(dir)); err != nil {
			return err
		}
		made[dir] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX})
	}
	for _, f := range files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if err := mkdirs(path.Dir(p)); err != nil {
			return nil, err
		}
		h := &tar.Header{Name: p, Mode: f.Mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case strings.HasSuffix(f.Path, "/"):
			if made[p] {
				continue
			}
			made[p] = true
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			continue
		case f.Link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Link, 0o777
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			continue
		}
		data := f.Data
		if f.Src != "" {
			var err error
			if data, err = os.ReadFile(f.Src); err != nil {
				return nil, fmt.Errorf("read %s for %s: %w", f.Src, p, err)
			}
		}
		h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Build makes img as a linux/amd64 image with gzip layers.
func Build(img Image) (v1.Image, error) {
	if _, err := name.ParseReference(img.Ref, name.StrictValidation); err != nil {
		return nil, fmt.Errorf("image %q: %w", img.Ref, err)
	}
	var layers []v1.Layer
	for i, files := range img.Layers {
		raw, err := layer(files)
		if err != nil {
			return nil, fmt.Errorf("image %s layer %d: %w", img.Ref, i, err)
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
			tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, fmt.Errorf("image %s layer %d: %w", img.Ref, i, err)
		}
		layers = append(layers, l)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	out, err := mutate.AppendLayers(base, layers...)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	cf, err := out.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = img.Entrypoint
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.WorkingDir = "/"
	if out, err = mutate.ConfigFile(out, cf); err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	return out, nil
}

// Write builds every image into a new OCI layout at dir, each named in
// the index by its reference.
func Write(dir string, imgs []Image) error {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("create OCI layout %s: %w", dir, err)
	}
	for _, img := range imgs {
		built, err := Build(img)
		if err != nil {
			return err
		}
		if err := p.AppendImage(built, layout.WithAnnotations(map[string]string{RefAnnotation: img.Ref})); err != nil {
			return fmt.Errorf("write %s to %s: %w", img.Ref, dir, err)
		}
	}
	return nil
}

// Entry is one image of a layout.
type Entry struct {
	Ref   string
	Image v1.Image
}

// Read lists the images of a layout Write made.
func Read(dir string) ([]Entry, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("open OCI layout %s: %w", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("open OCI layout %s: %w", dir, err)
	}
	man, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("open OCI layout %s: %w", dir, err)
	}
	var out []Entry
	for _, d := range man.Manifests {
		ref := d.Annotations[RefAnnotation]
		if ref == "" {
			return nil, fmt.Errorf("OCI layout %s: image %s has no %s", dir, d.Digest, RefAnnotation)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("OCI layout %s: %s: %w", dir, ref, err)
		}
		out = append(out, Entry{Ref: ref, Image: img})
	}
	return out, nil
}

// Registries serves the images of a layout on loopback, one registry per
// upstream registry the references name.
type Registries struct {
	// Mirrors maps an upstream registry (registry.k8s.io, docker.io) to
	// the URL of the loopback registry holding its images under the same
	// repository paths (http://127.0.0.1:PORT).
	Mirrors map[string]string
	servers []*http.Server
}

// Serve starts the registries on 127.0.0.1 (ports chosen by the kernel)
// and pushes every image of the layout at dir into its registry. Close
// stops them.
func Serve(ctx context.Context, dir string) (_ *Registries, err error) {
	entries, err := Read(dir)
	if err != nil {
		return nil, err
	}
	r := &Registries{Mirrors: map[string]string{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Close())
		}
	}()
	hosts := map[string]string{} // upstream -> host:port
	for _, e := range entries {
		ref, err := name.ParseReference(e.Ref, name.StrictValidation)
		if err != nil {
			return nil, fmt.Errorf("image %q: %w", e.Ref, err)
		}
		up := ref.Context().RegistryStr()
		if name.DefaultRegistry == up {
			up = "docker.io"
		}
		if _, ok := hosts[up]; !ok {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, fmt.Errorf("listen for the %s mirror: %w", up, err)
			}
			srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}
			r.servers = append(r.servers, srv)
			go srv.Serve(ln) //nolint:errcheck // Close reports shutdown
			hosts[up] = ln.Addr().String()
			r.Mirrors[up] = "http://" + ln.Addr().String()
		}
		// The same repository path and tag on the mirror.
		var at string
		switch v := ref.(type) {
		case name.Tag:
			at = hosts[up] + "/" + ref.Context().RepositoryStr() + ":" + v.TagStr()
		case name.Digest:
			at = hosts[up] + "/" + ref.Context().RepositoryStr() + "@" + v.DigestStr()
		}
		dst, err := name.ParseReference(at, name.Insecure)
		if err != nil {
			return nil, err
		}
		if err := remote.Write(dst, e.Image, remote.WithContext(ctx)); err != nil {
			return nil, fmt.Errorf("push %s to %s: %w", e.Ref, at, err)
		}
	}
	return r, nil
}

// Close stops the registries.
func (r *Registries) Close() error {
	var errs []error
	for _, s := range r.servers {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
