package build

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"airlock.dev/airlock/bundle"
)

// buildTestBundle builds a bundle from the upstream and returns its path
// and public key.
func buildTestBundle(t testing.TB, u *upstream, dir string, mod func(*Options)) (string, *Result) {
	t.Helper()
	specData := u.specFor(t, dir)
	specPath := filepath.Join(dir, "bundle.yaml")
	os.WriteFile(specPath, specData, 0o644)
	spec, problems := ParseSpec(specPath, specData)
	if err := problems.Err(); err != nil {
		t.Fatalf("spec: %v", err)
	}
	_, priv := testKey(t)
	var log bytes.Buffer
	opts := Options{Spec: spec, SpecDir: dir, Output: filepath.Join(dir, "site.bundle"), Key: priv, Transport: u.transport, Progress: &log}
	if mod != nil {
		mod(&opts)
	}
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatalf("build: %v\nprogress:\n%s", err, log.String())
	}
	t.Logf("progress:\n%s", log.String())
	return opts.Output, res
}

func TestBuildFromLocalUpstream(t *testing.T) {
	u := newUpstream(t)
	dir := t.TempDir()
	// Helm must not touch the user's configuration or cache: point every
	// place it could use at an empty directory and check it stays empty.
	home := t.TempDir()
	for _, v := range []string{"HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"} {
		t.Setenv(v, home)
	}
	defer func() {
		if ents, _ := os.ReadDir(home); len(ents) > 0 {
			t.Errorf("the build wrote into the home directory: %v", ents)
		}
	}()
	out, res := buildTestBundle(t, u, dir, nil)
	if res.Fetched == 0 || res.Reused != 0 {
		t.Errorf("first build fetched %d reused %d", res.Fetched, res.Reused)
	}
	b, err := bundle.Open(out, bundle.Trust{IntegrityOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Verify(context.Background(), bundle.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	m := b.Metadata()
	if !slices.Equal(m.Components, []string{"cni", "gpu-operator"}) {
		t.Errorf("components %v", m.Components)
	}
	var refs []string
	for _, im := range m.Images {
		refs = append(refs, im.Ref())
		if want, ok := u.digests[im.Ref()]; ok && want != im.Digest {
			t.Errorf("%s: digest %s, upstream %s", im.Ref(), im.Digest, want)
		}
	}
	wantRefs := []string{
		"docker.io/library/busybox:1.36",
		"ghcr.io/airlock-test/charts/ocichart:0.1.0",
		"ghcr.io/airlock-test/hook:1.0",
		"nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
		"quay.io/prometheus/node-exporter:v1.8.2",
		"quay.io/prometheus/node-exporter@" + u.digests["quay.io/prometheus/node-exporter:v1.8.2"],
		"registry.k8s.io/pause:3.10",
	}
	if !slices.Equal(refs, wantRefs) {
		t.Fatalf("images %v, want %v", refs, wantRefs)
	}
	for _, im := range m.Images {
		if len(im.Platforms) == 0 && !strings.Contains(im.Repository, "charts") {
			t.Errorf("%s: no platform", im.Ref())
		}
	}
	if bb := m.Images[0]; !slices.Equal(bb.Platforms, []string{"linux/amd64", "linux/arm64/v8"}) || bb.MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Errorf("busybox: platforms %v media type %s", bb.Platforms, bb.MediaType)
	}
	if len(m.Charts) != 2 || !slices.Equal(m.Charts[0].Images, []string{"ghcr.io/airlock-test/hook:1.0", "quay.io/prometheus/node-exporter:v1.8.2", "registry.k8s.io/pause:3.10"}) ||
		m.Charts[1].Name != "ocichart" || !slices.Equal(m.Charts[1].Images, []string{"nvcr.io/nvidia/k8s-device-plugin:v0.17.0"}) {
		t.Errorf("chart images: %+v", m.Charts)
	}
	if data, err := b.ReadFile("files/vmlinuz"); err != nil || !bytes.Equal(data, u.file) {
		t.Errorf("file vmlinuz: %v", err)
	}
	if _, err := b.ReadFile("files/ipxe/ipxe.efi"); err != nil {
		t.Error(err)
	}
	if _, err := b.ReadFile("charts/ocichart-0.1.0.tgz"); err != nil {
		t.Error(err)
	}
	if _, err := b.ReadFile("charts/exporter-1.2.3.tgz"); err != nil {
		t.Error(err)
	}
	// Every blob of the index is there once: the layer shared between the
	// two platforms is stored once.
	seen := map[string]int{}
	for _, e := range m.Entries {
		if strings.HasPrefix(e.Path, "blobs/") {
			seen[e.Digest]++
		}
	}
	for d, n := range seen {
		if n > 1 {
			t.Errorf("blob %s stored %d times", d, n)
		}
	}
	var text bytes.Buffer
	b.Inspect().WriteText(&text)
	if !strings.Contains(text.String(), "quay.io/prometheus/node-exporter:v1.8.2") {
		t.Errorf("inspect:\n%s", text.String())
	}
	t.Logf("inspect:\n%s", text.String())

	// A second run reuses every blob and file from the cache.
	_, res2 := buildTestBundle(t, u, dir, nil)
	if res2.Fetched != 0 || res2.Reused == 0 {
		t.Errorf("second build fetched %d reused %d", res2.Fetched, res2.Reused)
	}
}

func TestBuildRefusesWrongFileDigest(t *testing.T) {
	u := newUpstream(t)
	dir := t.TempDir()
	spec, _ := ParseSpec("bundle.yaml", u.specFor(t, dir))
	spec.Files[0].SHA256 = strings.Repeat("ab", 32)
	spec.Charts, spec.Images = nil, nil
	_, priv := testKey(t)
	_, err := Build(context.Background(), Options{Spec: spec, SpecDir: dir, Output: filepath.Join(dir, "x.bundle"), Key: priv, Transport: u.transport})
	if err == nil || !strings.Contains(err.Error(), "bundle.yaml says abab") {
		t.Fatalf("got %v", err)
	}
}
