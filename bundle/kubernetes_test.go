package bundle

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"airlock.dev/airlock/manifests"
)

// writeKubernetesBundle writes a bundle whose signed Kubernetes set is
// complete (the default version's binaries as files, kubeadm's images and
// kube-vip as images, each a small manifest blob), then applies edit to the
// metadata before it is signed.
func writeKubernetesBundle(t testing.TB, dir string, edit func(*Metadata)) (string, ed25519.PublicKey) {
	t.Helper()
	return writeKubernetesBundleAt(t, dir, manifests.DefaultKubernetesVersion, edit)
}

// writeKubernetesBundleAt is writeKubernetesBundle for a given version.
func writeKubernetesBundleAt(t testing.TB, dir, version string, edit func(*Metadata)) (string, ed25519.PublicKey) {
	t.Helper()
	pub, priv := newKey(t)
	path := filepath.Join(dir, "k8s.bundle")
	w, err := Create(path, WriterOptions{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), "")
	k := &Kubernetes{Version: version, Arch: "amd64", Binaries: map[string]string{}}
	var meta Metadata
	for _, name := range KubernetesBinaries {
		fname := "kubernetes/" + version + "/linux-amd64/" + name
		content := []byte("#!/bin/sh\necho fake " + name + "\n")
		d, err := w.AddBytes("files/"+fname, content, "")
		if err != nil {
			t.Fatal(err)
		}
		meta.Files = append(meta.Files, File{Name: fname, Path: "files/" + fname, Size: int64(len(content)), Digest: d})
		k.Binaries[name] = fname
	}
	refs, err := manifests.KubernetesImages(version)
	if err != nil {
		t.Fatal(err)
	}
	refs = append(refs, manifests.KubeVIPImage)
	for _, ref := range refs {
		m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"ref":"` + ref + `"}}`)
		d := digestOf(m)
		if _, err := w.AddBytes("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), m, "application/vnd.oci.image.manifest.v1+json"); err != nil {
			t.Fatal(err)
		}
		i := strings.LastIndexByte(ref, ':')
		meta.Images = append(meta.Images, Image{Repository: ref[:i], Tag: ref[i+1:], Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(len(m))})
	}
	k.Images = refs
	meta.Name, meta.Kubernetes = "k8s", k
	if edit != nil {
		edit(&meta)
	}
	if _, err := w.Finish(meta, priv); err != nil {
		t.Fatal(err)
	}
	return path, pub
}

// A complete Kubernetes set opens, verifies, is found by KubernetesBinary
// and shown by inspect.
func TestKubernetesSetRoundTrip(t *testing.T) {
	path, pub := writeKubernetesBundle(t, t.TempDir(), nil)
	b, err := Open(path, Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Verify(context.Background(), VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	f, ok := b.KubernetesBinary("amd64", "kubeadm")
	if !ok || f.Name != "kubernetes/v1.35.4/linux-amd64/kubeadm" {
		t.Fatalf("KubernetesBinary(amd64, kubeadm) = %+v %v", f, ok)
	}
	if data, err := b.ReadFile(f.Path); err != nil || !bytes.Contains(data, []byte("fake kubeadm")) {
		t.Fatalf("read %s: %q %v", f.Path, data, err)
	}
	ff, r, off, size, err := b.FileContent(f.Name)
	if err != nil || ff != f || size != f.Size {
		t.Fatalf("FileContent(%s) = %+v, %d bytes, %v", f.Name, ff, size, err)
	}
	if _, isFile := r.(*os.File); !isFile {
		t.Errorf("FileContent gives a %T, not the bundle's file (no sendfile)", r)
	}
	got := make([]byte, size)
	if _, err := r.ReadAt(got, off); err != nil || !bytes.Contains(got, []byte("fake kubeadm")) {
		t.Fatalf("FileContent's bytes: %q %v", got, err)
	}
	if _, _, _, _, err := b.FileContent("kubernetes/v1.35.4/linux-amd64/kubefoo"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("FileContent of no file: %v", err)
	}
	if _, ok := b.KubernetesBinary("arm64", "kubeadm"); ok {
		t.Error("an arm64 kubeadm found in an amd64 bundle")
	}
	var text bytes.Buffer
	in := b.Inspect()
	if err := in.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`KUBERNETES v1\.35\.4`, `\nkubelet +linux/amd64 +kubernetes/v1\.35\.4/linux-amd64/kubelet\n`,
		`\nimage +registry\.k8s\.io/etcd:3\.6\.6-0\n`, `\nimage +` + regexp.QuoteMeta(manifests.KubeVIPImage) + `\n`} {
		if !regexp.MustCompile(want).MatchString(text.String()) {
			t.Errorf("inspect lacks %q:\n%s", want, text.String())
		}
	}
	if in.Kubernetes == nil || in.Kubernetes.Version != "v1.35.4" {
		t.Errorf("inspection's Kubernetes: %+v", in.Kubernetes)
	}
}

// A bundle may still carry v1.34.2 (out of upstream support, still in the
// table): its set opens with v1.34.2's own images, and one that carries
// the default version's etcd in place of v1.34.2's is refused.
func TestKubernetesSetOlderVersion(t *testing.T) {
	const old = "v1.34.2"
	if old == manifests.DefaultKubernetesVersion {
		t.Fatalf("%s is the default: pick an older version of the table (%q)", old, manifests.KubernetesVersions())
	}
	path, pub := writeKubernetesBundleAt(t, t.TempDir(), old, nil)
	b, err := Open(path, Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	f, ok := b.KubernetesBinary("amd64", "kubeadm")
	in := b.Inspect()
	b.Close()
	if !ok || f.Name != "kubernetes/v1.34.2/linux-amd64/kubeadm" || in.Kubernetes == nil || in.Kubernetes.Version != old ||
		!slices.Contains(in.Kubernetes.Images, "registry.k8s.io/etcd:3.6.5-0") || !slices.Contains(in.Kubernetes.Images, "registry.k8s.io/coredns/coredns:v1.12.1") {
		t.Fatalf("v1.34.2 set: kubeadm %+v %v, inspection %+v", f, ok, in.Kubernetes)
	}
	newer, err := manifests.KubernetesImages(manifests.DefaultKubernetesVersion)
	if err != nil {
		t.Fatal(err)
	}
	etcd := newer[len(newer)-1]
	path, pub = writeKubernetesBundleAt(t, t.TempDir(), old, func(m *Metadata) {
		for i, ref := range m.Kubernetes.Images {
			if ref == "registry.k8s.io/etcd:3.6.5-0" {
				m.Kubernetes.Images[i] = etcd
			}
		}
	})
	if b, err := Open(path, Trust{PublicKey: pub}); err == nil {
		b.Close()
		t.Fatalf("a v1.34.2 set with %s opened", etcd)
	} else if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "registry.k8s.io/etcd:3.6.5-0") {
		t.Fatalf("a v1.34.2 set with %s: %v; want it to name v1.34.2's etcd", etcd, err)
	}
}

// A signed Kubernetes set that names a binary or image the bundle lacks,
// or lacks one kubeadm needs, is refused at open, naming what is missing.
func TestOpenRefusesIncompleteKubernetesSet(t *testing.T) {
	dropFile := func(m *Metadata, name string) {
		for i, f := range m.Files {
			if strings.HasSuffix(f.Name, "/"+name) {
				m.Files = append(m.Files[:i], m.Files[i+1:]...)
				return
			}
		}
		t.Fatalf("no file %s", name)
	}
	dropImage := func(m *Metadata, ref string) {
		for i, im := range m.Images {
			if im.Ref() == ref {
				m.Images = append(m.Images[:i], m.Images[i+1:]...)
				return
			}
		}
		t.Fatalf("no image %s", ref)
	}
	for name, c := range map[string]struct {
		edit func(*Metadata)
		want string
	}{
		"binary not in the set":   {func(m *Metadata) { delete(m.Kubernetes.Binaries, "kubectl") }, "the binary kubectl for linux/amd64 is missing"},
		"binary not a file":       {func(m *Metadata) { dropFile(m, "kubelet") }, `the binary kubelet for linux/amd64 (file "kubernetes/v1.35.4/linux-amd64/kubelet") is missing`},
		"binary file of no entry": {func(m *Metadata) { m.Files[1].Path = "files/elsewhere" }, `the binary kubeadm for linux/amd64 ("files/elsewhere") is not in the bundle`},
		"binary digest":           {func(m *Metadata) { m.Files[0].Digest = digestOf([]byte("x")) }, "the binary kubelet for linux/amd64: file"},
		"image not in the bundle": {func(m *Metadata) { dropImage(m, "registry.k8s.io/etcd:3.6.6-0") }, `the image "registry.k8s.io/etcd:3.6.6-0" is missing`},
		"kube-vip not in bundle":  {func(m *Metadata) { dropImage(m, manifests.KubeVIPImage) }, `the image "` + manifests.KubeVIPImage + `" is missing`},
		"kubeadm image not in set": {func(m *Metadata) {
			m.Kubernetes.Images = m.Kubernetes.Images[1:]
		}, "kubeadm's image registry.k8s.io/kube-apiserver:v1.35.4 is not in the Kubernetes set"},
		"bad version":      {func(m *Metadata) { m.Kubernetes.Version = "1.34" }, "not a version like"},
		"no arch":          {func(m *Metadata) { m.Kubernetes.Arch = "" }, "architecture"},
		"unknown binary":   {func(m *Metadata) { m.Kubernetes.Binaries["kubefoo"] = m.Kubernetes.Binaries["kubelet"] }, `unknown binary "kubefoo"`},
		"other arch empty": {func(m *Metadata) { m.Kubernetes.OtherArches = map[string]map[string]string{"arm64": {}} }, "the binary kubelet for linux/arm64 is missing"},
	} {
		t.Run(name, func(t *testing.T) {
			path, pub := writeKubernetesBundle(t, t.TempDir(), c.edit)
			b, err := Open(path, Trust{PublicKey: pub})
			if err == nil {
				b.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v\nwant it to name %q", err, c.want)
			}
		})
	}
}

// A flipped byte in a Kubernetes binary is caught by Verify and by ReadFile,
// naming the binary's entry.
func TestVerifyCatchesDamagedKubernetesBinary(t *testing.T) {
	path, pub := writeKubernetesBundle(t, t.TempDir(), nil)
	b, err := Open(path, Trust{PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := b.KubernetesBinary("amd64", "kubelet")
	off := b.byPath[f.Path].Offset + 3
	b.Close()
	flip(t, path, off)
	b, err = Open(path, Trust{PublicKey: pub})
	if err != nil {
		t.Fatalf("open (contents are checked by Verify, not Open): %v", err)
	}
	defer b.Close()
	if _, err := b.Verify(context.Background(), VerifyOptions{}); err == nil || !strings.Contains(err.Error(), f.Path) {
		t.Fatalf("verify: %v", err)
	}
	if _, err := b.ReadFile(f.Path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read damaged binary: %v", err)
	}
	for i := 0; i < 2; i++ {
		if _, _, _, _, err := b.FileContent(f.Name); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("FileContent of the damaged binary (try %d): %v", i+1, err)
		}
	}
	if _, _, _, _, err := b.FileContent(b.Metadata().Kubernetes.Binaries["kubeadm"]); err != nil {
		t.Errorf("FileContent of a sound binary: %v", err)
	}
}
