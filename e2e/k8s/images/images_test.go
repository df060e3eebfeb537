package main

import (
	"archive/tar"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func testImages() []Image {
	return []Image{
		{Ref: "registry.k8s.io/pause:3.10.1", Entrypoint: []string{"/pause"}, Layers: [][]File{Base(), {
			{Path: "pause", Data: []byte("#!pause"), Mode: 0o755},
			{Path: "usr/sbin/iptables", Link: "xtables-nft-multi"},
		}}},
		{Ref: "docker.io/airlock/testapp:1.0", Entrypoint: []string{"/testapp"}, Layers: [][]File{Base(), {{Path: "testapp", Data: []byte("app"), Mode: 0o755}}}},
	}
}

// The same inputs make the same image; its files, links, entrypoint and
// platform are what was asked for.
func TestBuildIsReproducibleAndHoldsItsFiles(t *testing.T) {
	a, err := Build(testImages()[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(testImages()[0])
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two builds of one image: %s and %s", da, db)
	}
	cf, err := a.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || strings.Join(cf.Config.Entrypoint, " ") != "/pause" {
		t.Fatalf("config: %s/%s entrypoint %v", cf.OS, cf.Architecture, cf.Config.Entrypoint)
	}
	got := map[string]string{}
	tr := tar.NewReader(mutate.Extract(a))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		got[h.Name] = string(rune(h.Typeflag)) + " " + h.Linkname + " " + string(data) + " " + filepath.Base(strings.TrimSuffix(h.FileInfo().Mode().String(), "/"))
	}
	for name, want := range map[string]string{
		"pause":             "0  #!pause -rwxr-xr-x",
		"usr/sbin/iptables": "2 xtables-nft-multi  Lrwxrwxrwx",
		"tmp":               "5   dtrwxrwxrwx",
	} {
		if got[name] != want {
			t.Errorf("%s: %q, want %q", name, got[name], want)
		}
	}
	if _, ok := got["usr/sbin"]; !ok {
		t.Errorf("no parent directory entry for usr/sbin: %v", got)
	}
}

// A layout written and served: each upstream registry gets a loopback
// mirror holding its images under the same repository and tag, with the
// digests the layout has.
func TestWriteReadServe(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, testImages()); err != nil {
		t.Fatal(err)
	}
	entries, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].Ref != "registry.k8s.io/pause:3.10.1" || entries[1].Ref != "docker.io/airlock/testapp:1.0" {
		t.Fatalf("entries: %+v", entries)
	}
	ctx := context.Background()
	regs, err := Serve(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer regs.Close()
	if len(regs.Mirrors) != 2 || regs.Mirrors["registry.k8s.io"] == "" || regs.Mirrors["docker.io"] == "" || regs.Mirrors["registry.k8s.io"] == regs.Mirrors["docker.io"] {
		t.Fatalf("mirrors: %v", regs.Mirrors)
	}
	for i, at := range []string{
		strings.TrimPrefix(regs.Mirrors["registry.k8s.io"], "http://") + "/pause:3.10.1",
		strings.TrimPrefix(regs.Mirrors["docker.io"], "http://") + "/airlock/testapp:1.0",
	} {
		ref, err := name.ParseReference(at, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(ref, remote.WithContext(ctx))
		if err != nil {
			t.Fatalf("pull %s: %v", at, err)
		}
		got, _ := img.Digest()
		want, _ := entries[i].Image.Digest()
		if got != want {
			t.Errorf("%s: digest %s, the layout has %s", at, got, want)
		}
	}
}
