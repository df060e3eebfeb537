package bundle

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strconv"

	"airlock.dev/airlock/manifests"
)

var (
	kubeVersionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)
	kubeArchRE    = regexp.MustCompile(`^[a-z0-9_]{1,16}$`)
)

// checkKubernetes checks the signed Kubernetes set against the rest of the
// metadata: a version, every binary (kubelet, kubeadm, kubectl) of each
// architecture a file of the bundle whose entry is there with its size and
// digest, and every image nodes pull (at least those kubeadm of the version
// needs, when airlock knows the version) among the bundle's images. What is
// missing is named.
func (b *Bundle) checkKubernetes() error {
	k := b.meta.Kubernetes
	if k == nil {
		return nil
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: Kubernetes %s: %s", ErrCorrupt, strconv.Quote(k.Version), fmt.Sprintf(format, args...))
	}
	if !kubeVersionRE.MatchString(k.Version) {
		return bad("not a version like %s", manifests.DefaultKubernetesVersion)
	}
	files := map[string]File{}
	for _, f := range b.meta.Files {
		files[f.Name] = f
	}
	arches := map[string]map[string]string{k.Arch: k.Binaries}
	for a, bins := range k.OtherArches {
		if a == k.Arch {
			return bad("architecture %s is listed twice", strconv.Quote(a))
		}
		arches[a] = bins
	}
	names := make([]string, 0, len(arches))
	for a := range arches {
		names = append(names, a)
	}
	sort.Strings(names)
	for _, arch := range names {
		if !kubeArchRE.MatchString(arch) {
			return bad("architecture %s is not one like amd64", strconv.Quote(arch))
		}
		bins := arches[arch]
		for _, name := range KubernetesBinaries {
			fname, ok := bins[name]
			if !ok {
				return bad("the binary %s for linux/%s is missing: rebuild the bundle with airlock bundle build", name, arch)
			}
			f, ok := files[fname]
			if !ok {
				return bad("the binary %s for linux/%s (file %s) is missing from the bundle's files: rebuild the bundle", name, arch, strconv.Quote(fname))
			}
			e, ok := b.byPath[f.Path]
			if !ok {
				return bad("the binary %s for linux/%s (%s) is not in the bundle: rebuild the bundle", name, arch, strconv.Quote(f.Path))
			}
			if e.Size != f.Size || e.Digest != f.Digest {
				return bad("the binary %s for linux/%s: file %s says %d bytes and %s, its entry %d and %s", name, arch, strconv.Quote(fname), f.Size, f.Digest, e.Size, e.Digest)
			}
		}
		for name := range bins {
			if !slices.Contains(KubernetesBinaries, name) {
				return bad("unknown binary %s for linux/%s", strconv.Quote(name), arch)
			}
		}
	}
	have := map[string]bool{}
	for _, im := range b.meta.Images {
		have[im.Ref()] = true
		have[im.Repository+"@"+im.Digest] = true
		if im.Tag != "" {
			have[im.Repository+":"+im.Tag+"@"+im.Digest] = true
		}
	}
	want := append([]string(nil), k.Images...)
	if need, err := manifests.KubernetesImages(k.Version); err == nil {
		for _, ref := range need {
			if !slices.Contains(want, ref) {
				return bad("kubeadm's image %s is not in the Kubernetes set: rebuild the bundle", ref)
			}
		}
	}
	for _, ref := range want {
		if !have[ref] {
			return bad("the image %s is missing from the bundle: rebuild the bundle", strconv.Quote(ref))
		}
	}
	return nil
}

// KubernetesBinary returns the bundle file holding the Kubernetes binary
// name (kubelet, kubeadm, kubectl) for linux/arch.
func (b *Bundle) KubernetesBinary(arch, name string) (File, bool) {
	k := b.meta.Kubernetes
	if k == nil {
		return File{}, false
	}
	bins := k.Binaries
	if arch != k.Arch {
		bins = k.OtherArches[arch]
	}
	fname, ok := bins[name]
	if !ok {
		return File{}, false
	}
	return b.File(fname)
}

// writeKubernetes renders the Kubernetes section of an inspection.
func (in Inspection) writeKubernetes(w io.Writer, e func(string) string) {
	k := in.Kubernetes
	if k == nil {
		return
	}
	fmt.Fprintf(w, "\nKUBERNETES %s\tARCH\tFILE OR IMAGE\n", e(k.Version))
	write := func(arch string, bins map[string]string) {
		for _, name := range KubernetesBinaries {
			fmt.Fprintf(w, "%s\tlinux/%s\t%s\n", e(name), e(arch), e(bins[name]))
		}
	}
	write(k.Arch, k.Binaries)
	others := make([]string, 0, len(k.OtherArches))
	for a := range k.OtherArches {
		others = append(others, a)
	}
	sort.Strings(others)
	for _, a := range others {
		write(a, k.OtherArches[a])
	}
	for _, im := range k.Images {
		fmt.Fprintf(w, "image\t\t%s\n", e(im))
	}
}
